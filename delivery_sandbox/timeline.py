"""Each accepted message's delivery timeline: its statuses over time, per recipient.

A provider calls :meth:`Timeline.accept` for every recipient of an accepted message with the
steps it will go through (``[(at, status, detail), ...]``, its own words: SMS Partner
``Waiting`` → ``Delivered``, Postal ``Pending`` → ``Sent``...). Status lookups read
:meth:`Timeline.status` (the latest step due); a background thread publishes each move as a
:class:`~delivery_sandbox.lifecycle.StatusChange` to the listeners when it falls due, for the
webhook and callback senders. The initial ``Waiting``/``Pending`` is not a move (nothing has
happened yet, no provider pushes it) and is not published; an initial ``Held`` is. Listeners run
on the timeline's thread: they hand slow work (HTTP) to their own. :meth:`Timeline.force`
replaces what is left of a timeline with one status now (``POST /_admin/status``), and
:meth:`Timeline.cancel` drops what is left of a cancelled message's, silently.

The timeline reads the sandbox's clock (:meth:`~delivery_sandbox.providers.base.Env.now`, bound
by the ``Env`` that holds it): a scheduled message's steps start at its scheduled time on the
same clock its provider checks that time and the cancel window with.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from delivery_sandbox.lifecycle import Listeners, StatusChange

__all__ = ["INITIAL_STATUSES", "Step", "Timeline"]

INITIAL_STATUSES = frozenset({"Waiting", "Pending"})
"""A message's status before anything happened to it: shown by lookups, never published."""

Step = tuple[float, str, "str | None"]
"""``(at, status, detail)``: the message shows ``status`` from ``at`` (Unix seconds)."""


@dataclass
class _Entry:
    provider: str
    message_id: str
    recipient: str
    steps: list[Step]
    message: dict[str, Any] = field(default_factory=dict)
    generation: int = 0


class Timeline:
    def __init__(self, listeners: Listeners, clock: Callable[[], float] = time.time) -> None:
        self.listeners = listeners
        self._clock = clock
        self._cond = threading.Condition()
        self._entries: dict[tuple[str, str, str], _Entry] = {}
        self._due: list[tuple[float, int, tuple[str, str, str], int, int]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-timeline", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Read ``clock`` from now on (the ``Env``'s, so its steps and its providers agree)."""
        with self._cond:
            self._clock = clock
            self._cond.notify_all()

    def reset(self) -> None:
        with self._cond:
            self._entries.clear()
            self._due.clear()

    # -- what providers and the admin API call -------------------------------------------------

    def accept(
        self,
        provider: str,
        message_id: str,
        recipient: str,
        steps: Sequence[Step],
        message: dict[str, Any] | None = None,
    ) -> None:
        key = (provider, str(message_id), recipient)
        ordered = sorted(steps, key=lambda step: step[0])  # stable: equal times keep their order
        entry = _Entry(provider, str(message_id), recipient, ordered, dict(message or {}))
        with self._cond:
            self._entries[key] = entry
            for index, (at, status, _detail) in enumerate(entry.steps):
                if index == 0 and status in INITIAL_STATUSES:
                    continue
                heapq.heappush(self._due, (at, next(self._seq), key, entry.generation, index))
            self._cond.notify_all()

    def status(self, provider: str, message_id: str, recipient: str) -> Step | None:
        """The latest step due now, or ``None`` for a message the timeline does not know."""
        now = self._clock()
        with self._cond:
            entry = self._entries.get((provider, str(message_id), recipient))
            if entry is None:
                return None
            shown = [s for s in entry.steps if s[0] <= now]
            return shown[-1] if shown else None

    def history(self, provider: str, message_id: str, recipient: str) -> list[Step]:
        """Every step shown so far, oldest first."""
        now = self._clock()
        with self._cond:
            entry = self._entries.get((provider, str(message_id), recipient))
            return [] if entry is None else [s for s in entry.steps if s[0] <= now]

    def force(
        self,
        provider: str,
        message_id: str,
        recipient: str | None,
        status: str,
        detail: str | None = None,
    ) -> int:
        """Show ``status`` from now on (every recipient of the message when ``recipient`` is
        ``None``); the remaining steps are dropped. Returns how many recipients changed."""
        now = self._clock()
        changes = []
        with self._cond:
            for key, entry in self._entries.items():
                if key[0] != provider or key[1] != str(message_id):
                    continue
                if recipient is not None and key[2] != recipient:
                    continue
                entry.generation += 1
                entry.steps = [s for s in entry.steps if s[0] <= now] + [(now, status, detail)]
                changes.append(self._change(entry, entry.steps[-1]))
        for change in changes:
            self.listeners.publish(change)
        return len(changes)

    def cancel(self, provider: str, message_id: str) -> int:
        """A cancelled message: every recipient keeps what it showed so far and nothing more is
        published (a cancelled send is never delivered, and no webhook or callback says it
        was). Its provider answers ``Cancelled`` to lookups. Returns how many recipients."""
        now = self._clock()
        count = 0
        with self._cond:
            for key, entry in self._entries.items():
                if key[0] != provider or key[1] != str(message_id):
                    continue
                entry.generation += 1  # its queued moves are skipped by the thread
                entry.steps = [s for s in entry.steps if s[0] <= now]
                count += 1
        return count

    # -- the publisher thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self._clock()
                due = []
                while self._due and self._due[0][0] <= now:
                    _at, _seq, key, generation, index = heapq.heappop(self._due)
                    entry = self._entries.get(key)
                    if entry is not None and entry.generation == generation:
                        due.append(self._change(entry, entry.steps[index]))
                wait = min(self._due[0][0] - now, 0.5) if self._due else 0.5
                if not due:
                    self._cond.wait(timeout=max(wait, 0.005))
                    continue
            for change in due:
                self.listeners.publish(change)

    @staticmethod
    def _change(entry: _Entry, step: Step) -> StatusChange:
        at, status, detail = step
        return StatusChange(
            provider=entry.provider,
            message_id=entry.message_id,
            recipient=entry.recipient,
            status=status,
            at=at,
            detail=detail,
            message=entry.message,
        )
