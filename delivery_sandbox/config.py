"""Tunable limits and timings, with the providers' documented values as defaults.

Set at start with ``python -m delivery_sandbox`` flags; the fields in :data:`RUNTIME_FIELDS`
can also be changed on a running sandbox with ``POST /_admin/config`` (``/_admin/reset``
restores the starting values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_POSTAL_DOMAINS",
    "DEFAULT_VOICEPARTNER_SENDERS",
    "EMAILMASSIVO_SUCCESS_STATUSES",
    "RUNTIME_FIELDS",
    "Limits",
    "SandboxConfig",
]

DEFAULT_POSTAL_DOMAINS: tuple[str, ...] = (
    "example.com",
    "example.net",
    "example.org",
    "example.test",
)
"""From domains the sandbox's Postal server has authenticated (docs/providers/postal.md §4.2): the
RFC 2606/6761 documentation names, so examples and tests send as-is, and any other domain is
refused."""

DEFAULT_VOICEPARTNER_SENDERS: tuple[str, ...] = ("+33123456789",)
"""Callback numbers "validated beforehand on my.voicepartner.fr"
(docs/providers/voicepartner.md §3.2) for voicemail drops."""


@dataclass(frozen=True)
class Limits:
    """Requests admitted per client IP; 0 disables a limit (docs/providers/index.md §6)."""

    # docs/providers/emailmassivo.md §5.4: no more than 10 requests per second from one IP
    emailmassivo_per_s: int = 10
    # docs/providers/mailpartner.md §2.3: code 429 past 2000 requests/minute/IP
    mailpartner_per_min: int = 2000
    smspartner_per_min: int = 0  # docs/providers/smspartner.md §1.3: no /send limit documented
    # docs/providers/voicepartner.md §3.2: campaign/send 5/min
    voicepartner_campaign_per_min: int = 5
    # docs/providers/voicepartner.md §3.2: tts/send and campaign/send, 2000/h each
    voicepartner_per_hour: int = 2000
    voicepartner_me_per_min: int = 5  # docs/providers/voicepartner.md §3.2: /me 5/min


@dataclass(frozen=True)
class SandboxConfig:
    limits: Limits = field(default_factory=Limits)
    # EmailMassivo dedupe window (docs/providers/emailmassivo.md §5.5)
    idempotency_window_s: float = 3600.0
    # EmailMassivo's status for a new send: 200 as its own page documents (seed 003,
    # docs/providers/emailmassivo.md §5.4), or 201 as RuSender's (RS-DOC). A repeat is answered 200
    # either way (docs/providers/emailmassivo.md §5.5).
    emailmassivo_success_status: int = 200
    sms_delivery_delay_s: float = 1.0  # SMS Partner: "Waiting" until then, then "Delivered"
    # (Mail Partner "Pending" and Voice Partner too)
    # Postal: "Pending" until then, then "Sent" (docs/providers/postal.md §4.4)
    postal_delivery_delay_s: float = 0.0
    max_body_bytes: int = 32 * 1024 * 1024
    idle_timeout_s: float = 120.0  # a keep-alive connection idle this long is closed
    # Postal (docs/providers/postal.md §4.2, §4.5): authenticated From domains (exact names,
    # case-insensitive), the server's send_limit (messages per 60 minutes; None = no limit, Postal's
    # default) and the suppression list ({address: reason}). Changeable at run time through
    # /_admin/settings.
    postal_domains: tuple[str, ...] = DEFAULT_POSTAL_DOMAINS
    postal_send_limit: int | None = None
    postal_suppressed: Mapping[str, str] = field(default_factory=dict)
    # Voice Partner (docs/providers/voicepartner.md §3.2, §3.3): campaign `sender` numbers validated
    # on the account.
    voicepartner_senders: tuple[str, ...] = DEFAULT_VOICEPARTNER_SENDERS


EMAILMASSIVO_SUCCESS_STATUSES = (200, 201)
RUNTIME_FIELDS = (
    "emailmassivo_success_status",
    "idempotency_window_s",
    "sms_delivery_delay_s",
    "postal_delivery_delay_s",
)
"""Config fields ``POST /_admin/config`` may change while the sandbox runs."""
