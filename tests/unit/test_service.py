"""The delivery pipeline: one attempt and what comes next, on the in-memory stores.

The provider is an ``httpx.MockTransport`` speaking SMS Partner's documented envelope
(docs/providers/smspartner.md §1.2.2); the stores are the in-memory stubs (``worker.stores``), whose
contract suites (``tests/stores``) hold them to the Redis stores' behaviour, so these tests need no
redis-server. Several runtimes built in one test share one set of stores, as workers share
Redis. The service on the Redis stores is exercised end to end by ``tests/integration``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from structlog.testing import capture_logs

from worker.config import Settings
from worker.delivery import Done, Retry, backoff_s, mask_ids, process
from worker.delivery.spool import FinalWriteSpool
from worker.runtime import Runtime, breaker_config
from worker.stores import MemoryRateLimiter, Stores, limiter_key
from worker.stores.hotpath import Closing
from worker.stores.limiter import Limit, Reservation

Handler = Callable[[httpx.Request], httpx.Response]

SMS = {"provider": "smspartner", "to": ["+33612345678"], "text": "Hello"}
OK = {
    "success": True,
    "code": 200,
    "message_id": 307,
    "nb_sms": 1,
    "cost": 0.038,
    "currency": "EUR",
}


class Calls:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: list[httpx.Response] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.answers:
            return self.answers.pop(0)
        return httpx.Response(200, json=OK)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


@pytest.fixture
def calls() -> Calls:
    return Calls()


class SkipClock:
    """Real time, plus the seconds skipped: lets a provider's Retry-After elapse at once."""

    def __init__(self) -> None:
        self.skipped_s = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped_s

    def skip(self, seconds: float) -> None:
        self.skipped_s += seconds


@pytest.fixture
def limiter_clock() -> SkipClock:
    return SkipClock()


@pytest.fixture
def make_runtime(limiter_clock: SkipClock) -> Iterator[Callable[..., Runtime]]:
    made: list[Runtime] = []
    shared: list[Stores] = []

    def build(calls: Calls, **overrides: Any) -> Runtime:
        settings = Settings(
            smspartner_api_key="sms-secret-key",
            smspartner_base_url="http://provider.test/smspartner/v1",
            retry_backoff_base_s=0.5,
            retry_backoff_max_s=30,
            **overrides,
        )
        if not shared:
            # The first runtime's settings shape the stores every runtime of the test shares.
            stores = Stores.in_memory(breaker=breaker_config(settings))
            limiter = MemoryRateLimiter(
                limiter_clock, safety_margin_s=settings.limiter_safety_margin_s
            )
            shared.append(dataclasses.replace(stores, limiter=limiter))
        client = httpx.Client(transport=httpx.MockTransport(calls.handler))
        rt = Runtime(settings, client=client, stores=shared[0])
        made.append(rt)
        return rt

    yield build
    for rt in made:
        rt.close()


def run(rt: Runtime, message: dict[str, Any] = SMS, delivery_id: str = "d-1") -> Done | Retry:
    return process("sms", message, delivery_id=delivery_id, task_name="tasks.send_sms", rt=rt)


def test_sent_result_masks_recipients_and_records_ledger(calls: Calls, make_runtime: Any) -> None:
    rt = make_runtime(calls)
    outcome = run(rt)
    assert isinstance(outcome, Done)
    result = outcome.result
    assert result.status == "sent"
    assert result.provider_message_ids == {"+3361*****78": "307"}
    assert result.attempts == 1
    assert result.cost == pytest.approx(0.038)
    record = rt.ledger.get("d-1")
    assert record is not None and record.state == "sent"
    assert calls.paths() == ["/smspartner/v1/send"]
    body = json.loads(calls.requests[0].content)
    # A tag unique to the delivery, for reconciliation by tag (docs/providers/smspartner.md §1.5).
    assert body["tag"].startswith("dw") and len(body["tag"]) <= 20 and body["tag"].islower()
    assert rt.metrics.read("smspartner") == {"sent": 1}


