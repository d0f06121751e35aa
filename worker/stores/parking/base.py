"""Messages parked while their provider is paused (out of credit).

A parked message is not failed and not retried: it waits, visible to operators, until the
provider is resumed (by ``delivery-worker resume`` or a balance check that finds credit) and is
then re-enqueued under its own delivery id, so the ledger keeps it idempotent.

:class:`~worker.stores.parking.redis.RedisParking` is shared by every worker;
:class:`~worker.stores.parking.memory.MemoryParking` is the in-process stub with the same
contract (``tests/stores/test_parking_contract.py`` runs against both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ParkedMessage", "Parking", "decode_entry", "encode_entry"]


@dataclass(frozen=True)
class ParkedMessage:
    delivery_id: str
    task_name: str
    message: dict[str, Any]
    parked_at: float


class Parking(Protocol):
    """Parked messages per provider. Times are Unix seconds."""

    def park(self, provider: str, delivery_id: str, task_name: str, message: Any) -> None:
        """Hold a message (parking one delivery id again replaces its entry)."""
        ...

    def count(self, provider: str) -> int: ...

    def entries(self, provider: str) -> list[ParkedMessage]:
        """The provider's parked messages, oldest first, left in place."""
        ...

    def take_all(self, provider: str) -> list[ParkedMessage]:
        """Remove and return every parked message of the provider, oldest first, atomically:
        two resumers never take one message twice."""
        ...

    def put_back(self, provider: str, items: list[ParkedMessage]) -> None:
        """Park again what was taken and could not be re-enqueued."""
        ...


def encode_entry(task_name: str, message: Any, parked_at: float) -> str:
    """A parked message as stored (JSON)."""
    return json.dumps({"task_name": task_name, "message": message, "parked_at": parked_at})


def decode_entry(delivery_id: str, value: bytes | str) -> ParkedMessage:
    entry = json.loads(value)
    return ParkedMessage(
        delivery_id=delivery_id,
        task_name=str(entry["task_name"]),
        message=entry["message"],
        parked_at=float(entry["parked_at"]),
    )
