"""Shared fixtures: real processes, started once per session, on free loopback ports.

``DW_TEST_NO_REDIS=1`` makes every test that asks for a redis-server fail instead: run tests
that claim to need none (the service tests on the in-memory stores) under it to prove it.
"""

from __future__ import annotations

import gc
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import structlog

from devstack.processes import Proc, start_redis


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real redis-server ``real_redis``.

    Either it asks for ``redis_proc`` (directly or through ``redis_url``/``redis_client``), or
    it is the ``redis`` case of a store contract suite (which asks for the client at run time).
    ``./dev test --fast`` deselects them: the unit and in-memory contract tiers remain.
    """
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        names = set(getattr(item, "fixturenames", ()))
        if names & {"redis_proc", "quiet_redis_url"} or "redis" in params:
            item.add_marker(pytest.mark.real_redis)


@pytest.fixture(autouse=True)
def _results_released_while_servers_run(request: pytest.FixtureRequest) -> Iterator[None]:
    """Collect a test's garbage before the servers it used are stopped.

    A Celery ``AsyncResult`` unsubscribes from its result channel in ``__del__``. One caught in
    a reference cycle is collected whenever the garbage collector next runs, possibly after
    the test's own redis-server was stopped, in some later test: Celery then reconnects to a
    dead server and that later, unrelated test fails on the unraisable error. Collecting here
    (function fixtures end before module and session ones) keeps each test's results its own.
    A result whose server this test already stopped cannot unsubscribe, and needs not: the
    error of ``AsyncResult.__del__`` (a connection error, or Celery's "Retry limit exceeded"
    after its reconnects) is dropped here; any other unraisable error passes on.
    """
    yield
    node = request.node
    if not (node.get_closest_marker("integration") or node.get_closest_marker("real_redis")):
        return
    passed_on = sys.unraisablehook

    def drop_dead_server_unsubscribes(unraisable: sys.UnraisableHookArgs) -> None:
        if getattr(unraisable.object, "__qualname__", "") == "AsyncResult.__del__":
            return
        passed_on(unraisable)

    sys.unraisablehook = drop_dead_server_unsubscribes
    try:
        # What is collected here is this finished test's leftovers: a client socket among them
        # is closed by the collection itself, so its ResourceWarning is not made an error here
        # (it would be, at a random later point, without this collection).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    finally:
        sys.unraisablehook = passed_on


@pytest.fixture(autouse=True, scope="session")
def _own_spool_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Worker processes started by this session spool final writes (``DELIVERY_SPOOL_DIR``)
    into a folder of their own, never the host's default shared by every worker on it: a
    spool left by one test session is not replayed by another's workers."""
    os.environ["DELIVERY_SPOOL_DIR"] = str(tmp_path_factory.mktemp("spool"))


@pytest.fixture(autouse=True, scope="session")
def _loggers_never_cached() -> Iterator[None]:
    """Keep structlog from caching loggers for the whole test session.

    The worker configures structlog with ``cache_logger_on_first_use`` (a cached logger skips
    a config lookup per event). In one test process that is order-dependent: a test that runs
    ``delivery-worker`` in-process configures logging, the next logger used is cached with that
    chain, and a later test's ``structlog.testing.capture_logs`` never sees its events.
    """
    original = structlog.configure

    def configure(*args: object, **kwargs: object) -> None:
        kwargs["cache_logger_on_first_use"] = False
        original(*args, **kwargs)  # type: ignore[arg-type]

    structlog.configure = configure  # type: ignore[assignment]
    original(cache_logger_on_first_use=False)
    yield
    structlog.configure = original  # type: ignore[assignment]


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A real redis-server (AOF on) for the whole session."""
    if os.environ.get("DW_TEST_NO_REDIS") == "1":
        pytest.fail("this test asked for a redis-server, and DW_TEST_NO_REDIS=1 forbids one")
    proc = start_redis(Path(tmp_path_factory.mktemp("redis")))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def quiet_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this test module's own, that no other process talks to.

    For tests that count commands with ``INFO commandstats``, which is server-wide: on the
    session's server a worker process started by another test (its schedule mover polls every
    0.1 s) would add its own calls to the count.
    """
    if os.environ.get("DW_TEST_NO_REDIS") == "1":
        pytest.fail("this test asked for a redis-server, and DW_TEST_NO_REDIS=1 forbids one")
    proc = start_redis(Path(tmp_path_factory.mktemp("quiet-redis")))
    yield str(proc.extra["url"])
    proc.stop()


@pytest.fixture(scope="session")
def redis_url(redis_proc: Proc) -> str:
    return str(redis_proc.extra["url"])


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on a clean database 15 (other databases belong to integration fixtures)."""
    client = redis.Redis.from_url(redis_url + "/15", decode_responses=False)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
