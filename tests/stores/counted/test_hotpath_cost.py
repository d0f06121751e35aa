"""What one single send costs in Redis commands, as ``INFO commandstats`` counts them.

A send of one SMS runs, against the shared-state Redis: ``begin`` (``HotPath.begin``, the
guard's mark cleared in it), the gate's ``sending`` (``HotPath.sending_chunk``), the limiter for
a provider without a rate limit, and ``finish`` with its tracking registration for a polled
provider (``HotPath.finish``). Every command counts, those the scripts run inside Lua included
(``EVALSHA`` is one more). The numbers are pinned exactly, per command, so a change that adds
one fails here and says which: raise them only with a reason in the commit
(docs/hot-path-cost.md lists what each one buys).
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from worker.stores import RedisRateLimiter, limiter_key
from worker.stores.health import RedisHealthStore
from worker.stores.hotpath import Closing, RedisHotPath
from worker.stores.hotpath.base import TrackingArgs
from worker.stores.ledger import RedisLedger
from worker.stores.metrics import RedisMetrics
from worker.stores.tracking import RedisTrackingStore, Tracked

from .._support import FakeClock

T0 = 1_700_000_000.5

BEGIN = {
    "evalsha": 1,
    "hdel": 1,  # the guard's main-process mark
    "hgetall": 1,  # the record
    "set": 1,  # the send lock (NX PX)
    "hincrby": 1,  # runs_unfinished
    "hget": 1,  # the provider's pause
    "exists": 1,  # whether its breaker has state
}
SENDING = {
    "evalsha": 1,
    "hget": 1,  # the state, for the forward-only rule
    "hset": 1,  # state, updated_at and the attempt's fields
    "zadd": 1,  # the active set's score (the sweeper's clock)
}
LIMITER = {"exists": 1}  # no rate limit: only whether a hold is on
FINISH = {
    "evalsha": 1,
    "get": 1,  # the lock still ours?
    "hget": 2,  # the state (transition); the recipient's tracking state (apply)
    "hset": 4,  # record (+runs 0); index; recipient state (+~provider); watch
    "zrem": 1,  # off the active set
    "del": 1,  # the unlock
    "hincrby": 1,  # the provider's counter
    "exists": 1,  # whether its breaker has state
    "expire": 5,  # index, state, history, seen, watch: new keys, each its TTL
    "sadd": 1,  # the event's dedupe
    "rpush": 1,  # history
    "hsetnx": 1,  # the watch, once
    "zadd": 1,  # the poll schedule
    "lpop": 1,  # the orphans kept for the provider message id
}


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    out = {}
    for name, row in stats.items():
        command = name.removeprefix("cmdstat_")
        if command.split("|")[0] not in ("info", "config"):
            out[command] = int(row["calls"])
    return out


def _counted(client: redis.Redis, step: Callable[[], object]) -> dict[str, int]:
    client.config_resetstat()
    step()
    return _calls(client)


def test_one_single_send_runs_the_pinned_commands(redis_client: redis.Redis) -> None:
    clock = FakeClock(T0)
    ledger = RedisLedger(redis_client, clock=clock)
    hot = RedisHotPath(
        redis_client,
        health=RedisHealthStore(redis_client),
        metrics=RedisMetrics(redis_client),
        tracking=RedisTrackingStore(redis_client, clock=clock),
        clock=clock,
    )
    limiter = RedisRateLimiter(redis_client)
    key = limiter_key("smspartner", "203.0.113.7")

    def send(delivery_id: str, pmid: str) -> dict[str, dict[str, int]]:
        ledger.create(delivery_id, channel="sms", provider="smspartner")
        mark = ("dw:main:" + delivery_id, "w1")
        redis_client.hset(*mark, 1)
        counts = {}

        def begin() -> None:
            assert hot.begin(delivery_id, "tok", 5.0, providers=["smspartner"], mark=mark).runs

        counts["begin"] = _counted(redis_client, begin)
        fields = {"provider": "smspartner", "attempts": "1"}
        counts["sending"] = _counted(
            redis_client, lambda: hot.sending_chunk([(delivery_id, fields)])
        )
        counts["limiter"] = _counted(redis_client, lambda: limiter.acquire(key, []))
        closing = Closing(
            "sent",
            {"sent_at": repr(T0), "result": "{}"},
            "smspartner",
            "sent",
            True,
            TrackingArgs("smspartner", [Tracked("+3361****78", pmid, None)], T0, T0 + 60, False),
        )

        def finish() -> None:
            assert hot.finish(delivery_id, "tok", reset_runs=True, closing=closing).changed

        counts["finish"] = _counted(redis_client, finish)
        return counts

    send("warm", "1")  # scripts loaded (a first EVALSHA answers NOSCRIPT, then SCRIPT LOAD)
    counts = send("d1", "2")

    assert counts == {"begin": BEGIN, "sending": SENDING, "limiter": LIMITER, "finish": FINISH}
    total = sum(sum(c.values()) for c in counts.values())
    assert total == 34
    # The send did what it must: sent, unlocked, counted, tracked.
    assert redis_client.hget("dw:delivery:d1", "state") == b"sent"
    assert redis_client.hget("dw:delivery:d1", "runs_unfinished") == b"0"
    assert redis_client.exists("dw:lock:d1", "dw:main:d1") == 0
    assert redis_client.hget("dw:track:msg:smspartner:2", "+3361****78") == b"d1"
    assert redis_client.zscore("dw:track:poll", "d1") == T0 + 60
