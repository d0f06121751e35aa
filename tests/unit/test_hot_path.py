"""The send pipeline through the hot path (``worker.stores.hotpath``), on the in-memory stores:
a run's first step clears the guard's mark, its last step writes ``sent`` with the unlock, the
run count, the counter and the tracking registration, and the breaker still hears a success."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog

from worker.config import Settings
from worker.delivery import Done, process
from worker.runtime import Runtime
from worker.stores.hotpath import ComposedHotPath

SMS = {"provider": "smspartner", "to": ["+33612345678"], "text": "Hello"}
OK = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038}


@pytest.fixture(autouse=True)
def _uncached_loggers() -> Iterator[None]:
    """Leave the pipeline's loggers uncached (an earlier test may have configured logging with
    caching on): later tests capture their events with ``structlog.testing.capture_logs``."""
    was = structlog.get_config()["cache_logger_on_first_use"]
    structlog.configure(cache_logger_on_first_use=False)
    yield
    structlog.configure(cache_logger_on_first_use=was)


@pytest.fixture
def rt() -> Iterator[Runtime]:
    settings = Settings(
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://provider.test/smspartner/v1",
    )
    client = httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(200, json=OK)))
    runtime = Runtime.in_memory(settings, client=client)
    yield runtime
    runtime.close()


GUARD = "w1:1:ab"


def run(rt: Runtime, message: Any = SMS, guard: str | None = GUARD) -> Any:
    return process(
        "sms", message, delivery_id="d-1", task_name="tasks.send_sms", rt=rt, guard_token=guard
    )


def test_the_run_clears_the_guards_mark_and_writes_sent_in_its_last_step(rt: Runtime) -> None:
    hot = rt.hotpath
    assert isinstance(hot, ComposedHotPath)
    outcome = run(rt)
    assert isinstance(outcome, Done) and outcome.result.status == "sent"
    assert hot.cleared_marks == [("dw:main:d-1", "w1:1:ab")]
    record = rt.ledger.get("d-1")
    assert record is not None
    assert record.state == "sent"
    assert record.fields["runs_unfinished"] == "0"
    assert record.result is not None and record.result["status"] == "sent"
    assert rt.ledger.lock("d-1", "other", 5.0) == 0.0  # unlocked
    assert rt.metrics.read("smspartner")["sent"] == 1
    status = rt.tracking.status("d-1")
    assert status is not None and status.provider == "smspartner"


def test_an_invalid_message_still_clears_the_mark(rt: Runtime) -> None:
    hot = rt.hotpath
    assert isinstance(hot, ComposedHotPath)
    outcome = run(rt, {"provider": "smspartner", "to": "not a list"})
    assert isinstance(outcome, Done) and outcome.result.status == "failed"
    assert hot.cleared_marks == [("dw:main:d-1", "w1:1:ab")]


def test_no_token_no_mark_to_clear(rt: Runtime) -> None:
    hot = rt.hotpath
    assert isinstance(hot, ComposedHotPath)
    assert isinstance(run(rt, guard=None), Done)
    assert hot.cleared_marks == []


def test_the_breaker_hears_the_success(rt: Runtime) -> None:
    rt.health.record_failure("smspartner")
    assert rt.health.state("smspartner").failures == 1
    assert isinstance(run(rt), Done)
    assert rt.health.state("smspartner").failures == 0  # a success ends the streak


def test_a_paused_provider_read_in_the_first_step_parks(rt: Runtime) -> None:
    rt.health.pause("smspartner", "no credit", "w1")
    outcome = run(rt)
    assert isinstance(outcome, Done) and outcome.result.status == "parked"
    record = rt.ledger.get("d-1")
    assert record is not None and record.state == "parked"
    assert rt.ledger.lock("d-1", "other", 5.0) == 0.0
