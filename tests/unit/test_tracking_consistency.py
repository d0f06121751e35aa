"""Where the two halves of delivery tracking meet: Postal's webhook path (``postal_webhook``,
the receiver's parser) and its lookup path (the driver's ``messages/message``) must agree on
what each Postal word means, and the tracking store's forward-only ranks must give the right
final state whatever order the webhooks arrive in, and whichever path brought them.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from delivery_sandbox.webhooks import PostalSigner
from worker.providers import make_driver
from worker.providers.lookup import LookupTarget
from worker.providers.postal import POSTAL_STATUSES
from worker.providers.postal_webhook import (
    EVENT_TYPES,
    load_public_key,
    parse_webhook,
    verify_signature,
)
from worker.stores.tracking import Tracked
from worker.stores.tracking.memory import MemoryTrackingStore
from worker.tracking.events import DeliveryEvent, EventType

from .driver_support import mock_client

MESSAGE_ID = 37171
ADDRESS = "ann.lee@example.com"
MASKED = "a***@example.com"
TOKEN = "Xk2PqT9rLm4sWz7B"  # Postal's per-message token: opens the message's public links
SUBJECT = "Your order BODY-CANARY-991"
NUMBER = "+33611223344"

# docs/providers/postal.md §4.6: each message event carries the delivery status word
# (docs/providers/postal.md §4.4) it reports.
EVENT_STATUS = {
    "MessageSent": "Sent",
    "MessageDelayed": "SoftFail",
    "MessageDeliveryFailed": "HardFail",
    "MessageHeld": "Held",
    "MessageBounced": "Bounced",
}

_signer: list[PostalSigner] = []


def signer() -> PostalSigner:
    if not _signer:
        _signer.append(PostalSigner())
    return _signer[0]


def message(**extra: Any) -> dict[str, Any]:
    return {
        "id": MESSAGE_ID,
        "token": TOKEN,
        "direction": "outgoing",
        "message_id": f"<{MESSAGE_ID}@rp.postal.example>",
        "to": ADDRESS,
        "from": "Shop <shop@example.org>",
        "subject": SUBJECT,
        "timestamp": 1_700_000_000.0,
        "spam_status": "NotChecked",
        "tag": "welcome",
        **extra,
    }


def webhook(event: str, at: float) -> DeliveryEvent:
    """One envelope as the sandbox signs it, through the receiver's verify and parse."""
    if event == "MessageBounced":
        bounce = message(id=MESSAGE_ID + 1, direction="incoming", to="shop@example.org",
                         **{"from": "MAILER-DAEMON@mx.example.com"})  # fmt: skip
        payload: dict[str, Any] = {"original_message": message(), "bounce": bounce}
    else:
        payload = {
            "message": message(),
            "status": EVENT_STATUS[event],
            "details": f"Message for {ADDRESS} accepted by mx.example.com ({NUMBER})",
            "output": f"250 2.0.0 OK <{ADDRESS}> queued as 4BwW3x1mZ",
            "sent_with_ssl": True,
            "timestamp": at,
            "time": 0.2,
        }
    _uuid, body, headers = signer().signed_request(event, payload)
    key = load_public_key(signer().public_key)  # as the receiver loads it (base64 DER)
    verify_signature(key, body, {k.lower(): v for k, v in headers.items()})
    [parsed] = parse_webhook(body).events
    return parsed.model_copy(update={"occurred_at": at})


def lookup(word: str, at: float) -> DeliveryEvent:
    """What the poller gets from Postal's ``messages/message`` (and ``deliveries``)."""
    status = {"id": MESSAGE_ID, "status": {"status": word, "last_delivery_attempt": at,
                                            "held": word == "Held"}}  # fmt: skip
    deliveries = [{"details": f"for {ADDRESS} via {NUMBER}", "timestamp": at}]

    def handler(request: httpx.Request) -> httpx.Response:
        data = deliveries if request.url.path.endswith("/deliveries") else status
        return httpx.Response(200, json={"status": "success", "time": 0.01, "flags": {},
                                         "data": data})  # fmt: skip

    driver = make_driver("postal", mock_client(handler), api_key="secret-key-1",
                         base_url="http://postal.test")  # fmt: skip
    [event] = driver.lookup_status([LookupTarget("d1", MASKED, str(MESSAGE_ID))])
    assert isinstance(event, DeliveryEvent)
    return event


