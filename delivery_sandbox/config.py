"""Tunable limits and timings, with the providers' documented values as defaults.

Set at start with ``python -m delivery_sandbox`` flags; the fields in :data:`RUNTIME_FIELDS`
can also be changed on a running sandbox with ``POST /_admin/config`` (``/_admin/reset``
restores the starting values).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EMAILMASSIVO_SUCCESS_STATUSES", "RUNTIME_FIELDS", "Limits", "SandboxConfig"]


@dataclass(frozen=True)
class Limits:
    """Requests admitted per client IP; 0 disables a limit (providers.md §6)."""

    emailmassivo_per_s: int = 10  # §5.4: no more than 10 requests per second from one IP
    mailpartner_per_min: int = 2000  # §2.3: code 429 past 2000 requests/minute/IP
    smspartner_per_min: int = 0  # §1.3: no /send limit documented
    voicepartner_campaign_per_min: int = 5  # §3.2: campaign/send 5/min
    voicepartner_per_hour: int = 2000  # §3.2: tts/send and campaign/send, 2000/h each
    voicepartner_me_per_min: int = 5  # §3.2: /me 5/min


@dataclass(frozen=True)
class SandboxConfig:
    limits: Limits = field(default_factory=Limits)
    idempotency_window_s: float = 3600.0  # EmailMassivo dedupe window (§5.5)
    # EmailMassivo's status for a new send: 200 as its own page documents (seed 003, §5.4), or
    # 201 as RuSender's (RS-DOC). A repeat is answered 200 either way (§5.5).
    emailmassivo_success_status: int = 200
    sms_delivery_delay_s: float = 1.0  # SMS Partner: "Waiting" until then, then "Delivered"
    max_body_bytes: int = 32 * 1024 * 1024
    idle_timeout_s: float = 120.0  # a keep-alive connection idle this long is closed


EMAILMASSIVO_SUCCESS_STATUSES = (200, 201)
RUNTIME_FIELDS = ("emailmassivo_success_status", "idempotency_window_s", "sms_delivery_delay_s")
"""Config fields ``POST /_admin/config`` may change while the sandbox runs."""
