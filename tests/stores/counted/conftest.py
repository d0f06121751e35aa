"""Tests that count commands with ``INFO commandstats``, which is server-wide.

Here ``redis_url`` and ``redis_client`` are a redis-server of each test module's own
(``quiet_redis_url``, tests/conftest.py) that no other process talks to: on the session's
server, a worker process started by another test would add its calls to the count.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis


@pytest.fixture
def redis_url(quiet_redis_url: str) -> str:
    return quiet_redis_url


@pytest.fixture
def redis_client(quiet_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(quiet_redis_url + "/15", decode_responses=False)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
