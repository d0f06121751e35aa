"""Crash marks of the message guard on a real Redis: a mark that could not be cleared (Redis
restarting) must not make the task's next delivery look like a crash of a living worker."""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from worker.config import Settings
from worker.guard import MAIN_MARK_PREFIX, MessageGuard
from worker.guard.checks import Accepted


class FlakyDelete(redis.Redis):
    """A client whose next ``delete`` fails as if Redis were restarting."""

    fail_next_delete = False

    def delete(self, *names: Any) -> Any:
        if self.fail_next_delete:
            self.fail_next_delete = False
            raise redis.ConnectionError("Redis is restarting")
        return super().delete(*names)


class Body:
    """The part of a kombu message the guard reads when it refuses one."""

    def decode(self) -> Any:
        return [[{"provider": "smspartner"}], {}, None]


def guard_on(redis_client: redis.Redis) -> tuple[MessageGuard, FlakyDelete]:
    kwargs = redis_client.connection_pool.connection_kwargs
    client = FlakyDelete(**{k: kwargs[k] for k in ("host", "port", "db")})
    settings = Settings(max_main_process_crashes=1)
    return MessageGuard(Celery("guard-test"), settings, client=client), client


def test_a_mark_left_by_a_failed_clear_is_not_a_crash(redis_client: redis.Redis) -> None:
    guard, client = guard_on(redis_client)
    task = Accepted("t-1", "tasks.send_sms")
    assert guard.mark(task, Body()) is None
    client.fail_next_delete = True
    guard.unmark("t-1")  # the pool took it; clearing fails, and must not raise
    assert redis_client.get(MAIN_MARK_PREFIX + "t-1") == b"1"
    # Redis is back; the sweeper re-enqueues the task and this same worker takes it again.
    assert guard.mark(task, Body()) is None
    guard.unmark("t-1")
    assert redis_client.get(MAIN_MARK_PREFIX + "t-1") is None


def test_a_pending_clear_is_retried_before_the_next_mark(redis_client: redis.Redis) -> None:
    guard, client = guard_on(redis_client)
    guard.mark(Accepted("t-1", "tasks.send_sms"), Body())
    client.fail_next_delete = True
    guard.unmark("t-1")
    guard.mark(Accepted("t-2", "tasks.send_sms"), Body())
    # Cleared before t-2 was marked: another worker taking t-1 now sees no crash.
    assert redis_client.get(MAIN_MARK_PREFIX + "t-1") is None
    other, _ = guard_on(redis_client)
    assert other.mark(Accepted("t-1", "tasks.send_sms"), Body()) is None


def test_a_mark_left_by_a_dead_main_process_is_a_crash(redis_client: redis.Redis) -> None:
    dead, _ = guard_on(redis_client)
    dead.mark(Accepted("t-9", "tasks.send_sms"), Body())  # then the process died
    survivor, _ = guard_on(redis_client)
    refusal = survivor.mark(Accepted("t-9", "tasks.send_sms"), Body())
    assert refusal is not None and refusal.kind == "dead_letter"
    assert "died 1 time(s)" in refusal.reason