def test_a_runtime_on_fresh_memory_stores_needs_no_redis(calls: Calls) -> None:
    settings = Settings(
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://provider.test/smspartner/v1",
    )
    client = httpx.Client(transport=httpx.MockTransport(calls.handler))
    rt = Runtime.in_memory(settings, client=client)
    try:
        assert rt.redis is None
        rt.ping()  # nothing to reach
        calls.answers.append(httpx.Response(200, json={"success": False, "code": 14}))
        outcome = run(rt)
        assert isinstance(outcome, Done) and outcome.result.status == "failed"
        assert rt.metrics.read("smspartner") == {"failed:recipient_rejected": 1}
        record = rt.ledger.get("d-1")
        assert record is not None and record.state == "failed"
    finally:
        rt.close()


def test_redelivery_of_a_sent_message_does_not_call_the_provider(
    calls: Calls, make_runtime: Any
) -> None:
    rt = make_runtime(calls)
    first = run(rt)
    again = run(rt)
    assert isinstance(first, Done) and isinstance(again, Done)
    assert again.result == first.result
    assert len(calls.requests) == 1


def test_transient_error_schedules_a_retry_and_counts_an_attempt(
    calls: Calls, make_runtime: Any
) -> None:
    rt = make_runtime(calls)
    calls.answers.append(httpx.Response(503, text="<html>unavailable</html>"))
    outcome = run(rt)
    assert isinstance(outcome, Retry)
    assert 0 <= outcome.delay_s <= 30
    assert outcome.reason == "transient"
    record = rt.ledger.get("d-1")
    assert record is not None
    assert (record.state, record.attempts, record.throttled) == ("waiting", 1, 0)
    # The next attempt succeeds and reports two attempts.
    done = run(rt)
    assert isinstance(done, Done) and done.result.status == "sent" and done.result.attempts == 2


def test_code_500_is_transient(calls: Calls, make_runtime: Any) -> None:
    rt = make_runtime(calls)
    calls.answers.append(httpx.Response(200, json={"success": False, "code": 500}))
    assert isinstance(run(rt), Retry)


def clear_holds(clock: SkipClock, retry_after_s: float) -> None:
    """As if the provider's Retry-After had elapsed."""
    clock.skip(retry_after_s)


def held_s(rt: Runtime, provider: str = "smspartner") -> float:
    """How long the shared limiter holds the provider's budget back (0.0: not held)."""
    key = limiter_key(provider, rt.settings.egress_identity)
    return rt.limiter.acquire(key, ())


def test_throttling_never_consumes_the_error_budget(
    calls: Calls, make_runtime: Any, limiter_clock: SkipClock
) -> None:
    rt = make_runtime(calls, max_retries=1)
    for _ in range(5):
        calls.answers.append(
            httpx.Response(429, json={"success": False, "code": 429}, headers={"Retry-After": "7"})
        )
    for _ in range(5):
        outcome = run(rt)
        assert isinstance(outcome, Retry)
        assert outcome.reason == "throttled"
        assert outcome.delay_s == pytest.approx(7)
        assert held_s(rt) > 6  # every worker sharing the budget holds back
        clear_holds(limiter_clock, 7)
    record = rt.ledger.get("d-1")
    assert record is not None
    assert (record.attempts, record.throttled) == (0, 5)
    done = run(rt)
    assert isinstance(done, Done) and done.result.status == "sent"


def test_a_provider_429_holds_back_every_worker_sharing_the_budget(
    calls: Calls, make_runtime: Any
) -> None:
    first, second = make_runtime(calls), make_runtime(calls)
    calls.answers.append(
        httpx.Response(429, json={"success": False, "code": 429}, headers={"Retry-After": "7"})
    )
    assert isinstance(run(first, delivery_id="a"), Retry)
    held = run(second, delivery_id="b")
    assert isinstance(held, Retry)
    assert held.reason == "rate_limited"
    assert 6 < held.delay_s <= 7
    assert len(calls.requests) == 1  # the second worker never reached the provider


