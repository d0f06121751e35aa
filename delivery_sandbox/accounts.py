"""The sandbox's one account per provider: where it lives, its API key, and its balance.

``devstack.processes.sandbox_env`` builds ``DELIVERY_<NAME>_BASE_URL`` from ``PREFIXES`` and
``DELIVERY_<NAME>_API_KEY`` from ``DEFAULT_KEYS``, so a driver pointed at the sandbox needs no
other configuration.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

__all__ = [
    "DEFAULT_CREDITS",
    "DEFAULT_KEYS",
    "METERED",
    "PREFIXES",
    "PROVIDERS",
    "Accounts",
]

PREFIXES: dict[str, str] = {
    "postal": "/postal",
    "emailmassivo": "/emailmassivo",
    "mailpartner": "/mailpartner/v1",
    "smspartner": "/smspartner/v1",
    "voicepartner": "/voicepartner/v1",
}
"""Path prefix of each provider: the part of the base URL that plays the provider's API root."""

PROVIDERS: tuple[str, ...] = tuple(PREFIXES)

DEFAULT_KEYS: dict[str, str] = {name: f"sandbox-{name}-key" for name in PROVIDERS}

METERED: tuple[str, ...] = ("emailmassivo", "mailpartner", "smspartner", "voicepartner")
"""Providers that bill per message. Postal is self-hosted and has no balance
(docs/providers/index.md §6)."""

DEFAULT_CREDITS = 1_000_000


class Accounts:
    """API keys and balances (in units: one email, one SMS segment, one call), thread-safe."""

    def __init__(
        self,
        credits: Mapping[str, int] | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._keys = {**DEFAULT_KEYS, **(keys or {})}
        initial = {name: DEFAULT_CREDITS for name in METERED}
        for name, value in (credits or {}).items():
            _check_metered(name)
            initial[name] = int(value)
        self._initial = initial
        self._balances = dict(initial)

    def key_is_valid(self, provider: str, key: object) -> bool:
        return isinstance(key, str) and key != "" and key == self._keys.get(provider)

    def balance(self, provider: str) -> int:
        _check_metered(provider)
        with self._lock:
            return self._balances[provider]

    def balances(self) -> dict[str, int]:
        with self._lock:
            return dict(self._balances)

    def set_balance(self, provider: str, credits: int) -> None:
        _check_metered(provider)
        with self._lock:
            self._balances[provider] = int(credits)

    def try_charge(self, provider: str, units: int) -> bool:
        """Take ``units`` if the balance covers them; refuse (and take nothing) otherwise."""
        _check_metered(provider)
        with self._lock:
            if self._balances[provider] < units:
                return False
            self._balances[provider] -= units
            return True

    def refund(self, provider: str, units: int) -> None:
        _check_metered(provider)
        with self._lock:
            self._balances[provider] += units

    def restore(self) -> None:
        with self._lock:
            self._balances = dict(self._initial)


def _check_metered(provider: str) -> None:
    if provider not in METERED:
        raise ValueError(f"{provider!r} has no balance; metered providers: {', '.join(METERED)}")
