"""The tag of a batch request (``worker.delivery.batch``).

A provider batches only when its API has a bulk endpoint that answers **per item** (so one
refusal fails one message) and a way to look an item up after a lost answer (so an unknown
outcome is reconciled per item, never resent blindly); it declares so in its module
(``Driver.batch_limit``, ``Driver.batch_key``, ``Driver.send_batch``).
"""

from __future__ import annotations

import secrets

__all__ = ["BATCH_TAG_PREFIX", "new_batch_tag"]

BATCH_TAG_PREFIX = "dwb"


def new_batch_tag() -> str:
    """A tag unique to one batch request: ``dwb`` + 17 lowercase hex characters (20 in all, the
    SMS Partner limit: <= 20 characters, lowercase, no spaces,
    docs/providers/smspartner.md §1.2.2)."""
    return BATCH_TAG_PREFIX + secrets.token_hex(9)[:17]
