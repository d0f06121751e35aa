"""The key namespace (``DELIVERY_REDIS_NAMESPACE``): a worker flow under namespace ``x1``
writes its keys under ``x1:`` only, on a real redis-server. A single send (with the guard's
mark), a provider batch, a provider error that feeds the breaker, a suppression entry, a
dead letter and the producer's replication fence: none of them writes a ``dw:`` key."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import redis

from worker.config import Settings
from worker.delivery import Done
from worker.delivery.batch import BatchEntry, process_batch
from worker.delivery.pipeline import process
from worker.guard import MessageGuard
from worker.runtime import Runtime
from worker.stores import Keys, keys_for
from worker.stores.hotpath import RedisHotPath
from worker.stores.owners import owner_of
from worker.stores.suppression import Entry

NUMBERS = ["+33612000001", "+33612000003", "+33612000005"]


def smspartner(request: httpx.Request) -> httpx.Response:
    """SMS Partner: single sends and bulk sends accepted, ``+33699...`` refused (HTTP 500)."""
    body = json.loads(request.content)
    if "SMSList" in body:
        items = [
            {
                "success": True,
                "code": 200,
                "nbSms": 1,
                "cost": 0.038,
                "phoneNumber": e["phoneNumber"],
            }
            for e in body["SMSList"]
        ]
        answer = {"success": True, "code": 200, "message_id": 99, "currency": "EUR"}
        return httpx.Response(200, json={**answer, "SMSResponse_List": items})
    if str(body.get("phoneNumbers", "")).startswith("+33699"):
        return httpx.Response(500, json={"success": False, "code": 500})
    return httpx.Response(
        200, json={"success": True, "code": 200, "message_id": 7, "nb_sms": 1, "cost": 0.04}
    )


def _settings(redis_url: str, namespace: str) -> Settings:
    return Settings(
        redis_url=redis_url + "/15",
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://provider.test/smspartner/v1",
        batching=True,
        reconcile_grace_s=0,
        suppression_secret="s" * 32,
        redis_namespace=namespace,
    )


@pytest.fixture
def rt(redis_url: str, redis_client: redis.Redis) -> Iterator[Runtime]:
    runtime = Runtime(
        _settings(redis_url, "x1"), client=httpx.Client(transport=httpx.MockTransport(smspartner))
    )
    assert isinstance(runtime.hotpath, RedisHotPath)  # the one-script hot path
    yield runtime
    runtime.close()


def _keys(client: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(count=1000))


def test_a_worker_flow_under_namespace_x1_writes_only_x1_keys(
    rt: Runtime, redis_client: redis.Redis
) -> None:
    guard = MessageGuard(None, rt.settings, redis_client)
    guard.beat()  # the guard's liveness key
    mark = rt.settings.redis_namespace + ":main:s-1"
    redis_client.hset(mark, guard.token, 1)  # as MessageGuard.mark leaves it
    message = {"provider": "smspartner", "to": ["+33612000009"], "text": "Code 1"}
    outcome = process(
        "sms", message, delivery_id="s-1", task_name="tasks.send_sms", rt=rt,
        guard_token=guard.token,
    )  # fmt: skip
    assert isinstance(outcome, Done) and outcome.result.status == "sent"
    assert not redis_client.exists(mark)  # the run's first script cleared the x1 mark
    failing = {"provider": "smspartner", "to": ["+33699000001"], "text": "Code 2"}
    process("sms", failing, delivery_id="s-2", task_name="tasks.send_sms", rt=rt)
    entries = [
        BatchEntry("sms", {"provider": "smspartner", "to": [n], "text": "Hi"}, f"b-{i}", "t")
        for i, n in enumerate(NUMBERS)
    ]
    batch = process_batch(entries, rt)
    assert [o.result.status for o in batch if isinstance(o, Done)] == ["sent"] * 3
    rt.suppression.add(Entry("sms", rt.hasher.key("sms", NUMBERS[0]), "stop", "manual"))
    rt.ledger.bury("s-2", reason="test", task_name="tasks.send_sms", message=failing)
    rt.ledger.note_tag_use("smspartner", "tag-1", ["+336****09"], "s-1", 1.0)
    rt.health.pause("smspartner", "test", "ops")

    keys = _keys(redis_client)
    assert keys, "the flow wrote nothing"
    assert [k for k in keys if k.startswith("dw:")] == []
    assert [k for k in keys if not k.startswith("x1:")] == []
    for family in (
        "x1:delivery:s-1",
        "x1:tag:smspartner:tag-1",
        "x1:dead",
        "x1:supp:sms",
        "x1:health:paused",
    ):
        assert family in keys, (family, keys)
    assert any(k.startswith("x1:track:") for k in keys)
    assert any(k.startswith("x1:guard:alive:") for k in keys)


def test_the_default_namespace_is_dw_and_a_second_one_does_not_see_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client = httpx.Client(transport=httpx.MockTransport(smspartner))
    ours, theirs = Runtime(_settings(redis_url, "dw"), client=client), None
    try:
        message = {"provider": "smspartner", "to": ["+33612000009"], "text": "Code 1"}
        process("sms", message, delivery_id="d-1", task_name="tasks.send_sms", rt=ours)
        assert redis_client.exists("dw:delivery:d-1")
        theirs = Runtime(_settings(redis_url, "x2"), client=client)
        assert theirs.ledger.get("d-1") is None  # another deployment, another namespace
    finally:
        ours.close()
        if theirs is not None:
            theirs.close()


def test_the_setting_is_read_from_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DELIVERY_REDIS_NAMESPACE", "staging")
    assert keys_for(Settings()).delivery("d") == "staging:delivery:d"
    assert keys_for(Settings(_env_file=None)).namespace == "staging"
    assert Settings(redis_namespace="dw").redis_namespace == Keys().namespace
    with pytest.raises(ValueError):
        Settings(redis_namespace="a:b")
    with pytest.raises(ValueError):
        Keys("")


def test_the_owners_table_follows_the_namespace() -> None:
    assert owner_of("x1:active", "x1") is not None
    assert owner_of("x1:active") is None  # the default table names dw: keys only
    assert owner_of("dw:active") is not None
    assert owner_of("x1:metrics:smspartner", "x1") is not None
    assert owner_of("x1:delivery:d-1", "x1") is None  # a record carries a TTL
