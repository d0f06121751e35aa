"""Final writes that Redis refused, kept on local disk and replayed when a worker starts.

A send the provider accepted is ``sent`` whatever Redis says. The final write is retried for
``final_write_retry_s`` (a Sentinel failover, an OOM spike, a restart); if Redis still refuses,
the write is appended here so the ledger learns it at the next worker start, before the sweeper
could mistake the record (left ``sending``) for an interrupted send. The file is bounded
(``MAX_SPOOL_BYTES``); entries hold the ledger fields only (masked result, no message body).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import structlog

from worker.stores import Records

__all__ = ["MAX_SPOOL_BYTES", "FinalWriteSpool"]

log = structlog.get_logger(__name__)

MAX_SPOOL_BYTES = 8 * 1024 * 1024
"""About 8,000 sent results: past it a write is logged and dropped, never blocking a worker."""

_FILE = "final-writes.jsonl"


class FinalWriteSpool:
    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = MAX_SPOOL_BYTES):
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    @property
    def path(self) -> Path:
        return self.directory / _FILE

    def keep(self, delivery_id: str, state: str, fields: dict[str, str]) -> bool:
        """Append one final write; False if the spool is full or cannot be written."""
        line = json.dumps({"delivery_id": delivery_id, "state": state, "fields": fields}) + "\n"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            # O_APPEND: a line up to PIPE_BUF-ish sizes lands whole even with several pool
            # processes appending at once.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size + len(line) > self.max_bytes:
                    log.error("delivery.spool_full", spool_bytes=self.max_bytes)
                    return False
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("delivery.spool_failed", error=type(exc).__name__)
            return False
        return True

    def replay(self, ledger: Records) -> int:
        """Write every kept final write to ``ledger`` (forward-only); returns how many were
        applied. The file is renamed first, so one process replays it and new writes go to a
        fresh file; entries Redis still refuses are kept again."""
        claimed = self.path.with_name(f"{_FILE}.{os.getpid()}.replaying")
        try:
            os.rename(self.path, claimed)
        except FileNotFoundError:
            return 0
        applied = 0
        with claimed.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                    delivery_id, state = str(entry["delivery_id"]), str(entry["state"])
                    fields = {str(k): str(v) for k, v in entry["fields"].items()}
                except (ValueError, KeyError, TypeError, AttributeError):
                    log.warning("delivery.spool_entry_unreadable")
                    continue
                try:
                    ledger.transition(delivery_id, state, **fields)
                except Exception as exc:  # still refused: kept for the next start
                    log.warning("delivery.spool_replay_failed", error=type(exc).__name__)
                    self.keep(delivery_id, state, fields)
                    continue
                applied += 1
        claimed.unlink()
        if applied:
            log.info("delivery.spool_replayed", writes=applied)
        return applied
