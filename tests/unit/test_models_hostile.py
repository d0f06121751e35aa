"""Hostile input never crashes validation: the answer is a model or :class:`InvalidMessage`.

A producer may hand :func:`parse_message` anything JSON can hold, and a worker may receive a
message enqueued by name from elsewhere. Whatever arrives, the only outcomes allowed are a valid
model or an ``InvalidMessage`` whose ``errors`` name at least one field.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.models import EmailMessage, InvalidMessage, SmsMessage, VoiceMessage
from worker.providers import parse_message

CHANNELS = ("email", "sms", "voice")
MODELS = {"email": EmailMessage, "sms": SmsMessage, "voice": VoiceMessage}

FAST = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.text(st.characters(exclude_categories=()), max_size=10)  # lone surrogates too
    | st.sampled_from(["", "+33612345678", "a@example.com", "aGk=", "2026-11-23T04:08:27Z"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


junk = (
    json_values
    # Huge strings: a megabyte of one character (ASCII, GSM-7, astral, newline, base64-ish).
    | st.sampled_from(["x", "é", "😀", "\n", "A", "1", " ", "@"]).map(lambda c: c * 10**6)
    | st.integers(min_value=1, max_value=400).map(_nested)
    | st.sampled_from([10**400, -(10**400), float("nan"), float("inf"), 2**63, -1])
    # Long lists, built in one draw: drawing 500 elements one by one is slow.
    | st.integers(min_value=49, max_value=600).map(lambda n: [f"+336{i:08d}" for i in range(n)])
    | st.integers(min_value=49, max_value=600).map(
        lambda n: [{"email": f"u{i}@example.com"} for i in range(n)]
    )
)

VALID: dict[str, list[dict[str, Any]]] = {
    "email": [
        {
            "provider": "postal",
            "to": [{"email": "ada@example.com", "name": "Ada"}],
            "cc": [{"email": "bob@example.com"}],
            "from": {"email": "noreply@shop.example"},
            "reply_to": {"email": "help@shop.example"},
            "subject": "Order",
            "html": "<p>hi</p>",
            "text": "hi",
            "attachments": [{"filename": "a.pdf", "content": "aGk=", "content_type": "a/b"}],
            "headers": {"X-A": "b"},
            "tag": "orders",
            "idempotency_key": "k-1",
            "deadline": "2026-11-23T04:08:27Z",
        },
        {
            "provider": "emailmassivo",
            "to": [{"email": "ada@example.com"}],
            "from": {"email": "noreply@shop.example"},
            "subject": "Order",
            "template": {"id": 12, "params": {"name": "Ada"}},
            "preview_text": "p",
        },
        {
            "provider": "mailpartner",
            "to": [{"email": "ada@example.com"}],
            "subject": "Order",
            "html": "<p>hi</p>",
            "tag": "news",
        },
        {
            "provider": "postal",
            "to": [{"email": "ada@example.com"}],
            "from": {"email": "noreply@shop.example"},
            "raw": base64.b64encode(b"Subject: hi\r\n\r\nhi").decode(),
        },
    ],
    "sms": [
        {
            "provider": "smspartner",
            "to": ["+33612345678", "+33612345679"],
            "text": "Code 1234",
            "sender": "Shop",
            "tag": "otp",
            "idempotency_key": "k-1",
            "deadline": "2026-11-23T04:08:27+01:00",
        }
    ],
    "voice": [
        {"mode": "tts", "to": ["+33612345678"], "text": "Bonjour", "lang": "fr", "speech_rate": 1},
        {
            "mode": "voicemail",
            "to": ["+33612345678"],
            "audio_token": "tok",
            "sender": "+33123456789",
            "notification_email": "ops@shop.example",
        },
    ],
}


def check_outcome(channel: str, data: Any) -> None:
    """The contract under test: a model of the channel, or InvalidMessage naming fields."""
    try:
        msg = parse_message(channel, data)
    except InvalidMessage as exc:
        assert exc.errors, "InvalidMessage without errors"
        for err in exc.errors:
            assert isinstance(err["field"], str) and err["field"], err
            assert isinstance(err["message"], str) and err["message"], err
        assert str(exc).startswith("invalid message: ")
    else:
        assert isinstance(msg, MODELS[channel])


def test_the_valid_seeds_are_valid() -> None:
    for channel, seeds in VALID.items():
        for seed in seeds:
            assert isinstance(parse_message(channel, copy.deepcopy(seed)), MODELS[channel])


@FAST
@given(channel=st.sampled_from(CHANNELS), data=json_values)
def test_arbitrary_json_values(channel: str, data: Any) -> None:
    check_outcome(channel, data)


FIELD_NAMES = sorted(
    {name for model in MODELS.values() for name in model.model_fields} | {"from", "from_"}
)


@FAST
@given(
    channel=st.sampled_from(CHANNELS),
    data=st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), junk, max_size=8),
)
def test_objects_with_known_field_names_and_junk_values(channel: str, data: dict[str, Any]) -> None:
    check_outcome(channel, data)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a JSON-like value, nested ones included."""
    out: list[tuple[Any, ...]] = []
    items: Any = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


@st.composite
def mutated_messages(draw: st.DrawFn) -> tuple[str, Any]:
    channel = draw(st.sampled_from(CHANNELS))
    message = copy.deepcopy(draw(st.sampled_from(VALID[channel])))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(message)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = message
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(junk)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(junk)
        else:
            parent.append(draw(junk))
    return channel, message


@FAST
@given(mutated_messages())
def test_mutated_valid_messages(case: tuple[str, Any]) -> None:
    check_outcome(*case)


@FAST
@given(
    channel=st.sampled_from(CHANNELS),
    data=st.one_of(json_scalars, st.lists(json_scalars, max_size=3)),
)
def test_non_objects_are_refused_as_message(channel: str, data: Any) -> None:
    try:
        parse_message(channel, data)
    except InvalidMessage as exc:
        assert [e["field"] for e in exc.errors] == ["message"]
    else:  # pragma: no cover - a scalar is never a message
        raise AssertionError("a non-object was accepted")


@FAST
@given(channel=st.one_of(st.text(max_size=10), st.integers(), st.none()), data=json_values)
def test_unknown_channels(channel: Any, data: Any) -> None:
    if channel in CHANNELS:
        return
    try:
        parse_message(channel, data)
    except InvalidMessage as exc:
        assert [e["field"] for e in exc.errors] == ["channel"]
    else:  # pragma: no cover
        raise AssertionError("an unknown channel was accepted")
