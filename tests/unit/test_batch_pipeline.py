"""The batch pipeline (``worker.delivery.batch``) on the in-memory stores, with SMS Partner's
documented answers over ``httpx.MockTransport``: each message keeps the single path's
guarantees (ledger, lock, limiter slot per request, breaker once per request, pause/park,
per-entry errors, reconciliation by the batch's tag)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from worker.config import Settings
from worker.delivery import Done, Retry
from worker.delivery.batch import BatchEntry, process_batch
from worker.runtime import Runtime, breaker_config
from worker.stores import Stores

Handler = Callable[[httpx.Request], httpx.Response]
NUMBERS = ["+33612000001", "+33612000003", "+33612000005"]


@pytest.fixture
def make_runtime() -> Iterator[Callable[[Handler], Runtime]]:
    made: list[Runtime] = []

    def build(handler: Handler) -> Runtime:
        settings = Settings(
            smspartner_api_key="sms-secret-key",
            smspartner_base_url="http://provider.test/smspartner/v1",
            batching=True,
            reconcile_grace_s=0,
            http_read_timeout_s=1,
        )
        stores = Stores.in_memory(breaker=breaker_config(settings))
        client = httpx.Client(transport=httpx.MockTransport(handler))
        rt = Runtime(settings, client=client, stores=stores)
        made.append(rt)
        return rt

    yield build
    for rt in made:
        rt.close()


def entries(texts: list[str] | None = None, numbers: list[str] = NUMBERS) -> list[BatchEntry]:
    texts = texts or [f"Code {i}" for i in range(len(numbers))]
    return [
        BatchEntry(
            "sms",
            {"provider": "smspartner", "to": [n], "text": t},
            f"d-{i}",
            "tasks.send_sms",
        )
        for i, (n, t) in enumerate(zip(numbers, texts, strict=True))
    ]


def bulk_answer(request: httpx.Request, refused: dict[str, int] | None = None) -> httpx.Response:
    body = json.loads(request.content)
    items = []
    for entry in body["SMSList"]:
        code = (refused or {}).get(entry["phoneNumber"])
        if code:
            items.append(
                {"success": False, "code": code, "phoneNumber": entry["phoneNumber"], "message": ""}
            )
        else:
            items.append(
                {
                    "success": True,
                    "code": 200,
                    "nbSms": 1,
                    "cost": 0.038,
                    "phoneNumber": entry["phoneNumber"],
                }
            )
    return httpx.Response(
        200,
        json={
            "success": True,
            "code": 200,
            "message_id": 99,
            "currency": "EUR",
            "SMSResponse_List": items,
        },
    )


def test_one_request_per_batch_each_message_its_own_record(make_runtime: Any) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return bulk_answer(request, {NUMBERS[1]: 14})

    rt = make_runtime(handler)
    outcomes = process_batch(entries(), rt)
    assert len(seen) == 1 and seen[0].url.path.endswith("/bulk-send")
    states = [o.result.status for o in outcomes if isinstance(o, Done)]
    assert states == ["sent", "failed", "sent"]
    failed = outcomes[1]
    assert isinstance(failed, Done) and failed.result.error is not None
    assert failed.result.error.kind == "recipient_rejected"
    tag = json.loads(seen[0].content)["tag"]
    for i in range(3):
        record = rt.ledger.get(f"d-{i}")
        assert record is not None and record.fields["batch_tags"] == tag
        assert record.fields["runs_unfinished"] == "0"
    assert rt.ledger.get("d-0").state == "sent"  # type: ignore[union-attr]
    assert rt.metrics.read("smspartner")["sent"] == 2
    # Every lock was released: the same deliveries run again at once, answered from the ledger.
    again = process_batch(entries(), rt)
    assert [o.result.status for o in again if isinstance(o, Done)] == states
    assert len(seen) == 1


def test_a_lost_answer_is_reconciled_per_message_by_the_batch_tag(make_runtime: Any) -> None:
    accepted: dict[str, list[str]] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/bulk-send"):
            body = json.loads(request.content)
            # Accepted, except the STOP number; then the answer is lost.
            if accepted:  # the resend of the one not accepted is answered
                return bulk_answer(request)
            accepted[body["tag"]] = [e["phoneNumber"] for e in body["SMSList"][:2]]
            raise httpx.ReadTimeout("lost", request=request)
        if request.url.path.endswith("/bulk-status-by-tag"):
            numbers = accepted.get(request.url.params["tag"], [])
            items = [{"phoneNumber": n, "status": "Waiting"} for n in numbers]
            return httpx.Response(
                200,
                json={
                    "success": True,
                    "code": 200,
                    "message_id": "55",
                    "StatutResponse_List": items,
                },
            )
        return httpx.Response(200, json={"success": True, "code": 200, "message_id": 77})

    rt = make_runtime(handler)
    first = process_batch(entries(), rt)
    assert all(isinstance(o, Retry) and o.reason == "reconcile_grace" for o in first)
    second = process_batch(entries(), rt)
    results = [o.result for o in second if isinstance(o, Done)]
    assert [r.status for r in results] == ["sent", "sent", "sent"]
    assert [list(r.provider_message_ids.values()) for r in results] == [["55"], ["55"], ["99"]]


def test_no_credit_pauses_the_provider_once_and_parks_every_message(make_runtime: Any) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(
            200, json={"success": False, "code": 11, "message": "Crédit insuffisant"}
        )

    rt = make_runtime(handler)
    outcomes = process_batch(entries(), rt)
    assert [o.result.status for o in outcomes if isinstance(o, Done)] == ["parked"] * 3
    assert rt.health.paused("smspartner") is not None
    assert len(calls) == 1
    assert sorted(p.delivery_id for p in rt.parking.entries("smspartner")) == ["d-0", "d-1", "d-2"]


def test_a_server_error_feeds_the_breaker_once_and_retries_every_message(
    make_runtime: Any,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="busy")

    rt = make_runtime(handler)
    outcomes = process_batch(entries(), rt)
    assert all(isinstance(o, Retry) for o in outcomes)
    state = rt.health.record_failure("smspartner")
    assert state.failures == 2  # one for the request, one just now


def test_one_text_refused_for_one_number_is_asked_again_per_entry(make_runtime: Any) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path.rsplit("/", 1)[-1])
        if request.url.path.endswith("/send"):
            return httpx.Response(400, json={"success": False, "code": 14, "message": "STOP"})
        return bulk_answer(request, {NUMBERS[2]: 14})

    rt = make_runtime(handler)
    outcomes = process_batch(entries(["Même texte"] * 3), rt)
    assert paths == ["send", "bulk-send"]
    assert [o.result.status for o in outcomes if isinstance(o, Done)] == ["sent", "sent", "failed"]
    record = rt.ledger.get("d-0")
    assert record is not None and len(record.fields["batch_tags"].split()) == 2


def test_messages_that_do_not_batch_go_alone(make_runtime: Any) -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path.rsplit("/", 1)[-1])
        return httpx.Response(200, json={"success": True, "code": 200, "message_id": 1})

    rt = make_runtime(handler)
    batch = [
        BatchEntry(
            "sms",
            {"provider": "smspartner", "to": [NUMBERS[0]], "text": "x", "tag": "mine"},
            "d-a",
            "tasks.send_sms",
        ),
        BatchEntry(
            "sms",
            {"provider": "smspartner", "to": NUMBERS[:2], "text": "x"},
            "d-b",
            "tasks.send_sms",
        ),
        BatchEntry(
            "sms", {"provider": "smspartner", "to": ["bad"], "text": "x"}, "d-c", "tasks.send_sms"
        ),
    ]
    outcomes = process_batch(batch, rt)
    assert paths == ["send", "send"]
    assert [o.result.status for o in outcomes if isinstance(o, Done)] == ["sent", "sent", "failed"]


def test_the_same_number_twice_goes_in_two_requests(make_runtime: Any) -> None:
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append([e["phoneNumber"] for e in json.loads(request.content)["SMSList"]])
        return bulk_answer(request)

    rt = make_runtime(handler)
    outcomes = process_batch(entries(numbers=[NUMBERS[0], NUMBERS[1], NUMBERS[0]]), rt)
    assert seen == [[NUMBERS[0], NUMBERS[1]], [NUMBERS[0]]]
    assert all(isinstance(o, Done) and o.result.status == "sent" for o in outcomes)
