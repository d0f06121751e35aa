"""Batching (``DELIVERY_BATCHING``, ``worker.batching``) over real processes: a real ``celery
worker``, redis-server and the sandbox's SMS Partner (``/send``, ``/bulk-send``, status by tag,
its magic numbers: ``…0014`` STOP-listed, ``+33600000022`` a marketing refusal)."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

_SOAK_PATH = Path(__file__).resolve().parents[2] / "bench" / "fault_soak.py"


def _load_soak() -> Any:
    spec = importlib.util.spec_from_file_location("fault_soak", _SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


soak = sys.modules.get("fault_soak") or _load_soak()

STOP = "+33612340014"  # the sandbox STOP-lists every number ending 0014
MARKETING = "+33600000022"  # the sandbox answers code 22 (outside the legal hours)


@pytest.fixture
def stack(redis_url: str, sandbox_url: str, stack_env: dict[str, str], tmp_path: Path) -> Any:
    env = {
        **stack_env,
        **soak.FAST_ENV,
        "DELIVERY_BROKER_URL": f"{redis_url}/12",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/13",
        "DELIVERY_BATCHING": "1",
        # Long enough that every message enqueued below lands in the same batch.
        "DELIVERY_BATCH_LINGER_S": "1.0",
    }
    return soak.Stack(env=env, sandbox_url=sandbox_url, workdir=tmp_path)


def _sms(number: str, text: str) -> dict[str, Any]:
    return {"provider": "smspartner", "to": [number], "text": text}


def test_a_refused_entry_fails_only_its_message(stack: Any) -> None:
    with soak.Run(stack, "batch-refusal") as run:
        run.start_workers(1, 2)
        good = [f"+336120000{n:02d}" for n in (1, 3, 5)]
        numbers = [*good, STOP, MARKETING]
        ids = [run.producer.enqueue("sms", _sms(n, f"Code {i}")).id for i, n in enumerate(numbers)]
        states = run.wait_final([ids[i] for i in (0, 1, 2, 3)], 30)
        assert list(states.values()) == ["sent", "sent", "sent", "failed"]

        requests = run.admin.requests("smspartner")
        assert [r["route"] for r in requests] == ["/bulk-send"]  # one request for all five
        accepted = run.admin.messages("smspartner")
        assert len(accepted) == 1 and sorted(accepted[0]["recipients"]) == sorted(good)

        for delivery_id in ids[:3]:
            result = run.client.AsyncResult(delivery_id).get(timeout=10)
            assert result["status"] == "sent" and result["delivery_id"] == delivery_id
            assert list(result["provider_message_ids"].values()) == [accepted[0]["message_id"]]
        refused = run.client.AsyncResult(ids[3]).get(timeout=10)
        assert (refused["status"], refused["error"]["kind"]) == ("failed", "recipient_rejected")
        assert refused["error"]["code"] == "14"
        # Code 22 defers only its own message, to the next legal slot (not a failure), held on
        # the durable schedule until then (worker.scheduling).
        deferred = run.ledger.get(ids[4])
        assert deferred is not None and deferred.state == "scheduled"
        assert deferred.fields.get("waiting_reason") == "deferred"
        for delivery_id in ids[:4]:
            record = run.ledger.get(delivery_id)
            assert record is not None and record.attempts == 1
            assert record.fields.get("batch_tags") == accepted[0]["tag"]


def test_one_text_goes_as_one_send_and_a_stop_number_in_it_costs_one_bulk_retry(
    stack: Any,
) -> None:
    with soak.Run(stack, "batch-send") as run:
        run.start_workers(1, 2)
        good = [f"+336120001{n:02d}" for n in (1, 3, 5, 7)]
        ids = [run.producer.enqueue("sms", _sms(n, "Rappel : RDV demain 9h")).id for n in good]
        assert set(run.wait_final(ids, 30).values()) == {"sent"}
        assert [r["route"] for r in run.admin.requests("smspartner")] == ["/send"]
        (accepted,) = run.admin.messages("smspartner")
        assert accepted["fields"]["phoneNumbers"] == ",".join(good)

        run.admin.reset()
        more = [f"+336120002{n:02d}" for n in (1, 3)]
        ids = [
            run.producer.enqueue("sms", _sms(n, "Rappel : RDV demain 9h")).id for n in [*more, STOP]
        ]
        states = run.wait_final(ids, 30)
        assert list(states.values()) == ["sent", "sent", "failed"]
        # /send refuses the whole request for the STOP number (nothing accepted); /bulk-send
        # then answers per entry.
        routes = [(r["route"], r["status"]) for r in run.admin.requests("smspartner")]
        assert routes == [("/send", 200), ("/bulk-send", 200)] or routes == [
            ("/send", 400),
            ("/bulk-send", 200),
        ]
        (accepted,) = run.admin.messages("smspartner")
        assert sorted(accepted["recipients"]) == sorted(more)


def test_a_lost_answer_is_reconciled_per_message_without_resending_accepted_ones(
    stack: Any,
) -> None:
    with soak.Run(stack, "batch-lost") as run:
        run.start_workers(1, 2)
        # The sandbox processes the first /bulk-send, then drops the connection unanswered.
        rule = {
            "provider": "smspartner",
            "path": "/bulk-send",
            "action": "accept_then_drop",
            "first_n": 1,
        }
        run.admin.set_faults([rule])
        good = [f"+336120003{n:02d}" for n in (1, 3, 5, 7, 9)]
        numbers = [*good, STOP]
        ids = [run.producer.enqueue("sms", _sms(n, f"Code {i}")).id for i, n in enumerate(numbers)]
        states = run.wait_final(ids, 45)
        assert list(states.values()) == ["sent"] * 5 + ["failed"]

        requests = run.admin.requests("smspartner")
        routes = Counter(r["route"] for r in requests)
        # One batch; each message asked the status by the batch's tag after the grace; only
        # the STOP number, not accepted under the tag, was sent again (alone) and refused.
        assert routes["/bulk-send"] == 1, routes
        assert routes["/bulk-status-by-tag"] >= len(numbers), routes
        assert routes["/send"] == 1, routes
        accepted = run.admin.messages("smspartner")
        copies = Counter(n for m in accepted for n in m["recipients"])
        assert copies == Counter(good)  # each accepted exactly once
        for delivery_id in ids[:5]:
            result = run.client.AsyncResult(delivery_id).get(timeout=10)
            assert result["status"] == "sent"
            assert list(result["provider_message_ids"].values()) == [accepted[0]["message_id"]]
        stop_result = run.client.AsyncResult(ids[5]).get(timeout=10)
        assert stop_result["error"]["code"] == "14"


def test_sigkill_mid_batch_loses_and_duplicates_nothing(stack: Any) -> None:
    """The fault suite's batching scenario (bench/fault_soak.py ``batch-sigkill``)."""
    figures = soak.scenario_batch_sigkill(stack, messages=120, kills=2, timeout_s=120.0)
    assert figures.checks["kills_while_sending"] >= 1
    assert figures.checks["tasks_interrupted"] >= 1
    assert figures.checks["workers_alive"]
    assert figures.lost == 0 and figures.duplicated == 0, figures.summary()
    assert figures.states == {"sent": 120}, figures.summary()
    # Batched: far fewer requests than messages, and the killed batches were looked up.
    assert figures.checks["batch_requests"] < 40
    assert figures.checks["status_checks"] >= 1


