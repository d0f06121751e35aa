"""Crash marks of the message guard on a real Redis: only a holder that is gone counts as a
crash; a living worker's mark (a concurrent copy, or one it could not clear while Redis
restarted) never does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from worker.config import Settings
from worker.guard import ALIVE_PREFIX, MAIN_MARK_PREFIX, MessageGuard
from worker.guard.checks import Accepted

TASK = Accepted("t-1", "tasks.send_sms")


class FlakyDelete(redis.Redis):
    """A client whose next ``hdel`` fails as if Redis were restarting."""

    fail_next = False

    def hdel(self, name: Any, *keys: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise redis.ConnectionError("Redis is restarting")
        return super().hdel(name, *keys)


class Body:
    """The part of a kombu message the guard reads when it refuses one."""

    def decode(self) -> Any:
        return [[{"provider": "smspartner"}], {}, None]


@pytest.fixture
def guards(redis_client: redis.Redis) -> Iterator[list[tuple[MessageGuard, FlakyDelete]]]:
    made: list[tuple[MessageGuard, FlakyDelete]] = []
    yield made
    for guard, _ in made:
        guard.stop()


def new_guard(
    redis_client: redis.Redis, made: list[tuple[MessageGuard, FlakyDelete]]
) -> tuple[MessageGuard, FlakyDelete]:
    kwargs = redis_client.connection_pool.connection_kwargs
    client = FlakyDelete(**{k: kwargs[k] for k in ("host", "port", "db")})
    guard = MessageGuard(Celery("guard-test"), Settings(max_main_process_crashes=1), client=client)
    guard.start()
    made.append((guard, client))
    return guard, client


def holders(redis_client: redis.Redis) -> int:
    return int(redis_client.hlen(MAIN_MARK_PREFIX + TASK.task_id))


def test_a_mark_this_worker_could_not_clear_is_not_a_crash(
    redis_client: redis.Redis, guards: Any
) -> None:
    guard, client = new_guard(redis_client, guards)
    assert guard.mark(TASK, Body()) is None
    client.fail_next = True
    guard.unmark(TASK.task_id)  # the pool took it; clearing fails, and must not raise
    assert holders(redis_client) == 1
    # Redis is back; the sweeper re-enqueues the task and this same worker takes it again.
    assert guard.mark(TASK, Body()) is None
    guard.unmark(TASK.task_id)
    assert holders(redis_client) == 0


def test_a_concurrent_copy_on_a_living_worker_is_not_a_crash(
    redis_client: redis.Redis, guards: Any
) -> None:
    first, _ = new_guard(redis_client, guards)
    second, _ = new_guard(redis_client, guards)
    assert first.mark(TASK, Body()) is None  # a copy waiting for a pool process here...
    assert second.mark(TASK, Body()) is None  # ...and another one there: both alive
    assert holders(redis_client) == 2
    first.unmark(TASK.task_id)
    second.unmark(TASK.task_id)
    assert holders(redis_client) == 0


def test_a_pending_clear_is_retried_before_the_next_mark(
    redis_client: redis.Redis, guards: Any
) -> None:
    guard, client = new_guard(redis_client, guards)
    guard.mark(TASK, Body())
    client.fail_next = True
    guard.unmark(TASK.task_id)
    guard.mark(Accepted("t-2", "tasks.send_sms"), Body())
    assert holders(redis_client) == 0  # cleared before t-2 was marked


def test_a_mark_left_by_a_dead_main_process_is_a_crash(
    redis_client: redis.Redis, guards: Any
) -> None:
    dead, _ = new_guard(redis_client, guards)
    dead.mark(TASK, Body())
    dead.stop()  # the process died: no more beats, and its liveness key is gone
    redis_client.delete(ALIVE_PREFIX + dead.token)
    survivor, _ = new_guard(redis_client, guards)
    refusal = survivor.mark(TASK, Body())
    assert refusal is not None and refusal.kind == "dead_letter"
    assert "died 1 time(s)" in refusal.reason
    assert holders(redis_client) == 0  # cleared, so a replay is not refused again


def test_a_send_handed_with_the_token_is_cleared_by_its_run(
    redis_client: redis.Redis, guards: Any
) -> None:
    """The pool took a send carrying this guard's token: the main process sends nothing (the
    run's first step clears the mark), and forgets it locally; a redelivery of the same task to
    this worker is then marked again, not taken for its own earlier copy."""
    from worker.guard import consumer

    guard, _ = new_guard(redis_client, guards)
    consumer._current = guard
    try:
        assert guard.mark(TASK, Body()) is None
        consumer.task_accepted(TASK.task_id, guard.token)
        assert TASK.task_id not in guard.marked
        assert holders(redis_client) == 1  # left for the run (worker.stores.hotpath.begin)
        redis_client.hdel(MAIN_MARK_PREFIX + TASK.task_id, guard.token)  # what the run does
        # Another guard's token (or none): the main process clears the mark itself.
        assert guard.mark(TASK, Body()) is None
        consumer.task_accepted(TASK.task_id, "another-worker:1:abc")
        assert holders(redis_client) == 0
        # A handed send whose pool process died before its run began: cleared on failure.
        assert guard.mark(TASK, Body()) is None
        consumer.task_accepted(TASK.task_id, guard.token)
        assert holders(redis_client) == 1
        consumer.task_failed(TASK.task_id, guard.token)
        assert holders(redis_client) == 0
    finally:
        consumer._current = None
