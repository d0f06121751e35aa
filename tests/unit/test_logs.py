"""Logs are JSON events whose secrets, bodies and addresses are redacted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from worker.errors import TransientError
from worker.logs import configure_logging
from worker.redaction import register_secret


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[callable]:  # type: ignore[valid-type]
    configure_logging("INFO", "json")

    def read() -> list[dict[str, object]]:
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.strip()]

    yield read
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    logging.getLogger().handlers.clear()


def test_events_are_json_with_bound_context(log_lines) -> None:  # type: ignore[no-untyped-def]
    structlog.contextvars.bind_contextvars(task_id="t-1", provider="postal", attempt=2)
    structlog.get_logger("test").info("delivery.sent", recipients=1)
    (event,) = log_lines()
    assert event["event"] == "delivery.sent"
    assert (event["task_id"], event["provider"], event["attempt"]) == ("t-1", "postal", 2)
    assert event["level"] == "info"
    assert "timestamp" in event


def test_secrets_bodies_and_addresses_never_appear(log_lines) -> None:  # type: ignore[no-untyped-def]
    secret = "live-key-9f8e7d6c5b4a"
    register_secret(secret)
    error = TransientError(f"provider echoed apiKey={secret} for ada@example.com")
    structlog.get_logger("test").warning(
        "delivery.retry_scheduled",
        api_key=secret,
        html="<p>your password reset link</p>",
        to=["ada@example.com", "+33612345678"],
        error=str(error),
        note=f"key {secret} in free text",
    )
    logging.getLogger("celery.worker").info("stdlib line mentions %s", "bob@example.com")
    raw = json.dumps(log_lines())
    for leaked in (secret, "password reset", "ada@example.com", "+33612345678", "bob@example.com"):
        assert leaked not in raw
    assert "a***@example.com" in raw
    assert "[secret]" in raw


def test_httpx_request_lines_are_silenced(log_lines) -> None:  # type: ignore[no-untyped-def]
    logging.getLogger("httpx").info("HTTP Request: GET https://api.test/v1/me?apiKey=abc")
    assert log_lines() == []
