"""Postal webhooks (docs/providers/postal.md §4.6): signature check and envelope parsing, hostile
input too."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery_sandbox.webhooks import PostalSigner
from worker.providers.postal_webhook import (
    EVENT_TYPES,
    WebhookRejected,
    load_public_key,
    parse_webhook,
    verify_signature,
)
from worker.tracking.events import DeliveryEvent, EventType

SIGNER = PostalSigner()
OTHER = PostalSigner()
KEY = load_public_key(SIGNER.public_key)


def _message(**overrides: Any) -> dict[str, Any]:
    message = {
        "id": 37171,
        "token": "a4udnay1xY2bQ9mZ",
        "direction": "outgoing",
        "message_id": "8f2c0000-uuid@rp.postal.example.com",
        "to": "john@example.com",
        "from": "shop@example.org",
        "subject": "Your order",
        "timestamp": 1740935259.86,
        "spam_status": "NotChecked",
        "tag": "orders",
    }
    message.update(overrides)
    return message


def _envelope(event: str, payload: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    envelope = {
        "event": event,
        "timestamp": 1740935264.79515,
        "payload": payload,
        "uuid": "62498fda-ffc5-42f9-b23e-cea5274c513a",
    }
    envelope.update(overrides)
    return envelope


def _status(event: str, status: str, **extra: Any) -> dict[str, Any]:
    return _envelope(
        event,
        {
            "message": _message(),
            "status": status,
            "details": "Message for john@example.com accepted by mx.example.com (192.0.2.25)",
            "output": "250 2.0.0 OK",
            "sent_with_ssl": True,
            "timestamp": 1740935264.785198,
            "time": 0.5,
            **extra,
        },
    )


def _body(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode()


# --- signatures ---------------------------------------------------------------------------------


def test_both_signature_headers_verify_with_the_key_as_postal_shows_it() -> None:
    body = _body(_status("MessageSent", "Sent"))
    headers = SIGNER.headers(body)
    lower = {k.lower(): v for k, v in headers.items()}
    assert verify_signature(KEY, body, lower) == "x-postal-signature-256"
    legacy = {"x-postal-signature": lower["x-postal-signature"]}
    assert verify_signature(KEY, body, legacy) == "x-postal-signature"


def test_a_pem_key_and_a_p_equals_value_load_too() -> None:
    assert load_public_key(SIGNER.public_key_pem).public_numbers() == KEY.public_numbers()
    wrapped = "p=" + " ".join([SIGNER.public_key[:40], SIGNER.public_key[40:]]) + ";"
    assert load_public_key(wrapped).public_numbers() == KEY.public_numbers()


@pytest.mark.parametrize("text", ["", "not a key", "p=AAAA", "-----BEGIN PUBLIC KEY-----\nxx"])
def test_a_bad_key_setting_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        load_public_key(text)


def test_unsigned_is_401_and_forged_is_403() -> None:
    body = _body(_status("MessageSent", "Sent"))
    with pytest.raises(WebhookRejected) as unsigned:
        verify_signature(KEY, body, {})
    assert unsigned.value.status == 401
    forged = {k.lower(): v for k, v in OTHER.headers(body).items()}
    with pytest.raises(WebhookRejected) as wrong_key:
        verify_signature(KEY, body, forged)
    assert wrong_key.value.status == 403
    good = {k.lower(): v for k, v in SIGNER.headers(body).items()}
    with pytest.raises(WebhookRejected) as tampered:
        verify_signature(KEY, body.replace(b"Sent", b"Held", 1), good)
    assert tampered.value.status == 403


def test_a_bad_sha256_signature_is_not_rescued_by_a_good_sha1_one() -> None:
    body = _body(_status("MessageSent", "Sent"))
    good = {k.lower(): v for k, v in SIGNER.headers(body).items()}
    bad = {k.lower(): v for k, v in OTHER.headers(body).items()}
    mixed = {
        "x-postal-signature-256": bad["x-postal-signature-256"],
        **{"x-postal-signature": good["x-postal-signature"]},
    }
    with pytest.raises(WebhookRejected) as caught:
        verify_signature(KEY, body, mixed)
    assert caught.value.status == 403


def test_sha1_only_can_be_refused() -> None:
    body = b"{}"
    sha1 = SIGNER._private_key.sign(body, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    legacy = {"x-postal-signature": base64.b64encode(sha1).decode()}
    assert verify_signature(KEY, body, legacy) == "x-postal-signature"
    with pytest.raises(WebhookRejected) as caught:
        verify_signature(KEY, body, legacy, allow_sha1=False)
    assert caught.value.status == 401


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    body=st.binary(max_size=300),
    sig256=st.one_of(
        st.none(),
        st.text(max_size=400),
        st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
    ),
    sig1=st.one_of(st.none(), st.text(max_size=400)),
)
def test_hostile_signatures_are_refused_never_crash(
    body: bytes, sig256: str | None, sig1: str | None
) -> None:
    headers = {}
    if sig256 is not None:
        headers["x-postal-signature-256"] = sig256
    if sig1 is not None:
        headers["x-postal-signature"] = sig1
    with pytest.raises(WebhookRejected) as caught:
        verify_signature(KEY, body, headers)
    assert caught.value.status in (401, 403)


# --- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "status", "expected"),
    [
        ("MessageSent", "Sent", EventType.DELIVERED),
        ("MessageDelayed", "SoftFail", EventType.DEFERRED),
        ("MessageDeliveryFailed", "HardFail", EventType.FAILED),
        ("MessageHeld", "Held", EventType.HELD),
    ],
)
def test_message_status_events_map_to_one_event(
    event: str, status: str, expected: EventType
) -> None:
    hook = parse_webhook(_body(_status(event, status)))
    assert hook.uuid == "62498fda-ffc5-42f9-b23e-cea5274c513a"
    [found] = hook.events
    assert found.type is expected
    assert found.event_id == hook.uuid
    assert found.provider == "postal"
    assert found.provider_message_id == "37171"
    assert found.recipient == "j***@example.com"
    assert found.occurred_at == 1740935264.785198
    assert found.source == "webhook"
    assert found.reason is not None and "j***@example.com" in found.reason
    # No full address, subject or message token anywhere in what is published.
    dumped = json.dumps(found.model_dump(mode="json"))
    for secret in ("john@example.com", "shop@example.org", "Your order", "a4udnay1xY2bQ9mZ"):
        assert secret not in dumped
    assert found.raw["message"]["to"] == "j***@example.com"
    assert found.raw["status"] == status


def test_a_bounce_is_linked_to_the_original_message() -> None:
    envelope = _envelope(
        "MessageBounced",
        {
            "original_message": _message(id=37171),
            "bounce": _message(
                id=40001, direction="incoming", to="shop@example.org", timestamp=1740935300.5
            ),
        },
    )
    [found] = parse_webhook(_body(envelope)).events
    assert found.type is EventType.BOUNCED
    assert found.provider_message_id == "37171"
    assert found.recipient == "j***@example.com"
    assert found.occurred_at == 1740935300.5
    assert found.raw["bounce"]["id"] == 40001
    assert found.reason == "bounce message 40001 received"


def test_engagement_events() -> None:
    loaded = _envelope(
        "MessageLoaded", {"message": _message(), "ip_address": "192.0.2.1", "user_agent": "UA"}
    )
    [opened] = parse_webhook(_body(loaded)).events
    assert opened.type is EventType.OPENED
    assert opened.occurred_at == 1740935264.79515  # the envelope's: the payload has none
    assert "ip_address" not in json.dumps(opened.raw)
    clicked = _envelope(
        "MessageLinkClicked",
        {
            "message": _message(),
            "url": "https://shop.example.org/t/secret-token?u=john",
            "token": "abc",
            "ip_address": "192.0.2.1",
            "user_agent": "UA",
        },
    )
    [click] = parse_webhook(_body(clicked)).events
    assert click.type is EventType.CLICKED
    assert click.raw["url_host"] == "shop.example.org"
    assert "secret-token" not in json.dumps(click.model_dump(mode="json"))


@pytest.mark.parametrize("event", ["DomainDNSError", "SendLimitExceeded", "SomethingNew"])
def test_server_events_are_ignored(event: str) -> None:
    hook = parse_webhook(_body(_envelope(event, {"domain": "example.com"})))
    assert hook.events == [] and hook.ignored


def test_incoming_messages_are_ignored() -> None:
    envelope = _status("MessageSent", "Sent")
    envelope["payload"]["message"]["direction"] = "incoming"
    hook = parse_webhook(_body(envelope))
    assert hook.events == [] and hook.ignored == "incoming message"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"event":"MessageSent"}',
        b"\xff\xfe",
        b"[" * 100_000,
        _body(_envelope("MessageSent", {"message": _message()}, uuid="")),
        _body(_envelope("MessageSent", {"message": _message()}, timestamp="yesterday")),
        _body(_envelope("MessageSent", {"message": _message()}, timestamp=float("nan"))),
        _body(_envelope("MessageSent", {"message": _message(id=True)})),
        _body(_envelope("MessageSent", {"message": _message(id="x" * 300)})),
        _body(_envelope("MessageSent", {"message": "37171"})),
        _body(_envelope("MessageBounced", {"original_message": _message()})),
        _body(_envelope("MessageSent", [])),  # type: ignore[arg-type]
    ],
)
def test_malformed_envelopes_are_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as caught:
        parse_webhook(body)
    assert caught.value.status == 400


def test_every_mapped_event_is_one_of_ours() -> None:
    assert set(EVENT_TYPES.values()) <= set(EventType)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_message_like = st.fixed_dictionaries(
    {},
    optional={
        "id": _json_values | st.integers(),
        "to": _json_values | st.emails(),
        "direction": st.sampled_from(["outgoing", "incoming"]) | _json_values,
        "timestamp": _json_values,
        "message_id": _json_values,
        "tag": _json_values,
    },
)
_envelopes = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from([*EVENT_TYPES, "DomainDNSError"]) | _json_values,
        "timestamp": st.floats(allow_nan=False) | _json_values,
        "uuid": st.uuids().map(str) | _json_values,
        "payload": st.fixed_dictionaries(
            {},
            optional={
                "message": _message_like | _json_values,
                "original_message": _message_like,
                "bounce": _message_like,
                "status": _json_values,
                "details": _json_values,
                "output": _json_values,
                "url": _json_values,
                "timestamp": _json_values,
            },
        )
        | _json_values,
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(envelope=_envelopes)
def test_hostile_envelopes_parse_or_are_refused_never_crash(envelope: Any) -> None:
    body = json.dumps(envelope).encode()
    try:
        hook = parse_webhook(body)
    except WebhookRejected as exc:
        assert exc.status == 400
        return
    for event in hook.events:
        assert isinstance(event, DeliveryEvent)
        DeliveryEvent.model_validate(event.model_dump(mode="json"))  # it survives the broker


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=500))
def test_hostile_bytes_are_refused_never_crash(body: bytes) -> None:
    try:
        parse_webhook(body)
    except WebhookRejected as exc:
        assert exc.status == 400


def test_a_sandbox_signed_envelope_round_trips() -> None:
    uuid, body, headers = SIGNER.signed_request(
        "MessageHeld", _status("MessageHeld", "Held")["payload"]
    )
    verify_signature(KEY, body, {k.lower(): v for k, v in headers.items()})
    hook = parse_webhook(body)
    assert hook.uuid == uuid
    assert abs(hook.timestamp - time.time()) < 60
    assert [e.type for e in hook.events] == [EventType.HELD]


# --- Postal's own suppression list ---------------------------------------------------------------

# Postal's Held details (docs/providers/postal.md §4.5): only the first names its suppression list.
SUPPRESSION_HOLD = (
    "Recipient (john@example.com) is on the suppression list (reason: too many hard fails)"
)
OTHER_HOLDS = [
    "Message held because send limit (100) has been reached.",
    "Credential is configured to hold all messages authenticated by it.",
]


def test_a_hold_on_postals_suppression_list_is_a_hard_bounce() -> None:
    from worker.providers.postal import PostalDriver

    [held] = parse_webhook(_body(_status("MessageHeld", "Held", details=SUPPRESSION_HOLD))).events
    assert held.type is EventType.HELD
    assert held.reason is not None and "john@example.com" not in held.reason  # scrubbed, still read
    assert PostalDriver.suppression_reason(held) == "hard_bounce"


@pytest.mark.parametrize("details", [*OTHER_HOLDS, None])
def test_other_holds_say_nothing_about_the_recipient(details: str | None) -> None:
    from worker.providers.postal import PostalDriver

    [held] = parse_webhook(_body(_status("MessageHeld", "Held", details=details))).events
    assert PostalDriver.suppression_reason(held) is None


def test_the_suppression_words_outside_a_hold_add_nothing_more() -> None:
    from worker.providers.postal import PostalDriver

    # A HardFail that put the recipient on the list is already a hard bounce by its type; a
    # SoftFail naming the list stays a soft bounce.
    for event, status in (("MessageDelayed", "SoftFail"), ("MessageSent", "Sent")):
        [found] = parse_webhook(_body(_status(event, status, details=SUPPRESSION_HOLD))).events
        assert PostalDriver.suppression_reason(found) is None
