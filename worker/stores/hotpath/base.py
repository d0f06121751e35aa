"""A delivery run's first and last shared-state steps, each as one step.

A run of the send pipeline used to make a dozen separate calls to the stores before and after
the provider request (create, read, lock, count the run, read again, pause and breaker per
provider; then the transition, the run count, the unlock, a counter, the breaker, the tracking
index). :class:`HotPath` does the same work in two calls:

* :meth:`HotPath.begin`: clear the guard's main-process mark, read the record, and unless it is
  final take the send lock and count the run (``runs_unfinished``), read each candidate
  provider's pause and whether its breaker has any state, and look the recipients up in the
  channel's suppression list;
* :meth:`HotPath.finish`: the final transition with its fields (``sent``), the run count back to
  0, the unlock, the provider's counter and the tracking registration, and whether the breaker
  has state (then the caller reports the success to it).

Each step does exactly what the separate store calls did, in the same order; the Redis backend
runs the stores' own Lua scripts composed into one (``worker.stores._redis.composed``), so the
ledger's forward-only rule, the lock's token check and the tracking store's event logic are the
same code. :class:`~worker.stores.hotpath.composed.ComposedHotPath` runs the stores' methods
one by one (in-memory stores, and any mix); ``tests/stores/test_hotpath_contract.py`` runs both.

A run works on a chunk of deliveries (a single send is a chunk of one): :meth:`HotPath.begin_chunk`
and :meth:`HotPath.finish_chunk` run each delivery's script, all in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from worker.stores.health import PauseInfo
from worker.stores.ledger import DeliveryRecord
from worker.stores.suppression import Entry
from worker.stores.tracking import Applied, Tracked

__all__ = [
    "LATE_OUTCOME",
    "Begin",
    "Begun",
    "Closing",
    "Finish",
    "Finished",
    "HotPath",
    "TrackingArgs",
]


@dataclass(frozen=True)
class Begun:
    """What :meth:`HotPath.begin` found."""

    status: Literal["missing", "final", "busy", "run"]
    """``missing``: no record (nothing else done but the mark); ``final``: the record is final
    (no lock taken); ``busy``: another run holds the lock; ``run``: locked, run counted."""
    record: DeliveryRecord | None = None
    """The record as it stands (for ``run``: under the lock, ``runs_unfinished`` counted)."""
    busy_s: float = 0.0
    """``busy``: seconds until the lock frees."""
    runs: int = 0
    """``run``: ``runs_unfinished`` after this run's count."""
    paused: dict[str, PauseInfo] = field(default_factory=dict)
    """``run``: the candidate providers that are paused."""
    breaker_state: frozenset[str] = frozenset()
    """``run``: the candidate providers whose breaker has state (ask it). A breaker without
    state is closed with no recent failure: it allows every request and a success changes
    nothing."""
    asked: frozenset[str] = frozenset()
    """``run``: the providers ``paused`` and ``breaker_state`` speak for."""
    suppressed: dict[str, Entry] = field(default_factory=dict)
    """``run``: the live suppression entries among the recipient keys asked (``suppress``)."""


@dataclass(frozen=True)
class TrackingArgs:
    """A sent delivery's tracking registration (``TrackingStore.register``'s arguments)."""

    provider: str
    recipients: Sequence[Tracked]
    at: float
    poll_at: float | None
    notify: bool


@dataclass(frozen=True)
class Closing:
    """A final transition left for :meth:`HotPath.finish` to write with the unlock."""

    state: str
    fields: dict[str, str]
    provider: str = ""
    """The provider whose counter ``metric`` counts."""
    metric: str | None = None
    breaker: bool = False
    """The provider answered a send: say whether its breaker has state to hear the success."""
    tracking: TrackingArgs | None = None


@dataclass(frozen=True)
class Finished:
    changed: bool = False
    """The closing transition changed the record (False without one)."""
    breaker_state: bool = False
    """The closing provider's breaker has state: report the success to it."""
    tracking: Applied | None = None
    tracking_error: str | None = None
    """The tracking registration failed after the transition (the send stands)."""
    lock_lost: bool = False
    """The run's token no longer held the send lock: nothing was written but the closing, kept
    as the record's ``late_outcome`` (``LATE_OUTCOME``) for the next run to settle from."""


LATE_OUTCOME = "late_outcome"
"""Record field: JSON ``{"state", "at", "fields"}`` of a closing its run wrote after losing
the send lock (``worker.delivery.pipeline`` adopts a ``sent`` instead of sending again)."""


@dataclass(frozen=True)
class Begin:
    """One delivery of a chunk's :meth:`HotPath.begin_chunk` (:meth:`HotPath.begin`'s
    arguments)."""

    delivery_id: str
    token: str
    lock_ttl_s: float
    providers: Sequence[str] = ()
    mark: tuple[str, str] | None = None
    suppress: tuple[str, Sequence[str]] | None = None


@dataclass(frozen=True)
class Finish:
    """One delivery of a chunk's :meth:`HotPath.finish_chunk` (:meth:`HotPath.finish`'s
    arguments)."""

    delivery_id: str
    token: str
    reset_runs: bool
    closing: Closing | None = None


class HotPath(Protocol):
    def begin(
        self,
        delivery_id: str,
        token: str,
        lock_ttl_s: float,
        *,
        providers: Sequence[str] = (),
        mark: tuple[str, str] | None = None,
        suppress: tuple[str, Sequence[str]] | None = None,
    ) -> Begun:
        """``mark``: the guard's main-process mark (key, field) to clear first. ``suppress``:
        (channel, recipient keys) to look up in the channel's suppression list."""
        ...

    def clear_mark(self, mark: tuple[str, str]) -> None:
        """Clear the guard's main-process mark (key, field) of a run that never begins."""
        ...

    def finish(
        self,
        delivery_id: str,
        token: str,
        *,
        reset_runs: bool,
        closing: Closing | None = None,
    ) -> Finished:
        """Write ``closing`` (if any), set ``runs_unfinished`` to 0 if ``reset_runs``, unlock,
        count ``closing.metric``, register ``closing.tracking``: all only while ``token`` still
        holds the send lock. Otherwise only ``closing`` is kept, as ``LATE_OUTCOME``, and the
        answer says ``lock_lost``."""
        ...

    def sending_chunk(self, chunk: Sequence[tuple[str, dict[str, str]]]) -> list[bool]:
        """Every (delivery id, fields) of a chunk to ``sending`` with its fields (the ledger's
        forward-only ``transition``), in one round trip; per delivery, whether it changed
        (``False``: final meanwhile, a cancel won the race)."""
        ...

    def begin_chunk(self, chunk: Sequence[Begin]) -> list[Begun]:
        """:meth:`begin` for every delivery of a chunk, in one round trip; one answer each."""
        ...

    def finish_chunk(self, chunk: Sequence[Finish]) -> list[Finished]:
        """:meth:`finish` for every delivery of a chunk, in one round trip; one answer each."""
        ...
