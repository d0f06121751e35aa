"""Scheduled sends and cancellation, in one process: the ``send_at`` rules, the pipeline's hold
step (held by us, or handed to the provider), the mover, the sweeper and ``cancel``.

Providers are an ``httpx.MockTransport`` speaking the Partner envelope
(docs/providers/smspartner.md §1.2.2, §1.2.6, docs/providers/mailpartner.md §2.2) and Voice
Partner's answers (docs/providers/voicepartner.md §3.2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import httpx
import pytest

from worker.config import Settings
from worker.delivery import Done, process
from worker.models import InvalidMessage, SmsMessage
from worker.ops.operations import Operations
from worker.providers.mailpartner import MailPartnerDriver
from worker.providers.smspartner import SmsPartnerDriver
from worker.providers.voicepartner import VoicePartnerDriver
from worker.runtime import Runtime
from worker.scheduling import SEND_AT_HORIZON_S, check_send_at
from worker.scheduling.cancel import cancel_delivery
from worker.scheduling.mover import move_due
from worker.scheduling.quiet import quiet_due

from .driver_support import mock_client

PARIS = timezone(timedelta(hours=1))  # 27 Nov: Paris is UTC+1 (no DST in winter)
OK = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.04}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def sms(send_at: str | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"provider": "smspartner", "to": ["+33612345678"], "text": "Hi"}
    if send_at is not None:
        message["send_at"] = send_at
    return {**message, **extra}


# -- the field -----------------------------------------------------------------------------------


def test_send_at_must_be_aware_and_not_after_the_deadline() -> None:
    with pytest.raises(Exception) as naive:
        SmsMessage.model_validate(sms("2030-01-01T09:00:00"))
    assert "timezone offset" in str(naive.value)
    model = SmsMessage.model_validate(sms("2030-01-01T09:00:00+01:00"))
    assert model.send_at == datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
    from worker.providers import parse_message

    with pytest.raises(InvalidMessage) as late:
        parse_message("sms", sms("2030-01-02T00:00:00Z", deadline="2030-01-01T00:00:00Z"))
    assert late.value.errors == [{"field": "send_at", "message": "must not be after deadline"}]


def test_send_at_tolerance_and_horizon_name_the_field() -> None:
    now = 1_800_000_000.0
    check_send_at(datetime.fromtimestamp(now - 30, UTC), now)  # within the tolerance
    check_send_at(datetime.fromtimestamp(now + SEND_AT_HORIZON_S, UTC), now)
    for bad, words in ((now - 3600, "in the past"), (now + SEND_AT_HORIZON_S + 1, "horizon")):
        with pytest.raises(InvalidMessage) as exc:
            check_send_at(datetime.fromtimestamp(bad, UTC), now)
        assert exc.value.errors[0]["field"] == "send_at" and words in exc.value.errors[0]["message"]


# -- provider formats (docs/providers/smspartner.md §1.2.2, docs/providers/mailpartner.md §2.2,
# docs/providers/voicepartner.md §3.2) -------------------------------------------------------------


def test_partner_schedule_fields_are_paris_time_in_5_minute_steps() -> None:
    when = datetime(2030, 1, 15, 8, 35, tzinfo=UTC)  # 09:35 in Paris (UTC+1 in January)
    assert SmsPartnerDriver.native_schedule_fits(when)
    assert MailPartnerDriver.native_schedule_fits(when)
    driver = SmsPartnerDriver(mock_client(lambda r: httpx.Response(200)), api_key="k")
    assert driver.schedule_fields(when) == {
        "scheduledDeliveryDate": "15/01/2030",
        "time": 9,
        "minute": 35,
    }
    summer = datetime(2030, 7, 15, 7, 0, tzinfo=UTC)  # 09:00 in Paris (UTC+2)
    assert driver.schedule_fields(summer)["time"] == 9
    for off in (when + timedelta(minutes=2), when + timedelta(seconds=1)):
        assert not SmsPartnerDriver.native_schedule_fits(off)
    # 02:30 on 27 Oct 2030 happens twice in Paris: ambiguous on the wire, held by the worker.
    ambiguous = datetime(2030, 10, 27, 0, 30, tzinfo=UTC)
    assert not SmsPartnerDriver.native_schedule_fits(ambiguous)


def test_voice_partner_scheduled_date_is_whole_minutes_paris_time() -> None:
    when = datetime(2030, 1, 15, 8, 7, tzinfo=UTC)
    assert VoicePartnerDriver.native_schedule_fits(when)
    assert not VoicePartnerDriver.native_schedule_fits(when + timedelta(seconds=30))
    driver = VoicePartnerDriver(mock_client(lambda r: httpx.Response(200)), api_key="k")
    assert driver.schedule_fields(when) == {"scheduledDate": "2030-01-15 09:07:00"}


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ({"success": True, "code": 200, "message": "L'envoi du SMS a été annulé."}, "cancelled"),
        ({"success": False, "code": 5, "message": "Déjà annulé"}, "cancelled"),
        ({"success": False, "code": 6, "message": "moins de 5 minutes"}, "too_late"),
        ({"success": False, "code": 7, "message": "Déjà envoyé"}, "already_sent"),
        ({"success": False, "code": 4, "message": "introuvable"}, "not_found"),
        ({"success": False, "code": 10, "message": "Clé API incorrecte"}, "error"),
    ],
)
def test_partner_message_cancel_answers(body: dict[str, Any], outcome: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=body)

    driver = SmsPartnerDriver(mock_client(handler), api_key="secret-k")
    assert driver.cancel_scheduled("2270142").outcome == outcome
    (request,) = seen
    assert request.method == "GET" and request.url.path.endswith("/message-cancel")
    assert parse_qs(request.url.query.decode()) == {
        "apiKey": ["secret-k"],
        "messageId": ["2270142"],
    }


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, {"success": True, "campaignId": "D572M", "assignedCredit": "1.8"}, "cancelled"),
        (400, {"success": False, "error": "CAMPAIGN_NOT_CANCELLABLE"}, "too_late"),
        (404, {"success": False, "error": "CAMPAIGN_NOT_FOUND"}, "not_found"),
        (401, {"success": False, "error": "INVALID_API_KEY"}, "error"),
        (200, {"garbage": True}, "error"),
    ],
)
def test_voice_partner_campaign_cancel_answers(
    status: int, body: dict[str, Any], outcome: str
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    driver = VoicePartnerDriver(mock_client(handler), api_key="k/1")
    assert driver.cancel_scheduled("D572M").outcome == outcome
    assert seen[0].method == "DELETE"
    assert seen[0].url.raw_path.decode().endswith("/campaign/cancel/k%2F1/D572M")


# -- the pipeline ---------------------------------------------------------------------------------


class Provider:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/message-cancel"):
            return httpx.Response(200, json={"success": True, "code": 200, "message": "ok"})
        return httpx.Response(200, json=OK)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def rt(provider: Provider) -> Iterator[Runtime]:
    settings = Settings(
        smspartner_api_key="sms-secret-key", smspartner_base_url="http://p.test/sms/v1"
    )
    runtime = Runtime.in_memory(settings, client=mock_client(provider.handler))
    yield runtime
    runtime.close()


class Published:
    """A Celery app stand-in recording what the mover publishes, with a result backend."""

    conf = SimpleNamespace(task_default_queue="delivery")

    def __init__(self) -> None:
        self.tasks: list[tuple[str, Any, dict[str, Any]]] = []
        self.stored: dict[str, Any] = {}
        self.backend = self

    def send_task(self, name: str, args: Any = None, **options: Any) -> None:
        self.tasks.append((name, args, options))

    # store_task_state's view of Celery's Redis backend
    expires = 60
    client = property(lambda self: self)

    def get_key_for_task(self, task_id: str) -> str:
        return task_id

    def encode(self, meta: Any) -> Any:
        return meta

    def pipeline(self) -> Published:
        return self

    def set(self, key: str, value: Any, ex: int | None = None) -> None:
        self.stored[key] = value

    def publish(self, key: str, value: Any) -> None:
        pass

    def execute(self) -> None:
        pass


def run(rt: Runtime, message: dict[str, Any], delivery_id: str = "d1") -> Any:
    return process("sms", message, delivery_id=delivery_id, task_name="tasks.send_sms", rt=rt)


def test_a_message_ahead_is_held_then_published_by_the_mover_when_due(
    rt: Runtime, provider: Provider
) -> None:
    due = time.time() + 0.3
    outcome = run(rt, sms(iso(due)))
    assert isinstance(outcome, Done) and outcome.result.status == "scheduled"
    assert provider.requests == []  # nothing left before its time
    record = rt.ledger.get("d1")
    assert record is not None and record.state == "scheduled"
    app = Published()
    assert move_due(app, rt.ledger) == 0  # not due yet  # type: ignore[arg-type]
    time.sleep(max(0.0, due - time.time()))
    assert move_due(app, rt.ledger) == 1  # type: ignore[arg-type]
    ((name, args, options),) = app.tasks
    assert (name, options["task_id"]) == ("tasks.send_sms", "d1")
    # The mover's copy runs and sends (the task's message comes from the ledger record).
    final = run(rt, args[0])
    assert isinstance(final, Done) and final.result.status == "sent"
    assert len(provider.bodies()) == 1 and "scheduledDeliveryDate" not in provider.bodies()[0]


def test_a_lease_that_ends_republishes_only_when_the_queue_is_empty(rt: Runtime) -> None:
    """A due message whose run has not started when its lease ends is published again only
    if its queue is empty (lost, or its worker died); behind a backlog it just waits."""
    run(rt, sms(iso(time.time() + 0.05)))
    time.sleep(0.1)
    app, waiting = Published(), {"delivery": 5}
    now = time.time()
    assert move_due(app, rt.ledger, now, lease_s=1.0, backlog=waiting.get) == 1  # type: ignore[arg-type]
    assert len(app.tasks) == 1
    assert move_due(app, rt.ledger, now + 1.5, lease_s=1.0, backlog=waiting.get) == 1  # type: ignore[arg-type]
    assert len(app.tasks) == 1  # lease over, but 5 messages wait in its queue: no copy
    waiting["delivery"] = 0
    assert move_due(app, rt.ledger, now + 3.0, lease_s=1.0, backlog=waiting.get) == 1  # type: ignore[arg-type]
    assert len(app.tasks) == 2  # queue empty and still not started: published again


def test_a_time_the_provider_expresses_is_handed_over_and_sent_at_its_time(
    rt: Runtime, provider: Provider
) -> None:
    mark = datetime.now(UTC) + timedelta(minutes=20)
    mark = mark.replace(second=0, microsecond=0) - timedelta(minutes=mark.minute % 5)
    outcome = run(rt, sms(mark.isoformat()))
    assert isinstance(outcome, Done) and outcome.result.status == "scheduled"
    (body,) = provider.bodies()
    local = mark.astimezone(PARIS)
    assert (body["scheduledDeliveryDate"], body["time"], body["minute"]) == (
        local.strftime("%d/%m/%Y"),
        local.hour,
        local.minute,
    )
    record = rt.ledger.get("d1")
    assert record is not None and record.fields["provider_scheduled"] == "1"
    assert outcome.result.provider_message_ids == {"+3361*****78": "307"}
    # Its time has come (the mover's copy runs): sent, with no second request.
    rt.ledger.set_fields("d1", scheduled_for=repr(time.time() - 1))
    # Its deadline passing with its time (send_at == deadline) does not expire it: the
    # provider accepted it while the deadline was ahead.
    past = iso(time.time() - 1)
    assert run(rt, sms(past, deadline=past)).result.status == "sent"
    assert len(provider.bodies()) == 1


def test_cancel_a_held_message_then_every_copy_answers_cancelled(
    rt: Runtime, provider: Provider
) -> None:
    message = sms(iso(time.time() + 60))
    run(rt, message)
    app = Published()
    answer = cancel_delivery(rt, app, "d1")  # type: ignore[arg-type]
    assert answer.answer == "cancelled" and answer.cancelled
    assert app.stored["d1"]["status"] == "SUCCESS"
    assert app.stored["d1"]["result"]["status"] == "cancelled"
    # A copy already queued, a redelivery after a crash, the sweeper: none sends.
    copy = run(rt, sms(iso(time.time() - 1)))
    assert copy.result.status == "cancelled"
    ops = Operations.for_runtime(rt, app)  # type: ignore[arg-type]
    assert ops.sweep()["requeued"] == 0
    assert provider.requests == []
    assert cancel_delivery(rt, app, "d1").answer == "already_final"  # type: ignore[arg-type]


def test_cancel_a_natively_scheduled_message_at_the_provider(
    rt: Runtime, provider: Provider
) -> None:
    mark = datetime.now(UTC) + timedelta(minutes=20)
    mark = mark.replace(second=0, microsecond=0) - timedelta(minutes=mark.minute % 5)
    run(rt, sms(mark.isoformat()))
    app = Published()
    answer = cancel_delivery(rt, app, "d1")  # type: ignore[arg-type]
    assert answer.answer == "cancelled_at_provider"
    cancel = provider.requests[-1]
    assert cancel.url.path.endswith("/message-cancel")
    assert parse_qs(cancel.url.query.decode())["messageId"] == ["307"]
    record = rt.ledger.get("d1")
    assert record is not None and record.state == "cancelled"
    assert app.stored["d1"]["result"]["provider_message_ids"] == {"+3361*****78": "307"}


def test_cancel_after_the_send_is_refused(rt: Runtime, provider: Provider) -> None:
    assert run(rt, sms()).result.status == "sent"
    answer = cancel_delivery(rt, Published(), "d1")  # type: ignore[arg-type]
    assert (answer.answer, answer.cancelled) == ("already_sent", False)
    assert cancel_delivery(rt, Published(), "nope").answer == "unknown"  # type: ignore[arg-type]


def test_a_cancel_between_the_read_and_the_gate_stops_the_send(
    rt: Runtime, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel lands after the run read the record, before the request leaves: the gate's
    move to ``sending`` fails (final) and nothing is sent."""
    from worker.delivery import pipeline

    real = pipeline.send_context

    def cancel_then_context(*args: Any, **kwargs: Any) -> Any:
        assert cancel_delivery(rt, Published(), "d1").answer == "cancelled"  # type: ignore[arg-type]
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "send_context", cancel_then_context)
    outcome = run(rt, sms())
    assert outcome.result.status == "cancelled"
    assert provider.requests == []