def final_state(*events: DeliveryEvent) -> str:
    store = MemoryTrackingStore()
    store.register("d1", "postal", [Tracked(MASKED, str(MESSAGE_ID))], at=1.0, poll_at=None,
                   notify=False)  # fmt: skip
    for event in events:
        store.apply([event], notify=False)
    found = store.status("d1")
    assert found is not None
    return found.recipients[MASKED].state.value


@pytest.mark.parametrize(("event", "word"), sorted(EVENT_STATUS.items()))
def test_webhook_and_lookup_agree_on_each_postal_word(event: str, word: str) -> None:
    assert EVENT_TYPES[event] is POSTAL_STATUSES[word]
    assert webhook(event, 10.0).type is lookup(word, 10.0).type is POSTAL_STATUSES[word]


def test_postal_sent_is_delivered_on_both_paths() -> None:
    # Sent is the handover to the recipient's mail server ("250 OK"): delivered
    # (docs/providers/postal.md §4.4, §4.6).
    assert webhook("MessageSent", 10.0).type is EventType.DELIVERED
    assert lookup("Sent", 10.0).type is EventType.DELIVERED


@pytest.mark.parametrize(
    ("order", "want"),
    [
        (["MessageDelayed", "MessageSent"], "delivered"),
        (["MessageSent", "MessageBounced"], "bounced"),
        (["MessageHeld", "MessageSent"], "delivered"),
        (["MessageSent", "MessageDelayed"], "delivered"),  # a late retry notice
        (["MessageSent", "MessageHeld"], "delivered"),
        (["MessageBounced", "MessageSent"], "bounced"),  # the bounce came first
        (["MessageDelayed", "MessageDeliveryFailed"], "failed"),
        (["MessageHeld"], "held"),
        (["MessageDelayed"], "deferred"),
    ],
)
def test_webhook_orderings_end_in_the_right_state(order: list[str], want: str) -> None:
    events = [webhook(name, 10.0 + i) for i, name in enumerate(order)]
    assert final_state(*events) == want


@pytest.mark.parametrize(
    ("first", "second", "want"),
    [
        (("webhook", "MessageSent"), ("lookup", "Pending"), "delivered"),
        (("lookup", "Sent"), ("webhook", "MessageDelayed"), "delivered"),
        (("webhook", "MessageHeld"), ("lookup", "Sent"), "delivered"),
        (("lookup", "Sent"), ("webhook", "MessageBounced"), "bounced"),
        (("webhook", "MessageBounced"), ("lookup", "Sent"), "bounced"),
    ],
)
def test_the_two_paths_mixed(first: tuple[str, str], second: tuple[str, str], want: str) -> None:
    made = [
        webhook(word, 10.0 + i) if path == "webhook" else lookup(word, 10.0 + i)
        for i, (path, word) in enumerate([first, second])
    ]
    assert final_state(*made) == want


@pytest.mark.parametrize("name", sorted(EVENT_STATUS))
def test_raw_carries_no_secret_body_or_full_address_on_either_path(name: str) -> None:
    needles = [ADDRESS, "ann.lee", TOKEN, SUBJECT, "BODY-CANARY", NUMBER, "secret-key-1",
               "shop@example.org", "MAILER-DAEMON@"]  # fmt: skip
    for event in (webhook(name, 10.0), lookup(EVENT_STATUS[name], 10.0)):
        shown = json.dumps(event.model_dump(mode="json"))
        assert [n for n in needles if n in shown] == [], (event.source, shown)
        assert event.recipient in (MASKED, None)