def test_retries_exhausted_fails_with_the_last_error(calls: Calls, make_runtime: Any) -> None:
    rt = make_runtime(calls, max_retries=2)
    for _ in range(3):
        calls.answers.append(httpx.Response(200, json={"success": False, "code": 500}))
    assert isinstance(run(rt), Retry)
    assert isinstance(run(rt), Retry)
    outcome = run(rt)
    assert isinstance(outcome, Done)
    assert outcome.result.status == "failed"
    assert outcome.result.attempts == 3
    assert outcome.result.error is not None
    assert (outcome.result.error.kind, outcome.result.error.code) == ("transient", "500")


def test_permanent_error_fails_at_once(calls: Calls, make_runtime: Any) -> None:
    rt = make_runtime(calls)
    calls.answers.append(httpx.Response(200, json={"success": False, "code": 14}))
    outcome = run(rt)
    assert isinstance(outcome, Done)
    assert outcome.result.status == "failed"
    assert outcome.result.error is not None
    assert outcome.result.error.kind == "recipient_rejected"
    assert len(calls.requests) == 1


def test_passed_deadline_expires_without_calling_the_provider(
    calls: Calls, make_runtime: Any
) -> None:
    rt = make_runtime(calls)
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    outcome = run(rt, {**SMS, "deadline": past})
    assert isinstance(outcome, Done)
    assert outcome.result.status == "expired"
    assert calls.requests == []


def test_retry_is_never_scheduled_past_the_deadline(calls: Calls, make_runtime: Any) -> None:
    rt = make_runtime(calls)
    soon = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    calls.answers.append(
        httpx.Response(429, json={"success": False, "code": 429}, headers={"Retry-After": "600"})
    )
    outcome = run(rt, {**SMS, "deadline": soon})
    assert isinstance(outcome, Retry)
    assert outcome.delay_s <= 3


def test_interrupted_attempt_is_reconciled_by_tag_before_resending(
    calls: Calls, make_runtime: Any
) -> None:
    rt = make_runtime(calls)
    rt.ledger.create("d-1", channel="sms", provider="smspartner")
    rt.ledger.transition("d-1", "sending")  # a worker died mid-send
    calls.answers.append(
        httpx.Response(
            200,
            json={
                "success": True,
                "code": 200,
                "message_id": "555",
                "StatutResponse_List": [{"phoneNumber": "+33612345678", "status": "Delivered"}],
            },
        )
    )
    outcome = run(rt)
    assert isinstance(outcome, Done) and outcome.result.status == "sent"
    assert calls.paths() == ["/smspartner/v1/bulk-status-by-tag"]
    assert calls.requests[0].url.params["tag"].startswith("dw")


def test_interrupted_attempt_resends_when_the_provider_saw_nothing(
    calls: Calls, make_runtime: Any
) -> None:
    rt = make_runtime(calls)
    rt.ledger.create("d-1", channel="sms", provider="smspartner")
    rt.ledger.transition("d-1", "sending")
    calls.answers.append(
        httpx.Response(200, json={"success": True, "code": 200, "StatutResponse_List": []})
    )
    outcome = run(rt)
    assert isinstance(outcome, Done) and outcome.result.status == "sent"
    assert calls.paths() == ["/smspartner/v1/bulk-status-by-tag", "/smspartner/v1/send"]


def test_invalid_message_fails_naming_the_field(calls: Calls, make_runtime: Any) -> None:
    rt = make_runtime(calls)
    outcome = run(rt, {"provider": "smspartner", "to": ["0612"], "text": "x"})
    assert isinstance(outcome, Done)
    assert outcome.result.status == "failed"
    assert outcome.result.error is not None
    assert outcome.result.error.kind == "invalid_message"
    assert "to.0" in outcome.result.error.message
    assert calls.requests == []


def test_unconfigured_provider_is_a_configuration_failure(calls: Calls, make_runtime: Any) -> None:
    rt = make_runtime(calls)
    message = {"provider": "voicepartner", "mode": "tts", "to": ["+33612345678"], "text": "hi"}
    outcome = process("voice", message, delivery_id="v-1", task_name="tasks.send_voice", rt=rt)
    assert isinstance(outcome, Done)
    assert outcome.result.error is not None
    assert outcome.result.error.kind == "configuration"


