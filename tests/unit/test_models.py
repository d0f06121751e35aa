"""The message contract: what each channel and provider accepts, and how a refusal reads.

Every refusal names the field (``InvalidMessage.errors[*].field``, also in ``str(exc)``) and says
what is expected. Provider limits cite their page under ``docs/providers/``.
"""

from __future__ import annotations

import base64
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest

from worker.models import (
    EmailMessage,
    InvalidMessage,
    SmsMessage,
    VoiceMessage,
    sms_segments,
)
from worker.providers import eligible_providers, parse_message

MB = 1024 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def attachment(name: str = "report.pdf", size: int = 10) -> dict[str, Any]:
    return {"filename": name, "content_type": "application/pdf", "content": b64(b"x" * size)}


def numbers(count: int) -> list[str]:
    return [f"+336{i:08d}" for i in range(count)]


def addresses(count: int) -> list[dict[str, str]]:
    return [{"email": f"user{i}@example.com"} for i in range(count)]


POSTAL: dict[str, Any] = {
    "provider": "postal",
    "to": [{"email": "ada@example.com", "name": "Ada Lovelace"}],
    "from": {"email": "noreply@shop.example", "name": "Shop"},
    "subject": "Your order",
    "text": "Thanks for your order.",
}
EMAILMASSIVO: dict[str, Any] = {**POSTAL, "provider": "emailmassivo"}
MAILPARTNER: dict[str, Any] = {**POSTAL, "provider": "mailpartner"}
SMS: dict[str, Any] = {"provider": "smspartner", "to": ["+33612345678"], "text": "Code: 1234"}
TTS: dict[str, Any] = {"mode": "tts", "to": ["+33612345678"], "text": "Bonjour"}
VOICEMAIL: dict[str, Any] = {"mode": "voicemail", "to": ["+33612345678"], "audio_token": "a1B2"}


def refused(channel: str, data: Any) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        parse_message(channel, data)
    return info.value


def assert_refused(channel: str, data: Any, field: str, *words: str) -> None:
    """The refusal names ``field`` and its message mentions every one of ``words``."""
    exc = refused(channel, data)
    by_field = {e["field"]: e["message"] for e in exc.errors}
    assert field in by_field, exc.errors
    for word in words:
        assert word.lower() in by_field[field].lower(), (word, by_field[field])
    assert field in str(exc)


# -- valid messages -----------------------------------------------------------------------------


def test_postal_full_message() -> None:
    msg = parse_message(
        "email",
        {
            **POSTAL,
            "to": addresses(50),
            "cc": addresses(50),
            "bcc": addresses(50),
            "reply_to": {"email": "help@shop.example"},
            "html": "<p>Thanks</p>",
            "preview_text": "Your order is on its way",
            "attachments": [attachment(), attachment("notes.txt")],
            "headers": {"X-Delivery-Id": "d-1", "List-Unsubscribe": "<mailto:u@shop.example>"},
            "tag": "orders",
            "idempotency_key": "order-42",
            "deadline": "2026-11-23T05:08:27+01:00",
        },
    )
    assert isinstance(msg, EmailMessage)
    assert msg.from_ is not None and msg.from_.email == "noreply@shop.example"
    assert len(msg.to) == len(msg.cc) == len(msg.bcc) == 50
    assert msg.deadline == datetime(2026, 11, 23, 4, 8, 27, tzinfo=UTC)
    assert msg.attachments[0].size_bytes == 10


def test_postal_raw_message() -> None:
    raw = b64(b"From: noreply@shop.example\r\nSubject: hi\r\n\r\nhello\r\n")
    msg = parse_message(
        "email",
        {
            "provider": "postal",
            "to": [{"email": "ada@example.com"}],
            "from": {"email": "noreply@shop.example"},
            "raw": raw,
        },
    )
    assert isinstance(msg, EmailMessage)
    assert msg.raw == raw and msg.subject is None


