"""Redaction: secrets, addresses and bodies never leave the worker; ordinary ids do, untouched."""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import redaction
from worker.redaction import mask_email, mask_phone, redact_mapping, register_secret, scrub

FAST = settings(max_examples=200, deadline=None)


@contextmanager
def secrets_registry() -> Iterator[None]:
    """Secrets registered inside stay registered only inside (the registry is process-wide)."""
    saved_set, saved_re = set(redaction._secrets), redaction._secret_re
    try:
        yield
    finally:
        redaction._secrets.clear()
        redaction._secrets.update(saved_set)
        redaction._secret_re = saved_re


@pytest.fixture
def isolated_secrets() -> Iterator[None]:
    with secrets_registry():
        yield


# -- masking helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("john.doe@example.com", "j***@example.com"),
        ("a@b.co", "a***@b.co"),
        ("no-at-sign", "***"),
    ],
)
def test_mask_email(address: str, masked: str) -> None:
    assert mask_email(address) == masked


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+33612345678", "+3361*****78"),
        ("+33 6 12 34 56 78", "+3361*****78"),
        ("06 12 34 56 78", "0612****78"),
        ("12345", "***"),
    ],
)
def test_mask_phone(number: str, masked: str) -> None:
    assert mask_phone(number) == masked


# -- scrub: addresses and numbers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sent to john.doe@example.com", "sent to j***@example.com"),
        ("<ada+news@mail.example.org>, bob@x.io.", "<a***@mail.example.org>, b***@x.io."),
        ("jöhn@exämple.fr", "j***@exämple.fr"),
        ("mailto:ada@example.com", "mailto:a***@example.com"),
        # A local part longer than 64 characters is still masked whole.
        ("x" * 80 + "@example.com", "x***@example.com"),
    ],
)
def test_scrub_masks_email_addresses(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +33612345678", "call +3361*****78"),
        ("call +33612345678.", "call +3361*****78."),
        ("to=+33612345678&x", "to=+3361*****78&x"),
        ("+33 6 12 34 56 78 then", "+3361*****78 then"),
        ("(06 12 34 56 78)", "(0612****78)"),
        ("0612345678, 0712345678", "0612****78, 0712****78"),
        (
            "numbers: ['+33612345678', '+44 20 7946 0958']",
            "numbers: ['+3361*****78', '+4420******58']",
        ),
    ],
)
def test_scrub_masks_phone_numbers(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T04:08:27Z",
        "2026-11-23T04:08:27.123456789+02:00",
        "2026-11-23 04:08:27",
        "20261123T040827Z",
        "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "00000000-0000-0000-0000-000000000000",
        "12345678-1234-1234-1234-123456789012",
        "cost 12345678.90 EUR",
        "message_id 2270142, attempt 3",
        "1740935264.79515",
        "campaign Ff1tbu0lax",
        "d-0c6a1f2e9b7d4e3a8f1b2c3d4e5f6a7b",
    ],
)
def test_scrub_leaves_ordinary_ids_and_timestamps_alone(text: str) -> None:
    assert scrub(text) == text


@FAST
@given(st.uuids())
def test_scrub_never_changes_a_uuid(value: Any) -> None:
    for text in (str(value), value.hex, f"delivery {value} failed"):
        assert scrub(text) == text


@FAST
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5))]
        ),
    )
)
def test_scrub_never_changes_an_iso_timestamp(value: datetime) -> None:
    for text in (
        value.isoformat(),
        value.isoformat().replace("+00:00", "Z"),
        value.isoformat(sep=" ", timespec="seconds"),
        f"at {value.isoformat()}: sent",
    ):
        assert scrub(text) == text


# -- scrub: registered secrets -----------------------------------------------------------------


def test_registered_secret_is_replaced_wherever_it_occurs(isolated_secrets: None) -> None:
    register_secret("sk_live_9f8e7d6c5b4a")
    text = "key=sk_live_9f8e7d6c5b4a;prefixsk_live_9f8e7d6c5b4asuffix sk_live_9f8e7d6c5b4a"
    assert scrub(text) == "key=[secret];prefix[secret]suffix [secret]"


def test_url_encoded_secret_is_replaced(isolated_secrets: None) -> None:
    register_secret("ab+cd/ef=gh")
    url = "https://api.smspartner.fr/v1/me?apiKey=ab%2Bcd%2Fef%3Dgh&_format=json"
    assert "ab%2Bcd%2Fef%3Dgh" not in scrub(url)
    assert scrub("apiKey=ab+cd/ef=gh") == "apiKey=[secret]"


