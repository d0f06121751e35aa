"""Several real processes against one real Redis: the budget and the probe are global."""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable
from queue import Empty
from typing import Any

import redis

from worker.stores.health import BreakerConfig, RedisHealthStore
from worker.stores.limiter import limiter_key

from . import _procs
from ._support import max_in_window

CTX = multiprocessing.get_context("spawn")


def _race(
    target: Callable[..., None], n: int, args: tuple[Any, ...], before_start: Callable[[], None]
) -> list[Any]:
    """Start ``n`` processes, wait until each is ready, run ``before_start``, release them all
    at once and collect one result per process."""
    ready = CTX.Queue()
    out = CTX.Queue()
    start = CTX.Event()
    procs = [CTX.Process(target=target, args=(*args, ready, start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            _get(ready, procs)
        before_start()
        start.set()
        results = [_get(out, procs) for _ in procs]
    finally:
        start.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    assert [p.exitcode for p in procs] == [0] * n
    return results


def _get(queue: Any, procs: list[Any], timeout_s: float = 60.0) -> Any:
    """The next item of ``queue``; fails fast if a process died instead of answering."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=0.2)
        except Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a child process failed with exit codes {dead}"
    raise AssertionError(f"no answer from the child processes in {timeout_s:g} s")


def test_processes_share_one_budget_and_use_it(redis_url: str, redis_client: redis.Redis) -> None:
    count, window_s, duration_s, n = 10, 1.0, 2.5, 4
    key = limiter_key("emailmassivo", "mp-test")
    url = redis_url + "/15"

    per_process: list[list[float]] = _race(
        _procs.hammer, n, (url, key, count, window_s, duration_s), lambda: None
    )

    grants = sorted(t for times in per_process for t in times)
    # Safety: no 1 s window, as seen by a provider on this host, holds more than the limit.
    assert max_in_window(grants, window_s) <= count, grants
    # Efficiency: a sliding log starting with a full budget can grant `count` per window.
    ideal = count * math.ceil(duration_s / window_s)
    assert len(grants) >= 0.9 * ideal, (len(grants), ideal)
    # And the budget really was shared: more than one process got grants.
    assert sum(1 for times in per_process if times) > 1


def test_exactly_one_process_wins_the_half_open_probe(
    redis_url: str, redis_client: redis.Redis
) -> None:
    config = BreakerConfig(failure_threshold=2, window_s=5.0, open_s=0.2, probe_timeout_s=10.0)
    store = RedisHealthStore(redis_client, config=config)

    def open_then_let_it_half_open() -> None:
        store.record_failure("smspartner")
        assert store.record_failure("smspartner").state == "open"
        time.sleep(config.open_s + 0.02)
        assert store.state("smspartner").state == "half_open"

    results: list[tuple[bool, bool, str]] = _race(
        _procs.probe_race,
        6,
        (redis_url + "/15", "smspartner", config),
        open_then_let_it_half_open,
    )

    assert sorted(results) == [(False, False, "half_open")] * 5 + [(True, True, "half_open")]
