"""A Redis that may evict TTL keys is refused: by the worker at start and by ``check-config``.

Real redis-server processes: one with ``--maxmemory-policy allkeys-lru``, one with the default
``noeviction``, one whose ``CONFIG`` command is disabled (as managed Redis services do).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from devstack.processes import Proc, start_redis, start_worker
from worker.app import client_app
from worker.config import Settings
from worker.metrics.shared import SharedStateCollector
from worker.stores import Stores

from .conftest import wait_ready

pytestmark = pytest.mark.integration


def _redis(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Iterator[Proc]:
    proc = start_redis(tmp_path_factory.mktemp(name), appendonly=False, extra_args=list(args))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def evicting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    yield from _redis(
        tmp_path_factory, "lru", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"
    )


@pytest.fixture(scope="module")
def safe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    yield from _redis(
        tmp_path_factory, "noevict", "--maxmemory", "64mb", "--maxmemory-policy", "noeviction"
    )


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    yield from _redis(tmp_path_factory, "managed", "--rename-command", "CONFIG", "")


def _env(proc: Proc, **extra: str) -> dict[str, str]:
    url = str(proc.extra["url"])
    return {"DELIVERY_BROKER_URL": f"{url}/0", "DELIVERY_RESULT_BACKEND": f"{url}/1", **extra}


def _check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "check-config"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_refuses_an_evicting_redis(evicting: Proc) -> None:
    done = _check_config(_env(evicting))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "maxmemory-policy is 'allkeys-lru'" in done.stderr
    assert "DELIVERY_ALLOW_EVICTION=true" in done.stderr


def test_check_config_warns_when_eviction_is_allowed(evicting: Proc) -> None:
    done = _check_config(_env(evicting, DELIVERY_ALLOW_EVICTION="true"))
    assert done.returncode == 0, done.stderr
    assert "warning: Redis maxmemory-policy is 'allkeys-lru'" in done.stderr


def test_check_config_accepts_noeviction(safe: Proc) -> None:
    done = _check_config(_env(safe))
    assert done.returncode == 0, done.stderr
    assert "redis maxmemory-policy: noeviction" in done.stdout


def test_check_config_warns_when_config_is_disabled(managed: Proc) -> None:
    done = _check_config(_env(managed))
    assert done.returncode == 0, done.stderr
    assert "could not read Redis's maxmemory-policy" in done.stderr


def test_the_worker_refuses_to_start_on_an_evicting_redis(evicting: Proc, tmp_path: Path) -> None:
    worker = start_worker(tmp_path, _env(evicting), name="lru", concurrency=1)
    try:
        deadline = time.monotonic() + 60
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not worker.alive(), "the worker started on an allkeys-lru Redis"
        assert worker.popen.returncode != 0
        log = worker.log_path.read_text(errors="replace")
        assert "refusing to start" in log and "maxmemory-policy is 'allkeys-lru'" in log
    finally:
        worker.stop()


def test_the_worker_starts_on_a_noeviction_redis(safe: Proc, tmp_path: Path) -> None:
    env = _env(safe)
    worker = start_worker(tmp_path, env, name="noevict", concurrency=1)
    app = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"], name="probe")
    try:
        wait_ready(app, worker)
    finally:
        worker.stop()


def test_the_exporter_reports_redis_memory_headroom(safe: Proc) -> None:
    client = redis.Redis.from_url(str(safe.extra["url"]))
    registry = CollectorRegistry()
    registry.register(SharedStateCollector(Stores.on_redis(client), client, Settings()))
    headroom = registry.get_sample_value("delivery_redis_memory_headroom_bytes")
    ratio = registry.get_sample_value("delivery_redis_memory_used_ratio")
    used = int(client.info("memory")["used_memory"])
    assert headroom is not None and ratio is not None
    assert 0 < headroom < 64 * 1024 * 1024
    assert ratio == pytest.approx(used / (64 * 1024 * 1024), rel=0.5)
    client.close()
