"""The Django email backend's mapping and its ``fail_silently`` convention (no Redis needed:
an invalid message is refused before anything is published)."""

from __future__ import annotations

import base64
from email.mime.text import MIMEText

import pytest
from django.conf import settings
from django.core import mail
from django.core.mail import EmailMessage, EmailMultiAlternatives

from worker.integrations.django_email import EmailBackend, to_message
from worker.models import InvalidMessage

if not settings.configured:  # Django reads its settings lazily, at the first send
    settings.configure(EMAIL_BACKEND="worker.integrations.django_email.EmailBackend")


def test_multi_alternatives_with_attachments_map_to_the_contract() -> None:
    msg = EmailMultiAlternatives(
        subject="Your invoice",
        body="Plain text",
        from_email="Shop <shop@example.org>",
        to=["Ada Lovelace <ada@example.com>"],
        cc=["bo@example.com"],
        bcc=["audit@example.org"],
        reply_to=["help@example.org"],
        headers={"X-Campaign": "spring"},
    )
    msg.attach_alternative("<p>HTML</p>", "text/html")
    msg.attach("invoice.pdf", b"%PDF-1.4", "application/pdf")
    msg.attach(MIMEText("note body", "plain"))
    msg.attachments[-1].add_header("Content-Disposition", "attachment", filename="note.txt")

    out = to_message(msg, provider="postal")
    assert out["provider"] == "postal"
    assert out["to"] == [{"email": "ada@example.com", "name": "Ada Lovelace"}]
    assert out["from"] == {"email": "shop@example.org", "name": "Shop"}
    assert out["cc"] == [{"email": "bo@example.com"}]
    assert out["bcc"] == [{"email": "audit@example.org"}]
    assert out["reply_to"] == {"email": "help@example.org"}
    assert (out["subject"], out["text"], out["html"]) == (
        "Your invoice",
        "Plain text",
        "<p>HTML</p>",
    )
    assert out["headers"] == {"X-Campaign": "spring"}
    pdf, note = out["attachments"]
    assert pdf == {
        "filename": "invoice.pdf",
        "content_type": "application/pdf",
        "content": base64.b64encode(b"%PDF-1.4").decode(),
    }
    assert note["filename"] == "note.txt" and note["content_type"] == "text/plain"
    assert base64.b64decode(note["content"]) == b"note body"


def test_an_html_body_goes_to_html() -> None:
    msg = EmailMessage("Hi", "<b>bold</b>", "shop@example.org", ["ada@example.com"])
    msg.content_subtype = "html"
    out = to_message(msg)
    assert out["html"] == "<b>bold</b>" and "text" not in out and "provider" not in out


def test_unsupported_alternatives_name_the_field() -> None:
    msg = EmailMultiAlternatives("Hi", "x", "shop@example.org", ["ada@example.com"])
    msg.attach_alternative("{}", "application/json")
    with pytest.raises(InvalidMessage) as info:
        to_message(msg)
    assert info.value.errors[0]["field"] == "alternatives.0"


def test_validation_errors_raise_unless_fail_silently() -> None:
    bad = EmailMessage("Hi", "x", "shop@example.org", ["not-an-address"])
    with pytest.raises(InvalidMessage) as info:
        EmailBackend(provider="postal").send_messages([bad])
    assert [e["field"] for e in info.value.errors] == ["to.0.email"]
    assert EmailBackend(fail_silently=True, provider="postal").send_messages([bad]) == 0
    with pytest.raises(InvalidMessage):
        mail.send_mail("Hi", "x", "shop@example.org", ["nope"])
    assert mail.send_mail("Hi", "x", "shop@example.org", ["nope"], fail_silently=True) == 0
