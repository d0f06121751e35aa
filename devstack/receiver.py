"""The tracking receiver as a real process (``delivery-worker receiver``), and the broker's view.

Used by the integration tests and ``bench/tracking_receiver.py``: the receiver runs the way an
operator starts it (uvicorn, its own process), and what it published is read back from the
Redis broker's queue list, as a worker would receive it.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devstack.processes import Proc, _spawn, free_port, wait_for_port

__all__ = ["queued_tasks", "start_receiver"]


def start_receiver(
    workdir: Path, env: Mapping[str, str], *, port: int | None = None, workers: int = 1
) -> Proc:
    """``delivery-worker receiver`` on loopback; returns once its port accepts connections."""
    port = port or free_port()
    argv = [
        sys.executable, "-m", "worker.ops.cli", "receiver",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    proc = _spawn("receiver", argv, workdir / "receiver.log", {**os.environ, **env})
    proc.extra["port"] = port
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout_s=30)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"receiver did not start:\n{proc.log_tail()}") from None
    return proc


def queued_tasks(client: Any, queue: str = "delivery") -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message waiting in a kombu Redis queue, oldest first.

    kombu LPUSHes each message as JSON with a base64 body ``[args, kwargs, embed]``.
    """
    found = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        found.append((str(message["headers"]["task"]), list(args)))
    return found
