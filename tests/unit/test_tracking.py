"""Tracking in the worker on in-memory stores: register on sent, poll, apply, notify, hint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.config import Settings
from worker.delivery import Done, process
from worker.runtime import Runtime
from worker.tracking.intake import take_events, take_hint
from worker.tracking.poller import poll_round
from worker.tracking.service import flush_pending, notification_id
from worker.tracking.status import delivery_status, render

SMS = {"provider": "smspartner", "to": ["+33612345678", "+33612345679"], "text": "hi"}
MAIL = {
    "provider": "mailpartner",
    "to": [{"email": "ann@example.com"}],
    "subject": "s",
    "html": "<p>x</p>",
}


class Provider:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.status = "Waiting"
        self.mail_ids = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path.endswith("/send") and "smspartner" in str(request.url):
            return httpx.Response(200, json={"success": True, "code": 200, "message_id": 307})
        if path.endswith("/send"):
            self.mail_ids += 1
            mail_id = "m9" if self.mail_ids == 1 else f"m9-{self.mail_ids}"
            return httpx.Response(200, json={"success": True, "code": 200, "messageId": mail_id})
        if path.endswith("/multi-status"):
            items = [
                {
                    "success": True,
                    "code": 200,
                    "phoneNumber": p["phoneNumber"],
                    "messageId": p["messageId"],
                    "status": self.status,
                    "date": "1700000000",
                }
                for p in json.loads(request.content)["SMSStatut_List"]
            ]
            return httpx.Response(
                200, json={"success": True, "code": 200, "StatutResponse_List": items}
            )
        if path.endswith("/bulk-status"):
            return httpx.Response(
                200,
                json={
                    "success": True,
                    "code": 200,
                    "messageId": "m9",
                    "StatutResponseList": [
                        {"email": "ann@example.com", "status": self.status, "date": "1700000000"}
                    ],
                },
            )
        return httpx.Response(404)

    def paths(self) -> list[str]:
        return [r.url.path.rsplit("/", 1)[-1] for r in self.requests]


class Published:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str, str]] = []

    def __call__(self, task: str, payload: dict[str, Any], task_id: str, queue: str) -> None:
        self.calls.append((task, payload, task_id, queue))


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def make(provider: Provider) -> Iterator[Any]:
    made: list[Runtime] = []

    def build(**overrides: Any) -> Runtime:
        settings = Settings(
            smspartner_api_key="sms-secret-key",
            smspartner_base_url="http://provider.test/smspartner/v1",
            mailpartner_api_key="mail-secret-key",
            mailpartner_base_url="http://provider.test/mailpartner/v1",
            events_task="myapp.on_event",
            **overrides,
        )
        rt = Runtime.in_memory(
            settings, client=httpx.Client(transport=httpx.MockTransport(provider.handler))
        )
        rt.event_publisher = Published()
        made.append(rt)
        return rt

    yield build
    for rt in made:
        rt.close()


def send(
    rt: Runtime, message: dict[str, Any] = SMS, delivery_id: str = "d-1", channel: str = "sms"
) -> None:
    outcome = process(
        channel, message, delivery_id=delivery_id, task_name=f"tasks.send_{channel}", rt=rt
    )
    assert isinstance(outcome, Done) and outcome.result.status == "sent"


def test_a_sent_delivery_is_tracked_and_polled_to_delivered(make: Any, provider: Provider) -> None:
    rt = make()
    publish = Published()
    send(rt)
    status = delivery_status("d-1", rt=rt)
    assert status is not None and status["polling"]
    assert {r: s["state"] for r, s in status["recipients"].items()} == {
        "+3361*****78": "sent",
        "+3361*****79": "sent",
    }
    # not due yet: nothing asked
    assert poll_round(rt, publish=publish).requests == 0
    later = rt.tracking.watch("d-1")
    assert later is not None
    report = poll_round(rt, now=later.started_at + 61, publish=publish)
    assert report.requests == 1 and provider.paths()[-1] == "multi-status"  # one batch, 2 numbers
    provider.status = "Delivered"
    report = poll_round(rt, now=later.started_at + 61 + 121, publish=publish)
    assert report.requests == 1 and report.finished == 1
    status = delivery_status("d-1", rt=rt)
    assert status is not None and not status["polling"]
    assert {s["state"] for s in status["recipients"].values()} == {"delivered"}
    assert [e["type"] for e in status["history"]] == [
        "sent",
        "sent",
        "queued",
        "queued",
        "delivered",
        "delivered",
    ]
    assert rt.metrics.read("smspartner")["tracking_lookups"] == 2
    text = render(status)
    assert "+33612345678" not in text and "delivered" in text


def test_backoff_doubles_and_polling_stops_in_time(make: Any, provider: Provider) -> None:
    rt = make(tracking_poll_first_s=10, tracking_poll_max_backoff_s=40, tracking_poll_max_s=200)
    send(rt)
    watch = rt.tracking.watch("d-1")
    assert watch is not None
    t0 = watch.started_at
    asked_at = []
    now = t0
    while now < t0 + 400:
        now += 1
        if poll_round(rt, now=now).requests:
            asked_at.append(round(now - t0))
    assert asked_at == [10, 30, 70, 110, 150, 190]  # +20, +40 (capped), ...
    assert rt.tracking.watch("d-1") is None  # gave up after max_s
    assert rt.metrics.read("smspartner")["tracking_poll_gave_up"] == 1


def test_lookups_share_the_send_budget(make: Any, provider: Provider) -> None:
    rt = make(rate_limits={"mailpartner": {"send": "3/min"}}, limiter_max_inline_wait_s=0)
    send(rt, MAIL, "m-0", "email")
    send(rt, MAIL, "m-1", "email")
    # Two sends and one lookup fit the 3/min budget; the second lookup waits, unpolled.
    watch = rt.tracking.watch("m-1")
    assert watch is not None
    report = poll_round(rt, now=watch.started_at + 61)
    assert (report.requests, report.deferred) == (1, 1)
    assert provider.paths().count("bulk-status") == 1
    deferred = [d for d in ("m-0", "m-1") if (w := rt.tracking.watch(d)) and w.polls == 0]
    assert len(deferred) == 1  # no backoff step for the one not asked


def test_events_are_applied_once_in_order_and_published(make: Any, provider: Provider) -> None:
    rt = make()
    publish = rt.event_publisher
    assert isinstance(publish, Published)
    send(rt, MAIL, "m-1", "email")
    assert [c[1]["type"] for c in publish.calls] == ["sent"]
    publish.calls.clear()
    base = {
        "provider": "mailpartner",
        "provider_message_id": "m9",
        "occurred_at": 1.0,
        "source": "webhook",
    }
    events = [
        {**base, "event_id": "e1", "type": "delivered"},
        {**base, "event_id": "e1", "type": "delivered"},  # a provider retry
        {**base, "event_id": "e0", "type": "sent"},  # late, out of order
        {**base, "event_id": "e2", "type": "opened", "delivery_id": "other"},  # refused
        {"event_id": "bad"},
        "junk",
    ]
    result = take_events(rt, events, publish=publish)
    assert result["new"] == 2 and result["duplicates"] == 1 and result["moved"] == 1
    assert result["refused"] == 3 and "1 invalid" not in result["reason"]
    assert flush_pending(rt, publish=publish) == 0
    types = [(c[1]["type"], c[1]["current_state"]) for c in publish.calls]
    assert types == [("delivered", "delivered"), ("sent", "delivered")]
    task, payload, task_id, queue = publish.calls[0]
    assert (task, queue) == ("myapp.on_event", "delivery-events")
    assert task_id == notification_id("m-1", "e1")
    assert payload["recipient"] == "a***@example.com" and payload["delivery_id"] == "m-1"
    assert "ann@example.com" not in json.dumps([c[1] for c in publish.calls])


def test_bad_messages_end_with_a_reason(make: Any) -> None:
    rt = make()
    assert take_events(rt, "x")["status"] == "refused"
    assert "at most" in take_events(rt, [{}] * 501)["reason"]
    assert take_hint(rt, "nope", "d")["status"] == "refused"
    assert take_hint(rt, "smspartner", "\n")["status"] == "refused"
    assert take_hint(rt, "voicepartner", "d")["status"] == "ignored"
    assert take_hint(rt, "smspartner", "never-sent")["status"] == "ignored"


def test_a_hint_looks_up_now(make: Any, provider: Provider) -> None:
    rt = make()
    send(rt)
    provider.status = "Not delivered"
    assert take_hint(rt, "mailpartner", "d-1")["status"] == "refused"
    result = take_hint(rt, "smspartner", "d-1")
    assert result == {"status": "looked_up", "requests": 1, "events": 2}
    status = delivery_status("d-1", rt=rt)
    assert status is not None and {s["state"] for s in status["recipients"].values()} == {"failed"}
    assert rt.tracking.watch("d-1") is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
EVENTISH = st.fixed_dictionaries(
    {
        "event_id": st.text(max_size=30) | JSON,
        "type": st.sampled_from(["delivered", "bounced", "nope", ""]) | JSON,
        "provider": st.sampled_from(["postal", "smspartner", "x"]) | JSON,
        "provider_message_id": st.sampled_from(["m9", "307", ""]) | JSON,
        "occurred_at": st.floats() | JSON,
        "source": st.sampled_from(["webhook", "callback", "send", "poll"]) | JSON,
    },
    optional={"raw": JSON, "recipient": JSON, "delivery_id": JSON, "extra": JSON},
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=JSON | st.lists(EVENTISH | JSON, max_size=6), provider=JSON, delivery_id=JSON)
def test_hostile_task_arguments_end_with_a_result(
    make: Any, events: Any, provider: Any, delivery_id: Any
) -> None:
    rt = make()
    result = take_events(rt, events)
    assert result["status"] in ("applied", "refused")
    json.dumps(result)
    hint = take_hint(rt, provider, delivery_id)
    assert hint["status"] in ("refused", "ignored")
