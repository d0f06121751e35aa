"""What every simulated provider offers the server, and the services it may use."""

from __future__ import annotations

import abc
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from delivery_sandbox.accounts import Accounts
from delivery_sandbox.config import SandboxConfig
from delivery_sandbox.lifecycle import Listeners
from delivery_sandbox.ratelimit import Window
from delivery_sandbox.timeline import Timeline
from delivery_sandbox.wire import Reply, Request

__all__ = ["EMAIL_RE", "Env", "Provider", "local_part"]

EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def local_part(address: str) -> str:
    return address.split("@", 1)[0].lower()


@dataclass
class Env:
    """Services shared by the providers; every one of them is thread-safe."""

    accounts: Accounts
    config: SandboxConfig = field(default_factory=SandboxConfig)
    stopping: threading.Event = field(default_factory=threading.Event)
    timeline: Timeline = field(default_factory=lambda: Timeline(Listeners()))
    """Each accepted message's statuses over time (``delivery_sandbox.timeline``)."""

    def __post_init__(self) -> None:
        # The timeline's steps on this clock: a scheduled message starts at its time as the
        # provider reads it (schedule checks, cancel window), not on a clock of its own.
        self.timeline.use_clock(lambda: self.now())

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class Provider(abc.ABC):
    """One simulated provider under its own path prefix.

    ``handle`` owns the whole answer: authentication, validation, billing and the wire format.
    The server runs the fault plan and the rate limiter around it, using ``windows``,
    ``throttled`` and ``fault_reply`` for the provider-specific parts.
    """

    name: str

    def __init__(self, env: Env) -> None:
        self.env = env
        self.lock = threading.RLock()

    @abc.abstractmethod
    def handle(self, request: Request) -> Reply: ...

    def windows(self, request: Request) -> Sequence[Window]:
        """Rate windows that apply to this request (none by default)."""
        return ()

    @abc.abstractmethod
    def throttled(self, request: Request, retry_after: str) -> Reply:
        """The provider's 429 answer."""

    @abc.abstractmethod
    def fault_reply(self, status: int) -> Reply:
        """An injected HTTP error in the provider's error shape."""

    def public_route(self, route: str) -> str:
        """The route as it may be recorded (a provider that puts keys in paths hides them)."""
        return route

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget per-provider state (messages, suppression lists, dedupe caches)."""

    def settings(self) -> dict[str, Any] | None:
        """Run-time settings shown by ``GET /_admin/settings`` (None: the provider has none)."""
        return None

    def configure(self, changes: dict[str, Any]) -> None:
        """Apply ``POST /_admin/settings`` changes; raise ``ValueError`` on a bad one."""
        raise ValueError(f"{self.name} has no settings")