def test_backoff_grows_and_is_capped() -> None:
    samples = [max(backoff_s(n, base_s=1, cap_s=50) for _ in range(200)) for n in (1, 3, 8)]
    assert samples[0] <= 2.0
    assert samples[1] > samples[0]
    assert samples[2] <= 50


def test_mask_ids_keeps_colliding_recipients_apart() -> None:
    masked = mask_ids({"john@example.com": "1", "jane@example.com": "2"})
    assert masked == {"j***@example.com": "1", "j***@example.com#2": "2"}


def test_fields_the_provider_does_not_receive_are_reported(calls: Calls, make_runtime: Any) -> None:
    # The rule: a field reaches the provider, is reported in the result, or is refused.
    # Mail Partner has no sender field (docs/providers/mailpartner.md §2.2 [NOT FOUND]): reported,
    # not dropped.
    rt = make_runtime(
        calls,
        mailpartner_api_key="mail-secret-key",
        mailpartner_base_url="http://provider.test/mailpartner/v1",
    )
    calls.answers.append(
        httpx.Response(200, json={"success": True, "code": 200, "messageId": "m1", "cost": 1})
    )
    message = {
        "provider": "mailpartner",
        "to": [{"email": "ann@example.com"}],
        "from": {"email": "shop@example.org"},
        "subject": "Hi",
        "html": "<p>hi</p>",
    }
    with capture_logs() as logs:
        outcome = process("email", message, delivery_id="d-w", task_name="tasks.send_email", rt=rt)
    assert isinstance(outcome, Done) and outcome.result.status == "sent"
    [warning] = outcome.result.warnings
    assert warning.startswith("from: not sent;") and "shop@example.org" not in warning
    record = rt.ledger.get("d-w")
    assert record is not None
    assert json.loads(record.fields["result"])["warnings"] == [warning]
    events = [e for e in logs if e["event"] == "delivery.fields_not_sent"]
    assert [e["fields"] for e in events] == [["from"]]


# -- EmailMassivo: recipient deferred, cc/bcc results, a lost answer
# (docs/providers/emailmassivo.md §5.4) ------------------------------------------------------------

EM_MAIL = {
    "provider": "emailmassivo",
    "to": [{"email": "ada@example.com"}],
    "from": {"email": "shop@example.org"},
    "subject": "Hi",
    "text": "Hello",
}
EM_UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def em_runtime(make_runtime: Any, calls: Calls, **overrides: Any) -> Runtime:
    rt: Runtime = make_runtime(
        calls,
        emailmassivo_api_key="em-secret-key",
        emailmassivo_base_url="http://provider.test/emailmassivo",
        **overrides,
    )
    return rt


def em_run(rt: Runtime, message: dict[str, Any] = EM_MAIL) -> Done | Retry:
    return process("email", message, delivery_id="e-1", task_name="tasks.send_email", rt=rt)


def test_recipient_unavailable_is_retried_without_feeding_the_breaker(
    calls: Calls, make_runtime: Any
) -> None:
    # Seed 003: 422 "Email receiver unavailable" = "temporarily unavailable": retry, bounded by
    # the error budget, and the provider is up (the breaker must not open).
    rt = em_runtime(make_runtime, calls, max_retries=2, breaker_failure_threshold=1)
    unavailable = {"message": "Email receiver unavailable", "statusCode": 422}
    calls.answers += [httpx.Response(422, json=unavailable) for _ in range(3)]
    first = em_run(rt)
    assert isinstance(first, Retry) and first.reason == "recipient_deferred"
    assert rt.health.state("emailmassivo").state == "closed"
    assert rt.health.state("emailmassivo").failures == 0
    assert isinstance(em_run(rt), Retry)
    last = em_run(rt)
    assert isinstance(last, Done) and last.result.status == "failed"
    assert last.result.error is not None and last.result.error.kind == "recipient_deferred"
    assert rt.health.state("emailmassivo").state == "closed"
    # A provider fault with the same threshold does open it.
    calls.answers.append(httpx.Response(503, json={"message": "x", "statusCode": 503}))
    other = process("email", EM_MAIL, delivery_id="e-2", task_name="tasks.send_email", rt=rt)
    assert isinstance(other, Retry)
    assert rt.health.state("emailmassivo").state == "open"