def test_emailmassivo_html_with_one_cc_and_bcc() -> None:
    msg = parse_message(
        "email",
        {
            **EMAILMASSIVO,
            "html": "<p>hi</p>",
            "cc": [{"email": "cc@example.com"}],
            "bcc": [{"email": "bcc@example.com"}],
            "preview_text": "p" * 255,
            "attachments": [attachment(str(i) + ".pdf") for i in range(20)],
            "idempotency_key": "k" * 128,
        },
    )
    assert isinstance(msg, EmailMessage) and msg.provider == "emailmassivo"


@pytest.mark.parametrize("template_id", [123, "123"])
def test_emailmassivo_template(template_id: int | str) -> None:
    data = {**EMAILMASSIVO, "template": {"id": template_id, "params": {"name": "Ada"}}}
    del data["text"]
    msg = parse_message("email", data)
    assert isinstance(msg, EmailMessage)
    assert msg.template is not None and msg.template.params == {"name": "Ada"}


def test_mailpartner_500_recipients_3_attachments_and_tag() -> None:
    msg = parse_message(
        "email",
        {
            **MAILPARTNER,
            "to": addresses(500),
            "html": "<p>hi #FIRSTNAME#</p>",
            "reply_to": {"email": "help@shop.example", "name": "Help"},
            "attachments": [attachment(f"f{i}.pdf") for i in range(3)],
            "tag": "newsletter_2026",
        },
    )
    assert isinstance(msg, EmailMessage) and len(msg.to) == 500


def test_sms_with_sender_tag_and_500_numbers() -> None:
    msg = parse_message("sms", {**SMS, "to": numbers(500), "sender": "Shop2026", "tag": "otp-42_a"})
    assert isinstance(msg, SmsMessage)
    assert msg.provider == "smspartner" and len(msg.to) == 500


def test_sms_provider_defaults_to_smspartner() -> None:
    data = dict(SMS)
    del data["provider"]
    assert parse_message("sms", data).provider == "smspartner"


@pytest.mark.parametrize(
    "data",
    [
        TTS,
        {**TTS, "text": None, "audio_token": "tok_1"},
        {**TTS, "lang": "en-GB", "speech_rate": 1.5, "to": numbers(500)},
    ],
)
def test_voice_tts(data: dict[str, Any]) -> None:
    msg = parse_message("voice", data)
    assert isinstance(msg, VoiceMessage) and msg.mode == "tts"


def test_voice_voicemail() -> None:
    msg = parse_message(
        "voice",
        {**VOICEMAIL, "sender": "+33123456789", "notification_email": "ops@shop.example"},
    )
    assert isinstance(msg, VoiceMessage)
    assert msg.mode == "voicemail" and msg.provider == "voicepartner"


@pytest.mark.parametrize(
    ("channel", "data"),
    [("email", {**POSTAL, "cc": addresses(2)}), ("sms", SMS), ("voice", VOICEMAIL)],
)
def test_a_valid_message_round_trips_through_json(channel: str, data: dict[str, Any]) -> None:
    msg = parse_message(channel, data)
    again = parse_message(channel, msg.model_dump(mode="json", by_alias=True, exclude_none=True))
    assert again == msg


# -- email addresses and phone numbers ----------------------------------------------------------


@pytest.mark.parametrize("bad", ["not-an-address", "a@", "@example.com", "a b@example.com"])
def test_email_syntax(bad: str) -> None:
    assert_refused("email", {**POSTAL, "to": [{"email": bad}]}, "to.0.email", "valid email")


def test_email_syntax_of_from_and_reply_to() -> None:
    assert_refused("email", {**POSTAL, "from": {"email": "x"}}, "from.email", "valid email")
    assert_refused("email", {**POSTAL, "reply_to": {"email": "x@"}}, "reply_to.email", "valid")


@pytest.mark.parametrize(
    "bad",
    [
        "0612345678",  # national form: not E.164
        "33612345678",  # no +
        "+33 6 12 34 56 78",  # spaces
        "+0612345678",  # country codes never start with 0
        "+3\u0663\u0666\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668",  # Arabic-Indic digits
    ],
)
def test_sms_numbers_are_e164(bad: str) -> None:
    assert_refused("sms", {**SMS, "to": [bad]}, "to.0", "E.164", "+33612345678")


