"""Take a delivery back: ``cancel(delivery_id)`` and ``delivery-worker cancel ID…``.

Each id gets one answer (:class:`CancelResult`, ``answer`` below):

* ``cancelled``: not sent yet, now ``cancelled`` in the ledger (final). No copy of its task
  sends it afterwards, wherever it is (queued, waiting for a retry, parked, on the schedule,
  requeued after a crash or by the sweeper): every run reads the ledger first, and a send's
  gate moves to ``sending`` only from an unfinished state, atomically (so a cancel racing a
  send ends in exactly one of: cancelled, or sent and the cancel refused);
* ``cancelled_at_provider``: it was scheduled at its provider, which cancelled it;
* ``already_sent``: sent (or, scheduled at the provider, past its time): cannot be cancelled;
* ``too_late_at_provider``: scheduled at the provider, inside the provider's no-cancel window
  (SMS and Mail Partner: less than 5 minutes before its time, docs/providers/smspartner.md §1.2.6 /
  docs/providers/mailpartner.md §2.2); it will be sent;
* ``already_final``: it ended otherwise (failed, expired, dead, or cancelled before);
* ``in_flight``: a send was under way for the whole wait; ask again (the send decides);
* ``provider_error``: the provider could not be asked; nothing changed, ask again;
* ``unknown``: no such delivery.

The Celery result of a cancelled delivery reads ``{"status": "cancelled", …}``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from celery import Celery, states

from worker.errors import DeliveryError
from worker.models import DeliveryResult, ErrorInfo
from worker.runtime import Runtime
from worker.scheduling.results import store_task_state
from worker.stores import DeliveryRecord

__all__ = ["CancelResult", "cancel_deliveries", "cancel_delivery"]

log = structlog.get_logger(__name__)

_SENDING_WAIT_S = 10.0
_POLL_S = 0.05


@dataclass(frozen=True)
class CancelResult:
    delivery_id: str
    answer: str
    detail: str = ""

    @property
    def cancelled(self) -> bool:
        return self.answer in ("cancelled", "cancelled_at_provider")

    def to_dict(self) -> dict[str, str]:
        out = {"delivery_id": self.delivery_id, "answer": self.answer}
        if self.detail:
            out["detail"] = self.detail
        return out


def cancel_deliveries(rt: Runtime, app: Celery, delivery_ids: list[str]) -> list[CancelResult]:
    return [cancel_delivery(rt, app, i) for i in delivery_ids]


def cancel_delivery(rt: Runtime, app: Celery, delivery_id: str) -> CancelResult:
    records = rt.records
    give_up = time.monotonic() + _SENDING_WAIT_S
    while True:
        record = records.get(delivery_id)
        if record is None:
            return CancelResult(delivery_id, "unknown", "no such delivery")
        result = _cancelled_result(record)
        answer = records.cancel(delivery_id, result=result.model_dump_json())
        if answer.outcome == "cancelled":
            _store(app, delivery_id, result)
            log.warning("delivery.cancelled", delivery_id=delivery_id, was=answer.state)
            return CancelResult(delivery_id, "cancelled", f"was {answer.state}")
        if answer.outcome == "unknown":
            return CancelResult(delivery_id, "unknown", "no such delivery")
        if answer.outcome == "final":
            return _final_answer(delivery_id, answer.state)
        if answer.outcome == "provider":
            return _cancel_at_provider(rt, app, record)
        # "sending": a send is under way; its end decides (sent, or back to unfinished).
        if time.monotonic() >= give_up:
            return CancelResult(delivery_id, "in_flight", "a send is under way; ask again")
        time.sleep(_POLL_S)


def _final_answer(delivery_id: str, state: str) -> CancelResult:
    if state == "sent":
        return CancelResult(delivery_id, "already_sent", "sent: cannot be cancelled")
    return CancelResult(delivery_id, "already_final", f"already {state}")


def _cancel_at_provider(rt: Runtime, app: Celery, record: DeliveryRecord) -> CancelResult:
    """The provider holds the send: cancel it there first, under the delivery's send lock (so
    the run at its time waits), then in the ledger."""
    delivery_id = record.delivery_id
    token = uuid.uuid4().hex
    give_up = time.monotonic() + _SENDING_WAIT_S
    while ledger_busy := rt.run_locks.lock(delivery_id, token, 30.0):
        if time.monotonic() + ledger_busy > give_up:
            return CancelResult(delivery_id, "in_flight", "a run holds the delivery; ask again")
        time.sleep(min(ledger_busy, 0.2))
    try:
        current = rt.records.get(delivery_id)
        if current is None:
            return CancelResult(delivery_id, "unknown", "no such delivery")
        if current.final:
            return _final_answer(delivery_id, current.state)
        ids = sorted(set((current.result or {}).get("provider_message_ids", {}).values()))
        if not ids:
            return CancelResult(delivery_id, "provider_error", "no provider id recorded")
        try:
            driver = rt.driver(current.provider)
        except DeliveryError as exc:
            return CancelResult(delivery_id, "provider_error", exc.message)
        answers = [driver.cancel_scheduled(i) for i in ids]
        outcomes = {a.outcome for a in answers}
        detail = "; ".join(a.detail for a in answers if a.detail)
        if outcomes == {"cancelled"}:
            result = _cancelled_result(current, at_provider=True)
            answer = rt.records.cancel(
                delivery_id, result=result.model_dump_json(), at_provider=True
            )
            if answer.outcome == "cancelled":
                _store(app, delivery_id, result)
                log.warning("delivery.cancelled_at_provider", delivery_id=delivery_id)
                return CancelResult(delivery_id, "cancelled_at_provider", detail)
            return _final_answer(delivery_id, answer.state)
        if "already_sent" in outcomes:
            return CancelResult(delivery_id, "already_sent", detail or "sent by the provider")
        if "too_late" in outcomes:
            return CancelResult(delivery_id, "too_late_at_provider", detail)
        return CancelResult(delivery_id, "provider_error", detail or ",".join(sorted(outcomes)))
    finally:
        rt.run_locks.unlock(delivery_id, token)


def _cancelled_result(record: DeliveryRecord, *, at_provider: bool = False) -> DeliveryResult:
    where = "at the provider" if at_provider else "before it was sent"
    stored: dict[str, Any] = record.result or {}
    return DeliveryResult(
        status="cancelled",
        delivery_id=record.delivery_id,
        channel=record.channel,
        provider=None if record.provider in ("", "auto") else record.provider,
        provider_message_ids=stored.get("provider_message_ids", {}) if at_provider else {},
        attempts=record.attempts,
        error=ErrorInfo(kind="cancelled", message=f"cancelled by request {where}"),
    )


def _store(app: Celery, delivery_id: str, result: DeliveryResult) -> None:
    """The Celery result reads the cancel at once (the task may never run again)."""
    store_task_state(app, delivery_id, result, states.SUCCESS)
