"""A new user's first minutes: the demo stays up, its environment file is sourced, one's own
SMS goes out with ``delivery-worker send sms --wait``, and the sandbox inbox page shows it."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .browser import headless_chromium, list_item_with, wait_for

pytestmark = pytest.mark.integration


def read_env_file(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", f"set -a; . {shlex.quote(str(path))}; env -0"],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def test_demo_then_your_own_sms_then_the_inbox_page(tmp_path: Path) -> None:
    env_file = tmp_path / "project" / ".demo.env"
    env_file.parent.mkdir()
    bindir = str(Path(sys.executable).parent)  # where delivery-worker is installed
    err = open(tmp_path / "demo.err", "w")  # noqa: SIM115 - closed below
    demo = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker.ops.cli", "demo", "--no-flower"),
            *("--workdir", str(tmp_path / "demo"), "--env-file", ".demo.env"),
        ],
        cwd=env_file.parent,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines = []
        deadline = time.monotonic() + 180
        for line in demo.stdout:
            lines.append(line)
            if "press Ctrl-C" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "press Ctrl-C" in output, output + (tmp_path / "demo.err").read_text()
        assert "source .demo.env" in output and "/_inbox/" in output
        assert env_file.exists()
        env = read_env_file(env_file)
        assert env["DELIVERY_BROKER_URL"].startswith("redis://127.0.0.1:")
        assert env["DELIVERY_SMSPARTNER_BASE_URL"].startswith(env["DELIVERY_SANDBOX_URL"])

        # What the README tells a user to type, in a shell that sourced the file.
        script = (
            f'export PATH={shlex.quote(bindir)}:"$PATH"; . ./.demo.env; '
            "delivery-worker send sms --to +33612345678 --text 'My first SMS' --wait"
        )
        sent = subprocess.run(
            ["bash", "-c", script],
            cwd=env_file.parent,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert sent.stdout.splitlines()[0] == "sent"

        with headless_chromium() as driver:
            driver.get(env["DELIVERY_SANDBOX_URL"] + "/_inbox/")
            item = wait_for(lambda: list_item_with(driver, "My first SMS"), what="the SMS")
            assert "+33612345678" in item.text and "smspartner" in item.text
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=60)
        finally:
            if demo.poll() is None:
                demo.kill()
            err.close()
            if demo.stdout is not None:
                demo.stdout.close()
    assert demo.returncode == 0
    assert not env_file.exists()  # it pointed at ports that are closed now
