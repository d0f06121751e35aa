"""Redis high availability over real processes: a Sentinel failover mid-flow, and waiting on
results across a Redis SIGKILL + restart.

The scenarios live in ``bench/failover.py`` (which runs them larger and repeated); here they
run at CI size, on the session's sandbox, with their own redis-server / sentinel processes.
Each test prints its one-line summary (``pytest -s``), which is also every assertion's message.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

_BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


_load("fault_soak")  # bench/failover.py imports it by name, as when run as a script
failover = _load("failover")


def test_sentinel_failover_loses_no_acknowledged_message(sandbox_url: str, tmp_path: Path) -> None:
    """Master SIGKILLed mid-flow: every enqueue the producer was told succeeded is sent;
    duplicates stay within the sends that can be in flight."""
    f = failover.scenario_sentinel_failover(sandbox_url, tmp_path, messages=90)
    line = f.summary()
    print(line)
    assert f.checks["producer_done"], line
    assert f.acknowledged == 90, line  # every message enqueued in the end (same key retries)
    assert sum(f.refused.values()) > 0, line  # the failover was felt by the producer
    assert f.failover_s < 30, line
    assert f.lost == 0, line
    assert f.states == {"sent": 90}, line
    assert f.duplicated <= f.pool_slots, line
    assert f.dup_by_provider["emailmassivo"] == 0, line  # idempotency key = delivery id
    assert f.checks["workers_alive"], line
    assert f.checks["new_master_replicas"] == 1, line  # the old master came back as replica
    # An application waiting (on the ledger) across the failover got every one of its results.
    assert f.checks["waited_across_failover"] >= 30, line
    assert f.checks["returned_by_ledger_wait"] == f.checks["waited_across_failover"], line


def test_ledger_wait_returns_every_stored_result_across_a_redis_restart(
    sandbox_url: str, tmp_path: Path
) -> None:
    """Redis SIGKILLed and restarted (AOF) while two waiters wait on 100 results: the ledger
    wait returns every one; AsyncResult.get() is measured beside it, not asserted."""
    r = failover.scenario_results_restart(sandbox_url, tmp_path, results=100)
    line = r.summary()
    print(line)
    # The comparison has substance: the backend really holds the results as SUCCESS.
    assert r.stored_success >= r.results // 2, line
    assert r.ledger_returned == r.results, line
    assert r.ledger_missed == 0, line
