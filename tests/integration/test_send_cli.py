"""``delivery-worker send``: real subprocesses against the real stack (redis, worker, sandbox)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def send(stack_env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "send", *args],
        env={**os.environ, **stack_env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sms_with_wait_prints_sent(stack_env, sandbox, worker_proc) -> None:
    done = send(stack_env, "sms", "--to", "+33612349001", "--text", "Hi from the CLI", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    first, _, rest = done.stdout.partition("\n")
    assert first == "sent"
    report = json.loads(rest)
    assert report["result"]["status"] == "sent" and report["result"]["provider"] == "smspartner"
    # --wait alone stops at the send outcome: tracking has recorded the send, nothing after it.
    [state] = report["delivery_state"]["recipients"].values()
    assert state["state"] == "sent"
    [message] = sandbox.messages("smspartner")
    assert message["fields"]["message"] == "Hi from the CLI"
    assert message["recipients"] == ["+33612349001"]


def test_without_wait_prints_the_delivery_id(stack_env, sandbox, worker_proc, ledger) -> None:
    done = send(stack_env, "sms", "--to", "+33612349002", "--text", "x")
    assert done.returncode == 0, done.stderr
    delivery_id = done.stdout.strip()
    assert ledger.get(delivery_id) is not None


def test_invalid_input_names_the_field_and_enqueues_nothing(stack_env, sandbox, ledger) -> None:
    before = len(list(ledger.redis.scan_iter("*")))
    done = send(stack_env, "email", "--provider", "postal", "--to", "not-an-address", "--text", "x")
    assert done.returncode == 2
    assert "to.0.email:" in done.stderr and "nothing was enqueued" in done.stderr
    assert done.stdout == ""
    sms = send(stack_env, "sms", "--to", "0612", "--text", "x")
    assert sms.returncode == 2 and "to.0:" in sms.stderr
    bad_json = send(stack_env, "sms", "--json", "-", stdin="{not json")
    assert bad_json.returncode == 2 and "--json: not JSON" in bad_json.stderr
    assert len(list(ledger.redis.scan_iter("*"))) == before


def test_email_from_json_on_stdin_with_an_attachment(
    stack_env, sandbox, worker_proc, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("hello attachment")
    message = {
        "provider": "postal",
        "to": [{"email": "ada@example.com"}],
        "from": {"email": "shop@example.org", "name": "Shop"},
        "text": "from json",
    }
    done = send(
        stack_env,
        "email",
        "--json",
        "-",
        "--subject",
        "Flag over JSON",
        "--attach",
        str(tmp_path / "notes.txt"),
        "--wait",
        stdin=json.dumps(message),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("sent\n")
    [got] = sandbox.messages("postal")
    assert got["fields"]["subject"] == "Flag over JSON"
    assert got["fields"]["plain_body"] == "from json"
    assert [a["name"] for a in got["fields"]["attachments"]] == ["notes.txt"]


def test_exit_status_tells_parked_and_failed(stack_env, sandbox, worker_proc) -> None:
    sandbox.set_balance("smspartner", 0)
    parked = send(stack_env, "sms", "--to", "+33612349003", "--text", "x", "--wait")
    assert parked.returncode == 3, parked.stdout + parked.stderr
    assert parked.stdout.startswith("parked\n")

    sandbox.set_faults([{"provider": "voicepartner", "action": "status", "status": 400}])
    failed = send(
        stack_env, "voice", "--to", "+33612349004", "--text", "Bonjour", "--lang", "fr", "--wait"
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stdout.startswith("failed\n")
    assert json.loads(failed.stdout.partition("\n")[2])["result"]["error"]["kind"]


def test_wait_times_out_with_status_4(stack_env, sandbox, worker_proc, ledger) -> None:
    # A fault that holds the answer longer than --wait waits.
    sandbox.set_faults([{"provider": "smspartner", "action": "latency", "delay_ms": 2500}])
    done = send(stack_env, "sms", "--to", "+33612349005", "--text", "x", "--wait", "--timeout", "1")
    assert done.returncode == 4, done.stdout + done.stderr
    assert done.stdout.startswith("not settled after 1s")
    # The send goes on in the shared worker: let it end here, not in the next test's sandbox
    # log (the slow /send would be recorded after that test's reset).
    delivery_id = done.stderr.rsplit("delivery-worker status ", 1)[1].split()[0]
    deadline = time.monotonic() + 30
    record = ledger.get(delivery_id)
    while (record is None or not record.final) and time.monotonic() < deadline:
        time.sleep(0.1)
        record = ledger.get(delivery_id)
    assert record is not None and record.state == "sent"