def test_cc_and_bcc_results_reach_the_result_masked(calls: Calls, make_runtime: Any) -> None:
    rt = em_runtime(make_runtime, calls)
    items = [{"uuid": "cc-uuid"}, {"error": "Invalid email address bob@example.net"}]
    calls.answers.append(httpx.Response(200, json={"uuid": EM_UUID, "additionalRecipients": items}))
    message = {**EM_MAIL, "cc": [{"email": "carl@example.com"}], "bcc": [{"email": "bob@x.io"}]}
    outcome = em_run(rt, message)
    assert isinstance(outcome, Done) and outcome.result.status == "sent"
    assert outcome.result.provider_message_ids == {
        "a***@example.com": EM_UUID,
        "c***@example.com": "cc-uuid",
    }
    assert outcome.result.rejected_recipients == {
        "b***@x.io": "refused by emailmassivo: Invalid email address b***@example.net"
    }
    assert "bob@" not in outcome.result.model_dump_json()


class DropFirst(Calls):
    """The first send reaches the provider and its answer is lost (the connection drops)."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"uuid": EM_UUID})


def test_lost_answer_then_200_with_the_first_uuid_is_sent_once(make_runtime: Any) -> None:
    # The provider accepted, the answer was lost; the resend with the same key is answered 200
    # with the first uuid (seed 003, docs/providers/emailmassivo.md §5.5): sent, not an unknown
    # outcome until retries run out.
    calls = DropFirst()
    rt = em_runtime(make_runtime, calls, max_retries=2)
    first = em_run(rt)
    assert isinstance(first, Retry) and first.reason == "unknown_outcome"
    again = em_run(rt)
    assert isinstance(again, Done) and again.result.status == "sent"
    assert again.result.provider_message_ids == {"a***@example.com": EM_UUID}
    keys = {json.loads(r.content)["idempotencyKey"] for r in calls.requests}
    assert len(calls.requests) == 2 and len(keys) == 1


# -- marketing window: only this message waits (docs/providers/smspartner.md §1.2.2, §1.3 codes
# 22/23) -------------------------------------------------------------------------------------------


def refuse(code: int) -> httpx.Response:
    return httpx.Response(200, json={"success": False, "code": code, "message": "hors plage"})


def test_marketing_window_defers_this_message_and_holds_no_shared_budget(
    calls: Calls, make_runtime: Any
) -> None:
    first, second = make_runtime(calls), make_runtime(calls)
    calls.answers.append(refuse(22))
    deferred = run(first, delivery_id="a")
    # Held on the durable schedule until its slot (worker.scheduling), no Celery countdown.
    assert isinstance(deferred, Done) and deferred.result.status == "scheduled"
    record = first.ledger.get("a")
    assert record is not None
    assert float(record.fields["not_before"]) > time.time()
    assert first.ledger.next_due() == float(record.fields["not_before"])
    assert (record.attempts, record.throttled) == (0, 0)  # no error retry, not a throttle
    assert held_s(first) == 0.0 and held_s(second) == 0.0  # no hold on the shared budget
    # Another message goes out at once, on another worker sharing the SMS budget.
    other = run(second, delivery_id="b")
    assert isinstance(other, Done) and other.result.status == "sent"
    assert first.health.allow_request("smspartner").allowed  # the breaker heard no failure
    # Before its slot, the deferred message waits again without calling the provider.
    again = run(first, delivery_id="a")
    assert isinstance(again, Done) and again.result.status == "scheduled"
    assert first.ledger.get("a").state == "scheduled"  # type: ignore[union-attr]
    assert calls.paths() == ["/smspartner/v1/send", "/smspartner/v1/send"]


def test_marketing_slot_after_the_deadline_expires_the_message(
    calls: Calls, make_runtime: Any
) -> None:
    rt = make_runtime(calls)
    soon = (datetime.now(UTC) + timedelta(seconds=60)).isoformat()
    calls.answers.append(refuse(23))  # next slot: 08:00 on another day, hours away
    outcome = run(rt, {**SMS, "deadline": soon})
    assert isinstance(outcome, Done)
    assert outcome.result.status == "expired"
    assert outcome.result.error is not None and "next allowed" in outcome.result.error.message


# -- late acceptance: reconcile after a grace, before any resend (docs/providers/smspartner.md §1.5)
# -------------


class Script(Calls):
    """Answers in order; an exception instance is raised instead (a read timeout)."""

    def __init__(self, *steps: httpx.Response | Exception) -> None:
        super().__init__()
        self.steps = list(steps)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if self.steps else httpx.Response(200, json=OK)
        if isinstance(step, Exception):
            raise step
        return step


def by_tag(*numbers: str) -> httpx.Response:
    items = [
        {"phoneNumber": n, "status": "Waiting", "stopSMS": False, "date": str(int(time.time()))}
        for n in numbers
    ]
    body = {"success": True, "code": 200, "StatutResponse_List": items, "total": len(items)}
    return httpx.Response(200, json={**body, "message_id": "901", "currentPage": 1})


READ_TIMEOUT = httpx.ReadTimeout("timed out")
BY_TAG = "/smspartner/v1/bulk-status-by-tag"
SEND = "/smspartner/v1/send"


def test_read_timeout_waits_for_the_grace_then_finds_the_late_acceptance(
    make_runtime: Any,
) -> None:
    calls = Script(READ_TIMEOUT, by_tag("+33612345678"))
    rt = make_runtime(calls, reconcile_grace_s=0.3)
    outcome = run(rt)
    assert isinstance(outcome, Retry) and outcome.reason == "reconcile_grace"
    assert calls.paths() == [SEND]  # not asked at once: a late acceptance would not show yet
    early = run(rt)
    assert isinstance(early, Retry) and early.reason == "reconcile_grace"
    assert calls.paths() == [SEND]  # within the grace: no call at all
    time.sleep(0.35)
    done = run(rt)
    assert isinstance(done, Done) and done.result.status == "sent"
    assert done.result.provider_message_ids == {"+3361*****78": "901"}
    assert calls.paths() == [SEND, BY_TAG]  # found: never resent


def test_after_the_grace_a_send_the_provider_never_saw_is_resent_once(make_runtime: Any) -> None:
    calls = Script(READ_TIMEOUT, by_tag())
    rt = make_runtime(calls, reconcile_grace_s=0.2)
    assert isinstance(run(rt), Retry)
    time.sleep(0.25)
    done = run(rt)
    assert isinstance(done, Done) and done.result.status == "sent"
    assert calls.paths() == [SEND, BY_TAG, SEND]
    # The same tag on both attempts, so a late acceptance of either is found.
    tags = {json.loads(r.content)["tag"] for r in calls.requests if r.url.path == SEND}
    assert len(tags) == 1


def test_retries_exhausted_with_an_unknown_outcome_asks_before_failing(
    make_runtime: Any,
) -> None:
    calls = Script(READ_TIMEOUT, by_tag())
    rt = make_runtime(calls, reconcile_grace_s=0.2, max_retries=0)
    assert isinstance(run(rt), Retry)
    time.sleep(0.25)
    done = run(rt)
    assert isinstance(done, Done) and done.result.status == "failed"
    assert done.result.error is not None and done.result.error.kind == "unknown_outcome"
    assert calls.paths() == [SEND, BY_TAG]  # asked, not resent


def test_a_deadline_passing_during_the_grace_asks_the_provider_before_expiring(
    make_runtime: Any,
) -> None:
    # The provider accepted late; the deadline passed while the worker waited to ask. The
    # message was sent: it must end `sent`, not `expired` (and never be resent).
    calls = Script(READ_TIMEOUT, by_tag("+33612345678"))
    rt = make_runtime(calls, reconcile_grace_s=0.3)
    soon = (datetime.now(UTC) + timedelta(seconds=0.2)).isoformat()
    first = run(rt, {**SMS, "deadline": soon})
    assert isinstance(first, Retry) and first.reason == "reconcile_grace"
    assert first.delay_s >= 0.25  # the grace is kept, though the deadline comes first
    time.sleep(0.35)
    done = run(rt, {**SMS, "deadline": soon})
    assert isinstance(done, Done) and done.result.status == "sent"
    assert calls.paths() == [SEND, BY_TAG]


def test_past_the_deadline_a_send_the_provider_never_saw_expires_without_a_resend(
    make_runtime: Any,
) -> None:
    calls = Script(READ_TIMEOUT, by_tag())
    rt = make_runtime(calls, reconcile_grace_s=0.2)
    soon = (datetime.now(UTC) + timedelta(seconds=0.1)).isoformat()
    assert isinstance(run(rt, {**SMS, "deadline": soon}), Retry)
    time.sleep(0.25)
    done = run(rt, {**SMS, "deadline": soon})
    assert isinstance(done, Done) and done.result.status == "expired"
    assert calls.paths() == [SEND, BY_TAG]  # asked, not resent


# -- the caller's tag (docs/providers/smspartner.md §1.2.2, §1.2.10, §1.5) -------------------------


def test_the_callers_tag_reaches_the_provider(calls: Calls, make_runtime: Any) -> None:
    rt = make_runtime(calls)
    assert isinstance(run(rt, {**SMS, "tag": "promo-mai"}), Done)
    assert json.loads(calls.requests[0].content)["tag"] == "promo-mai"


def test_a_callers_tag_shared_with_another_delivery_is_not_trusted_to_reconcile(
    make_runtime: Any,
) -> None:
    # a's send times out and is never accepted; b, same tag and number, is sent. The by-tag
    # lookup would list b's send as if it were a's: a must be resent, not reported sent.
    calls = Script(READ_TIMEOUT, httpx.Response(200, json=OK))
    rt = make_runtime(calls, reconcile_grace_s=0.2)
    tagged = {**SMS, "tag": "promo"}
    assert isinstance(run(rt, tagged, delivery_id="a"), Retry)
    assert isinstance(run(rt, tagged, delivery_id="b"), Done)
    time.sleep(0.25)
    done = run(rt, tagged, delivery_id="a")
    assert isinstance(done, Done) and done.result.status == "sent"
    assert calls.paths() == [SEND, SEND, SEND]  # no lookup trusted: resent


def test_a_late_runs_kept_sent_is_adopted_and_nothing_is_sent_again(
    calls: Calls, make_runtime: Any
) -> None:
    """A run was accepted by the provider after its lock expired; its final write was kept
    aside (``late_outcome``). The next run (the sweeper's resend) answers from it."""
    rt = make_runtime(calls)
    rt.ledger.create("d-1", channel="sms", provider="smspartner")
    assert rt.hotpath.begin("d-1", "late", 5.0).status == "run"
    rt.ledger.transition("d-1", "sending")
    rt.ledger.unlock("d-1", "late")  # the lock expired under the late run
    result = '{"status": "sent", "delivery_id": "d-1", "channel": "sms", "attempts": 1}'
    closing = Closing("sent", {"attempts": "1", "sent_at": "1.0", "result": result})
    assert rt.hotpath.finish("d-1", "late", reset_runs=True, closing=closing).lock_lost
    assert rt.ledger.get("d-1").state == "sending"  # type: ignore[union-attr]
    outcome = run(rt)
    assert isinstance(outcome, Done) and outcome.result.status == "sent"
    assert calls.requests == []  # neither asked nor sent again
    record = rt.ledger.get("d-1")
    assert record is not None and record.state == "sent"


class _RefusingHotPath:
    """The real hot path, whose last step Redis refuses (a connection lost mid-failover)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.finish_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        self.finish_calls += 1
        raise redis.ConnectionError("Connection refused")


def test_a_send_whose_final_write_redis_refuses_is_still_sent_and_spooled(
    calls: Calls, make_runtime: Any, tmp_path: Any
) -> None:
    rt = make_runtime(calls, final_write_retry_s=0.3, spool_dir=str(tmp_path / "spool"))
    refusing = _RefusingHotPath(rt.hotpath)
    rt.hotpath = refusing
    outcome = run(rt)
    assert isinstance(outcome, Done) and outcome.result.status == "sent"  # not a failure
    assert refusing.finish_calls > 1  # retried
    record = rt.ledger.get("d-1")
    assert record is not None and record.state == "sending"  # Redis never took it
    # The next worker start replays it; the ledger then says sent, with the run's result.
    assert FinalWriteSpool(tmp_path / "spool").replay(rt.ledger) == 1
    record = rt.ledger.get("d-1")
    assert record is not None and record.state == "sent"
    assert record.result is not None and record.result["status"] == "sent"
    assert FinalWriteSpool(tmp_path / "spool").replay(rt.ledger) == 0  # replayed once


def test_a_full_spool_refuses_more_writes(tmp_path: Any) -> None:
    spool = FinalWriteSpool(tmp_path, max_bytes=200)
    assert spool.keep("d-1", "sent", {"attempts": "1"})
    assert not spool.keep("d-2", "sent", {"result": "x" * 300})


class CountingLimiter(MemoryRateLimiter):
    """The in-memory limiter, counting the reservations asked for (by priority)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.asked: list[str] = []
        self.released: list[float | None] = []

    def reserve(
        self,
        key: str,
        limits: Sequence[Limit],
        *,
        priority: str = "normal",
        max_wait_s: float = 0.0,
        release_at_s: float | None = None,
    ) -> Reservation:
        self.asked.append(priority)
        self.released.append(release_at_s)
        return super().reserve(
            key, limits, priority=priority, max_wait_s=max_wait_s, release_at_s=release_at_s
        )


def test_the_gate_sleeps_until_its_reserved_slot_and_sends_without_asking_again(
    calls: Calls, make_runtime: Any
) -> None:
    rt = make_runtime(calls, rate_limits={"smspartner": {"send": "4/s"}})
    limiter = CountingLimiter(time.monotonic)
    rt.limiter = limiter
    first = run(rt, delivery_id="a")
    started = time.monotonic()
    second = run(rt, delivery_id="b")  # its slot lies one interval (0.25 s) ahead
    assert isinstance(first, Done) and isinstance(second, Done)
    assert time.monotonic() - started >= 0.2
    assert limiter.asked == ["normal", "normal"]  # one reservation each, never asked again
    assert len(calls.requests) == 2


def test_the_gate_gives_up_a_slot_it_woke_late_for_and_reserves_again(
    calls: Calls, make_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(calls, rate_limits={"smspartner": {"send": "4/s"}})
    limiter = CountingLimiter(time.monotonic)
    rt.limiter = limiter
    assert isinstance(run(rt, delivery_id="a"), Done)
    real_sleep = time.sleep
    slept: list[float] = []

    def wakes_late_once(seconds: float) -> None:
        # The first sleep ends well past the margin's half (a loaded host's late wake).
        slept.append(seconds)
        real_sleep(seconds + (0.1 if len(slept) == 1 else 0.0))

    monkeypatch.setattr(time, "sleep", wakes_late_once)
    second = run(rt, delivery_id="b")
    monkeypatch.setattr(time, "sleep", real_sleep)
    assert isinstance(second, Done)
    # Its first slot was given up unused (out of the log) as it reserved again; with nobody
    # else waiting the new slot is now: it sent once, without sleeping again.
    assert limiter.asked == ["normal", "normal", "normal"]
    assert limiter.released[0] is None and limiter.released[1] is None
    assert limiter.released[2] is not None
    assert len(slept) == 1
    assert len(calls.requests) == 2
