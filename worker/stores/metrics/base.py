"""Per-provider counters shared by every worker (``delivery-worker providers``).

Counter names are free-form (``sent``, ``parked``, ``throttled_ms``, ``failed:<kind>``, ...):
the delivery flow writes them through the metrics facade (:mod:`worker.metrics.record`, the
one metrics path: the same calls feed the Prometheus series), or inside the hot path's last
script for a ``sent``; operator tools read them with :meth:`Metrics.read`.
:class:`~worker.stores.metrics.redis.RedisMetrics` is shared by every worker;
:class:`~worker.stores.metrics.memory.MemoryMetrics` is the in-process stub
(``tests/stores/test_metrics_contract.py`` runs against both).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Metrics"]


class Metrics(Protocol):
    def incr(self, provider: str, name: str, amount: int = 1) -> None:
        """Add ``amount`` (may be negative or zero) to the provider's counter ``name``."""
        ...

    def read(self, provider: str) -> dict[str, int]:
        """Every counter of the provider (none yet: an empty dict)."""
        ...
