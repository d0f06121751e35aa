"""Provider balances as the last ``/me`` check read them: interface, Redis backend, stub."""

from worker.stores.balances.base import BALANCE_UNITS, Balances, BalanceUnit, RecordedBalance
from worker.stores.balances.memory import MemoryBalances
from worker.stores.balances.redis import RedisBalances

__all__ = [
    "BALANCE_UNITS",
    "BalanceUnit",
    "Balances",
    "MemoryBalances",
    "RecordedBalance",
    "RedisBalances",
]
