"""Adding to the suppression lists from what providers say (``worker.stores.suppression``).

Shared by the send pipeline (refusals) and tracking (bounce events); docs/suppression.md.
"""

from __future__ import annotations

import time

import structlog

from worker.metrics import record as metrics
from worker.redaction import mask_email, mask_phone
from worker.runtime import Runtime
from worker.stores.suppression import Entry, Reason, Source

__all__ = ["mask", "remember"]

log = structlog.get_logger(__name__)


def mask(channel: str, recipient: str) -> str:
    return mask_email(recipient) if channel == "email" else mask_phone(recipient)


def remember(
    rt: Runtime, channel: str, recipient: str, reason: Reason, source: Source, provider: str
) -> None:
    """Suppress ``recipient`` (never raises: a lost entry only costs a refused send)."""
    key = rt.hasher.key(channel, recipient)
    masked = mask(channel, recipient)
    try:
        if reason == "soft_bounce":
            added = rt.suppression.soft_bounce(
                channel, key, source=source, provider=provider, masked=masked
            )
            if added is None:
                return
        else:
            entry = Entry(channel, key, reason, source, provider, time.time(), masked=masked)
            if not rt.suppression.add(entry):
                return
    except Exception as exc:
        log.warning("suppression.not_recorded", error=type(exc).__name__)
        return
    metrics.suppression_added(channel, reason, source)
    log.info("suppression.added", reason=reason, source=source, recipient=masked)
