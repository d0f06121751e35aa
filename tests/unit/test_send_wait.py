"""``send --wait [--until delivered]``: the send outcome, then tracking's final state.

The result backend and the tracking store are stand-ins here (the real ones run in
``tests/integration/test_tracking.py``); ``sleep`` is injected so nothing waits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from worker.ops.send import EXIT_FAILED, EXIT_SENT, EXIT_TIMEOUT, settled_state, wait


class Done:
    """A Celery result that has already settled."""

    state = "SUCCESS"

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result

    def ready(self) -> bool:
        return True


SENT = {"status": "sent", "provider": "smspartner", "delivery_id": "d1"}


def tracking(*states: dict[str, str] | None) -> Any:
    """A ``state_of`` that answers each snapshot in turn, then repeats the last."""
    it: Iterator[dict[str, str] | None] = iter(states)
    last: list[dict[str, Any] | None] = [None]

    def state_of(_delivery_id: str) -> dict[str, Any] | None:
        snap = next(it, "end")
        if snap != "end":
            last[0] = (
                None
                if snap is None
                else {
                    "provider": "smspartner",
                    "recipients": {r: {"state": s} for r, s in snap.items()},
                    "history": [],
                }
            )
        return last[0]

    return state_of


def no_lookup_record(_delivery_id: str) -> None:
    return None


def run(state_of: Any, *, until: str, has_lookup: bool = True, timeout_s: float = 5.0) -> int:
    return wait(
        Done(SENT), "d1", timeout_s, no_lookup_record, state_of,
        until=until, has_lookup=lambda _p: has_lookup, sleep=lambda _s: None,
    )  # fmt: skip


def test_until_delivered_follows_tracking_to_delivered(capsys: pytest.CaptureFixture[str]) -> None:
    state_of = tracking(
        {"+3361*****11": "sent"}, {"+3361*****11": "sent"}, {"+3361*****11": "delivered"}
    )
    assert run(state_of, until="delivered") == EXIT_SENT
    out = capsys.readouterr().out
    assert out.startswith("delivered\n")
    assert '"state": "delivered"' in out


def test_a_bounce_after_the_send_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    state_of = tracking({"a": "delivered", "b": "sent"}, {"a": "delivered", "b": "bounced"})
    assert run(state_of, until="delivered") == EXIT_FAILED
    assert capsys.readouterr().out.startswith("bounced\n")


def test_no_lookup_provider_says_so_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tracking({"a": "sent"}), until="delivered", has_lookup=False) == EXIT_SENT
    assert capsys.readouterr().out.startswith("sent (no lookup)\n")


def test_no_final_state_within_the_bound_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tracking({"a": "sent"}), until="delivered", timeout_s=0.05) == EXIT_TIMEOUT
    captured = capsys.readouterr()
    assert captured.out.startswith("sent, no final delivery state after 0.05s (tracking: sent)")
    assert "delivery-worker status d1" in captured.err


def test_wait_alone_stops_at_the_send_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[str] = []

    def state_of(delivery_id: str) -> dict[str, Any]:
        asked.append(delivery_id)
        return {"provider": "smspartner", "recipients": {"a": {"state": "sent"}}, "history": []}

    assert run(state_of, until="sent") == EXIT_SENT
    out = capsys.readouterr().out
    assert out.startswith("sent\n") and asked == ["d1"]  # one snapshot, no following


@pytest.mark.parametrize(
    ("states", "final"),
    [
        ({"a": "delivered", "b": "opened"}, "delivered"),
        ({"a": "delivered", "b": "failed"}, "failed"),
        ({"a": "delivered", "b": "held"}, None),
        ({}, None),
    ],
)
def test_settled_state(states: dict[str, str], final: str | None) -> None:
    tracked = {"recipients": {r: {"state": s} for r, s in states.items()}}
    assert settled_state(tracked) == final