def test_impossible_number_for_its_country_code() -> None:
    assert_refused("sms", {**SMS, "to": ["+1234567"]}, "to.0", "possible phone number")


def test_voice_sender_is_e164() -> None:
    assert_refused("voice", {**VOICEMAIL, "sender": "Shop"}, "sender", "E.164")


# -- SMS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["ab", "TwelveChars1", "My Shop", "Shop!", "Café"])
def test_sms_sender_is_3_to_11_letters_or_digits(bad: str) -> None:
    assert_refused("sms", {**SMS, "sender": bad}, "sender", "3-11 letters or digits")


@pytest.mark.parametrize("bad", ["Upper", "with space", "x" * 21, "", "é"])
def test_sms_tag_is_lowercase_without_spaces(bad: str) -> None:
    assert_refused("sms", {**SMS, "tag": bad}, "tag", "1-20 lowercase")


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 1530, 10),
        ("é" * 160, 1),  # é is in the GSM-7 basic table
        ("ê" * 70, 1),  # ê is not: UCS-2, 70 per part
        ("ê" * 71, 2),
        ("ê" * 670, 10),
        ("€" * 80, 1),  # extension table: two septets each
        ("€" * 81, 2),
        ("😀" * 35, 1),  # outside the BMP: two UTF-16 units each
        ("😀" * 36, 2),
        ("a\n" * 53, 1),  # SMS Partner sends a line break as ":br:", counted 2
        ("a\r\n" * 54, 2),
    ],
)
def test_sms_segments_count_gsm7_and_unicode(text: str, parts: int) -> None:
    assert sms_segments(text) == parts


@pytest.mark.parametrize(
    ("ok", "too_long", "words"),
    [
        ("a" * 1530, "a" * 1531, ["11 SMS parts", "1530 GSM-7"]),
        ("€" * 765, "€" * 766, ["11 SMS parts", "1530 GSM-7"]),
        ("ê" * 670, "ê" * 671, ["11 SMS parts", "670", "Unicode"]),
        ("😀" * 335, "😀" * 336, ["11 SMS parts", "670", "Unicode"]),
    ],
)
def test_sms_longer_than_10_parts(ok: str, too_long: str, words: list[str]) -> None:
    assert isinstance(parse_message("sms", {**SMS, "text": ok}), SmsMessage)
    assert_refused("sms", {**SMS, "text": too_long}, "text", *words)


def test_sms_empty_text() -> None:
    assert_refused("sms", {**SMS, "text": ""}, "text", "at least 1 character")


@pytest.mark.parametrize(("channel", "base"), [("sms", SMS), ("voice", TTS)])
def test_duplicate_numbers_name_the_duplicate(channel: str, base: dict[str, Any]) -> None:
    data = {**base, "to": ["+33612345678", "+33612345679", "+33612345678"]}
    assert_refused(channel, data, "to.2", "duplicates to.0")


@pytest.mark.parametrize(("channel", "base"), [("sms", SMS), ("voice", TTS)])
def test_at_most_500_numbers(channel: str, base: dict[str, Any]) -> None:
    assert_refused(channel, {**base, "to": numbers(501)}, "to", "at most 500")


@pytest.mark.parametrize(("channel", "base"), [("sms", SMS), ("voice", TTS)])
def test_at_least_one_number(channel: str, base: dict[str, Any]) -> None:
    assert_refused(channel, {**base, "to": []}, "to", "at least 1")


# -- recipient counts per email provider -------------------------------------------------------


@pytest.mark.parametrize("field", ["to", "cc", "bcc"])
def test_postal_at_most_50_per_field(field: str) -> None:
    assert_refused("email", {**POSTAL, field: addresses(51)}, field, "postal", "50")


