"""The batch pipeline with scheduling, cancel, tracking and metrics (``worker.delivery.batch``),
on the in-memory stores with SMS Partner's documented answers over ``httpx.MockTransport``.

- a provider-native schedule (docs/providers/smspartner.md §1.2.2 fields) never leaves in a batch
  request that drops it;
- a cancelled message in the batch buffer is not sent;
- a batched message is registered for tracking on sent with its own number's message id, and
  its request carries no per-delivery ``urlDlr`` (tracked by polling);
- one batch request is one provider request in the metrics.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from worker.delivery import Done
from worker.delivery.batch import BatchEntry, process_batch
from worker.metrics import record as metrics
from worker.models import DeliveryResult

from .test_batch_pipeline import NUMBERS, bulk_answer, entries, make_runtime

__all__ = ["make_runtime"]  # the fixture, shared with test_batch_pipeline


def _mark(minutes_ahead: int) -> datetime:
    """A whole 5-minute mark ahead (SMS Partner's schedule fields express only those)."""
    t = datetime.now(UTC) + timedelta(minutes=minutes_ahead)
    t = t.replace(second=0, microsecond=0)
    return t + timedelta(minutes=(5 - t.minute % 5) % 5)


def _send_answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    numbers = body["phoneNumbers"].split(",")
    return httpx.Response(
        200,
        json={"success": True, "code": 200, "message_id": 7, "nb_sms": len(numbers),
              "cost": 0.038 * len(numbers), "currency": "EUR"},
    )  # fmt: skip


def _answer(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/bulk-send"):
        return bulk_answer(request)
    return _send_answer(request)


def test_a_natively_scheduled_sms_goes_alone_with_its_schedule_fields(make_runtime: Any) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({"path": request.url.path, **json.loads(request.content)})
        return _answer(request)

    rt = make_runtime(handler)
    when = _mark(30)
    scheduled = {"send_at": when.isoformat(), "deadline": (when + timedelta(hours=2)).isoformat()}
    batch = [
        BatchEntry("sms", {"provider": "smspartner", "to": [n], "text": "Rdv", **scheduled},
                   f"s-{i}", "tasks.send_sms")
        for i, n in enumerate(NUMBERS[:2])
    ] + entries(["Rdv"], NUMBERS[2:])  # fmt: skip
    outcomes = process_batch(batch, rt)
    states = [o.result.status for o in outcomes if isinstance(o, Done)]
    assert states == ["scheduled", "scheduled", "sent"]
    with_schedule = [r for r in seen if "scheduledDeliveryDate" in r]
    # One request per scheduled message, each with its number only and the
    # docs/providers/smspartner.md §1.2.2 fields.
    assert sorted(r["phoneNumbers"] for r in with_schedule) == NUMBERS[:2]
    assert all(r["path"].endswith("/send") and r["minute"] == when.minute for r in with_schedule)
    # The unscheduled one did not carry anyone's schedule, nor a scheduled number.
    rest = [r for r in seen if "scheduledDeliveryDate" not in r]
    assert len(rest) == 1 and json.dumps(rest[0]).count("+336") == 1
    for i in range(2):
        record = rt.ledger.get(f"s-{i}")
        assert record is not None and record.state == "scheduled"
        assert record.fields["provider_scheduled"] == "1"


def test_a_cancelled_message_in_the_buffer_is_not_sent(make_runtime: Any) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return _answer(request)

    rt = make_runtime(handler)
    batch = entries()
    for entry in batch:
        rt.ledger.create(entry.delivery_id, channel="sms", provider="smspartner")
    result = DeliveryResult(status="cancelled", delivery_id="d-1", channel="sms")
    assert rt.ledger.cancel("d-1", result=result.model_dump_json()).outcome == "cancelled"
    outcomes = process_batch(batch, rt)
    assert len(seen) == 1
    assert NUMBERS[1] not in json.dumps(seen[0])
    assert {e["phoneNumber"] for e in seen[0]["SMSList"]} == {NUMBERS[0], NUMBERS[2]}
    assert [o.result.status for o in outcomes if isinstance(o, Done)] == [
        "sent",
        "cancelled",
        "sent",
    ]
    record = rt.ledger.get("d-1")
    assert record is not None and record.state == "cancelled"


def test_batched_messages_are_tracked_with_their_own_ids_and_no_dlr_url(
    make_runtime: Any,
) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return _answer(request)

    rt = make_runtime(handler)
    rt.settings = rt.settings.model_copy(
        update={"tracking_public_url": "https://hooks.example.org",
                "tracking_secret": SecretStr("t" * 40)}
    )  # fmt: skip
    ids = [str(uuid.uuid4()) for _ in NUMBERS]
    batch = [
        BatchEntry("sms", {"provider": "smspartner", "to": [n], "text": "Same"}, i,
                   "tasks.send_sms")
        for i, n in zip(ids, NUMBERS, strict=True)
    ]  # fmt: skip
    alone = str(uuid.uuid4())  # a caller's tag: the single path, with its own urlDlr
    batch.append(
        BatchEntry("sms", {"provider": "smspartner", "to": ["+33612000007"], "text": "x",
                           "tag": "mine"}, alone, "tasks.send_sms")
    )  # fmt: skip
    outcomes = process_batch(batch, rt)
    assert all(isinstance(o, Done) and o.result.status == "sent" for o in outcomes)
    batched = [r for r in seen if r["phoneNumbers"] == ",".join(NUMBERS)]
    single = [r for r in seen if r["phoneNumbers"] == "+33612000007"]
    assert len(batched) == 1 and len(single) == 1
    assert f"/hooks/smspartner/{alone}/" in single[0]["urlDlr"]
    # One URL cannot name three deliveries: none is sent; polling tracks them.
    assert "urlDlr" not in batched[0]
    for delivery_id in [*ids, alone]:
        status = rt.tracking.status(delivery_id)
        assert status is not None, "not registered for tracking"
        (only,) = status.recipients.values()
        assert only.provider_message_id == "7"  # the request's message_id for this number
        assert status.polling  # tracked by the status poller


def _requests(kind: str) -> float:
    labels = {"provider": "smspartner", "channel": "sms", "status": "2xx", "kind": kind}
    for family in metrics.PROVIDER_REQUESTS.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels == labels:
                return float(s.value)
    return 0.0


SMS_LABELS = {"provider": "smspartner", "channel": "sms"}


def _accepted_count() -> float:
    for family in metrics.ENQUEUE_TO_ACCEPT_SECONDS.collect():
        for s in family.samples:
            if s.name.endswith("_count") and s.labels == SMS_LABELS:
                return float(s.value)
    return 0.0


def test_a_batch_request_is_one_provider_request_in_the_metrics(make_runtime: Any) -> None:
    rt = make_runtime(_answer)
    before, accepted_before = _requests("accepted"), _accepted_count()
    outcomes = process_batch(entries(), rt)
    assert all(isinstance(o, Done) and o.result.status == "sent" for o in outcomes)
    assert _requests("accepted") - before == 1
    assert _accepted_count() - accepted_before == 3


def test_a_batch_refused_as_a_whole_is_one_rejected_request_then_one_accepted(
    make_runtime: Any,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/send"):  # one STOP number refuses the whole /send
            return httpx.Response(200, json={"success": False, "code": 14, "message": "STOP"})
        return bulk_answer(request, {NUMBERS[2]: 14})

    rt = make_runtime(handler)
    rejected, accepted = _requests("recipient_rejected"), _requests("accepted")
    outcomes = process_batch(entries(["Same"] * 3), rt)
    assert [o.result.status for o in outcomes if isinstance(o, Done)] == ["sent", "sent", "failed"]
    assert _requests("recipient_rejected") - rejected == 1
    assert _requests("accepted") - accepted == 1
