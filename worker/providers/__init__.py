"""The provider registry: one line per provider module, and what the rest of the worker asks it.

Each provider is one module beside this one whose ``DRIVER`` (a :class:`Driver` subclass)
declares its identity, channel, settings, rate limits, message rules, answer classification
and reconciliation (see :mod:`worker.providers.base`). ``worker.config`` (settings per provider,
default base URLs and limits), the router (:func:`eligible_providers`), message validation
(:func:`parse_message`) and ``worker.runtime`` (:func:`make_driver`) read from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import httpx

from worker.limits import MessageLimits
from worker.models import EmailMessage, InvalidMessage, Message, parse_shape
from worker.providers.base import Driver
from worker.providers.types import (
    Balance,
    CancelAtProvider,
    Gate,
    RuleViolation,
    SendContext,
    SendOutcome,
)
from worker.stores.limiter import Limit

__all__ = [
    "DEFAULT_LIMITS",
    "DRIVERS",
    "PROVIDERS",
    "Balance",
    "CancelAtProvider",
    "Driver",
    "Gate",
    "RuleViolation",
    "SendContext",
    "SendOutcome",
    "channel_providers",
    "driver_class",
    "eligible_providers",
    "make_driver",
    "parse_message",
]

# One line per provider module, in reference order: routing tries a channel's providers in it.
_MODULES: tuple[str, ...] = (
    "postal",  # email, the operator's own server (docs/providers/postal.md §4)
    "emailmassivo",  # email (docs/providers/emailmassivo.md §5)
    "mailpartner",  # email (docs/providers/mailpartner.md §2)
    "smspartner",  # sms (docs/providers/smspartner.md §1)
    "voicepartner",  # voice (docs/providers/voicepartner.md §3)
)


def _load(module: str) -> type[Driver[Any]]:
    cls: type[Driver[Any]] = importlib.import_module(f"{__name__}.{module}").DRIVER
    return cls


DRIVERS: Mapping[str, type[Driver[Any]]] = {cls.name: cls for cls in map(_load, _MODULES)}
PROVIDERS: tuple[str, ...] = tuple(DRIVERS)
DEFAULT_LIMITS: Mapping[str, Mapping[str, tuple[Limit, ...]]] = {
    name: cls.rate_limits for name, cls in DRIVERS.items()
}
"""Each provider's documented limits per bucket (per source IP), as its module declares them."""


def driver_class(provider: str) -> type[Driver[Any]]:
    return DRIVERS[provider]


def make_driver(
    provider: str, client: httpx.Client, *, api_key: str, base_url: str | None = None, **extra: Any
) -> Driver[Any]:
    """A driver over ``client``; ``extra`` are the provider's ``extra_settings``."""
    return DRIVERS[provider](client, api_key=api_key, base_url=base_url, **extra)


def channel_providers(channel: str) -> tuple[str, ...]:
    """The providers of a channel, in reference order."""
    return tuple(name for name, cls in DRIVERS.items() if cls.channel == channel)


def parse_message(channel: str, data: Any, *, limits: MessageLimits | None = None) -> Message:
    """Validate ``data`` as a ``channel`` message and against its provider's rules.

    Raises :class:`~worker.models.InvalidMessage` naming each bad field. With ``limits`` (the
    producer), the size and shape bounds of ``worker.limits`` are checked first.
    """
    message = parse_shape(channel, data, limits=limits)
    names = channel_providers(message.channel)
    if message.provider is None and len(names) == 1:
        # A channel served by one provider names it: the message is not routed.
        message = message.model_copy(update={"provider": names[0]})
    try:
        _check_providers(message, names)
    except RuleViolation as exc:
        raise InvalidMessage([{"field": exc.field, "message": exc.text}]) from None
    return message


def eligible_providers(message: Message) -> list[str]:
    """The providers a message may go to: the named one, else each whose rules it meets."""
    if message.provider is not None:
        return [message.provider]
    return [name for name in channel_providers(message.channel) if _meets(name, message)]


def _meets(provider: str, message: Message) -> bool:
    try:
        DRIVERS[provider].check_message(message)
    except RuleViolation:
        return False
    return True


def _check_providers(message: Message, names: tuple[str, ...]) -> None:
    if message.provider is not None and message.provider not in names:
        quoted = [repr(name) for name in names]
        expected = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
        raise RuleViolation("provider", f"Input should be {expected}")
    if isinstance(message, EmailMessage) and message.raw is not None:
        takers = [name for name in names if DRIVERS[name].accepts_raw]
        if message.provider not in takers:
            # A raw message names its provider: there is nothing to route on.
            raise RuleViolation(
                "raw", f"raw RFC 2822 messages are only supported by {' or '.join(takers)}"
            )
    if message.provider is not None:
        DRIVERS[message.provider].check_message(message)
        return
    problems: dict[str, RuleViolation] = {}
    for name in names:
        try:
            DRIVERS[name].check_message(message)
        except RuleViolation as exc:
            problems[name] = exc
    if problems and len(problems) == len(names):
        reasons = "; ".join(f"{name}: {exc}" for name, exc in problems.items())
        raise RuleViolation(
            problems[names[0]].field,
            f"no {message.channel} provider accepts this message ({reasons})",
        )