def test_mailpartner_at_most_500_recipients() -> None:
    assert_refused("email", {**MAILPARTNER, "to": addresses(501)}, "to", "at most 500")


@pytest.mark.parametrize("count", [0, 2])
def test_emailmassivo_exactly_one_to(count: int) -> None:
    field_words = ("exactly one",) if count else ("at least 1",)
    assert_refused("email", {**EMAILMASSIVO, "to": addresses(count)}, "to", *field_words)


@pytest.mark.parametrize("field", ["cc", "bcc"])
def test_emailmassivo_at_most_one_cc_and_bcc(field: str) -> None:
    assert_refused(
        "email", {**EMAILMASSIVO, field: addresses(2)}, field, "emailmassivo", "at most one"
    )


@pytest.mark.parametrize("field", ["cc", "bcc"])
def test_mailpartner_has_no_cc_or_bcc(field: str) -> None:
    assert_refused("email", {**MAILPARTNER, field: addresses(1)}, field, "mailpartner")


# -- attachments -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["not base64!", "aGVsbG8", "aGVs\nbG8=", "é"])
def test_attachment_content_is_base64(bad: str) -> None:
    data = {**POSTAL, "attachments": [{"filename": "a.txt", "content": bad}]}
    assert_refused("email", data, "attachments.0.content", "base64")


@pytest.mark.parametrize("bad", ["../etc/passwd", "dir\\file.txt", "a\r\nb.txt", "..", "x\x00.txt"])
def test_attachment_filename_is_bare(bad: str) -> None:
    data = {**POSTAL, "attachments": [attachment(bad)]}
    assert_refused("email", data, "attachments.0.filename", "bare file name")


def test_attachment_content_type_is_a_mime_type() -> None:
    data = {**POSTAL, "attachments": [{**attachment(), "content_type": "pdf"}]}
    assert_refused("email", data, "attachments.0.content_type", "MIME type")


def test_emailmassivo_at_most_20_attachments() -> None:
    data = {**EMAILMASSIVO, "attachments": [attachment(f"{i}.pdf") for i in range(21)]}
    assert_refused("email", data, "attachments", "at most 20")


def test_emailmassivo_at_most_5_mb_of_attachments() -> None:
    data = {
        **EMAILMASSIVO,
        "attachments": [attachment("a.pdf", 3 * MB), attachment("b.pdf", 3 * MB)],
    }
    assert_refused("email", data, "attachments", "5 MB in total")


