"""Fault tests: no message lost, no duplicate send, with real processes failing for real.

Real redis-server (AOF on), the sandbox over a socket, ``celery worker`` subprocesses of our own
(function-scoped, on Redis databases 6/7 so the session ``worker_proc``, if running, never takes
their tasks). The scenarios live in ``bench/fault_soak.py``, which runs them at a larger size;
here they run at CI size. Each test prints one summary line (``pytest -s``) that is also the
message of every assertion:

    [scenario] messages=… sent=… lost=… duplicated=… kills=… | dup by provider | ledger | checks

How duplicates are counted (per delivery, copies the sandbox accepted): EmailMassivo by
``idempotency_key`` (its resends with the same key are answered from the provider's idempotency
store and reported as ``deduped``, not sent), SMS Partner by ``tag``, Postal by the
``X-Delivery-Id`` header, Mail Partner and Voice Partner by a token unique to each message.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.integration

_SOAK_PATH = Path(__file__).resolve().parents[2] / "bench" / "fault_soak.py"


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fault_soak", _SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


soak = _load_soak()


@pytest.fixture
def stack(redis_url: str, sandbox_url: str, stack_env: dict[str, str], tmp_path: Path) -> Any:
    env = {
        **stack_env,
        **soak.FAST_ENV,
        "DELIVERY_BROKER_URL": f"{redis_url}/6",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/7",
    }
    return soak.Stack(env=env, sandbox_url=sandbox_url, workdir=tmp_path)


def report(figures: Any) -> str:
    """Print the scenario's one-line summary (``pytest -s``); it is every assertion's message."""
    line: str = figures.summary()
    print(line)
    return line


def test_sigkill_pool_processes_while_500_messages_flow(stack: Any) -> None:
    """Every message delivered; EmailMassivo never twice; others at most once more per kill."""
    f = soak.scenario_sigkill(stack, messages=500, kills=5, workers=2, concurrency=3)
    line = report(f)
    assert f.kills >= 3, line
    assert f.lost == 0, line
    assert f.states == {"sent": 500}, line
    assert f.dup("emailmassivo") == 0, line
    for provider in ("postal", "mailpartner", "smspartner", "voicepartner"):
        assert f.dup(provider) <= f.kills, line
    assert f.duplicated <= f.kills, line
    assert f.checks["workers_alive"], line


def test_redis_killed_and_restarted_mid_run(stack: Any) -> None:
    """Every message the producer was told was accepted is delivered."""
    f = soak.scenario_redis_restart(stack, messages=150, workers=2, concurrency=2)
    line = report(f)
    assert f.messages >= 90, line  # most enqueues were accepted, before and after the outage
    assert f.lost == 0, line
    assert f.states == {"sent": f.messages}, line
    assert f.dup("emailmassivo") == 0, line
    assert f.checks["workers_alive"], line


def test_provider_accepts_then_drops_the_connection(stack: Any) -> None:
    """5 % of requests are accepted and never answered: EmailMassivo and SMS Partner send once."""
    f = soak.scenario_accept_then_drop(stack, messages=200, fraction=0.05)
    line = report(f)
    assert f.checks["dropped_sends"] > 0, line
    assert f.lost == 0, line
    assert f.states == {"sent": 200}, line
    assert f.dup("emailmassivo") == 0, line
    assert f.dup("smspartner") == 0, line
    # Postal, Mail Partner and Voice Partner have no way to ask: at most one copy per drop.
    assert f.duplicated <= f.checks["dropped_sends"], line


def test_sigterm_mid_batch_loses_and_repeats_nothing(stack: Any) -> None:
    f = soak.scenario_sigterm(stack, messages=150, concurrency=4)
    line = report(f)
    assert f.checks["exit_code"] == 0, line
    assert f.checks["warm_shutdown_logged"], line
    assert 0 < f.checks["sent_by_first"] < 150, line  # stopped mid-batch
    assert f.checks["sending_at_stop"] == 0, line  # running tasks finished before it exited
    assert f.lost == 0, line
    assert f.duplicated == 0, line
    assert f.states == {"sent": 150}, line


def test_poison_message_is_dead_lettered_then_replayed(stack: Any) -> None:
    f = soak.scenario_poison(stack, max_runs=2)
    line = report(f)
    assert f.kills == 2, line
    assert f.checks["state_before_replay"] == "dead", line
    assert f.checks["dead_letter_listed"], line
    assert "died in 2 runs" in f.checks["dead_reason"], line
    assert f.checks["accepted_while_poisoned"] == 0, line
    assert f.checks["replay_exit"] == 0, line
    assert f.states == {"sent": 1}, line
    assert (f.sent, f.lost, f.duplicated) == (1, 0, 0), line
    assert f.checks["dead_letters_after"] == 0, line


def test_sweeper_requeues_deliveries_lost_between_broker_and_worker(stack: Any) -> None:
    f = soak.scenario_sweeper(stack, messages=10)
    line = report(f)
    assert f.checks["final_before_sweep"] == 0, line
    assert f.checks["requeued"] == 10, line
    assert f.checks["requeued_again"] == 0, line
    assert f.checks["stale_copies_consumed"] == 10, line
    assert f.states == {"sent": 10}, line
    assert (f.sent, f.lost, f.duplicated) == (10, 0, 0), line


def test_sms_unknown_outcome_with_a_failed_status_check_is_not_resent(stack: Any) -> None:
    f = soak.scenario_sms_reconcile(stack, messages=3)
    line = report(f)
    assert f.states == {"sent": 3}, line
    assert (f.sent, f.lost, f.duplicated) == (3, 0, 0), line
    assert f.checks["status_checks"] >= 6, line  # one failed, one that found the send


def test_hostile_producer_stops_no_worker_and_loses_no_valid_message(stack: Any) -> None:
    f = soak.scenario_hostile(stack, messages=60, hostile=400, raw=20, items=8, timeout_s=120)
    line = report(f)
    assert f.checks["worker_exits"] == 0, line
    assert f.checks["same_processes"], line
    assert f.checks["unrecoverable_logged"] == 0, line
    assert f.lost == 0, line
    assert f.states == {"sent": 60}, line
    sent = f.checks["hostile_sent"]
    without_id = f.checks["expected_without_id"]
    assert f.checks["hostile_final"] == sent - without_id, line
    assert f.checks["hostile_in_backend"] == sent - without_id, line
    assert f.checks["rejected_without_id"] == without_id, line
    assert f.checks["items_pushed"] == 8, line
    assert f.checks["items_set_aside"] == 8, line
    # Four bzip2 bombs (50 MB each once inflated) were among the raw bodies.
    assert f.checks["main_peak_rss_mb"] < 400, line


@pytest.mark.parametrize("success_status", [200, 201])
def test_emailmassivo_lost_answer_is_sent_once(stack: Any, success_status: int) -> None:
    """Accepted, answer lost, resent with the same key: 200 + the first uuid means sent."""
    f = soak.scenario_emailmassivo_lost_answer(stack, messages=10, success_status=success_status)
    line = report(f)
    assert f.checks["dropped"] == 10, line
    assert f.checks["lost_answers"] >= 5, line
    assert f.checks["recovered_by_200_repeat"] == f.checks["lost_answers"], line
    assert f.checks["results"] == "sent:10", line
    assert f.checks["result_uuid_is_first"] == 10, line
    assert f.states == {"sent": 10}, line
    assert (f.sent, f.lost, f.duplicated) == (10, 0, 0), line


def test_sms_accepted_after_the_read_timeout_is_found_not_resent(stack: Any) -> None:
    """Lost answer, SMS Partner: accepted after the worker gave up; 0 lost, 0 duplicates."""
    f = soak.scenario_sms_late_accept(stack, messages=8)
    line = report(f)
    assert f.checks["late_accepted"] == 8, line
    assert f.checks["sends"] == 8, line  # one /send per message: nothing resent
    assert f.checks["status_checks"] >= 8, line
    assert (f.sent, f.lost, f.duplicated) == (8, 0, 0), line
    assert f.states == {"sent": 8}, line