def test_scheduled_at_the_provider_and_cancelled_messages_never_ride_in_a_batch(
    stack: Any,
) -> None:
    """Buffered together with ordinary SMS: two messages the provider is to hold until their
    time (``send_at``, docs/providers/smspartner.md §1.2.2 schedule fields) go alone with those
    fields, and one cancelled while it waits in the broker or the batch buffer is never sent."""
    from datetime import UTC, datetime, timedelta

    t = datetime.now(UTC) + timedelta(minutes=10)
    when = t.replace(second=0, microsecond=0) + timedelta(minutes=(5 - t.minute % 5) % 5)
    with soak.Run(stack, "batch-schedule-cancel") as run:
        run.start_workers(1, 2)
        text = "Rappel : RDV demain 9h"
        cancelled = run.producer.enqueue("sms", _sms("+33612000401", text)).id
        assert run.producer.cancel(cancelled).answer == "cancelled"
        plain = [
            run.producer.enqueue("sms", _sms(n, text)).id for n in ("+33612000403", "+33612000405")
        ]
        scheduled = {
            "send_at": when.isoformat(),
            "deadline": (when + timedelta(hours=1)).isoformat(),
        }
        held = [
            run.producer.enqueue("sms", {**_sms(n, text), **scheduled}).id
            for n in ("+33612000407", "+33612000409")
        ]
        states = run.wait_final([*plain, cancelled], 30)
        assert list(states.values()) == ["sent", "sent", "cancelled"]
        for delivery_id in held:
            record = run.ledger.get(delivery_id)
            for _ in range(100):
                if record is not None and record.fields.get("provider_scheduled") == "1":
                    break
                time.sleep(0.1)
                record = run.ledger.get(delivery_id)
            assert record is not None and record.state == "scheduled"
            assert record.fields.get("provider_scheduled") == "1"
        accepted = run.admin.messages("smspartner")
        by_numbers = {",".join(sorted(m["recipients"])): m["fields"] for m in accepted}
        assert sorted(by_numbers) == ["+33612000403,+33612000405", "+33612000407", "+33612000409"]
        assert "scheduledDeliveryDate" not in by_numbers["+33612000403,+33612000405"]
        for number in ("+33612000407", "+33612000409"):
            assert by_numbers[number]["minute"] == when.minute  # alone, with its schedule
        assert all("+33612000401" not in m["recipients"] for m in accepted)
