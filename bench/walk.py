"""The walk of one SMS through the code, as files: which files a send passes, in order.

Runs ``tasks.send_sms``'s body once (batching off, no ``send_at``, SMS Partner named, accepted at
once) on the in-memory stores with an ``httpx.MockTransport`` provider, and follows every
Python call and return with ``sys.setprofile``. The delivery's record is created first, as the
producer does before it publishes the task (``worker.producer.Producer.enqueue``, in the
caller's process, not the worker's walk). It prints the files in the order the walk enters
them, the number of moves between files, and how many of those moves return into a file the
walk had already left. Data and configuration modules (``worker.config``, ``worker.models``,
``worker.redaction``, ``worker.logs``) are read along the way, not walked: they are left out.

    .venv/bin/python bench/walk.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from structlog.testing import capture_logs

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = ("worker/config.py", "worker/models/", "worker/redaction.py", "worker/logs.py")
OK = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038}


def _project_file(frame: FrameType) -> str | None:
    path = frame.f_code.co_filename
    if not path.startswith(str(ROOT)):
        return None
    rel = Path(path).relative_to(ROOT).as_posix()
    if not rel.startswith(("worker/", "tasks/")) or rel.startswith(SKIPPED):
        return None
    return rel


def walk() -> list[str]:
    from worker.config import Settings
    from worker.delivery import process
    from worker.runtime import Runtime

    settings = Settings(
        smspartner_api_key="sms-secret-key", smspartner_base_url="http://provider.test/sms/v1"
    )
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=OK)))
    rt = Runtime.in_memory(settings, client=client)
    message = {"provider": "smspartner", "to": ["+33612345678"], "text": "Hello"}
    with capture_logs():
        process("sms", message, delivery_id="warm-up", task_name="tasks.send_sms", rt=rt)
    # What the producer wrote before publishing the task (``Producer.enqueue``).
    rt.ledger.create(
        "d-1",
        channel="sms",
        provider="smspartner",
        extra={"task_name": "tasks.send_sms", "message": json.dumps(message), "queue": ""},
    )
    seq: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event not in ("call", "return"):
            return
        # On a return, the walk is back in the caller's file.
        at = frame if event == "call" else frame.f_back
        while at is not None and _project_file(at) is None:
            at = at.f_back
        name = _project_file(at) if at is not None else None
        if name is not None and (not seq or seq[-1] != name):
            seq.append(name)

    seq.append("tasks/__init__.py")
    with capture_logs():  # the log lines are not the walk's output
        sys.setprofile(profile)
        try:
            process("sms", message, delivery_id="d-1", task_name="tasks.send_sms", rt=rt)
        finally:
            sys.setprofile(None)
    seq.append("tasks/__init__.py")
    assert rt.ledger.get("d-1") is not None
    return [s for i, s in enumerate(seq) if i == 0 or s != seq[i - 1]]


def main() -> None:
    seq = walk()
    files = list(dict.fromkeys(seq))
    returns = sum(1 for i, name in enumerate(seq) if name in seq[:i])
    for n, name in enumerate(files, 1):
        print(f"{n:3d}  {name}")
    moves = len(seq) - 1
    print(f"files: {len(files)}  moves: {moves}  returns into a file already left: {returns}")


if __name__ == "__main__":
    main()
