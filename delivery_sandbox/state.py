"""What the sandbox saw: every request and every accepted message, in memory and as JSON lines.

Both kinds of record go to the log file, one JSON object per line with a ``type`` field
(``request``, ``message`` or ``reset``), flushed line by line so a test or an operator can tail
it while the sandbox runs. API keys never reach a record: providers hand over parsed fields
without them, and paths are recorded without their query string.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from delivery_sandbox.accounts import PROVIDERS
from delivery_sandbox.wire import AcceptedMessage

__all__ = ["Recorder", "body_digest", "max_in_window"]

MAX_FIELD_CHARS = 4096
"""Longer strings (attachment contents, raw messages) are kept as a length and a digest."""

INBOX_FIELD_CHARS = 512 * 1024
"""The inbox page's copy of the newest messages keeps strings up to this length (a real HTML
mail is often longer than :data:`MAX_FIELD_CHARS`); in memory only, never in the log file."""

INBOX_KEEP = 200
"""How many of the newest messages keep that fuller copy (memory stays bounded)."""


class Recorder:
    def __init__(self, log_file: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._messages: list[dict[str, Any]] = []
        self._seq = 0
        self._full: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._log: IO[str] | None = None
        if log_file is not None:
            path = Path(log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._log = path.open("a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def record(
        self, request: dict[str, Any], message: AcceptedMessage | None = None, *, time: float
    ) -> dict[str, Any]:
        """Store one request (and the message it created); return the stored request record."""
        with self._lock:
            self._seq += 1
            req = {"type": "request", "seq": self._seq, **request}
            self._requests.append(req)
            self._write(req)
            if message is not None:
                self._seq += 1
                msg = {
                    "type": "message",
                    "seq": self._seq,
                    "request_seq": req["seq"],
                    "time": time,
                    "provider": request["provider"],
                    "route": request["route"],
                    "message_id": message.message_id,
                    "recipients": list(message.recipients),
                    "idempotency_key": message.idempotency_key,
                    "tag": message.tag,
                    "units": message.units,
                    "body_sha256": body_digest(message.fields),
                    "fields": _shorten(message.fields),
                    **message.extra,
                }
                self._messages.append(msg)
                self._write(msg)
                self._full[self._seq] = _shorten(message.fields, INBOX_FIELD_CHARS)
                while len(self._full) > INBOX_KEEP:
                    self._full.popitem(last=False)
            return req

    def reset(self, *, time: float) -> None:
        with self._lock:
            self._requests.clear()
            self._messages.clear()
            self._full.clear()
            self._write({"type": "reset", "time": time})

    def requests(self, provider: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return _select(self._requests, provider, since)

    def messages(self, provider: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return _select(self._messages, provider, since)

    def full_fields(self, seq: int) -> dict[str, Any] | None:
        """The fields of message ``seq`` with strings up to :data:`INBOX_FIELD_CHARS`, while it
        is among the :data:`INBOX_KEEP` newest; otherwise ``None`` (use its ``fields``)."""
        with self._lock:
            return self._full.get(seq)

    def stats(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            requests = list(self._requests)
        out: dict[str, dict[str, Any]] = {}
        for name in PROVIDERS:
            mine = [r for r in requests if r["provider"] == name]
            outcomes = [r["outcome"] for r in mine]
            out[name] = {
                "requests": len(mine),
                "accepted": outcomes.count("accepted"),
                "duplicates": outcomes.count("duplicate"),
                "refused": outcomes.count("refused"),
                "throttled": sum(1 for r in mine if r["status"] == 429 and r["fault"] is None),
                "faults": sum(1 for r in mine if r["fault"] is not None),
                "max_requests_1s": max_in_window((r["time"] for r in mine), 1.0),
                "max_admitted_1s": max_in_window((r["time"] for r in mine if r["admitted"]), 1.0),
            }
        return out

    def _write(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            self._log.flush()


def body_digest(fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the parsed fields (API key already removed)."""
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def max_in_window(times: Iterable[float], window_s: float) -> int:
    """The largest number of times falling in any window ``(t - window_s, t]``."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def _select(
    records: list[dict[str, Any]], provider: str | None, since: int
) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in records
        if r["seq"] > since and (provider is None or r["provider"] == provider)
    ]


def _shorten(value: Any, limit: int = MAX_FIELD_CHARS) -> Any:
    if isinstance(value, str) and len(value) > limit:
        digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
        return {"chars": len(value), "sha256": digest}
    if isinstance(value, dict):
        return {str(k): _shorten(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, limit) for v in value]
    return value