def test_a_message_sent_by_name_with_a_send_at_far_in_the_past_fails_in_the_worker(
    rt: Runtime, provider: Provider
) -> None:
    outcome = run(rt, sms(iso(time.time() - 7200)))
    assert outcome.result.status == "failed"
    assert outcome.result.error is not None and "send_at" in outcome.result.error.message
    assert provider.requests == []


def test_the_default_deadline_counts_from_send_at(rt: Runtime, provider: Provider) -> None:
    ahead = time.time() + 2 * 86400
    run(rt, sms(iso(ahead)))
    record = rt.ledger.get("d1")
    assert record is not None and record.state == "scheduled"  # not expired after one day


# -- quiet hours -----------------------------------------------------------------------------------

SMS_WINDOW = '{"sms": {"window": "08:00-20:00", "tz": "recipient", "closed_days": ["sun"]}}'


def paris(*args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo("Europe/Paris")).timestamp()  # type: ignore[misc]


def test_quiet_hours_move_a_message_to_the_next_opening() -> None:
    message = SmsMessage.model_validate(sms())
    # Friday 29 Nov 2030, 21:10 Paris: Saturday 08:00. Saturday 21:00: Monday 08:00 (Sunday shut).
    assert quiet_due(SMS_WINDOW, message, paris(2030, 11, 29, 21, 10)) == paris(2030, 11, 30, 8)
    assert quiet_due(SMS_WINDOW, message, paris(2030, 11, 30, 21, 0)) == paris(2030, 12, 2, 8)
    assert quiet_due(SMS_WINDOW, message, paris(2030, 11, 29, 6, 0)) == paris(2030, 11, 29, 8)
    assert quiet_due(SMS_WINDOW, message, paris(2030, 11, 29, 12, 0)) is None  # open
    assert quiet_due("", message, paris(2030, 11, 29, 23, 0)) is None  # no quiet hours


