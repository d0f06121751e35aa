"""``delivery-worker send-many``: a CSV campaign as a real subprocess against the real stack
(redis-server, a Celery worker, the sandbox)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def send_many(stack_env: dict[str, str], *args: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "send-many", *args],
        env={**os.environ, **stack_env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_csv_campaign_is_sent_per_row_with_a_summary_and_runs_once(
    stack_env, sandbox, worker_proc, ledger, tmp_path: Path
) -> None:
    rows = ["to,first_name"]
    rows += [f"+3361234{n:04d},Name{n}" for n in range(30)]
    rows.insert(5, "+33612,Bad")  # row 6: not an E.164 number
    rows.insert(9, "+33612340999,")  # row 10: the template's column is empty
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text("\n".join(rows) + "\n", encoding="utf-8")

    done = send_many(
        stack_env,
        "sms",
        "--csv",
        str(csv_file),
        "--template",
        "Hello {first_name}",
        "--chunk",
        "8",
        "--json",
        "--quiet",
    )
    assert done.returncode == 1, done.stdout + done.stderr  # two invalid rows
    summary = json.loads(done.stdout)
    assert summary["rows"] == 32 and summary["enqueued"] == 30 and summary["invalid"] == 2
    # Row 16's number ends in 0014: on the sandbox's STOP list, refused alone (code 14).
    assert summary["outcomes"] == {"sent": 29, "failed": 1} and summary["pending"] == 0, summary
    assert summary["failures"] == {"recipient_rejected (14)": 1}
    assert summary["invalid_rows"][0].startswith("row 6: to")
    assert summary["invalid_rows"][1] == "row 10: column 'first_name' is empty"
    sent = sandbox.messages("smspartner")
    numbers = sorted(n for m in sent for n in m["recipients"])
    assert numbers == [f"+3361234{n:04d}" for n in range(30) if n != 14]
    # Each row's own text (the template), sent with /bulk-send's per-entry messages.
    bodies = json.dumps([m["fields"] for m in sent], ensure_ascii=False)
    assert all(f"Hello Name{n}" in bodies for n in range(30) if n != 14), bodies[:500]
    # Sent through the bulk path: far fewer requests than messages.
    assert len(sandbox.requests("smspartner")) < 30

    again = send_many(
        stack_env, "sms", "--csv", str(csv_file), "--template", "Hello {first_name}",
        "--chunk", "8", "--json", "--quiet",
    )  # fmt: skip
    assert json.loads(again.stdout)["outcomes"] == {"sent": 29, "failed": 1}
    # The same command twice: nothing twice.
    assert sorted(n for m in sandbox.messages("smspartner") for n in m["recipients"]) == numbers


def test_a_header_without_the_template_column_sends_nothing(
    stack_env, sandbox, ledger, tmp_path: Path
) -> None:
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text("to,name\n+33612345678,Ana\n", encoding="utf-8")
    before = len(list(ledger.redis.scan_iter("*")))
    done = send_many(
        stack_env, "sms", "--csv", str(csv_file), "--template", "Hi {first_name}", "--quiet"
    )
    assert done.returncode == 2
    assert "no column 'first_name'" in done.stderr and "to, name" in done.stderr
    assert len(list(ledger.redis.scan_iter("*"))) == before
