"""Structured JSON logs (structlog over stdlib logging) with a redaction processor.

Every event, ours and Celery's, goes through the same chain: context bound with contextvars
(``task_id``, ``delivery_id``, ``provider``, ``attempt``), then :func:`redact_event`, which
drops secret fields, blanks bodies and masks addresses before anything is rendered.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from worker.redaction import redact_mapping, scrub

__all__ = ["configure_logging", "redact_event"]

_KEEP = frozenset({"event", "level", "timestamp", "logger"})


def redact_event(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: nothing secret or personal leaves the process in a log line."""
    kept = {k: event_dict[k] for k in _KEEP if k in event_dict}
    rest = {k: v for k, v in event_dict.items() if k not in _KEEP}
    cleaned = redact_mapping(rest)
    if isinstance(kept.get("event"), str):
        kept["event"] = scrub(kept["event"])
    event_dict.clear()
    event_dict.update(cleaned)
    event_dict.update(kept)
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (test capture, Celery's redirection)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging (Celery's too) through one redacting JSON renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_event,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        # Events below the level are dropped first, before the time stamp and the redaction
        # (the send path logs at INFO: free under WARNING).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; GET URLs of the Partner APIs carry the API key.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
