"""The suppression step: recipients on the channel's list are never sent to, by any provider.

The lookup itself rides in the run's first script (``worker.stores.hotpath``, ``begin.lua``):
:func:`lookup` names the recipients' keys for it, :func:`apply` acts on the answer before a
provider is chosen, so failover never reaches a suppressed recipient either.

- every primary recipient (``to``) suppressed: the delivery ends ``failed`` with
  ``error.kind = "suppressed"`` and no provider request;
- some: the message goes to the others, and the result lists the left-out ones masked
  (``suppressed_recipients``);
- ``ignore_suppression: true``: nothing is looked up; the bypass is logged.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from worker.delivery import writer
from worker.delivery.context import Delivery
from worker.delivery.results import Outcome
from worker.errors import DeliveryError, RecipientRejectedError
from worker.metrics import record as metrics
from worker.models import EmailMessage, ErrorInfo
from worker.stores.suppression import Reason
from worker.suppression import mask

__all__ = ["apply", "from_refusal", "lookup", "recipients"]

log = structlog.get_logger(__name__)


def recipients(d: Delivery) -> list[str]:
    """Every recipient of the message (an email's ``to``, ``cc`` and ``bcc``)."""
    m = d.message
    if isinstance(m, EmailMessage):
        return [a.email for a in (*m.to, *m.cc, *m.bcc)]
    return list(m.to)


def lookup(d: Delivery) -> tuple[str, Sequence[str]] | None:
    """(channel, recipient keys) for the run's first step; ``None``: not checked."""
    if not d.settings.suppression or d.message.ignore_suppression:
        return None
    hasher = d.rt.hasher
    return d.channel, [hasher.key(d.channel, r) for r in recipients(d)]


def apply(d: Delivery, attempts: int) -> Outcome | None:
    """End the attempt when every primary recipient is suppressed, else narrow the message to
    the others (``d.message``, ``d.suppressed``)."""
    if d.message.ignore_suppression:
        if d.settings.suppression:
            log.warning("delivery.suppression_ignored", recipients=len(recipients(d)))
        return None
    asked = lookup(d)
    if asked is None:
        return None
    # The run's first script looked them up (a batch's too: one script call for its chunk,
    # ``worker.delivery.record.open_runs``); no other lookup is made.
    found = d.begun.suppressed if d.begun is not None else {}
    if not found:
        return None
    hasher = d.rt.hasher
    left_out: dict[str, str] = {}
    kept: set[str] = set()
    for r in recipients(d):
        entry = found.get(hasher.key(d.channel, r))
        if entry is None:
            kept.add(r)
        else:
            left_out[mask(d.channel, r)] = entry.reason
            metrics.suppressed_send(d.channel, entry.reason)
    if not left_out:
        return None
    d.suppressed = left_out
    m = d.message
    if isinstance(m, EmailMessage):
        to_kept: list[object] = [a for a in m.to if a.email in kept]
        update = {"to": to_kept, "cc": [a for a in m.cc if a.email in kept],
                  "bcc": [a for a in m.bcc if a.email in kept]}  # fmt: skip
    else:
        to_kept = [n for n in m.to if n in kept]
        update = {"to": to_kept}
    if not to_kept:
        reasons = sorted(set(left_out.values()))
        log.info("delivery.suppressed", recipients=len(left_out), reasons=reasons)
        message = "every recipient is on the suppression list (" + ", ".join(reasons) + ")"
        error = ErrorInfo(kind="suppressed", code=reasons[0], message=message)
        return writer.finish(d, "failed", attempts, error=error)
    d.message = m.model_copy(update=update)
    log.info("delivery.partly_suppressed", suppressed=len(left_out), kept=len(kept))
    return None


def _refusal_reason(exc: DeliveryError) -> Reason:
    """What a provider's refusal of the recipient says: SMS Partner code 14 is its STOP list
    (docs/providers/smspartner.md §1.2.12); EmailMassivo names unsubscribed, complained or
    nonexistent receivers in a 422's text (docs/providers/emailmassivo.md §5.4)."""
    text = exc.message.lower()
    if str(exc.provider_code) == "14":
        return "stop"
    if "unsubscrib" in text:
        return "unsubscribed"
    if "complain" in text:
        return "complaint"
    if "exist" in text:
        return "invalid"
    return "manual"


def from_refusal(d: Delivery, exc: DeliveryError) -> None:
    """A permanent refusal of the recipient (``RecipientRejectedError``) suppresses it on the
    channel. Only a message to one recipient: a refusal of several does not say which."""
    if not isinstance(exc, RecipientRejectedError) or not d.settings.suppression:
        return
    everyone = recipients(d)
    if len(everyone) != 1:
        return
    writer.suppress(d, everyone[0], _refusal_reason(exc))
