"""The README's run command: every provider delivers, and Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.processes import free_port

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(
        ["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True, check=True
    )
    return [
        line
        for line in out.stdout.splitlines()
        if text in line and str(os.getpid()) != line.split()[0] and "ps -eww" not in line
    ]


def demo_cmd(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "worker.ops.cli", "demo", "--workdir", str(workdir), *extra]


def test_demo_delivers_through_every_provider(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-run"
    done = subprocess.run(
        demo_cmd(workdir, "--exit", "--no-flower"), capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout
    for provider in ("postal", "emailmassivo", "mailpartner", "smspartner", "voicepartner"):
        rows = [line for line in table.splitlines() if line.startswith(f"{provider}:")]
        assert rows, f"no {provider} row in:\n{table}"
        assert all(" sent" in row for row in rows), rows
    assert "refused" in table and "must be an E.164 number" in table
    assert "sent (parked, resumed)" in table
    assert "ran out of credit" in table
    assert "settled" in done.stderr  # the live progress line
    # --exit stops the exporter (and Flower): no URL of a stopped process is printed.
    assert "Metrics:" not in table and "http://127.0.0.1" not in table, table
    assert processes_mentioning(str(workdir)) == []


def test_ctrl_c_stops_everything_it_started(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-stay"
    port = free_port()
    err = open(tmp_path / "demo.err", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        demo_cmd(workdir, "--flower-port", str(port)),
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "press Ctrl-C" in output, output + (tmp_path / "demo.err").read_text()
        assert f"Flower: http://127.0.0.1:{port}" in output
        assert processes_mentioning(str(workdir)), "expected the demo's processes to be running"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            # Stop the demo the way a person would, so a failing test leaves nothing behind.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        err.close()
    deadline = time.monotonic() + 10
    while processes_mentioning(str(workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(workdir)) == []
    assert processes_mentioning(f"--port={port}") == []
