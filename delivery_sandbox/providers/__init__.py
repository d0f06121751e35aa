"""One module per simulated provider; ``build_providers`` wires them to shared services."""

from __future__ import annotations

from delivery_sandbox.providers.base import Env, Provider
from delivery_sandbox.providers.emailmassivo import EmailMassivoProvider
from delivery_sandbox.providers.mailpartner import MailPartnerProvider
from delivery_sandbox.providers.postal import PostalProvider
from delivery_sandbox.providers.smspartner import SmsPartnerProvider
from delivery_sandbox.providers.voicepartner import VoicePartnerProvider

__all__ = ["Env", "Provider", "build_providers"]


def build_providers(env: Env) -> dict[str, Provider]:
    providers: list[Provider] = [
        PostalProvider(env),
        EmailMassivoProvider(env),
        MailPartnerProvider(env),
        SmsPartnerProvider(env),
        VoicePartnerProvider(env),
    ]
    return {p.name: p for p in providers}
