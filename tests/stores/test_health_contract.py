"""The provider health contract (pauses and circuit breakers), run against every implementation.

Memory runs on a fake clock; Redis on the real redis-server and real time with short periods.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from worker.stores.health import (
    BreakerConfig,
    Decision,
    HealthStore,
    MemoryHealthStore,
    RedisHealthStore,
)

from ._support import FakeClock

CONFIG = BreakerConfig(
    failure_threshold=3, window_s=0.4, open_s=0.2, max_open_s=0.5, probe_timeout_s=0.3
)
P = "emailmassivo"


@dataclass
class Harness:
    store: HealthStore
    sleep: Callable[[float], None]
    wall_clock: Callable[[], float]
    slack_s: float

    def assert_about(self, actual: float, expected: float) -> None:
        assert expected - self.slack_s <= actual <= expected + 1e-6, (actual, expected)

    def fail(self, times: int, provider: str = P) -> None:
        for _ in range(times):
            self.store.record_failure(provider)


@pytest.fixture(params=["memory", "redis"])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        clock = FakeClock(1_700_000_000.0)
        yield Harness(MemoryHealthStore(clock, config=CONFIG), clock.advance, clock, 1e-6)
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")
        yield Harness(RedisHealthStore(client, config=CONFIG), time.sleep, time.time, 0.06)


# -- pause --------------------------------------------------------------------------------------


def test_pause_is_visible_until_resumed(h: Harness) -> None:
    assert h.store.paused(P) is None
    before = h.wall_clock()
    info = h.store.pause(P, "HTTP 402: out of credit", by="w1@host-a")
    assert (info.provider, info.reason, info.by) == (P, "HTTP 402: out of credit", "w1@host-a")
    assert before - 1.0 <= info.since <= h.wall_clock() + 1.0  # Unix seconds
    assert h.store.paused(P) == info

    assert h.store.resume(P) is True
    assert h.store.paused(P) is None
    assert h.store.resume(P) is False


def test_first_pause_wins(h: Harness) -> None:
    first = h.store.pause(P, "HTTP 402", by="w1")
    h.sleep(0.01)
    again = h.store.pause(P, "HTTP 402 again", by="w2")
    assert again == first
    assert h.store.paused(P) == first


def test_list_paused_shows_every_paused_provider(h: Harness) -> None:
    assert h.store.list_paused() == []
    sms = h.store.pause("smspartner", "code 11", by="w1")
    voice = h.store.pause("voicepartner", "NOT_CREDIT", by="ops:alice")
    assert h.store.list_paused() == [sms, voice]
    h.store.resume("smspartner")
    assert h.store.list_paused() == [voice]
    assert h.store.paused("postal") is None


# -- breaker ------------------------------------------------------------------------------------


def test_closed_breaker_allows_and_counts_failures(h: Harness) -> None:
    assert h.store.allow_request(P) == Decision(allowed=True, state="closed")
    state = h.store.state(P)
    assert (state.state, state.failures, state.opened_at, state.retry_in_s) == (
        "closed",
        0,
        None,
        0.0,
    )
    h.fail(2)
    assert h.store.state(P).failures == 2
    assert h.store.allow_request(P).allowed


def test_threshold_consecutive_failures_open_the_breaker(h: Harness) -> None:
    h.fail(2)
    state = h.store.record_failure(P)
    assert state.state == "open"
    assert state.failures == 3
    assert state.opened_at is not None
    h.assert_about(state.retry_in_s, CONFIG.open_s)

    decision = h.store.allow_request(P)
    assert (decision.allowed, decision.state, decision.probe) == (False, "open", False)
    h.assert_about(decision.wait_s, CONFIG.open_s)
    assert h.store.state(P).state == "open"


def test_failures_spread_wider_than_the_window_do_not_open(h: Harness) -> None:
    h.fail(2)
    h.sleep(CONFIG.window_s + 0.05)
    assert h.store.record_failure(P).state == "closed"
    assert h.store.state(P).failures == 1
    h.fail(1)
    assert h.store.record_failure(P).state == "open"  # three within the window


def test_a_success_resets_the_failure_streak(h: Harness) -> None:
    h.fail(2)
    state = h.store.record_success(P)
    assert (state.state, state.failures) == ("closed", 0)
    h.fail(2)
    assert h.store.state(P).state == "closed"
    assert h.store.record_failure(P).state == "open"


def test_half_open_admits_exactly_one_probe_and_success_closes(h: Harness) -> None:
    h.fail(3)
    h.sleep(CONFIG.open_s + 0.02)
    state = h.store.state(P)
    assert (state.state, state.retry_in_s) == ("half_open", 0.0)

    probe = h.store.allow_request(P)
    assert (probe.allowed, probe.probe, probe.state) == (True, True, "half_open")
    other = h.store.allow_request(P)
    assert (other.allowed, other.probe, other.state) == (False, False, "half_open")
    assert 0 < other.wait_s <= CONFIG.probe_timeout_s

    state = h.store.record_success(P)
    assert (state.state, state.failures, state.opened_at) == ("closed", 0, None)
    assert h.store.allow_request(P) == Decision(allowed=True, state="closed")
    h.fail(2)
    assert h.store.state(P).state == "closed"  # the streak started again from zero


def test_failed_probe_reopens_for_longer_up_to_the_cap(h: Harness) -> None:
    h.fail(3)
    h.sleep(CONFIG.open_s + 0.02)
    assert h.store.allow_request(P).probe
    state = h.store.record_failure(P)
    assert (state.state, state.failures) == ("open", 4)
    assert state.open_s == pytest.approx(0.4)
    h.assert_about(state.retry_in_s, 0.4)
    assert not h.store.allow_request(P).allowed

    h.sleep(0.42)
    assert h.store.allow_request(P).probe
    state = h.store.record_failure(P)
    assert state.open_s == pytest.approx(CONFIG.max_open_s)  # 0.8 capped at 0.5
    h.assert_about(state.retry_in_s, CONFIG.max_open_s)


def test_a_lost_probe_frees_the_slot_after_its_lease(h: Harness) -> None:
    h.fail(3)
    h.sleep(CONFIG.open_s + 0.02)
    assert h.store.allow_request(P).probe  # ... and that worker dies without reporting
    assert not h.store.allow_request(P).allowed
    h.sleep(CONFIG.probe_timeout_s + 0.02)
    assert h.store.allow_request(P).probe


def test_results_of_stragglers_are_ignored_while_open(h: Harness) -> None:
    h.fail(3)
    opened = h.store.state(P)
    assert opened.state == "open"
    assert h.store.record_success(P).state == "open"  # started before the breaker opened
    later = h.store.record_failure(P)
    assert (later.state, later.opened_at, later.failures) == ("open", opened.opened_at, 3)


def test_breakers_are_per_provider(h: Harness) -> None:
    h.fail(3)
    assert not h.store.allow_request(P).allowed
    assert h.store.allow_request("mailpartner").allowed
    assert h.store.state("mailpartner").state == "closed"


def test_reset_closes_the_breaker(h: Harness) -> None:
    h.fail(3)
    h.store.reset(P)
    assert h.store.state(P).state == "closed"
    assert h.store.allow_request(P).allowed


def test_racing_threads_get_a_single_probe(h: Harness) -> None:
    h.fail(3)
    h.sleep(CONFIG.open_s + 0.02)
    threads_n = 12
    barrier = threading.Barrier(threads_n)
    decisions: list[Decision] = []

    def worker() -> None:
        barrier.wait()
        decisions.append(h.store.allow_request(P))

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(decisions) == threads_n
    assert sum(d.allowed for d in decisions) == 1
    assert sum(d.probe for d in decisions) == 1
