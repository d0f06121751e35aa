"""The fault plan: rules that make the sandbox fail like a real network or provider would.

A plan is a list of rules (JSON, from ``--fault-plan FILE`` or ``POST /_admin/faults``)::

    {"rules": [
      {"provider": "emailmassivo", "path": "/send", "action": "status", "status": 503,
       "retry_after": 2, "first_n": 3},
      {"provider": "*", "action": "latency", "delay_ms": 200, "fraction": 0.1, "seed": 7},
      {"provider": "smspartner", "action": "accept_then_drop", "every_nth": 5}
    ]}

Matching: ``provider`` is a provider name or ``"*"``; ``path`` (optional) must end the request
path; ``method`` (optional) must equal it. Selector (at most one): ``first_n`` applies to the
first N matching requests, ``every_nth`` to the Nth, 2Nth, … matching request, ``fraction`` to
that share of matching requests drawn from ``random.Random(seed)``; no selector applies to every
matching request. Rules are tried in order; the first rule that matches *and* fires wins, and
rules after it do not see (or count) the request.

Actions: ``status`` answers ``status`` (default 503) in the provider's error shape, with an
optional ``Retry-After``; ``latency`` sleeps ``delay_ms`` (default 200) and then lets the
provider answer; ``timeout`` sleeps ``delay_ms`` (default 30000) *first*, then lets the provider
process (and record) the request and answers, i.e. the provider accepts after the client gave
up, as a real provider can (late acceptance); ``reset`` aborts the connection
with a TCP RST before processing; ``accept_then_drop`` lets the provider process (and record)
the request, then closes the connection without writing a response.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from delivery_sandbox.accounts import PROVIDERS

__all__ = ["ACTIONS", "FaultPlan", "FaultPlanError", "FaultRule"]

ACTIONS = ("status", "latency", "timeout", "reset", "accept_then_drop")
DEFAULT_DELAY_MS = {"latency": 200, "timeout": 30_000}
_KNOWN_KEYS = {
    "provider",
    "path",
    "method",
    "action",
    "status",
    "retry_after",
    "delay_ms",
    "first_n",
    "every_nth",
    "fraction",
    "seed",
    "comment",
}


class FaultPlanError(ValueError):
    """A fault rule that cannot be understood; the message names the rule and field."""


@dataclass
class FaultRule:
    provider: str
    action: str
    path: str | None = None
    method: str | None = None
    status: int = 503
    retry_after: str | None = None
    delay_ms: int = 0
    first_n: int | None = None
    every_nth: int | None = None
    fraction: float | None = None
    seed: int | None = None
    seen: int = 0  # matching requests seen so far
    applied: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, provider: str, method: str, path: str) -> bool:
        if self.provider not in ("*", provider):
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or path.endswith(self.path)

    def fires(self) -> bool:
        """Count one matching request and decide whether the rule applies to it."""
        self.seen += 1
        if self.first_n is not None:
            return self.seen <= self.first_n
        if self.every_nth is not None:
            return self.seen % self.every_nth == 0
        if self.fraction is not None:
            return self._rng.random() < self.fraction
        return True

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": self.provider, "action": self.action}
        for name in ("path", "method", "first_n", "every_nth", "fraction", "seed"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.action == "status":
            out["status"] = self.status
            if self.retry_after is not None:
                out["retry_after"] = self.retry_after
        if self.action in DEFAULT_DELAY_MS:
            out["delay_ms"] = self.delay_ms
        out["seen"] = self.seen
        out["applied"] = self.applied
        return out

    @classmethod
    def from_json(cls, raw: object, index: int = 0) -> FaultRule:
        where = f"fault rule {index}"
        if not isinstance(raw, Mapping):
            raise FaultPlanError(f"{where}: must be an object")
        unknown = set(raw) - _KNOWN_KEYS
        if unknown:
            raise FaultPlanError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        provider = raw.get("provider", "*")
        if provider != "*" and provider not in PROVIDERS:
            raise FaultPlanError(f"{where}: provider must be '*' or one of {', '.join(PROVIDERS)}")
        action = raw.get("action")
        if action not in ACTIONS:
            raise FaultPlanError(f"{where}: action must be one of {', '.join(ACTIONS)}")
        selectors = [k for k in ("first_n", "every_nth", "fraction") if raw.get(k) is not None]
        if len(selectors) > 1:
            raise FaultPlanError(f"{where}: use at most one of first_n, every_nth, fraction")
        rule = cls(
            provider=str(provider),
            action=str(action),
            path=_opt_str(raw, "path", where),
            method=_opt_str(raw, "method", where),
            status=_int(raw, "status", where, 503, low=100, high=599),
            delay_ms=_int(raw, "delay_ms", where, DEFAULT_DELAY_MS.get(str(action), 0), low=0),
            first_n=_opt_int(raw, "first_n", where, low=0),
            every_nth=_opt_int(raw, "every_nth", where, low=1),
            seed=_opt_int(raw, "seed", where),
        )
        retry_after = raw.get("retry_after")
        if retry_after is not None:
            if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float, str)):
                raise FaultPlanError(f"{where}: retry_after must be a number or a string")
            rule.retry_after = str(retry_after)
        fraction = raw.get("fraction")
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
                raise FaultPlanError(f"{where}: fraction must be a number")
            if not 0.0 <= float(fraction) <= 1.0:
                raise FaultPlanError(f"{where}: fraction must be between 0 and 1")
            rule.fraction = float(fraction)
        rule._rng = random.Random(rule.seed)
        return rule


class FaultPlan:
    """The active rules, replaced as a whole; thread-safe."""

    def __init__(self, rules: Sequence[FaultRule] = ()) -> None:
        self._lock = threading.Lock()
        self._rules = list(rules)

    @staticmethod
    def parse(raw: object) -> list[FaultRule]:
        """Rules from ``{"rules": [...]}`` or a bare list."""
        if isinstance(raw, Mapping):
            if set(raw) - {"rules"}:
                raise FaultPlanError("a fault plan object has one field: rules")
            raw = raw.get("rules", [])
        if not isinstance(raw, list):
            raise FaultPlanError("a fault plan is a list of rules or {'rules': [...]}")
        return [FaultRule.from_json(item, i) for i, item in enumerate(raw)]

    def replace(self, rules: Sequence[FaultRule]) -> None:
        with self._lock:
            self._rules = list(rules)

    def clear(self) -> None:
        self.replace([])

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.describe() for rule in self._rules]

    def pick(self, provider: str, method: str, path: str) -> FaultRule | None:
        """The rule to apply to this request, if any (counts the request in each tried rule)."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(provider, method, path) and rule.fires():
                    rule.applied += 1
                    return rule
            return None


def _opt_str(raw: Mapping[str, Any], name: str, where: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FaultPlanError(f"{where}: {name} must be a non-empty string")
    return value


def _opt_int(
    raw: Mapping[str, Any], name: str, where: str, *, low: int | None = None
) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultPlanError(f"{where}: {name} must be an integer")
    if low is not None and value < low:
        raise FaultPlanError(f"{where}: {name} must be at least {low}")
    return value


def _int(
    raw: Mapping[str, Any],
    name: str,
    where: str,
    default: int,
    *,
    low: int | None = None,
    high: int | None = None,
) -> int:
    value = _opt_int(raw, name, where, low=low)
    if value is None:
        return default
    if high is not None and value > high:
        raise FaultPlanError(f"{where}: {name} must be at most {high}")
    return value
