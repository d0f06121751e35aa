"""Each provider's balance as the periodic check last read it (``tasks.check_balances``).

Written by the balance check (beat), read at scrape time by the metrics exporter
(``delivery_credit_balance``) and by ``delivery-worker top``. One record per provider, replaced
by each reading: no history here (Prometheus keeps it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["BALANCE_UNITS", "BalanceUnit", "Balances", "RecordedBalance"]

BalanceUnit = Literal["credits", "money"]
BALANCE_UNITS: tuple[BalanceUnit, ...] = ("credits", "money")


@dataclass(frozen=True, slots=True)
class RecordedBalance:
    provider: str
    amount: float
    unit: BalanceUnit
    """``credits``: a count the provider sells (SMS, mails); ``money``: an amount in
    ``currency``."""
    currency: str
    """The currency of a ``money`` balance; ``""`` for credits or when the provider gave none."""
    checked_at: float
    """When it was read (Unix seconds)."""

    def __post_init__(self) -> None:
        if self.unit not in BALANCE_UNITS:
            raise ValueError(f"unit must be one of {BALANCE_UNITS}, got {self.unit!r}")
        if not math.isfinite(self.amount):
            raise ValueError(f"amount must be a finite number, got {self.amount!r}")

    def encode(self) -> str:
        return json.dumps(
            {
                "amount": self.amount,
                "unit": self.unit,
                "currency": self.currency,
                "checked_at": self.checked_at,
            }
        )

    @classmethod
    def decode(cls, provider: str, raw: str) -> RecordedBalance | None:
        """``None`` for an entry that cannot be read (never raises on stored data)."""
        try:
            data = json.loads(raw)
            return cls(
                provider=provider,
                amount=float(data["amount"]),
                unit=data["unit"],
                currency=str(data.get("currency") or ""),
                checked_at=float(data["checked_at"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


class Balances(Protocol):
    def record(self, balance: RecordedBalance) -> None:
        """Replace the provider's balance with this reading."""
        ...

    def read_all(self) -> dict[str, RecordedBalance]:
        """Every provider's last reading (providers never checked are absent)."""
        ...