def test_longer_secret_wins_over_its_prefix(isolated_secrets: None) -> None:
    register_secret("abcd1234")
    register_secret("abcd1234efgh5678")
    assert scrub("x abcd1234efgh5678 y abcd1234") == "x [secret] y [secret]"


@pytest.mark.parametrize("value", [None, "", "abc"])
def test_empty_and_short_secrets_are_ignored(isolated_secrets: None, value: str | None) -> None:
    register_secret(value)
    assert scrub("abc and more") == "abc and more"


def test_secret_in_nested_mapping_values(isolated_secrets: None) -> None:
    register_secret("K3y-0f-th3-pr0v1d3r")
    data = {
        "request": {"url": "https://x/send?apiKey=K3y-0f-th3-pr0v1d3r", "attempt": 2},
        "history": [{"note": "used K3y-0f-th3-pr0v1d3r"}, "K3y-0f-th3-pr0v1d3r"],
    }
    out = redact_mapping(data)
    assert "K3y-0f-th3-pr0v1d3r" not in repr(out)
    assert out["request"] == {"url": "https://x/send?apiKey=[secret]", "attempt": 2}
    assert out["history"] == [{"note": "used [secret]"}, "[secret]"]


secret_text = st.text(string.ascii_letters + string.digits + "-_", min_size=12, max_size=48)


@FAST
@given(
    secret=secret_text,
    text=st.text(max_size=200),
    where=st.floats(min_value=0, max_value=1),
    times=st.integers(min_value=1, max_value=3),
)
def test_scrub_never_lets_a_registered_secret_through(
    secret: str, text: str, where: float, times: int
) -> None:
    with secrets_registry():
        register_secret(secret)
        cut = int(len(text) * where)
        hostile = text[:cut] + secret * times + text[cut:] + " " + secret
        assert secret not in scrub(hostile)
        out = redact_mapping({"note": hostile, "nested": {"items": [hostile]}})
        assert secret not in repr(out)


# -- redact_mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "apiKey",
        "X-Api-Key",
        "api-key",
        "X-Server-API-Key",
        "Authorization",
        "DELIVERY_POSTAL_API_KEY",
        "password",
        "client_secret",
        "token",
    ],
)
def test_secret_fields_are_replaced(key: str) -> None:
    assert redact_mapping({key: "value-123456", "provider": "postal"}) == {
        key: "[secret]",
        "provider": "postal",
    }


@pytest.mark.parametrize(
    "key", ["html", "text", "subject", "attachments", "content", "headers", "params", "message"]
)
def test_body_fields_are_dropped(key: str) -> None:
    assert redact_mapping({key: "Dear Ada, your code is 1234"}) == {key: "[redacted]"}
    assert redact_mapping({key: ["a"]}) == {key: "[redacted]"}


@pytest.mark.parametrize("empty", [None, "", [], {}])
def test_empty_body_fields_stay_visible(empty: Any) -> None:
    assert redact_mapping({"html": empty}) == {"html": empty}


def test_addresses_are_masked_in_values() -> None:
    message = {
        "provider": "postal",
        "to": [{"email": "ada@example.com", "name": "Ada"}],
        "from": {"email": "noreply@shop.example"},
        "subject": "Your code",
        "text": "1234",
    }
    assert redact_mapping(message) == {
        "provider": "postal",
        "to": [{"email": "a***@example.com", "name": "A***"}],
        "from": {"email": "n***@shop.example"},
        "subject": "[redacted]",
        "text": "[redacted]",
    }
    assert redact_mapping({"to": ["+33612345678"]}) == {"to": ["+3361*****78"]}


def test_non_string_values_are_preserved() -> None:
    data = {"attempts": 3, "cost": 0.038, "sent": True, "error": None, "ratio": float("inf")}
    assert redact_mapping(data) == data


def test_keys_become_strings_and_input_is_not_mutated() -> None:
    data: dict[Any, Any] = {1: "ada@example.com", "nested": {"k": ["bob@example.com"]}}
    out = redact_mapping(data)
    assert out == {"1": "a***@example.com", "nested": {"k": ["b***@example.com"]}}
    assert data == {1: "ada@example.com", "nested": {"k": ["bob@example.com"]}}


def test_lists_are_truncated() -> None:
    out = redact_mapping({"ids": list(range(120)), "pair": (1, 2)})
    assert out["ids"] == [*range(50), "[… 70 more]"]
    assert out["pair"] == [1, 2]


def test_sets_and_bytes_are_scrubbed_too() -> None:
    out = redact_mapping({"rcpt": {"ada@example.com"}, "blob": b"to ada@example.com"})
    assert out == {"rcpt": ["a***@example.com"], "blob": "to a***@example.com"}


