"""Scheduling per chunk over real processes (a real ``celery worker`` and its schedule mover,
redis-server, the sandbox's SMS Partner): a campaign with ``send_at`` or in quiet hours is held
on the ledger's schedule at enqueue and leaves in one provider request per chunk when due;
one held message can be cancelled alone."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.config import Settings
from worker.stores.keys import Keys

from .test_campaign import _copies, _numbers, _sms
from .test_campaign import stack as stack  # the fixture

pytestmark = pytest.mark.integration

SENDS = ("/send", "/bulk-send")


def _sends(run: Any) -> list[dict[str, Any]]:
    return [r for r in run.admin.requests("smspartner") if r["route"] in SENDS]


def _held(run: Any, ids: list[str]) -> dict[str, float]:
    """Each delivery's ``scheduled_for`` while every one is ``scheduled``."""
    assert set(run.states(ids).values()) == {"scheduled"}
    return {i: float(run.redis.hget(Keys().delivery(i), "scheduled_for")) for i in ids}


def test_a_campaign_with_send_at_is_held_then_sent_in_one_request_per_chunk(stack: Any) -> None:
    with stack_run(stack, "campaign-send-at") as run:
        run.start_workers(1, 2)
        at = time.time() + 8
        numbers = _numbers(11, 6)
        ids = run.producer.send_many("sms", [_sms(n, "Soldes", send_at=_iso(at)) for n in numbers])
        (due,) = set(_held(run, ids).values())  # one due time for the chunk
        assert due == pytest.approx(at, abs=1e-3)
        for delivery_id in ids:
            assert run.client.AsyncResult(delivery_id).state == "SCHEDULED"
        states = run.wait_final(ids, 60)
        assert set(states.values()) == {"sent"}
        sends = _sends(run)
        assert [r["route"] for r in sends] == ["/send"]  # one request for the chunk
        assert all(r["time"] >= at for r in sends)  # nothing left before its time
        assert _copies(run) == Counter(numbers)
        for delivery_id in ids:
            assert run.client.AsyncResult(delivery_id).get(timeout=10)["status"] == "sent"


def test_one_held_message_of_a_campaign_is_cancelled_the_others_leave_together(
    stack: Any,
) -> None:
    with stack_run(stack, "campaign-held-cancel") as run:
        run.start_workers(1, 2)
        at = time.time() + 8
        numbers = _numbers(12, 4)
        ids = run.producer.send_many("sms", [_sms(n, "Soldes", send_at=_iso(at)) for n in numbers])
        _held(run, ids)
        assert run.producer.cancel(ids[1]).answer == "cancelled"
        states = run.wait_final(ids, 60)
        assert list(states.values()) == ["sent", "cancelled", "sent", "sent"]
        sends = _sends(run)
        assert len(sends) == 1 and all(r["time"] >= at for r in sends)
        assert _copies(run) == Counter([numbers[0], numbers[2], numbers[3]])
        assert run.client.AsyncResult(ids[1]).get(timeout=10)["status"] == "cancelled"


def test_quiet_hours_hold_a_campaign_until_the_window_opens(
    stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A zone where it is around noon now (no midnight in the way), the window opening at the
    # next whole minute at least 5 s ahead.
    now = datetime.now(UTC)
    offset = 12 - now.hour  # hours east of UTC; Etc/GMT names have the sign reversed
    zone = f"Etc/GMT{-offset:+d}"
    opening = (now + timedelta(seconds=65)).replace(second=0, microsecond=0)
    local = opening + timedelta(hours=offset)
    window = f"{local:%H:%M}-{(local + timedelta(hours=2)):%H:%M}"
    quiet = json.dumps({"sms": {"window": window, "tz": zone}})
    settings = Settings(quiet_hours=quiet)
    monkeypatch.setattr("worker.producer.get_settings", lambda: settings)
    with stack_run(stack, "campaign-quiet") as run:
        run.start_workers(1, 2, env={"DELIVERY_QUIET_HOURS": quiet})
        numbers = _numbers(13, 5)
        ids = run.producer.send_many("sms", [_sms(n, "Soldes") for n in numbers])
        assert set(_held(run, ids).values()) == {opening.timestamp()}
        states = run.wait_final(ids, 150)
        assert set(states.values()) == {"sent"}
        sends = _sends(run)
        assert len(sends) == 1 and sends[0]["time"] >= opening.timestamp()
        assert _copies(run) == Counter(numbers)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def stack_run(stack: Any, scenario: str) -> Any:
    from .test_batching import soak

    return soak.Run(stack, scenario)


def test_a_voice_campaign_costs_one_request_per_chunk(stack: Any) -> None:
    """Voice Partner takes several numbers per request (docs/providers/voicepartner.md §3.2):
    a chunk of single-number calls with one text is one ``tts/send``, one campaign id."""
    with stack_run(stack, "campaign-voice") as run:
        run.start_workers(1, 2)
        numbers = _numbers(14, 6)
        calls = [
            {"provider": "voicepartner", "mode": "tts", "to": [n], "text": "Rappel"}
            for n in numbers
        ]
        calls.append({"provider": "voicepartner", "mode": "tts", "to": ["+33614009999"],
                      "text": "Autre"})  # fmt: skip
        ids = run.producer.send_many("voice", calls)
        states = run.wait_final(ids, 60)
        assert set(states.values()) == {"sent"}
        requests = run.admin.requests("voicepartner")
        assert [r["route"] for r in requests] == ["/tts/send", "/tts/send"]  # per content
        voice = Counter(n for m in run.admin.messages("voicepartner") for n in m["recipients"])
        assert voice == Counter([*numbers, "+33614009999"])
        results = [run.client.AsyncResult(i).get(timeout=10) for i in ids[:-1]]
        campaign_ids = {next(iter(r["provider_message_ids"].values())) for r in results}
        assert len(campaign_ids) == 1  # one campaign for the chunk's six numbers
