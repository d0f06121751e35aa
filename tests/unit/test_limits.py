"""Message size and shape bounds (worker.limits): iterative, bounded, and above every valid
message of the contract."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from worker.limits import DEFAULT_LIMITS, MessageLimits, body_of, check_message, check_structure
from worker.models import InvalidMessage
from worker.providers import parse_message

SMALL = MessageLimits(max_bytes=4096, max_depth=8, max_items=50, max_string=100)


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


def test_depth_far_beyond_the_recursion_limit_is_measured_without_recursion() -> None:
    reason = check_structure(body_of({"tag": nested(100_000)}), MessageLimits(max_items=10**6))
    assert reason == "nesting depth 100003 exceeds the limit of 32"


def test_items_bound_the_work_and_name_the_limit() -> None:
    assert check_structure(list(range(51)), SMALL) == (
        "more than 50 items (list items and object keys)"
    )
    assert check_structure({str(i): i for i in range(30)}, SMALL) is None  # 30 keys


def test_long_strings_and_keys_are_refused() -> None:
    assert "a string of 101 characters exceeds the limit of 100" in str(
        check_structure(["y" * 101], SMALL)
    )
    assert check_structure({"k" * 101: 1}, SMALL) is not None


def test_size_is_measured_on_the_encoded_body() -> None:
    reason = check_message({"text": ["é" * 100] * 10}, SMALL)  # 6 bytes each, JSON-escaped
    assert reason is not None and reason.startswith("message size 61")
    assert reason.endswith("exceeds the limit of 4096 bytes")


def biggest_valid_email() -> dict[str, Any]:
    """At the contract's maxima (Mail Partner, docs/providers/mailpartner.md §2.2): 500 named
    recipients, 10 MiB of attachments (two of 5 MiB; 10 MiB in total is the model's cap), html and
    text of 2 M characters that JSON escapes to 12 and 6 bytes each."""
    blob = base64.b64encode(b"\0" * (5 * 1024 * 1024 - 1)).decode()
    return {
        "provider": "mailpartner",
        "to": [{"email": f"user{i}@example.com", "name": "\u00e9" * 255} for i in range(500)],
        "from": {"email": "shop@example.org"},
        "subject": "\U0001f600" * 998,
        "html": "\U0001f600" * 2_000_000,
        "text": "\u00e9" * 2_000_000,
        "attachments": [{"filename": f"big{i}.bin", "content": blob} for i in range(2)],
    }


def test_defaults_accept_the_largest_valid_messages() -> None:
    message = biggest_valid_email()
    parse_message("email", message)  # valid by the contract
    assert check_message(message, DEFAULT_LIMITS) is None
    encoded = len(json.dumps(body_of(message)))
    assert encoded < DEFAULT_LIMITS.max_bytes


def test_parse_message_with_limits_names_the_limit() -> None:
    deep = {"provider": "smspartner", "to": ["+33612345678"], "text": "hi", "tag": nested(500)}
    with pytest.raises(InvalidMessage) as info:
        parse_message("sms", deep, limits=DEFAULT_LIMITS)
    assert info.value.errors == [
        {"field": "message", "message": "nesting depth 503 exceeds the limit of 32"}
    ]


@pytest.mark.parametrize(
    "message",
    [
        {"to": ["+33612345678"], "text": "Code 1"},
        {"to": ["+33612345678"], "text": "é" * 100, "n": 3, "f": 1.5, "b": True, "z": None},
        {"to": ["+33612345678"] * 40, "text": "x" * 60},  # over max_items with the body
        {"to": ["+33612345678"], "text": "y" * 81},  # a string over max_string
        {"text": "😀" * 40},  # escaped surrogate pairs: over max_bytes
        {"to": [{"nested": "x"}]},  # not flat: the full checks
        {"n": 10**20},  # a number beyond the fast bound: the full checks
        {1: "a non-string key"},
    ],
)
def test_the_flat_fast_path_agrees_with_the_full_checks(message: dict[Any, Any]) -> None:
    from worker.limits import _within_flat, check_encoded_size

    small = MessageLimits(max_bytes=400, max_depth=4, max_items=50, max_string=80)
    for limits in (small, DEFAULT_LIMITS):
        full = check_structure(body_of(message), limits) or check_encoded_size(
            len(json.dumps(body_of(message))), limits
        )
        assert check_message(message, limits) == full
        if _within_flat(message, limits):  # the fast path only ever answers "within"
            assert full is None
    assert check_message({"to": ["+33612345678"] * 40, "text": "x"}, small) is not None
    assert check_message({"text": "y" * 81}, small) is not None
    assert check_message({"text": "😀" * 40}, small) is not None
