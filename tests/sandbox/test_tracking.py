"""The sandbox's delivery timeline: statuses over time, magic recipients, forced statuses, the
status-change publications, and each driver's status lookup against it over a real socket.

Status words and shapes: SMS Partner docs/providers/smspartner.md §1.2.7-§1.2.9 and §1.4 (``statut``
in message-status, ``status`` in multi-status, ``Waiting`` → ``Delivered`` | ``Not delivered``);
Mail Partner docs/providers/mailpartner.md §2.2 (``StatutResponseList``); Postal
docs/providers/postal.md §4.4 (``messages/message`` status expansion, ``messages/deliveries``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from delivery_sandbox import DEFAULT_KEYS
from delivery_sandbox.__main__ import build_parser
from delivery_sandbox.lifecycle import StatusChange
from delivery_sandbox.server import Sandbox
from worker.providers import make_driver
from worker.providers.lookup import LookupTarget
from worker.tracking import EventType

SMS = "/smspartner/v1"
MAIL = "/mailpartner/v1"
POSTAL = "/postal/api/v1"


class Heard:
    def __init__(self, sandbox: Sandbox) -> None:
        self.changes: list[StatusChange] = []
        self.lock = threading.Lock()
        sandbox.listeners.subscribe(self.add)

    def add(self, change: StatusChange) -> None:
        with self.lock:
            self.changes.append(change)

    def wait(self, count: int, timeout: float = 5.0) -> list[StatusChange]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.changes) >= count:
                    return list(self.changes)
            time.sleep(0.02)
        with self.lock:
            return list(self.changes)


def sms_send(client: httpx.Client, numbers: str) -> int:
    body = {"apiKey": DEFAULT_KEYS["smspartner"], "phoneNumbers": numbers, "message": "hi"}
    answer = client.post(f"{SMS}/send", json=body).json()
    assert answer["success"] is True, answer
    return int(answer["message_id"])


def message_status(client: httpx.Client, message_id: int, number: str) -> dict[str, Any]:
    params = {"apiKey": DEFAULT_KEYS["smspartner"], "messageId": message_id, "phoneNumber": number}
    data: dict[str, Any] = client.get(f"{SMS}/message-status", params=params).json()
    return data


def postal_send(client: httpx.Client, to: list[str]) -> dict[str, int]:
    body = {"to": to, "from": "app@example.org", "plain_body": "hi"}
    answer = client.post(
        f"{POSTAL}/send/message", json=body, headers={"X-Server-API-Key": DEFAULT_KEYS["postal"]}
    ).json()
    assert answer["status"] == "success", answer
    return {a: int(m["id"]) for a, m in answer["data"]["messages"].items()}


def postal(client: httpx.Client, what: str, params: dict[str, Any]) -> Any:
    answer = client.post(
        f"{POSTAL}/messages/{what}",
        json=params,
        headers={"X-Server-API-Key": DEFAULT_KEYS["postal"]},
    ).json()
    assert answer["status"] == "success", answer
    return answer["data"]


def test_sms_waiting_then_delivered_or_not_delivered(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(config={"sms_delivery_delay_s": 0.4})
    heard = Heard(sandbox)
    with httpx.Client(base_url=sandbox.url) as client:
        message_id = sms_send(client, "+33611000001,+33600000404")
        first = message_status(client, message_id, "+33611000001")
        # docs/providers/smspartner.md §1.2.7: the field is spelled statut
        assert first["statut"] == "Waiting"
        changes = heard.wait(2)
        good = message_status(client, message_id, "+33611000001")
        bad = message_status(client, message_id, "+33600000404")
    assert (good["statut"], bad["statut"]) == ("Delivered", "Not delivered")
    assert good["date"].isdigit() or len(good["date"]) == 19  # epoch string or Y-m-d H:i:s
    time.sleep(0.1)
    # The moves only: the initial Waiting is not published.
    seen = sorted((c.recipient, c.status) for c in heard.changes)
    assert seen == [("+33600000404", "Not delivered"), ("+33611000001", "Delivered")]
    assert all(c.provider == "smspartner" and c.message_id == str(message_id) for c in changes)
    assert changes[0].message["recipients"] == ["+33611000001", "+33600000404"]
    assert "apiKey" not in changes[0].message["fields"]


def test_mailpartner_bounce_address(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(config={"sms_delivery_delay_s": 0.0})
    with httpx.Client(base_url=sandbox.url) as client:
        body = {
            "apiKey": DEFAULT_KEYS["mailpartner"],
            "subject": "s",
            "htmlContent": "<p>x</p>",
            "params": {"to": [{"email": "ann@example.com"}, {"email": "bounce1@example.com"}]},
        }
        message_id = client.post(f"{MAIL}/send", json=body).json()["messageId"]
        params = {"apiKey": DEFAULT_KEYS["mailpartner"], "messageId": message_id}
        items = client.get(f"{MAIL}/bulk-status", params=params).json()["StatutResponseList"]
    assert [(i["email"], i["status"]) for i in items] == [
        ("ann@example.com", "Delivered"),
        ("bounce1@example.com", "Bounced"),
    ]
    assert all(set(i) == {"email", "token", "status", "cost", "stopMail", "date"} for i in items)


def test_postal_timeline_and_magic_recipients(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    heard = Heard(sandbox)
    with httpx.Client(base_url=sandbox.url) as client:
        assert (
            client.post("/_admin/config", json={"postal_delivery_delay_s": 0.3}).status_code == 200
        )
        ids = postal_send(
            client,
            [
                "ann@example.com",
                "hold@example.com",
                "hardfail@example.com",
                "softfail@example.com",
                "bounce@example.com",
            ],
        )
        pending = postal(
            client, "message", {"id": ids["ann@example.com"], "_expansions": ["status"]}
        )
        assert pending["status"]["status"] == "Pending"
        held = postal(client, "message", {"id": ids["hold@example.com"], "_expansions": ["status"]})
        assert (held["status"]["status"], held["status"]["held"]) == ("Held", True)
        heard.wait(7, timeout=6)  # Held; Sent, HardFail, SoftFail, Sent; then Sent, Bounced
        words = {
            a: postal(client, "message", {"id": i, "_expansions": ["status"]})["status"]["status"]
            for a, i in ids.items()
        }
        deliveries = postal(client, "deliveries", {"id": ids["softfail@example.com"]})
    assert words == {
        "ann@example.com": "Sent",
        "hold@example.com": "Held",
        "hardfail@example.com": "HardFail",
        "softfail@example.com": "Sent",
        "bounce@example.com": "Bounced",
    }
    assert [d["status"] for d in deliveries] == ["SoftFail", "Sent"]
    assert set(deliveries[0]) == {
        "id",
        "status",
        "details",
        "output",
        "sent_with_ssl",
        "log_id",
        "time",
        "timestamp",
    }


def test_forcing_a_status(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(config={"sms_delivery_delay_s": 60.0})
    heard = Heard(sandbox)
    with httpx.Client(base_url=sandbox.url) as client:
        message_id = sms_send(client, "+33611000002")
        forced = client.post(
            "/_admin/status",
            json={
                "provider": "smspartner",
                "message_id": message_id,
                "status": "Not delivered",
                "detail": "forced",
            },
        )
        assert forced.json() == {"changed": 1}
        assert message_status(client, message_id, "+33611000002")["statut"] == "Not delivered"
        shown = client.get(
            "/_admin/status",
            params={
                "provider": "smspartner",
                "message_id": message_id,
                "recipient": "+33611000002",
            },
        ).json()
        assert [h["status"] for h in shown["history"]] == ["Waiting", "Not delivered"]
        # the provider's own words only, and a known message
        bad = {"provider": "smspartner", "message_id": message_id, "status": "Bounced"}
        assert client.post("/_admin/status", json=bad).status_code == 400
        unknown = {"provider": "postal", "message_id": "999999", "status": "Sent"}
        assert client.post("/_admin/status", json=unknown).status_code == 404
    changes = heard.wait(1)
    assert [(c.status, c.detail) for c in changes] == [("Not delivered", "forced")]
    time.sleep(0.1)
    assert len(heard.changes) == 1  # the dropped Delivered step is never published


def test_the_delays_are_flags() -> None:
    args = build_parser().parse_args(
        ["--postal-delivery-delay", "2.5", "--sms-delivery-delay", "3"]
    )
    assert (args.postal_delivery_delay, args.sms_delivery_delay) == (2.5, 3.0)


# -- each driver's lookup against the sandbox (real socket) -----------------------------------


def test_drivers_read_the_sandbox_lookups(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(config={"sms_delivery_delay_s": 0.0})
    http = httpx.Client()

    def driver(name: str) -> Any:
        return make_driver(
            name, http, api_key=DEFAULT_KEYS[name], base_url=sandbox.provider_url(name)
        )

    with httpx.Client(base_url=sandbox.url) as client:
        sms_id = str(sms_send(client, "+33611000003,+33600000404"))
        post = postal_send(client, ["ann@example.com", "hold2@example.com"])
        body = {
            "apiKey": DEFAULT_KEYS["mailpartner"],
            "subject": "s",
            "htmlContent": "<p>x</p>",
            "params": {"to": [{"email": "ann@example.com"}, {"email": "bounce@example.com"}]},
        }
        mail_id = client.post(f"{MAIL}/send", json=body).json()["messageId"]
    sms = [
        LookupTarget("d1", "+3361*****03", sms_id, "+33611000003"),
        LookupTarget("d1", "+3360*****04", sms_id, "+33600000404"),
    ]
    many = driver("smspartner").lookup_status(sms)
    one = driver("smspartner").lookup_status(sms[:1])
    assert sorted((e.recipient, e.type) for e in many) == [
        ("+3360*****04", EventType.FAILED),
        ("+3361*****03", EventType.DELIVERED),
    ]
    assert [e.type for e in one] == [EventType.DELIVERED]
    targets = [
        LookupTarget("d2", "a***@example.com", str(post["ann@example.com"])),
        LookupTarget("d3", "h***@example.com", str(post["hold2@example.com"])),
    ]
    events = driver("postal").lookup_status(targets)
    assert [(e.delivery_id, e.type) for e in events] == [
        ("d2", EventType.DELIVERED),
        ("d3", EventType.HELD),
    ]
    assert events[1].reason is not None and "hold2@example.com" not in events[1].reason
    mail = [
        LookupTarget("d4", "a***@example.com", mail_id),
        LookupTarget("d4", "b***@example.com", mail_id),
    ]
    (group,) = type(driver("mailpartner")).lookup_groups(mail)
    found = driver("mailpartner").lookup_status(group)
    assert [(e.recipient, e.type) for e in found] == [
        ("a***@example.com", EventType.DELIVERED),
        ("b***@example.com", EventType.BOUNCED),
    ]
    http.close()


def test_sms_status_dates_are_paris_time_on_a_utc_host(
    make_sandbox: Callable[..., Sandbox], monkeypatch: Any
) -> None:
    """message-status's ``Y-m-d H:i:s`` date is Paris time, as the driver reads it
    (docs/providers/smspartner.md §1.2.7): on a UTC host the delivered event must not be dated
    an hour before its send."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        sandbox = make_sandbox(config={"sms_delivery_delay_s": 0.0})
        sent_at = float(int(time.time()))  # the provider's dates are whole seconds
        with httpx.Client(base_url=sandbox.url) as client:
            sms_id = str(sms_send(client, "+33611000005"))
            assert len(message_status(client, int(sms_id), "+33611000005")["date"]) == 19
        with httpx.Client() as http:
            driver = make_driver(
                "smspartner", http, api_key=DEFAULT_KEYS["smspartner"],
                base_url=sandbox.provider_url("smspartner"),
            )  # fmt: skip
            [event] = driver.lookup_status(
                [LookupTarget("d", "+3361*****05", sms_id, "+33611000005")]
            )
    finally:
        monkeypatch.undo()
        time.tzset()
    assert event.type is EventType.DELIVERED
    assert sent_at <= event.occurred_at <= time.time() + 1
