"""Test support for the store tests: a fake clock and helpers shared by the contract suites."""

from __future__ import annotations


class FakeClock:
    """A clock that only moves when told to; ``advance`` doubles as the stub's ``sleep``."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time never goes backwards"
        self.now += seconds


def max_in_window(times: list[float], window_s: float) -> int:
    """The largest number of ``times`` inside any closed interval of length ``window_s``."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window_s:
            start += 1
        best = max(best, end - start + 1)
    return best
