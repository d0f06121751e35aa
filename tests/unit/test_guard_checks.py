"""The guard's header checks: what Celery's Request cannot read is refused and recorded, never
left for Celery to drop without an outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest

# The guard checks a message's arguments against the registered task's own signature: the
# worker's app with its tasks (a stub of the same name on another app would clash with them,
# since Celery shares every task with every app it finalizes).
import tasks  # noqa: F401  (registers the tasks on the worker's app)
from worker.app import app as APP
from worker.guard.checks import Accepted, Refusal, inspect_message
from worker.limits import MessageLimits


class Message:
    content_type = "application/json"

    def __init__(self, **headers: Any) -> None:
        self.headers = {"id": "t-1", "task": "tasks.send_sms", **headers}
        self.payload = [[{"provider": "smspartner"}], {}, None]
        self.body = json.dumps(self.payload).encode()

    def decode(self) -> Any:
        return self.payload


def inspect(message: Message) -> Accepted | Refusal:
    return inspect_message(message, {"tasks.send_sms": None}, APP, MessageLimits())


@pytest.mark.parametrize(
    "headers",
    [
        {"eta": "2020-13-45"},
        {"eta": 5},
        {"expires": "not-a-date"},
        {"expires": ["x"]},
    ],
)
def test_unreadable_eta_or_expires_is_refused_by_name(headers: dict[str, Any]) -> None:
    verdict = inspect(Message(**headers))
    assert isinstance(verdict, Refusal) and verdict.kind == "invalid_message"
    assert verdict.task_id == "t-1"
    (name,) = headers
    assert f"the {name} header" in verdict.reason


def test_readable_eta_and_expires_pass() -> None:
    message = Message(eta="2030-01-01T00:00:00+00:00", expires="2030-01-02T00:00:00")
    assert isinstance(inspect(message), Accepted)


def test_a_redis_refusal_in_the_guard_restarts_the_consumer_instead_of_killing_it() -> None:
    """Celery's consumer survives connection errors only; an OOM or READONLY answer from Redis
    while the guard records something must become one, never escape as a crash."""
    import redis

    from worker.guard.consumer import redis_errors_as_connection_errors

    @redis_errors_as_connection_errors
    def refused(message: Any) -> Any:
        raise redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'")

    with pytest.raises(redis.ConnectionError, match="shared state unavailable"):
        refused(object())

    @redis_errors_as_connection_errors
    def passes(message: Any) -> Any:
        return message

    assert passes("m") == "m"
