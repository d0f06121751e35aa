"""The demo batch: every provider and channel, one message refused at enqueue, and one
provider that runs out of credit (its messages are parked, then resumed)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

__all__ = ["BAD_MESSAGE", "DEMO_BATCH", "OUT_OF_CREDIT", "DemoItem"]


@dataclass(frozen=True)
class DemoItem:
    label: str
    channel: str
    message: dict[str, Any]


def _email(provider: str, n: int, **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "provider": provider,
        "to": [{"email": f"customer{n}@example.com", "name": f"Customer {n}"}],
        "from": {"email": "shop@example.org", "name": "Demo Shop"},
        "subject": f"Your order #{1000 + n}",
        "html": f"<p>Thank you for order #{1000 + n}.</p>",
        "text": f"Thank you for order #{1000 + n}.",
    }
    msg.update(extra)
    return msg


_INVOICE = base64.b64encode(b"%PDF-1.4 demo invoice\n").decode()

DEMO_BATCH: list[DemoItem] = [
    DemoItem("postal: order confirmation", "email", _email("postal", 1)),
    DemoItem(
        "postal: two recipients + attachment",
        "email",
        _email(
            "postal",
            2,
            to=[{"email": "ana@example.com"}, {"email": "bo@example.com"}],
            attachments=[
                {"filename": "invoice.pdf", "content_type": "application/pdf", "content": _INVOICE}
            ],
        ),
    ),
    DemoItem("emailmassivo: receipt", "email", _email("emailmassivo", 3)),
    DemoItem(
        "emailmassivo: template",
        "email",
        {
            **{k: v for k, v in _email("emailmassivo", 4).items() if k not in ("html", "text")},
            "template": {"id": 42, "params": {"first_name": "Ada"}},
        },
    ),
    DemoItem("mailpartner: newsletter", "email", _email("mailpartner", 5, tag="newsletter")),
    DemoItem("mailpartner: text only", "email", {**_email("mailpartner", 6), "html": None}),
    DemoItem(
        "smspartner: one-time code",
        "sms",
        {
            "provider": "smspartner",
            "to": ["+33612345601"],
            "text": "Your code is 4242",
            "sender": "DemoShop",
        },
    ),
    DemoItem(
        "smspartner: two numbers",
        "sms",
        {
            "provider": "smspartner",
            "to": ["+33612345602", "+33612345603"],
            "text": "Parcel shipped",
        },
    ),
    DemoItem(
        "voicepartner: tts call",
        "voice",
        {
            "provider": "voicepartner",
            "mode": "tts",
            "to": ["+33612345604"],
            "text": "Your code is 4 2 4 2",
            "lang": "en",
        },
    ),
    DemoItem(
        "voicepartner: voicemail drop",
        "voice",
        {
            "provider": "voicepartner",
            "mode": "voicemail",
            "to": ["+33612345605"],
            "audio_token": "demo-audio-1",
            "notification_email": "ops@example.org",
        },
    ),
    # Mail Partner runs out of credit after the first two (see OUT_OF_CREDIT below).
    DemoItem("mailpartner: out of credit", "email", _email("mailpartner", 7)),
]

BAD_MESSAGE = DemoItem(
    "sms: invalid number (refused at enqueue)",
    "sms",
    {"provider": "smspartner", "to": ["0612"], "text": "never queued"},
)

OUT_OF_CREDIT = ("mailpartner", 2)
"""The sandbox gives Mail Partner credit for two mails: the third meets code 11."""