def test_quiet_hours_in_the_recipients_zones_wait_for_every_one() -> None:
    both = SmsMessage.model_validate(sms(to=["+33612345678", "+12025550123"]))
    # 07:00 in New York is 13:00 in Paris: the window opens at 08:00 New York time.
    ny = datetime(2030, 11, 29, 7, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()
    opens = datetime(2030, 11, 29, 8, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()
    assert quiet_due(SMS_WINDOW, both, ny) == opens


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("not json", "not JSON"),
        ('{"fax": {"window": "08:00-20:00"}}', "not email, sms or voice"),
        ('{"sms": {"window": "20:00-08:00"}}', "opens after it closes"),
        ('{"sms": {"window": "8h-20h"}}', "HH:MM-HH:MM"),
        ('{"sms": {"window": "08:00-20:00", "tz": "Mars/Olympus"}}', "unknown time zone"),
        ('{"sms": {"window": "08:00-20:00", "closed_days": ["sunday"]}}', "mon … sun"),
    ],
)
def test_bad_quiet_hours_stop_the_worker_at_start(raw: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Settings(quiet_hours=raw)


def test_quiet_hours_hold_in_the_pipeline_or_expire_past_the_deadline(provider: Provider) -> None:
    today = datetime.now(UTC).weekday()
    open_day = (today + 2) % 7
    closed = [
        d for i, d in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun")) if i != open_day
    ]
    raw = json.dumps({"sms": {"window": "00:00-23:59", "tz": "UTC", "closed_days": closed}})
    settings = Settings(
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://p.test/sms/v1",
        quiet_hours=raw,
    )
    runtime = Runtime.in_memory(settings, client=mock_client(provider.handler))
    try:
        # The opening is two days away: past the default deadline (a day after enqueue), so
        # this message carries its own.
        held = run(runtime, sms(deadline=iso(time.time() + 3 * 86400)))
        assert held.result.status == "scheduled"
        expected = datetime.combine(
            datetime.now(UTC).date() + timedelta(days=2), datetime.min.time(), tzinfo=UTC
        )
        assert runtime.ledger.next_due() == expected.timestamp()
        # The opening is a time SMS Partner expresses, far enough ahead: handed over at once.
        (body,) = provider.bodies()
        local = expected.astimezone(ZoneInfo("Europe/Paris"))
        assert (body["scheduledDeliveryDate"], body["time"], body["minute"]) == (
            local.strftime("%d/%m/%Y"),
            local.hour,
            0,
        )
        expired = run(runtime, sms(), delivery_id="d2")  # default deadline: a day
        assert expired.result.status == "expired" and len(provider.requests) == 1
    finally:
        runtime.close()
