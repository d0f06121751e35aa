"""``delivery-worker send``: building the message from flags and JSON (no Redis needed), and
the demo's environment file that points a shell at its stack."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from devstack.demo import cli_command, env_lines, handover_env, write_env_file
from worker.ops.cli import build_parser
from worker.ops.send import InputError, build_message, run_send


def parse(*argv: str):
    return build_parser().parse_args(["send", *argv])


def test_email_flags_become_the_contract(tmp_path: Path) -> None:
    (tmp_path / "a.pdf").write_bytes(b"%PDF")
    args = parse(
        "email",
        "--to", "Ada Lovelace <ada@example.com>",
        "--to", "bo@example.com",
        "--from", "Shop <shop@example.org>",
        "--subject", "Hi",
        "--text", "Plain",
        "--attach", str(tmp_path / "a.pdf"),
        "--header", "X-Campaign=spring",
    )  # fmt: skip
    msg = build_message("email", args)
    assert msg["to"] == [
        {"email": "ada@example.com", "name": "Ada Lovelace"},
        {"email": "bo@example.com"},
    ]
    assert msg["from"] == {"email": "shop@example.org", "name": "Shop"}
    assert "provider" not in msg  # email is routed unless a provider is named
    assert msg["attachments"] == [
        {
            "filename": "a.pdf",
            "content_type": "application/pdf",
            "content": base64.b64encode(b"%PDF").decode(),
        }
    ]
    assert msg["headers"] == {"X-Campaign": "spring"}


def test_flags_override_json_and_channel_defaults_apply(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"to": ["+33612345678"], "text": "from file", "lang": "fr"}))
    msg = build_message("voice", parse("voice", "--json", str(path), "--text", "from flag"))
    assert msg == {
        "provider": "voicepartner",
        "mode": "tts",
        "to": ["+33612345678"],
        "text": "from flag",
        "lang": "fr",
    }
    sms = build_message("sms", parse("sms", "--to", "+33612345678", "--text", "x"))
    assert sms["provider"] == "smspartner"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (("email", "--header", "no-equals-sign"), "--header: expected NAME=VALUE"),
        (("email", "--attach", "/nonexistent/file.pdf"), "--attach: cannot read"),
        (("sms", "--json", "/nonexistent/m.json"), "--json: cannot read"),
    ],
)
def test_bad_input_is_named(argv: tuple[str, ...], error: str) -> None:
    with pytest.raises(InputError, match=error):
        build_message(argv[0], parse(*argv))


def test_an_invalid_message_exits_2_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_send(parse("sms", "--to", "+33612345678"))  # no text
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing was enqueued" in err and "text" in err


def test_priority_and_tenant_flags_become_message_fields() -> None:
    sms = build_message(
        "sms",
        parse(
            "sms", "--to", "+33612345678", "--text", "x", "--priority", "high", "--tenant", "acme"
        ),
    )
    assert (sms["priority"], sms["tenant"]) == ("high", "acme")
    assert "priority" not in build_message("sms", parse("sms", "--to", "+33612345678"))
    with pytest.raises(SystemExit):  # argparse refuses a priority outside the three
        parse("sms", "--priority", "urgent")


def test_a_bad_tenant_exits_2_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_send(parse("sms", "--to", "+33612345678", "--text", "x", "--tenant", "a b"))
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing was enqueued" in err and "tenant" in err


def test_the_demo_env_file_is_sourceable(tmp_path: Path) -> None:
    env = handover_env(
        {
            "DELIVERY_BROKER_URL": "redis://127.0.0.1:1234/0",
            "DELIVERY_RESULT_BACKEND": "redis://127.0.0.1:1234/1",
            "DELIVERY_LOG_FORMAT": "json",
            "DELIVERY_POSTAL_API_KEY": "key with 'quotes' and spaces",
        },
        "http://127.0.0.1:5678",
    )
    assert "DELIVERY_LOG_FORMAT" not in env
    assert env["DELIVERY_REDIS_URL"] == "redis://127.0.0.1:1234/0"
    assert all(line.startswith("export DELIVERY_") for line in env_lines(env))
    path = write_env_file(tmp_path / ".demo.env", env)
    out = subprocess.run(
        ["bash", "-c", f'. {path}; printf %s "$DELIVERY_POSTAL_API_KEY|$DELIVERY_SANDBOX_URL"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "key with 'quotes' and spaces|http://127.0.0.1:5678"


def test_the_demo_what_next_command_runs_in_a_new_shell(tmp_path: Path) -> None:
    """The printed command works in a fresh shell whose PATH has no virtualenv on it, from
    the folder the demo was started in."""
    root = Path(__file__).resolve().parents[2]
    command = cli_command(str(root))
    assert command != "delivery-worker"
    path = write_env_file(tmp_path / ".demo.env", {"DELIVERY_SANDBOX_URL": "http://127.0.0.1:1"})
    done = subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", "HOME=" + str(tmp_path), "bash", "--norc", "-c",
         f". {path} && {command} send sms --help"],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--until" in done.stdout


def test_unreachable_redis_exits_69_naming_the_url_without_its_password() -> None:
    """A stack that is down is not invalid input: exit 69 (EX_UNAVAILABLE), not 2."""
    import os
    import socket
    import sys

    with socket.socket() as s:  # a loopback port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://:s3cret-pw@127.0.0.1:{port}"
    env = {**os.environ, "DELIVERY_BROKER_URL": f"{url}/0", "DELIVERY_RESULT_BACKEND": f"{url}/1"}
    env.pop("DELIVERY_REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "send", "sms", "--to", "+33612345678",
         "--text", "hi"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 69, done.stderr
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout
