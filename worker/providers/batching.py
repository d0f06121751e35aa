"""What a provider module declares about batching (``Driver.batching``), and nothing more.

A provider batches only when its API has a bulk endpoint that answers **per item** (so one
refusal fails one message) and a way to look an item up after a lost answer (so an unknown
outcome is reconciled per item, never resent blindly). The delivery side (``worker.batching``,
``worker.delivery.batch``) reads this declaration; the wire format stays in the driver
(``Driver.batch_key``, ``Driver.send_batch``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

__all__ = ["BATCH_TAG_PREFIX", "BatchSpec", "new_batch_tag"]

BATCH_TAG_PREFIX = "dwb"


@dataclass(frozen=True)
class BatchSpec:
    """How a provider batches."""

    max_items: int
    """Messages per request at most (the provider's documented limit)."""
    endpoints: str
    """Which endpoints, for the README and logs."""


def new_batch_tag() -> str:
    """A tag unique to one batch request: ``dwb`` + 17 lowercase hex characters (20 in all, the
    SMS Partner limit: <= 20 characters, lowercase, no spaces, providers.md §1.2.2)."""
    return BATCH_TAG_PREFIX + secrets.token_hex(9)[:17]
