"""Provider drivers: one module per provider over :mod:`worker.providers.base`."""

from __future__ import annotations

import importlib
from typing import Any

import httpx

from worker.providers.base import Balance, Driver, SendContext, SendOutcome

__all__ = [
    "DRIVER_PATHS",
    "Balance",
    "Driver",
    "SendContext",
    "SendOutcome",
    "driver_class",
    "make_driver",
]

DRIVER_PATHS: dict[str, str] = {
    "postal": "worker.providers.postal:PostalDriver",
    "emailmassivo": "worker.providers.emailmassivo:EmailMassivoDriver",
    "mailpartner": "worker.providers.mailpartner:MailPartnerDriver",
    "smspartner": "worker.providers.smspartner:SmsPartnerDriver",
    "voicepartner": "worker.providers.voicepartner:VoicePartnerDriver",
}


def driver_class(provider: str) -> type[Driver[Any]]:
    module_name, _, attr = DRIVER_PATHS[provider].partition(":")
    cls: type[Driver[Any]] = getattr(importlib.import_module(module_name), attr)
    return cls


def make_driver(
    provider: str, client: httpx.Client, *, api_key: str, base_url: str | None = None, **extra: Any
) -> Driver[Any]:
    return driver_class(provider)(client, api_key=api_key, base_url=base_url, **extra)
