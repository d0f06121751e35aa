"""A provider batch against the suppression list, on the Redis stores (a real redis-server):
the batch's chunk begins in one script call, and that call answers which recipients are
suppressed. No other lookup is made, and no provider request goes to a suppressed number."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import redis

from worker.config import Settings
from worker.delivery import Done
from worker.delivery.batch import BatchEntry, process_batch
from worker.runtime import Runtime
from worker.stores.hotpath import RedisHotPath
from worker.stores.suppression import Entry

NUMBERS = ["+33612000001", "+33612000003", "+33612000005"]


class Provider:
    """SMS Partner's bulk endpoint: every entry accepted, ``refused`` numbers refused."""

    def __init__(self, refused: dict[str, int] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.refused = refused or {}

    def numbers(self) -> list[list[str]]:
        return [[e["phoneNumber"] for e in json.loads(r.content)["SMSList"]] for r in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        items = []
        for entry in body["SMSList"]:
            number = entry["phoneNumber"]
            code = self.refused.get(number)
            if code:
                items.append({"success": False, "code": code, "phoneNumber": number, "message": ""})
            else:
                items.append({"success": True, "code": 200, "nbSms": 1, "cost": 0.038,
                              "phoneNumber": number})  # fmt: skip
        answer = {"success": True, "code": 200, "message_id": 99, "currency": "EUR"}
        return httpx.Response(200, json={**answer, "SMSResponse_List": items})


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def rt(redis_url: str, redis_client: redis.Redis, provider: Provider) -> Iterator[Runtime]:
    settings = Settings(
        redis_url=redis_url + "/15",
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://provider.test/smspartner/v1",
        batching=True,
        reconcile_grace_s=0,
        suppression_secret="s" * 32,
    )
    runtime = Runtime(settings, client=httpx.Client(transport=httpx.MockTransport(provider)))
    assert isinstance(runtime.hotpath, RedisHotPath)  # the one-script hot path, not composed
    yield runtime
    runtime.close()


def entries(first: int = 0) -> list[BatchEntry]:
    return [
        BatchEntry(
            "sms",
            {"provider": "smspartner", "to": [n], "text": f"Code {i}"},
            f"d-{first + i}",
            "tasks.send_sms",
        )
        for i, n in enumerate(NUMBERS)
    ]


def test_a_batch_leaves_out_a_suppressed_number_found_by_its_chunks_first_script(
    rt: Runtime, provider: Provider, redis_client: redis.Redis
) -> None:
    stopped = rt.hasher.key("sms", NUMBERS[1])
    rt.suppression.add(Entry("sms", stopped, "stop", "send", "smspartner", masked="+336****03"))

    def no_lookup(*_: object) -> None:
        raise AssertionError("the suppression store was asked outside the first script")

    rt.suppression.check = no_lookup  # type: ignore[method-assign]
    outcomes = process_batch(entries(), rt)
    assert provider.numbers() == [[NUMBERS[0], NUMBERS[2]]]  # one request, without the STOP
    results = [o.result for o in outcomes if isinstance(o, Done)]
    assert [r.status for r in results] == ["sent", "failed", "sent"]
    error = results[1].error
    assert error is not None and (error.kind, error.code) == ("suppressed", "stop")
    assert results[1].suppressed_recipients == {"+3361*****03": "stop"}
    record = rt.ledger.get("d-1")
    assert record is not None and record.state == "failed"


def _runtime(redis_url: str, provider: Provider, *, suppression: bool) -> Runtime:
    settings = Settings(
        redis_url=redis_url + "/15",
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://provider.test/smspartner/v1",
        batching=True,
        suppression=suppression,
        suppression_secret="s" * 32,
    )
    return Runtime(settings, client=httpx.Client(transport=httpx.MockTransport(provider)))


def _commands(client: redis.Redis) -> tuple[int, int, int]:
    """(commands run, script calls, HMGETs) so far; commands inside scripts count too."""
    stats = client.info("commandstats")
    calls = {name: int(v.get("calls", 0)) for name, v in stats.items()}
    scripts = calls.get("cmdstat_evalsha", 0) + calls.get("cmdstat_eval", 0)
    return sum(calls.values()), scripts, calls.get("cmdstat_hmget", 0)


def test_the_lookup_costs_a_batch_no_extra_call_only_a_read_inside_its_script(
    redis_url: str, redis_client: redis.Redis, provider: Provider
) -> None:
    """The same batch of three (nobody suppressed) with the check on and off: the same number
    of script calls, and the only extra commands are the HMGETs inside the chunk's begin
    script, fewer than one per delivery."""
    other = Entry("sms", "0" * 32, "stop", "manual")  # the list is not empty
    on, off = (_runtime(redis_url, provider, suppression=s) for s in (True, False))
    try:
        on.suppression.add(other)
        cost = {}
        for name, rt in (("on", on), ("off", off)):
            process_batch(entries(100 if name == "on" else 200), rt)  # scripts loaded
            before = _commands(redis_client)
            first = 0 if name == "on" else 10
            outcomes = process_batch(entries(first), rt)
            assert [o.result.status for o in outcomes if isinstance(o, Done)] == ["sent"] * 3
            after = _commands(redis_client)
            cost[name] = tuple(a - b for a, b in zip(after, before, strict=True))
        (commands_on, scripts_on, hmget_on), (commands_off, scripts_off, hmget_off) = (
            cost["on"],
            cost["off"],
        )
        assert scripts_on == scripts_off
        # One HMGET per begin script call, not per delivery: a chunk's deliveries sharing
        # the channel read their entries in one HMGET (deferred.lua's prefetch).
        assert 1 <= hmget_on - hmget_off < 3
        assert commands_on - commands_off == hmget_on - hmget_off
    finally:
        on.close()
        off.close()


def test_a_stop_refused_inside_a_batch_suppresses_that_number_for_the_next_batch(
    rt: Runtime, provider: Provider
) -> None:
    provider.refused = {NUMBERS[1]: 14}
    first = process_batch(entries(), rt)
    assert [o.result.status for o in first if isinstance(o, Done)] == ["sent", "failed", "sent"]
    key = rt.hasher.key("sms", NUMBERS[1])
    entry = rt.suppression.check("sms", [key])[key]
    assert (entry.reason, entry.source, entry.provider) == ("stop", "send", "smspartner")
    provider.refused = {}
    second = process_batch(entries(10), rt)
    assert provider.numbers()[-1] == [NUMBERS[0], NUMBERS[2]]
    statuses = [o.result.status for o in second if isinstance(o, Done)]
    assert statuses == ["sent", "failed", "sent"]
