"""Raw items that are not kombu envelopes, pushed straight onto the queue list: the worker
sets each aside and keeps consuming.

Real redis-server, the sandbox, one ``celery worker`` of our own (Redis databases 12/13, so the
session worker never takes these items). Before the fix the first item (``not json``) made the
worker exit with "Unrecoverable error: JSONDecodeError", and each push took down one worker.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from devstack.processes import start_worker
from worker.app import client_app
from worker.guard.raw_items import MAX_ITEM_BYTES, REJECTED_ITEMS_KEY, REJECTED_ITEMS_TTL_S
from worker.producer import Producer
from worker.stores import RedisLedger

from .conftest import SandboxAdmin, wait_ready

pytestmark = pytest.mark.integration

CANARY = "RAW-ITEM-CANARY-8812"
QUEUE = "delivery"


def envelope(**changes: Any) -> dict[str, Any]:
    """A kombu envelope of a task message (as kombu's Redis transport writes it)."""
    body = base64.b64encode(json.dumps([[{"text": CANARY}], {}, {}]).encode()).decode()
    out: dict[str, Any] = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "tasks.send_sms", "id": str(uuid.uuid4())},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0,
        },
    }
    out.update(changes)
    return out


def garbage() -> list[tuple[bytes, str]]:
    """``(raw item, expected reason)``, in push order."""
    props = envelope()["properties"]
    no_tag = {k: v for k, v in props.items() if k != "delivery_tag"}
    return [
        (f"not json {CANARY}".encode(), "not_json"),
        (b"\xff\xfe" + CANARY.encode(), "not_json"),
        (b"[" * 50_000 + b"]" * 50_000, "not_json"),  # kombu's loads recurses
        (json.dumps([1, 2, CANARY]).encode(), "not_an_object"),
        (json.dumps(CANARY).encode(), "not_an_object"),
        (json.dumps({"foo": CANARY}).encode(), "not_an_envelope"),
        (json.dumps(envelope(properties=no_tag)).encode(), "not_an_envelope"),
        (json.dumps(envelope(headers=[CANARY])).encode(), "not_an_envelope"),
        (json.dumps(envelope(body=None)).encode(), "not_an_envelope"),
        (
            json.dumps(envelope(properties={**props, "body_encoding": "rot13"})).encode(),
            "bad_body_encoding",
        ),
        (json.dumps(envelope(body=f"!{CANARY}!")).encode(), "bad_body_encoding"),
        (b'"' + CANARY.encode() * 20_000 + b'"', "not_an_object"),  # over MAX_ITEM_BYTES
    ]


@pytest.fixture
def raw_env(stack_env: dict[str, str], redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{redis_url}/12",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/13",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    for db in (12, 13):
        with redis.Redis.from_url(f"{redis_url}/{db}") as r:
            r.flushdb()
    yield env


@pytest.fixture
def raw_client(raw_env: dict[str, str]) -> Celery:
    return client_app(
        raw_env["DELIVERY_BROKER_URL"], raw_env["DELIVERY_RESULT_BACKEND"], name="raw"
    )


def rejected_counts(prom_dir: str) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=prom_dir)  # type: ignore[no-untyped-call]
    counts: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "delivery_queue_items_rejected_total":
                reason = sample.labels["reason"]
                counts[reason] = counts.get(reason, 0.0) + sample.value
    return counts


def test_raw_items_that_are_not_envelopes_are_set_aside_and_the_worker_keeps_consuming(
    raw_env: dict[str, str], raw_client: Celery, sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    broker = redis.Redis.from_url(raw_env["DELIVERY_BROKER_URL"])
    proc = start_worker(tmp_path, raw_env, name="raw", concurrency=1)
    try:
        wait_ready(raw_client, proc)
        items = garbage()
        for item, _reason in items:
            broker.lpush(QUEUE, item)
        deadline = time.monotonic() + 60
        while broker.llen(REJECTED_ITEMS_KEY) < len(items):
            assert proc.alive(), f"the worker exited:\n{proc.log_tail()}"
            assert time.monotonic() < deadline, (broker.llen(REJECTED_ITEMS_KEY), proc.log_tail())
            time.sleep(0.05)

        # The next good message, through the project's producer, is delivered.
        producer = Producer(app=raw_client, ledger=RedisLedger(broker))
        message = {"provider": "smspartner", "to": ["+33612345678"], "text": "Code 1234"}
        result = producer.enqueue("sms", message)
        assert result.get(timeout=60)["status"] == "sent"
        assert len(sandbox.messages("smspartner")) == 1
        assert proc.alive(), proc.log_tail()
        wait_ready(raw_client, proc, timeout_s=10)  # still answers ``inspect ping``

        records = [json.loads(r) for r in broker.lrange(REJECTED_ITEMS_KEY, 0, -1)]
        records.reverse()  # newest first in Redis
        assert [r["reason"] for r in records] == [reason for _item, reason in items]
        assert {r["queue"] for r in records} == {QUEUE}
        for record, (item, _reason) in zip(records, items, strict=True):
            assert record["size"] == len(item)
            kept = item[:MAX_ITEM_BYTES].decode("utf-8", "backslashreplace")
            assert record["item"] == kept
            assert record["detail"] and CANARY not in record["detail"]
            assert abs(record["at"] - time.time()) < 300
        assert 0 < broker.ttl(REJECTED_ITEMS_KEY) <= REJECTED_ITEMS_TTL_S
        assert broker.llen(QUEUE) == 0

        expected: dict[str, float] = {}
        for _item, reason in items:
            expected[reason] = expected.get(reason, 0.0) + 1
        assert rejected_counts(raw_env["PROMETHEUS_MULTIPROC_DIR"]) == expected

        text = proc.log_path.read_text(errors="replace")
        assert text.count("queue.item_rejected") == len(items)
        assert CANARY not in text
        assert "Unrecoverable error" not in text
    finally:
        proc.stop()


def test_a_get_reads_past_items_that_are_not_envelopes(
    raw_env: dict[str, str], raw_client: Celery
) -> None:
    """``basic_get`` (kombu's ``_get``, ``RPOP``): the foreign items are set aside on the way to
    the next envelope, which is returned."""
    broker = redis.Redis.from_url(raw_env["DELIVERY_BROKER_URL"])
    good = envelope()
    broker.lpush("q", b"not json", b"[1]")
    with raw_client.connection_for_write() as conn:
        channel = conn.default_channel
        channel._put("q", good)
        assert channel._get("q") == good
    reasons = [json.loads(r)["reason"] for r in broker.lrange(REJECTED_ITEMS_KEY, 0, -1)]
    assert reasons == ["not_an_object", "not_json"]
    assert broker.llen("q") == 0