def test_long_strings_are_truncated_after_scrubbing(isolated_secrets: None) -> None:
    register_secret("S3CR3T-KEY-0123456789")
    out = redact_mapping({"note": "x" * 1990 + "S3CR3T-KEY-0123456789" + "y" * 5000})
    assert out["note"] == "x" * 1990 + "[secret]" + "yy"
    # Cutting first would leave "ada.lovelace@exampl", which no longer looks like an address.
    split = redact_mapping({"note": "x" * 1980 + " ada.lovelace@example.com"})
    assert split["note"] == "x" * 1980 + " a***@example.com"


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def test_deep_nesting_is_bounded() -> None:
    deep: dict[str, Any] = {"leaf": "ada@example.com"}
    for _ in range(2000):
        deep = {"child": deep, "items": [[deep]]}
    out = redact_mapping(deep)
    assert _depth(out) <= 10
    assert "[…]" in repr(out)


def test_self_referencing_structures_terminate() -> None:
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    items: list[Any] = []
    items.append(items)
    out = redact_mapping({"loop": loop, "items": items})
    assert "[…]" in repr(out)


@FAST
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=30,
    )
)
def test_redact_mapping_accepts_any_json(value: Any) -> None:
    out = redact_mapping({"value": value})
    assert set(out) == {"value"}


# -- written phone numbers, bodies, names, tokens, URL passwords ------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 06-12-34-56-78", "call 0612****78"),
        ("call 06.12.34.56.78.", "call 0612****78."),
        ("call (555) 123-4567 now", "call 5551****67 now"),
        ("to +1 (555) 123.4567", "to +1555*****67"),
        ("to +33 (0)6 12 34 56 78", "to +3306******78"),
        ("+44-20-7946-0958", "+4420******58"),
    ],
)
def test_scrub_masks_phone_numbers_written_with_separators(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    ["on 2026-11-23 at noon", "host 192.168.100.200 refused", "version 1.2.3.4", "v 12345678.90"],
)
def test_dates_ips_and_decimals_are_not_phone_numbers(text: str) -> None:
    assert scrub(text) == text


written_phone = st.tuples(
    st.sampled_from(["", "+"]),
    st.lists(st.text("0123456789", min_size=2, max_size=4), min_size=3, max_size=5),
    st.sampled_from(["-", ".", " "]),
).filter(
    # An ISO date (2026-11-23) and an IPv4 address (four dotted groups of at most three
    # digits, 00.00.00.00) are left alone on purpose.
    lambda t: (
        8 <= sum(len(g) for g in t[1]) <= 15
        and not (t[2] == "-" and [len(g) for g in t[1]] == [4, 2, 2])
        and not (t[2] == "." and len(t[1]) == 4 and all(len(g) <= 3 for g in t[1]))
    )
)


@FAST
@given(written_phone)
def test_scrub_never_lets_a_written_phone_number_through(parts: tuple[str, list[str], str]) -> None:
    plus, groups, sep = parts
    number = plus + sep.join(groups)
    out = scrub(f"call {number} now")
    assert out == f"call {mask_phone(number)} now"
    assert number not in out


def test_raw_bodies_names_and_audio_tokens_are_hidden() -> None:
    message = {
        "raw": "From: ada@example.com\r\n\r\nYour code is 1234",
        "to": [{"email": "ada@example.com", "name": "Ada Lovelace"}],
        "audio_token": "aud-5f1c2d3e4b",
        "tokenAudio": "aud-5f1c2d3e4b",
    }
    out = redact_mapping(message)
    assert out == {
        "raw": "[redacted]",
        "to": [{"email": "a***@example.com", "name": "A***"}],
        "audio_token": "[secret]",
        "tokenAudio": "[secret]",
    }
    assert "Lovelace" not in repr(out)


def test_redis_url_passwords_and_tracking_secret_are_scrubbed(isolated_secrets: None) -> None:
    from worker.config import Settings

    tracking = "t" * 16 + "S3cretTrackingValue!"
    Settings(
        broker_url="redis://:br0ker-pa%24s@redis:6379/0",
        result_backend="redis://user:r3sult-pass@redis:6379/1",
        redis_url="sentinel://:sh4red-pass@s1:26379/0;sentinel://s2:26379",
        redis_master_name="mymaster",
        tracking_secret=tracking,
    )
    text = (
        "Error: AUTH br0ker-pa$s failed; r3sult-pass; br0ker-pa%24s; sh4red-pass; "
        f"token for {tracking}"
    )
    out = scrub(text)
    for secret in ("br0ker-pa$s", "br0ker-pa%24s", "r3sult-pass", "sh4red-pass", tracking):
        assert secret not in out
