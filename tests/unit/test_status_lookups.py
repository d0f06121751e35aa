"""Status lookups (delivery tracking): each provider's wire format and its hostile answers.

Whatever a provider answers a lookup, the driver returns events or raises a classified
:class:`~worker.errors.DeliveryError`, never anything else (hypothesis below).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import ConfigurationError, DeliveryError, ThrottledError
from worker.providers import DRIVERS, make_driver
from worker.providers.lookup import LookupTarget
from worker.tracking import DeliveryEvent, EventType

from .driver_support import mock_client, recorder

BASE = "http://provider.test/prefix"
SMS1 = LookupTarget("d1", "+3361****78", "2270142", "+33612345678")
SMS2 = LookupTarget("d2", "+3361****79", "2270143", "+33612345679")
MAIL = [
    LookupTarget("d3", "a***@example.com", "xxx"),
    LookupTarget("d3", "b***@example.com", "xxx"),
]
POSTAL = LookupTarget("d4", "a***@example.com", "37171")


def driver(name: str, handler: Any) -> Any:
    return make_driver(name, mock_client(handler), api_key="secret-key-1", base_url=BASE)


def answer(data: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=data)


def test_declarations() -> None:
    assert {n for n, d in DRIVERS.items() if d.status_lookup} == {
        "postal",
        "mailpartner",
        "smspartner",
    }
    assert DRIVERS["smspartner"].status_batch_size == 500
    assert DRIVERS["smspartner"].lookup_ref("+33612345678") == "+33612345678"
    assert DRIVERS["postal"].lookup_ref("a@example.com") is None


def test_sms_message_status_reads_statut_and_both_date_forms() -> None:
    seen, handler = recorder(
        answer(
            {
                "success": True,
                "code": 200,
                "number": "+33612345678",
                "messageId": "2270142",
                "stopSms": False,
                "date": "1534615206",
                "statut": "Delivered",
                "cost": 0.04,
            }
        )
    )
    (event,) = driver("smspartner", handler).lookup_status([SMS1])
    assert seen[0].method == "GET" and seen[0].url.path == "/prefix/message-status"
    assert seen[0].url.params["messageId"] == "2270142"
    assert seen[0].url.params["phoneNumber"] == "+33612345678"
    assert (event.type, event.occurred_at, event.recipient) == (
        EventType.DELIVERED,
        1534615206.0,
        "+3361****78",
    )
    assert event.source == "poll" and event.delivery_id == "d1"
    assert "+33612345678" not in event.model_dump_json()
    _, handler = recorder(
        answer(
            {"success": True, "code": 200, "date": "2015-02-07 22:39:46", "statut": "Not delivered"}
        )
    )
    (failed,) = driver("smspartner", handler).lookup_status([SMS1])
    assert failed.type is EventType.FAILED and failed.reason == "Not delivered"
    # Paris time (docs/providers/smspartner.md §1.2.7 [INFERRED])
    assert failed.occurred_at == pytest.approx(1423345186.0)


def test_sms_multi_status_batches_and_matches_pairs() -> None:
    seen, handler = recorder(
        answer(
            {
                "success": True,
                "code": 200,
                "StatutResponse_List": [
                    {
                        "success": True,
                        "code": 200,
                        "phoneNumber": "0612345679",
                        "messageId": 2270143,
                        "status": "Waiting",
                        "date": "1517934416",
                    },
                    {
                        "success": False,
                        "code": 4,
                        "phoneNumber": "+33612345678",
                        "messageId": 2270142,
                        "status": "Numéro introuvable",
                    },
                    {
                        "success": True,
                        "code": 200,
                        "phoneNumber": "+33600000000",
                        "messageId": 1,
                        "status": "Delivered",
                    },
                ],
            }
        )
    )
    events = driver("smspartner", handler).lookup_status([SMS1, SMS2])
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/prefix/multi-status"
    assert body["SMSStatut_List"] == [
        {"phoneNumber": "+33612345678", "messageId": 2270142},
        {"phoneNumber": "+33612345679", "messageId": 2270143},
    ]
    assert body["apiKey"] == "secret-key-1"
    assert {(e.delivery_id, e.type) for e in events} == {
        ("d2", EventType.QUEUED),
        ("d1", EventType.UNKNOWN),
    }
    groups = DRIVERS["smspartner"].lookup_groups([SMS1] * 1001)
    assert [len(g) for g in groups] == [500, 500, 1]


def test_sms_lookup_errors_are_classified() -> None:
    _, handler = recorder(answer({"success": False, "code": 10, "message": "bad key"}, 401))
    with pytest.raises(ConfigurationError):
        driver("smspartner", handler).lookup_status([SMS1, SMS2])
    _, handler = recorder(answer({"success": False, "code": 4}, 200))
    (event,) = driver("smspartner", handler).lookup_status([SMS1])
    assert event.type is EventType.UNKNOWN


def test_mailpartner_bulk_status_one_request_per_send() -> None:
    seen, handler = recorder(
        answer(
            {
                "success": True,
                "code": 200,
                "messageId": "xxx",
                "StatutResponseList": [
                    {
                        "email": "ann@example.com",
                        "token": "t",
                        "status": "Delivered",
                        "date": "1599061044",
                    },
                    {
                        "email": "bob@example.com",
                        "token": "u",
                        "status": "Bounced",
                        "date": "1599061045",
                    },
                ],
            }
        )
    )
    (group,) = DRIVERS["mailpartner"].lookup_groups(MAIL)
    events = driver("mailpartner", handler).lookup_status(group)
    assert len(seen) == 1 and seen[0].url.params["messageId"] == "xxx"
    assert [(e.recipient, e.type) for e in events] == [
        ("a***@example.com", EventType.DELIVERED),
        ("b***@example.com", EventType.BOUNCED),
    ]
    assert "ann@example.com" not in json.dumps([e.model_dump(mode="json") for e in events])
    assert len(DRIVERS["mailpartner"].lookup_groups([*MAIL, POSTAL])) == 2


def test_mailpartner_throttle_is_classified() -> None:
    _, handler = recorder(answer({"success": False, "code": 429}, 429))
    with pytest.raises(ThrottledError):
        driver("mailpartner", handler).lookup_status(MAIL)


def _postal(data: Any, status: str = "success") -> httpx.Response:
    return answer({"status": status, "time": 0.01, "flags": {}, "data": data})


def test_postal_sent_is_one_request() -> None:
    seen, handler = recorder(
        _postal(
            {
                "id": 37171,
                "token": "t",
                "status": {
                    "status": "Sent",
                    "held": False,
                    "last_delivery_attempt": 1740935264.7,
                    "hold_expiry": None,
                },
            }
        )
    )
    (event,) = driver("postal", handler).lookup_status([POSTAL])
    assert len(seen) == 1 and seen[0].url.path == "/prefix/api/v1/messages/message"
    assert json.loads(seen[0].content) == {"id": 37171, "_expansions": ["status"]}
    assert seen[0].headers["X-Server-API-Key"] == "secret-key-1"
    assert (event.type, event.occurred_at) == (EventType.DELIVERED, 1740935264.7)


def test_postal_held_reads_the_reason_from_deliveries() -> None:
    answers = [
        _postal(
            {
                "id": 37171,
                "token": "t",
                "status": {
                    "status": "Held",
                    "held": True,
                    "last_delivery_attempt": 1.0e9,
                    "hold_expiry": 2.0e9,
                },
            }
        ),
        _postal(
            [
                {
                    "id": 1,
                    "status": "Held",
                    "timestamp": 1.5e9,
                    "details": "Recipient (ann@example.com) is on the suppression list",
                }
            ]
        ),
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    (event,) = driver("postal", handler).lookup_status([POSTAL])
    assert [r.url.path for r in seen] == [
        "/prefix/api/v1/messages/message",
        "/prefix/api/v1/messages/deliveries",
    ]
    assert event.type is EventType.HELD and event.occurred_at == 1.5e9
    assert event.reason is not None and "suppression" in event.reason
    assert "ann@example.com" not in event.reason


def test_postal_not_found_and_bad_key() -> None:
    _, handler = recorder(_postal({"code": "MessageNotFound", "id": 37171}, "error"))
    (event,) = driver("postal", handler).lookup_status([POSTAL])
    assert event.type is EventType.UNKNOWN
    _, handler = recorder(_postal({"code": "InvalidServerAPIKey"}, "error"))
    with pytest.raises(ConfigurationError):
        driver("postal", handler).lookup_status([POSTAL])


def test_the_same_answer_twice_is_the_same_event() -> None:
    _, handler = recorder(
        answer({"success": True, "code": 200, "statut": "Delivered", "date": "1534615206"})
    )
    first = driver("smspartner", handler).lookup_status([SMS1])
    again = driver("smspartner", handler).lookup_status([SMS1])
    assert [e.event_id for e in first] == [e.event_id for e in again]


def test_the_gate_runs_before_every_request() -> None:
    calls: list[str] = []
    answers = [
        _postal({"id": 1, "status": {"status": "HardFail"}}),
        _postal([{"details": "550 no such user", "timestamp": 5.0}]),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append("request")
        return answers[calls.count("request") - 1]

    driver("postal", handler).lookup_status([POSTAL], gate=lambda: calls.append("gate"))
    assert calls == ["gate", "request", "gate", "request"]


# -- hostile answers -------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "success",
        "code",
        "statut",
        "status",
        "date",
        "StatutResponse_List",
        "StatutResponseList",
        "phoneNumber",
        "messageId",
        "email",
        "data",
        "held",
        "last_delivery_attempt",
        "details",
        "timestamp",
    ]
)
SHAPED = st.fixed_dictionaries(
    {
        "success": st.sampled_from([True, False, "true", None]),
        "code": st.sampled_from([200, 4, 10, 429, "200", None]),
    }
).flatmap(
    lambda base: st.dictionaries(
        FIELDS, JSON | st.lists(st.dictionaries(FIELDS, JSON), max_size=3), max_size=6
    ).map(lambda extra: {**base, **extra})
)
POSTAL_SHAPED = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["success", "error", "parameter-error", 3, None]),
        "data": JSON
        | st.dictionaries(FIELDS, JSON | st.dictionaries(FIELDS, JSON), max_size=5)
        | st.lists(st.dictionaries(FIELDS, JSON), max_size=3),
    }
)
BODIES = (
    st.binary(max_size=200)
    | JSON.map(lambda v: json.dumps(v).encode())
    | SHAPED.map(lambda v: json.dumps(v).encode())
    | POSTAL_SHAPED.map(lambda v: json.dumps(v).encode())
    | st.just(b'{"success":true,"code":200,"date":1e400,"statut":"Delivered"}')
    | st.just(b'{"success":true,"code":200,"date":' + b"9" * 400 + b',"statut":"Delivered"}')
)
TARGETS = {"smspartner": [[SMS1], [SMS1, SMS2]], "mailpartner": [MAIL], "postal": [[POSTAL]]}


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, status=st.sampled_from([200, 200, 400, 404, 429, 500]), pick=st.integers(0, 1))
def test_hostile_lookup_answers_never_crash(name: str, body: bytes, status: int, pick: int) -> None:
    choices = TARGETS[name]
    targets = choices[pick % len(choices)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body)

    try:
        events = driver(name, handler).lookup_status(targets)
    except DeliveryError:
        return
    asked = {(t.delivery_id, t.recipient) for t in targets}
    for event in events:
        assert isinstance(event, DeliveryEvent)
        assert (event.delivery_id, event.recipient) in asked
        json.dumps(event.model_dump(mode="json"), allow_nan=False)
