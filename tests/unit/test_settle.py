"""The settle step: each error kind, by the policy its class declares, ends in its outcome.

``worker.errors`` declares, per class, what the pipeline does (``policy``) and what the circuit
breaker hears (``provider_fault`` / ``provider_up``); ``worker.delivery.pipeline`` only dispatches
on that data. These tests pin the table and each policy's effect on the ledger counters, the
breaker, the shared limiter, parking and metrics, on the in-memory stores (no redis-server).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

import worker.errors as errors_module
from worker.config import Settings
from worker.delivery.context import GAVE_UP, NOT_BEFORE, OUTCOME_UNKNOWN, Delivery
from worker.delivery.pipeline import POLICY_HANDLERS, Failure, settle_error
from worker.delivery.results import Done, Retry
from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeferredError,
    DeliveryError,
    PermanentError,
    Policy,
    RecipientDeferredError,
    RecipientRejectedError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.providers import parse_message
from worker.runtime import Runtime
from worker.stores import limiter_key

P = "smspartner"
SMS = {"provider": P, "to": ["+33612345678"], "text": "Hello"}

EXPECTED: dict[type[DeliveryError], tuple[Policy, str | None]] = {
    DeliveryError: (Policy.FAIL, "success"),
    TransientError: (Policy.RETRY, "failure"),
    UnknownOutcomeError: (Policy.RECONCILE, "failure"),
    RecipientDeferredError: (Policy.RETRY, "success"),
    ThrottledError: (Policy.THROTTLE, None),
    DeferredError: (Policy.DEFER, "success"),
    AccountBlockedError: (Policy.PAUSE, None),
    PermanentError: (Policy.FAIL, "success"),
    RecipientRejectedError: (Policy.FAIL, "success"),
    ConfigurationError: (Policy.FAIL, None),
}


def make(cls: type[DeliveryError], **context: Any) -> DeliveryError:
    if cls is DeferredError:
        context.setdefault("not_before", time.time() + 60)
    return cls("refused", provider=P, **context)


@pytest.fixture
def rt() -> Iterator[Runtime]:
    settings = Settings(
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://provider.test/smspartner/v1",
        retry_backoff_base_s=0.5,
        retry_backoff_max_s=30,
        max_retries=2,
    )
    refuse = httpx.MockTransport(lambda request: httpx.Response(500))
    runtime = Runtime.in_memory(settings, client=httpx.Client(transport=refuse))
    yield runtime
    runtime.close()


def delivery(rt: Runtime, message: dict[str, Any] = SMS, delivery_id: str = "d-1") -> Delivery:
    rt.ledger.create(delivery_id, channel="sms", provider=P)
    return Delivery(rt, parse_message("sms", message), message, delivery_id, "t", provider=P)


def counters(rt: Runtime, delivery_id: str = "d-1") -> tuple[int, int]:
    record = rt.ledger.get(delivery_id)
    assert record is not None
    return record.attempts, record.throttled


def held_s(rt: Runtime) -> float:
    return rt.limiter.acquire(limiter_key(P, rt.settings.egress_identity), ())


# -- the table ----------------------------------------------------------------------------------


def test_every_error_class_declares_its_policy_and_breaker_signal() -> None:
    classes = {
        obj
        for obj in vars(errors_module).values()
        if isinstance(obj, type) and issubclass(obj, DeliveryError)
    }
    assert classes == set(EXPECTED)  # a new class must be added to the table above
    for cls, (policy, signal) in EXPECTED.items():
        assert (cls.policy, make(cls).breaker_signal()) == (policy, signal), cls.__name__


def test_every_policy_has_one_handler() -> None:
    assert set(POLICY_HANDLERS) == set(Policy)


def test_an_unreadable_2xx_unknown_outcome_feeds_the_breaker_nothing() -> None:
    assert UnknownOutcomeError("x", status_code=200).breaker_signal() is None
    assert UnknownOutcomeError("x").breaker_signal() == "failure"


@pytest.mark.parametrize("cls", list(EXPECTED))
def test_the_breaker_hears_what_the_class_declares(rt: Runtime, cls: type[DeliveryError]) -> None:
    rt.health.record_failure(P)  # one earlier failure: a success clears it, a failure adds one
    settle_error(delivery(rt), Failure(make(cls), attempts=0))
    failures = rt.health.state(P).failures
    expected = {"failure": 2, "success": 0, None: 1}[EXPECTED[cls][1]]
    assert failures == expected


# -- each policy's outcome ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TransientError, RecipientDeferredError, UnknownOutcomeError])
def test_retry_counts_an_attempt_and_backs_off(rt: Runtime, cls: type[DeliveryError]) -> None:
    outcome = settle_error(delivery(rt), Failure(make(cls, retry_after_s=4.0), attempts=0))
    assert isinstance(outcome, Retry) and outcome.reason == cls.kind
    assert 4.0 <= outcome.delay_s <= 30  # the provider's Retry-After, if longer than backoff
    assert counters(rt) == (1, 0)
    assert held_s(rt) == 0.0


def test_retry_fails_once_the_error_budget_is_spent(rt: Runtime) -> None:
    d = delivery(rt)
    for _ in range(2):
        assert isinstance(settle_error(d, Failure(make(TransientError), attempts=0)), Retry)
    outcome = settle_error(d, Failure(make(TransientError, status_code=503), attempts=2))
    assert isinstance(outcome, Done) and outcome.result.status == "failed"
    assert outcome.result.error is not None
    assert (outcome.result.error.kind, outcome.result.error.code) == ("transient", "503")
    assert counters(rt) == (3, 0)
    assert rt.metrics.read(P) == {"failed:transient": 1}


def test_reconcile_through_a_driver_with_a_lookup_waits_for_the_grace(rt: Runtime) -> None:
    driver = rt.driver(P)
    assert driver.supports_reconcile
    failure = Failure(make(UnknownOutcomeError), attempts=0, driver=driver)
    outcome = settle_error(delivery(rt), failure)
    assert isinstance(outcome, Retry) and outcome.reason == "reconcile_grace"
    record = rt.ledger.get("d-1")
    assert record is not None and record.attempts == 1
    assert record.fields[OUTCOME_UNKNOWN] == "1"
    assert float(record.fields[NOT_BEFORE]) > time.time()
    assert GAVE_UP not in record.fields


def test_reconcile_with_the_budget_spent_keeps_the_error_until_the_provider_is_asked(
    rt: Runtime,
) -> None:
    failure = Failure(make(UnknownOutcomeError), attempts=2, driver=rt.driver(P))
    d = delivery(rt)
    for _ in range(2):
        rt.ledger.incr("d-1", "attempts")
    outcome = settle_error(d, failure)
    assert isinstance(outcome, Retry) and outcome.reason == "reconcile_grace"  # not failed yet
    record = rt.ledger.get("d-1")
    assert record is not None and '"unknown_outcome"' in record.fields[GAVE_UP]


def test_throttle_holds_the_shared_key_and_counts_no_attempt(rt: Runtime) -> None:
    key = limiter_key(P, rt.settings.egress_identity)
    failure = Failure(make(ThrottledError, retry_after_s=7.0), attempts=0, held_key=key)
    outcome = settle_error(delivery(rt), failure)
    assert isinstance(outcome, Retry) and outcome.reason == "throttled"
    assert outcome.delay_s == pytest.approx(7.0)
    assert counters(rt) == (0, 1)
    assert 6 < held_s(rt) <= 7
    assert rt.metrics.read(P) == {"throttled_by_provider": 1}


def test_throttle_before_the_gate_holds_nothing(rt: Runtime) -> None:
    outcome = settle_error(delivery(rt), Failure(make(ThrottledError), attempts=0))
    assert isinstance(outcome, Retry) and outcome.delay_s == pytest.approx(1.0)
    assert held_s(rt) == 0.0


def test_defer_waits_for_not_before_on_no_budget(rt: Runtime) -> None:
    not_before = time.time() + 20
    outcome = settle_error(
        delivery(rt), Failure(make(DeferredError, not_before=not_before), attempts=0)
    )
    # Held on the durable schedule until the slot (worker.scheduling), not a Celery countdown.
    assert isinstance(outcome, Done) and outcome.result.status == "scheduled"
    assert rt.ledger.next_due() == pytest.approx(not_before)
    record = rt.ledger.get("d-1")
    assert record is not None and float(record.fields[NOT_BEFORE]) == pytest.approx(not_before)
    assert (record.state, record.fields["waiting_reason"]) == ("scheduled", "deferred")
    assert counters(rt) == (0, 0)
    assert held_s(rt) == 0.0
    assert rt.metrics.read(P) == {"deferred": 1}


def test_defer_past_the_deadline_expires(rt: Runtime) -> None:
    far = time.time() + rt.settings.default_ttl_s + 60
    outcome = settle_error(delivery(rt), Failure(make(DeferredError, not_before=far), attempts=0))
    assert isinstance(outcome, Done) and outcome.result.status == "expired"


def test_pause_pauses_the_provider_and_parks_the_message(rt: Runtime) -> None:
    outcome = settle_error(delivery(rt), Failure(make(AccountBlockedError), attempts=0))
    assert isinstance(outcome, Done) and outcome.result.status == "parked"
    assert rt.health.paused(P) is not None
    assert [m.delivery_id for m in rt.parking.entries(P)] == ["d-1"]
    assert counters(rt) == (0, 0)
    assert rt.metrics.read(P) == {"payment_failures": 1, "parked": 1}


def test_pause_of_a_routed_message_fails_over_when_another_provider_is_left() -> None:
    settings = Settings(
        postal_api_key="postal-secret-key",
        postal_base_url="http://provider.test/postal",
        mailpartner_api_key="mail-secret-key",
    )
    routed = Runtime.in_memory(settings)
    try:
        message = {
            "to": [{"email": "ada@example.com"}],
            "from": {"email": "shop@example.org"},
            "subject": "Hi",
            "text": "Hello",
        }
        routed.ledger.create("e-1", channel="email", provider="auto")
        d = Delivery(routed, parse_message("email", message), message, "e-1", "t", "postal")
        outcome = settle_error(d, Failure(make(AccountBlockedError), attempts=0))
        assert isinstance(outcome, Retry) and outcome.reason == "failover"
        assert routed.health.paused("postal") is not None
        assert routed.parking.entries("postal") == []
    finally:
        routed.close()


@pytest.mark.parametrize("cls", [PermanentError, RecipientRejectedError, ConfigurationError])
def test_fail_is_final_and_counts_an_attempt(rt: Runtime, cls: type[DeliveryError]) -> None:
    with capture_logs() as logs:
        outcome = settle_error(delivery(rt), Failure(make(cls), attempts=0))
    assert isinstance(outcome, Done) and outcome.result.status == "failed"
    assert outcome.result.error is not None and outcome.result.error.kind == cls.kind
    assert counters(rt) == (1, 0)
    [event] = [e for e in logs if e["event"] == "delivery.failed"]
    # A configuration error is for an operator: logged loudly.
    assert event["log_level"] == ("error" if cls is ConfigurationError else "warning")
