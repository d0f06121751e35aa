"""The rate limiter contract, run against every implementation.

The memory stub runs on a fake clock (``sleep`` advances it, waits are exact); Redis runs on the
real redis-server and real time, with short windows and a tolerance for time that passes between
calls. The same tests, the same numbers: the stub is only worth having if it behaves like Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from worker.stores.limiter import (
    Limit,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    Reservation,
    limiter_key,
)

from ._support import FakeClock, max_in_window

MARGIN_S = 0.02
KEY = limiter_key("emailmassivo", "203.0.113.7")
OTHER_KEY = limiter_key("emailmassivo", "198.51.100.9")


@dataclass
class Harness:
    limiter: RateLimiter
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    # On real time, calls take time and sleeps oversleep, so a wait seen on Redis may be a little
    # off the figure computed from the nominal timeline; on the fake clock it is exact.
    slack_s: float
    make: Callable[[float], RateLimiter]
    """Another limiter on the same budget (the same Redis, the same clock), with that high
    share."""

    def assert_wait(self, actual: float, expected: float) -> None:
        assert expected - self.slack_s <= actual <= expected + self.slack_s, (actual, expected)


@pytest.fixture(params=["memory", "redis"])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()
        limiter: RateLimiter = MemoryRateLimiter(clock, safety_margin_s=MARGIN_S)
        yield Harness(
            limiter,
            clock.advance,
            clock,
            slack_s=1e-5,
            make=lambda share: MemoryRateLimiter(clock, safety_margin_s=MARGIN_S, high_share=share),
        )
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")
        limiter = RedisRateLimiter(client, safety_margin_s=MARGIN_S)
        yield Harness(
            limiter,
            time.sleep,
            time.monotonic,
            slack_s=0.06,
            make=lambda share: RedisRateLimiter(client, safety_margin_s=MARGIN_S, high_share=share),
        )


def test_admits_up_to_count_then_refuses_with_the_time_left(h: Harness) -> None:
    limits = [Limit(3, 0.3)]
    assert [h.limiter.acquire(KEY, limits) for _ in range(3)] == [0.0, 0.0, 0.0]

    wait = h.limiter.acquire(KEY, limits)
    h.assert_wait(wait, 0.3 + MARGIN_S)
    # Refusing records nothing: asking again does not push the wait further out.
    again = h.limiter.acquire(KEY, limits)
    assert 0 < again <= wait


def test_sleeping_the_returned_wait_is_enough_and_not_much_more(h: Harness) -> None:
    limits = [Limit(2, 0.3)]
    assert h.limiter.acquire(KEY, limits) == 0.0  # t = 0
    h.sleep(0.1)
    assert h.limiter.acquire(KEY, limits) == 0.0  # t = 0.1
    wait = h.limiter.acquire(KEY, limits)
    h.assert_wait(wait, 0.32 - 0.1)

    h.sleep(wait - 0.1)
    early = h.limiter.acquire(KEY, limits)
    assert 0 < early <= 0.1 + 1e-6

    h.sleep(early)  # t = 0.32: the grant of t = 0 has just left the window
    assert h.limiter.acquire(KEY, limits) == 0.0
    # That slot was taken again; the next frees when the grant of t = 0.1 leaves.
    h.assert_wait(h.limiter.acquire(KEY, limits), 0.1)


def test_window_slides_instead_of_resetting(h: Harness) -> None:
    """A fixed window would start afresh at 0.3 s; a token bucket would have refilled."""
    limits = [Limit(3, 0.3)]
    assert h.limiter.acquire(KEY, limits) == 0.0  # t = 0
    h.sleep(0.2)
    assert h.limiter.acquire(KEY, limits) == 0.0  # t = 0.2
    assert h.limiter.acquire(KEY, limits) == 0.0
    h.assert_wait(h.limiter.acquire(KEY, limits), 0.32 - 0.2)

    h.sleep(0.15)  # t = 0.35: only the grant of t = 0 has left the window
    assert h.limiter.acquire(KEY, limits) == 0.0
    h.assert_wait(h.limiter.acquire(KEY, limits), 0.2 + 0.32 - 0.35)


def test_steady_sender_gets_count_per_window_plus_margin(h: Harness) -> None:
    """Safe (never ``count + 1`` grants in a window) and efficient (the next slot is used as
    soon as it frees): grant ``i + count`` comes one window plus the margin after grant ``i``."""
    count, window_s = 5, 0.25
    limits = [Limit(count, window_s)]
    grants: list[float] = []
    while len(grants) < 3 * count:
        wait = h.limiter.acquire(KEY, limits)
        if wait == 0:
            grants.append(h.clock())
        else:
            h.sleep(wait)
    assert max_in_window(grants, window_s) == count
    gaps = [grants[i + count] - grants[i] for i in range(len(grants) - count)]
    # Grant times are read on the client after acquire() returns, so under CPU load a grant can
    # be stamped late: on real time, allow a third of the slack below the exact gap (the
    # window count above still proves no window held count + 1).
    assert min(gaps) >= window_s + MARGIN_S - 0.005 - h.slack_s / 3
    assert max(gaps) <= window_s + MARGIN_S + h.slack_s


def test_every_limit_applies_at_once(h: Harness) -> None:
    """Voice Partner campaigns: a short and a long limit on one key."""
    limits = [Limit(2, 0.2), Limit(3, 0.6)]
    assert h.limiter.acquire(KEY, limits) == 0.0  # t = 0
    assert h.limiter.acquire(KEY, limits) == 0.0
    h.assert_wait(h.limiter.acquire(KEY, limits), 0.22)  # the short limit is full

    h.sleep(0.25)
    assert h.limiter.acquire(KEY, limits) == 0.0  # t = 0.25: third of the long limit
    # The short limit has room now; the long one decides, until its t = 0 grant leaves.
    h.assert_wait(h.limiter.acquire(KEY, limits), 0.62 - 0.25)


def test_a_refused_request_spends_no_limit(h: Harness) -> None:
    limits = [Limit(1, 0.2), Limit(3, 5.0)]
    assert h.limiter.acquire(KEY, limits) == 0.0
    for _ in range(10):
        assert h.limiter.acquire(KEY, limits) > 0  # refused by the short limit
    h.sleep(0.25)
    assert h.limiter.acquire(KEY, limits) == 0.0  # the long limit saw 1 request, not 11
    h.sleep(0.25)
    assert h.limiter.acquire(KEY, limits) == 0.0
    h.sleep(0.25)
    h.assert_wait(h.limiter.acquire(KEY, limits), 5.02 - 0.75)


def test_keys_have_independent_budgets(h: Harness) -> None:
    limits = [Limit(1, 0.5)]
    assert h.limiter.acquire(KEY, limits) == 0.0
    assert h.limiter.acquire(KEY, limits) > 0
    assert h.limiter.acquire(OTHER_KEY, limits) == 0.0
    assert h.limiter.acquire(limiter_key("emailmassivo", "203.0.113.7", "other"), limits) == 0.0


def test_no_limits_means_unlimited(h: Harness) -> None:
    assert all(h.limiter.acquire(KEY, ()) == 0.0 for _ in range(50))


def test_hold_for_refuses_every_acquire_until_it_ends(h: Harness) -> None:
    until = h.limiter.hold_for(KEY, 0.3)
    assert until == pytest.approx(h.limiter.now() + 0.3, abs=h.slack_s + 0.01)

    h.assert_wait(h.limiter.acquire(KEY, [Limit(100, 1.0)]), 0.3)
    h.assert_wait(h.limiter.acquire(KEY, ()), 0.3)  # holds apply to unlimited keys too
    assert h.limiter.acquire(OTHER_KEY, [Limit(100, 1.0)]) == 0.0

    h.sleep(0.32)
    assert h.limiter.acquire(KEY, [Limit(100, 1.0)]) == 0.0


def test_hold_until_an_instant_on_the_limiter_clock(h: Harness) -> None:
    end = h.limiter.now() + 0.25
    assert h.limiter.hold(KEY, end) == pytest.approx(end, abs=1e-6)
    h.assert_wait(h.limiter.acquire(KEY, ()), 0.25)
    # An instant already past is no hold at all.
    h.limiter.hold(OTHER_KEY, h.limiter.now() - 1.0)
    assert h.limiter.acquire(OTHER_KEY, ()) == 0.0


def test_holds_only_extend(h: Harness) -> None:
    first = h.limiter.hold_for(KEY, 0.4)
    assert h.limiter.hold_for(KEY, 0.1) == pytest.approx(first, abs=1e-6)
    assert h.limiter.hold(KEY, h.limiter.now() + 0.05) == pytest.approx(first, abs=1e-6)
    h.assert_wait(h.limiter.acquire(KEY, ()), 0.4)

    longer = h.limiter.hold_for(KEY, 0.5)
    assert longer > first
    h.assert_wait(h.limiter.acquire(KEY, ()), 0.5)


def test_wait_is_the_later_of_hold_and_limits(h: Harness) -> None:
    limits = [Limit(1, 0.3)]
    assert h.limiter.acquire(KEY, limits) == 0.0
    h.limiter.hold_for(KEY, 0.1)
    h.assert_wait(h.limiter.acquire(KEY, limits), 0.32)
    h.limiter.hold_for(KEY, 0.5)
    h.assert_wait(h.limiter.acquire(KEY, limits), 0.5)


def test_requests_refused_during_a_hold_spend_nothing(h: Harness) -> None:
    limits = [Limit(2, 5.0)]
    h.limiter.hold_for(KEY, 0.15)
    for _ in range(5):
        assert h.limiter.acquire(KEY, limits) > 0
    h.sleep(0.17)
    assert h.limiter.acquire(KEY, limits) == 0.0
    assert h.limiter.acquire(KEY, limits) == 0.0
    assert h.limiter.acquire(KEY, limits) > 0


def test_concurrent_threads_never_exceed_the_limit(h: Harness) -> None:
    limits = [Limit(7, 30.0), Limit(9, 0.5)]
    threads_n, calls_n = 8, 25
    granted: list[int] = []
    barrier = threading.Barrier(threads_n)

    def worker() -> None:
        barrier.wait()
        ok = sum(1 for _ in range(calls_n) if h.limiter.acquire(KEY, limits) == 0.0)
        granted.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(granted) == threads_n
    assert sum(granted) == 7


def test_usage_counts_grants_per_limit_and_records_nothing(h: Harness) -> None:
    limits = [Limit(3, 0.3), Limit(5, 10.0)]
    assert h.limiter.usage(KEY, limits) == [0, 0]
    assert h.limiter.acquire(KEY, limits) == 0.0
    assert h.limiter.acquire(KEY, limits) == 0.0
    assert h.limiter.usage(KEY, limits) == [2, 2]
    assert h.limiter.usage(KEY, limits) == [2, 2]  # reading spends nothing
    assert h.limiter.usage(OTHER_KEY, limits) == [0, 0]
    h.sleep(0.3 + MARGIN_S + 0.1)  # the short window let both grants go; the long one keeps them
    assert h.limiter.usage(KEY, limits) == [0, 2]
    # Refused requests are not counted either.
    assert h.limiter.acquire(KEY, [Limit(2, 10.0)]) > 0
    assert h.limiter.usage(KEY, limits) == [0, 2]


# -- the waiting line: reservations, priorities, the reserved share ----------------------------


def assert_slots(slots: list[Reservation], first: float, offsets: list[float]) -> None:
    """Each reservation's slot lies ``offsets`` after ``first``'s, exactly (the limiter's own
    clock: Redis counts whole microseconds, so waits measured at different moments drift,
    slots do not)."""
    assert [round(s.at_s - first, 5) for s in slots] == [round(o, 5) for o in offsets]


def test_reservations_are_distinct_and_spaced_one_interval_apart(h: Harness) -> None:
    """Waiters each get their own future slot, one interval (window + margin over count) apart:
    no two wake for the same slot, and no window ever holds more than count."""
    limiter = h.make(0.0)  # no reserved share: only the pacing shows
    limits = [Limit(5, 0.5)]  # one interval = 0.52 / 5 = 0.104 s
    assert [limiter.acquire(KEY, limits) for _ in range(5)] == [0.0] * 5  # an idle burst
    slots = [limiter.reserve(KEY, limits, max_wait_s=3.0) for _ in range(4)]
    assert all(s.reserved for s in slots)
    h.assert_wait(slots[0].wait_s, 0.52)  # the first frees when the burst leaves its window
    assert_slots(slots, slots[0].at_s, [0.0, 0.104, 0.208, 0.312])
    assert limiter.usage(KEY, limits) == [9]  # reserved slots count as spent

    # Beyond max_wait_s nothing is reserved, and the answer says when to ask again: the first
    # moment every window has room again (the last of the burst leaving its window).
    refused = limiter.reserve(KEY, limits, max_wait_s=0.5)
    assert not refused.reserved
    assert refused.wait_s > 0
    assert slots[0].at_s <= refused.at_s <= slots[0].at_s + h.slack_s
    assert limiter.usage(KEY, limits) == [9]


def test_high_overtakes_waiting_bulk(h: Harness) -> None:
    """EmailMassivo's 10/s, a window full and 12 bulk waiters holding slots up to 1.3 s ahead:
    a high request takes the first slot the share kept free, before most of them."""
    limits = [Limit(10, 1.0)]  # one interval = 1.02 / 10 = 0.102 s; share 2 of 10
    assert all(h.limiter.acquire(KEY, limits, priority="bulk") == 0.0 for _ in range(10))
    bulk = [h.limiter.reserve(KEY, limits, priority="bulk", max_wait_s=5.0) for _ in range(12)]
    assert all(b.reserved for b in bulk)
    h.assert_wait(bulk[0].wait_s, 1.02)
    # Bulk leaves one slot in every five intervals free: +0.408 and +0.918.
    gap = 0.102
    offsets = [gap * n for n in (0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13)]
    assert_slots(bulk, bulk[0].at_s, offsets)

    first = h.limiter.reserve(KEY, limits, priority="high", max_wait_s=5.0)
    second = h.limiter.reserve(KEY, limits, priority="high", max_wait_s=5.0)
    assert first.reserved and second.reserved
    assert_slots([first, second], bulk[0].at_s, [4 * gap, 9 * gap])
    assert sum(1 for b in bulk if b.at_s > first.at_s) == 8  # overtaken


def test_reserved_share_is_kept_in_the_future_and_borrowed_near_now(h: Harness) -> None:
    limits = [Limit(5, 1.0)]  # one interval = 0.204 s; share 1 of 5, borrowed 0.2 s ahead
    # Borrowed: with no high request waiting, bulk takes the whole window at once.
    assert all(h.limiter.acquire(KEY, limits, priority="bulk") == 0.0 for _ in range(5))
    bulk = [h.limiter.reserve(KEY, limits, priority="bulk", max_wait_s=5.0) for _ in range(5)]
    # Kept: reserved ahead, bulk takes 4 slots of 5 intervals (+0.816 stays free).
    h.assert_wait(bulk[0].wait_s, 1.02)
    assert_slots(bulk, bulk[0].at_s, [0.0, 0.204, 0.408, 0.612, 1.02])

    # Once the free slot is less than one interval ahead, bulk may borrow it.
    h.sleep(bulk[0].at_s + 0.7 - h.limiter.now())
    borrowed = h.limiter.reserve(KEY, limits, priority="bulk", max_wait_s=5.0)
    assert borrowed.reserved
    assert_slots([borrowed], bulk[0].at_s, [0.816])


def test_an_unused_reservation_passes_and_blocks_nobody_after_it(h: Harness) -> None:
    """A process killed while sleeping for its slot: the slot is spent (nothing is sent twice
    for it), then it leaves its window like any grant."""
    limits = [Limit(2, 0.2)]
    assert h.limiter.acquire(KEY, limits) == 0.0
    assert h.limiter.acquire(KEY, limits) == 0.0
    abandoned = [h.limiter.reserve(KEY, limits, max_wait_s=1.0) for _ in range(2)]
    assert all(a.reserved for a in abandoned)
    assert h.limiter.usage(KEY, limits) == [4]
    h.sleep(abandoned[-1].wait_s + 0.22 + 0.05)  # past the last slot and its window
    assert h.limiter.usage(KEY, limits) == [0]
    assert h.limiter.acquire(KEY, limits) == 0.0
    assert h.limiter.acquire(KEY, limits) == 0.0


def test_a_slot_given_up_after_a_late_wake_leaves_the_log(h: Harness) -> None:
    """A process that woke too late for its slot gives it up as it reserves again: nothing was
    sent for it, so it leaves every log and costs no budget."""
    limits = [Limit(2, 0.2)]  # one interval = 0.12 s
    assert h.limiter.acquire(KEY, limits) == 0.0
    assert h.limiter.acquire(KEY, limits) == 0.0
    mine = h.limiter.reserve(KEY, limits, max_wait_s=1.0)
    other = h.limiter.reserve(KEY, limits, max_wait_s=1.0)
    assert mine.reserved and other.reserved
    assert h.limiter.usage(KEY, limits) == [4]
    h.sleep(mine.at_s + 0.05 - h.limiter.now())  # woke 50 ms late
    again = h.limiter.reserve(KEY, limits, max_wait_s=1.0, release_at_s=mine.at_s)
    assert again.reserved
    assert again.at_s > other.at_s  # behind the one that kept its slot
    # Given up: the burst has left its window; the log holds the other's slot and the new
    # one, not the old one (kept, it would count a third).
    assert h.limiter.usage(KEY, limits) == [2]


def test_a_hold_delays_reservations_and_is_seen_by_sleepers(h: Harness) -> None:
    limits = [Limit(10, 1.0)]
    h.limiter.hold_for(KEY, 0.3)
    first = h.limiter.reserve(KEY, limits, priority="high", max_wait_s=1.0)
    assert first.reserved
    h.assert_wait(first.wait_s, 0.3)  # at the hold's end, not before
    second = h.limiter.reserve(KEY, limits, max_wait_s=1.0)
    assert_slots([second], first.at_s, [0.102])  # one interval later
    assert not h.limiter.reserve(KEY, limits, max_wait_s=0.2).reserved
    h.assert_wait(h.limiter.hold_left(KEY), 0.3)
    assert h.limiter.hold_left(OTHER_KEY) == 0.0
    # A 429 that comes while a reservation holder sleeps: it sees the hold before sending.
    h.limiter.hold_for(KEY, 0.8)
    h.assert_wait(h.limiter.hold_left(KEY), 0.8)


def test_an_unknown_priority_is_refused_by_name(h: Harness) -> None:
    with pytest.raises(ValueError, match="priority"):
        h.limiter.reserve(KEY, [Limit(1, 1.0)], priority="urgent")
    with pytest.raises(ValueError, match="priority"):
        h.limiter.acquire(KEY, [Limit(1, 1.0)], priority="")