def test_emailmassivo_request_body_at_most_5_mb_once_base64() -> None:
    # 4.5 MB of files is under the 5 MB attachment rule, but 6 MB of base64 in the request.
    data = {**EMAILMASSIVO, "attachments": [attachment("a.pdf", 9 * MB // 2)]}
    assert_refused("email", data, "attachments", "requests are limited to 5 MB")


@pytest.mark.parametrize("name", ["setup.exe", "app.js", "RUN.EXE", "run.exe.", "x.ps1", "y.ex_"])
def test_emailmassivo_forbidden_extensions(name: str) -> None:
    data = {**EMAILMASSIVO, "attachments": [attachment("ok.pdf"), attachment(name)]}
    assert_refused("email", data, "attachments.1.filename", "forbidden by emailmassivo")


def test_other_providers_accept_those_extensions() -> None:
    assert parse_message("email", {**POSTAL, "attachments": [attachment("setup.exe")]})


def test_mailpartner_at_most_3_attachments() -> None:
    data = {**MAILPARTNER, "attachments": [attachment(f"{i}.pdf") for i in range(4)]}
    assert_refused("email", data, "attachments", "at most 3")


def test_mailpartner_at_most_5_mb_each() -> None:
    data = {**MAILPARTNER, "attachments": [attachment("a.pdf"), attachment("b.pdf", 5 * MB + 1)]}
    assert_refused("email", data, "attachments.1", "5 MB each")
    ok = {**MAILPARTNER, "attachments": [attachment("a.pdf", 5 * MB), attachment("b.pdf", 4 * MB)]}
    assert parse_message("email", ok)


def test_at_most_10_mb_of_attachments_in_total() -> None:
    data = {**POSTAL, "attachments": [attachment(f"{i}.bin", 4 * MB) for i in range(3)]}
    assert_refused("email", data, "attachments", "10 MB")


# -- content -----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"html": ""}, {"text": "", "html": None}])
def test_html_or_text_required(body: dict[str, Any]) -> None:
    data = {k: v for k, v in POSTAL.items() if k != "text"} | body
    assert_refused("email", data, "html", "html or text is required")


def test_subject_required() -> None:
    data = {k: v for k, v in POSTAL.items() if k != "subject"}
    assert_refused("email", data, "subject", "required")


def test_template_and_html_are_exclusive() -> None:
    data = {**EMAILMASSIVO, "template": {"id": 1}}
    assert_refused("email", data, "template", "either a template or html/text")


@pytest.mark.parametrize("base", [POSTAL, MAILPARTNER])
def test_templates_only_for_emailmassivo(base: dict[str, Any]) -> None:
    data = {k: v for k, v in base.items() if k != "text"} | {"template": {"id": 1}}
    assert_refused("email", data, "template", "no stored templates")


@pytest.mark.parametrize("bad", ["welcome", "²", "-3", 0])
def test_emailmassivo_template_ids_are_positive_integers(bad: Any) -> None:
    data = {k: v for k, v in EMAILMASSIVO.items() if k != "text"} | {"template": {"id": bad}}
    assert_refused("email", data, "template.id", "positive integers")


@pytest.mark.parametrize("bad", [True, 1.5, None, ["1"], {"id": 1}])
def test_template_id_is_an_integer_or_a_string(bad: Any) -> None:
    data = {k: v for k, v in EMAILMASSIVO.items() if k != "text"} | {"template": {"id": bad}}
    assert_refused("email", data, "template.id", "must be an integer or a string")


@pytest.mark.parametrize("base", [EMAILMASSIVO, MAILPARTNER])
def test_raw_only_for_postal(base: dict[str, Any]) -> None:
    data = {"provider": base["provider"], "to": base["to"], "from": base["from"], "raw": "aGk="}
    assert_refused("email", data, "raw", "only supported by postal")


def test_raw_refuses_content_fields_and_lists_them() -> None:
    data = {**POSTAL, "raw": "aGk=", "attachments": [attachment()]}
    assert_refused("email", data, "raw", "drop", "subject", "text", "attachments")


def test_raw_needs_from_and_base64() -> None:
    base = {"provider": "postal", "to": POSTAL["to"], "raw": "aGk="}
    assert_refused("email", base, "from", "required")
    assert_refused("email", {**base, "from": POSTAL["from"], "raw": "not base64"}, "raw", "base64")


@pytest.mark.parametrize("provider_base", [POSTAL, EMAILMASSIVO])
def test_from_required(provider_base: dict[str, Any]) -> None:
    data = {k: v for k, v in provider_base.items() if k != "from"}
    assert_refused("email", data, "from", "required")


def test_mailpartner_refuses_custom_headers() -> None:
    data = {**MAILPARTNER, "headers": {"X-A": "b"}}
    assert_refused("email", data, "headers", "mailpartner")


def test_mailpartner_tag_format() -> None:
    assert_refused("email", {**MAILPARTNER, "tag": "ab"}, "tag", "3-20 lowercase")


def test_preview_text_at_most_255() -> None:
    data = {**EMAILMASSIVO, "preview_text": "p" * 256}
    assert_refused("email", data, "preview_text", "at most 255")


# -- header injection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["a\r\nBcc: x@evil.example", "a\nb", "a\rb", "a\x00b", "a\u2028b"]
)
def test_header_values_without_line_breaks(value: str) -> None:
    data = {**POSTAL, "headers": {"X-Note": value}}
    assert_refused("email", data, "headers", "X-Note", "line breaks")


@pytest.mark.parametrize(
    "name", ["X Note", "X-Note:", "Bcc:\r\nX", "X-Note\n", "", "Ünicode", "x" * 101]
)
def test_header_names_are_field_names(name: str) -> None:
    data = {**POSTAL, "headers": {name: "v"}}
    assert_refused("email", data, "headers", "not a valid header field name")


@pytest.mark.parametrize("subject", ["Hi\r\nBcc: x@evil.example", "a\nb", "a\u2029b"])
def test_subject_on_one_line(subject: str) -> None:
    assert_refused("email", {**POSTAL, "subject": subject}, "subject", "line breaks")


def test_address_name_on_one_line() -> None:
    data = {**POSTAL, "to": [{"email": "ada@example.com", "name": "Ada\r\nBcc: x@evil.example"}]}
    assert_refused("email", data, "to.0.name", "line breaks")


# -- deadline and idempotency key --------------------------------------------------------------


def test_deadline_needs_a_timezone() -> None:
    data = {**SMS, "deadline": "2026-11-23T04:08:27"}
    assert_refused("sms", data, "deadline", "timezone")


@pytest.mark.parametrize("bad", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_deadline_out_of_range_in_utc(bad: str) -> None:
    assert_refused("sms", {**SMS, "deadline": bad}, "deadline", "out of range")


@pytest.mark.parametrize("bad", ["", "has space", "é", "k" * 129])
def test_idempotency_key_printable_ascii(bad: str) -> None:
    assert_refused("sms", {**SMS, "idempotency_key": bad}, "idempotency_key")


# -- voice -------------------------------------------------------------------------------------


def test_tts_needs_text_or_audio_token() -> None:
    data = {k: v for k, v in TTS.items() if k != "text"}
    assert_refused("voice", data, "text", "text or audio_token")


def test_voicemail_needs_audio_token() -> None:
    data = {k: v for k, v in VOICEMAIL.items() if k != "audio_token"} | {"text": "hi"}
    assert_refused("voice", data, "audio_token", "required for voicemail")


def test_voicemail_refuses_text() -> None:
    assert_refused("voice", {**VOICEMAIL, "text": "hi"}, "text", "audio_token")


@pytest.mark.parametrize(
    ("field", "bad", "words"),
    [
        ("mode", "sms", ["'tts' or 'voicemail'"]),
        ("lang", "French", ["language code"]),
        ("audio_token", "a b", ["audio file token"]),
        ("speech_rate", 3, ["less than or equal to 2"]),
        ("notification_email", "ops", ["valid email"]),
    ],
)
def test_voice_field_formats(field: str, bad: Any, words: list[str]) -> None:
    assert_refused("voice", {**VOICEMAIL, field: bad}, field, *words)


# -- shape: unknown fields, wrong types, provider, channel -------------------------------------


@pytest.mark.parametrize(
    ("channel", "data", "field"),
    [
        # `priority` is a field of the contract now (worker.lanes): another unknown name.
        ("email", {**POSTAL, "urgency": "high"}, "urgency"),
        ("email", {**POSTAL, "from_": POSTAL["from"]}, "from_"),
        (
            "email",
            {**POSTAL, "to": [{"email": "a@example.com", "phone": "+33612345678"}]},
            "to.0.phone",
        ),
        (
            "email",
            {**POSTAL, "attachments": [{**attachment(), "url": "http://x"}]},
            "attachments.0.url",
        ),
        ("sms", {**SMS, "message": "hi"}, "message"),
        ("voice", {**TTS, "tokenAudio": "abc"}, "tokenAudio"),
    ],
)
def test_unknown_fields_are_refused_by_name(channel: str, data: dict[str, Any], field: str) -> None:
    assert_refused(channel, data, field, "extra inputs are not permitted")


@pytest.mark.parametrize(
    ("channel", "data", "field", "words"),
    [
        ("email", {**POSTAL, "to": "ada@example.com"}, "to", ["valid list"]),
        ("email", {**POSTAL, "to": ["ada@example.com"]}, "to.0", ["valid dictionary"]),
        ("email", {**POSTAL, "subject": 42}, "subject", ["valid string"]),
        ("email", {**POSTAL, "headers": ["X-A: b"]}, "headers", ["valid dictionary"]),
        ("sms", {**SMS, "to": "+33612345678"}, "to", ["valid list"]),
        ("sms", {**SMS, "to": [33612345678]}, "to.0", ["valid string"]),
        ("sms", {**SMS, "text": None}, "text", ["valid string"]),
        ("voice", {**TTS, "to": [33612345678]}, "to.0", ["valid string"]),
    ],
)
def test_wrong_types(channel: str, data: dict[str, Any], field: str, words: list[str]) -> None:
    assert_refused(channel, data, field, *words)


@pytest.mark.parametrize(
    ("channel", "data"),
    [
        ("email", {**POSTAL, "provider": "sendgrid"}),
        ("email", {**POSTAL, "provider": "smspartner"}),
        ("sms", {**SMS, "provider": "postal"}),
        ("voice", {**TTS, "provider": "smspartner"}),
    ],
)
def test_unknown_provider(channel: str, data: dict[str, Any]) -> None:
    assert_refused(channel, data, "provider", "input should be")


def test_email_without_provider_is_routed_to_every_eligible_provider() -> None:
    data = {k: v for k, v in POSTAL.items() if k != "provider"}
    message = parse_message("email", data)
    assert isinstance(message, EmailMessage)
    assert message.provider is None
    assert eligible_providers(message) == ["postal", "emailmassivo", "mailpartner"]


def test_routed_email_keeps_only_providers_whose_rules_it_meets() -> None:
    data = {k: v for k, v in POSTAL.items() if k != "provider"}
    data["to"] = [{"email": "a@example.com"}, {"email": "b@example.com"}]
    data["cc"] = [{"email": "c@example.com"}]
    message = parse_message("email", data)
    assert isinstance(message, EmailMessage)
    # EmailMassivo takes one `to`; Mail Partner has no cc.
    assert eligible_providers(message) == ["postal"]


def test_routed_email_no_provider_accepts_is_refused_naming_the_field() -> None:
    data = {k: v for k, v in POSTAL.items() if k != "provider"}
    data["to"] = [{"email": f"r{i}@example.com"} for i in range(51)]
    data["cc"] = [{"email": "c@example.com"}]
    assert_refused("email", data, "to", "no email provider accepts")


@pytest.mark.parametrize("channel", ["fax", "EMAIL", "", None, 3])
def test_unknown_channel(channel: Any) -> None:
    assert_refused(channel, SMS, "channel", "unknown channel", "email, sms or voice")


@pytest.mark.parametrize("data", [None, "a message", ["to"], 42, b"{}"])
def test_message_must_be_an_object(data: Any) -> None:
    assert_refused("sms", data, "message", "must be an object")


def test_channel_field_must_match_the_channel() -> None:
    assert_refused("email", {**POSTAL, "channel": "sms"}, "channel", "'email'")


# -- InvalidMessage ----------------------------------------------------------------------------


def test_invalid_message_names_every_bad_field() -> None:
    exc = refused("sms", {"to": ["0612"], "text": "", "sender": "a b", "tag": "X", "extra": 1})
    fields = [e["field"] for e in exc.errors]
    assert sorted(fields) == ["extra", "sender", "tag", "text", "to.0"]
    text = str(exc)
    assert text.startswith("invalid message: ")
    for field in fields:
        assert f"{field}: " in text


def test_model_level_errors_name_their_field_outside_parse_message_too() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        SmsMessage.model_validate({**SMS, "to": ["+33612345678", "+33612345678"]})
    exc = InvalidMessage.from_validation_error(info.value)
    assert exc.errors == [{"field": "to.1", "message": "duplicates to.0"}]


def test_invalid_message_survives_pickling() -> None:
    exc = refused("email", {**POSTAL, "to": []})
    again = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    assert isinstance(again, InvalidMessage)
    assert again.errors == exc.errors and str(again) == str(exc)
