"""SMS Partner batches (docs/providers/smspartner.md §1.2.2 ``/send``,
docs/providers/smspartner.md §1.2.3 ``/bulk-send``, docs/providers/smspartner.md §1.2.10 status by
tag), against a MockTransport fake: the requests built, the per-entry answers parsed, and hostile
bulk answers classified per message, never a crash."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import (
    AccountBlockedError,
    DeferredError,
    DeliveryError,
    RecipientRejectedError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import SmsMessage
from worker.providers.base import SendContext, SendOutcome
from worker.providers.batching import new_batch_tag
from worker.providers.smspartner import MAX_BATCH, SmsPartnerDriver

from .driver_support import Handler, mock_client, recorder

API_KEY = "smspartner-batch-key-51d2"
BASE = "http://sandbox.test/smspartner/v1"
NUMBERS = ["+33612000001", "+33612000003", "+33612000005"]


def driver(handler: Handler) -> SmsPartnerDriver:
    return SmsPartnerDriver(mock_client(handler), api_key=API_KEY, base_url=BASE)


def sms(number: str, text: str = "Votre code 1234", **extra: Any) -> SmsMessage:
    return SmsMessage.model_validate({"to": [number], "text": text, **extra})


def reply(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


def gate_counter() -> tuple[list[int], Any]:
    calls: list[int] = []
    return calls, lambda: calls.append(1)


def bulk_ok(numbers: list[str], **per: dict[str, Any]) -> dict[str, Any]:
    items = []
    for n in numbers:
        item = {"success": True, "code": 200, "nbSms": 1, "cost": 0.038, "phoneNumber": n}
        items.append(per.get(n, item))
    return {
        "success": True,
        "code": 200,
        "message_id": 2254444,
        "currency": "EUR",
        "cost": 0.038 * len(numbers),
        "nbSMS": len(numbers),
        "SMSResponse_List": items,
    }


# -- declarations --------------------------------------------------------------------------


def test_the_module_declares_its_batching_and_which_messages_batch() -> None:
    assert SmsPartnerDriver.batch_limit == MAX_BATCH == 500
    plain = SmsPartnerDriver.batch_key(sms(NUMBERS[0]))
    assert plain is not None
    assert SmsPartnerDriver.batch_key(sms(NUMBERS[1], "autre texte")) == plain  # bulk-send
    assert SmsPartnerDriver.batch_key(sms(NUMBERS[0], sender="Shop")) != plain
    assert SmsPartnerDriver.batch_key(sms(NUMBERS[0], "Prix 5 € ☺")) != plain  # Unicode flag
    # A caller's tag must reach the provider as set; several numbers are one /send already.
    assert SmsPartnerDriver.batch_key(sms(NUMBERS[0], tag="promo")) is None
    multi = SmsMessage.model_validate({"to": NUMBERS[:2], "text": "x"})
    assert SmsPartnerDriver.batch_key(multi) is None


def test_batch_tags_are_unique_and_valid_provider_tags() -> None:
    tags = {new_batch_tag() for _ in range(200)}
    assert len(tags) == 200
    for tag in tags:
        # docs/providers/smspartner.md §1.2.2: <= 20 characters, lowercase, no spaces.
        assert len(tag) <= 20 and tag == tag.lower() and " " not in tag


# -- building ------------------------------------------------------------------------------


def test_one_text_is_one_send_with_every_number() -> None:
    seen, handler = recorder(
        reply({"success": True, "code": 200, "message_id": 307, "cost": 0.114, "currency": "EUR"})
    )
    calls, gate = gate_counter()
    messages = [sms(n, "Line 1\nPrix 5 €") for n in NUMBERS]
    answers = driver(handler).send_batch(messages, "dwbtag1", gate)
    assert len(seen) == 1 and len(calls) == 1
    body = json.loads(seen[0].content)
    assert seen[0].url.path.endswith("/send")
    assert body["phoneNumbers"] == ",".join(NUMBERS)
    assert body["message"] == "Line 1:br:Prix 5 :euro:"
    assert (body["tag"], body["apiKey"]) == ("dwbtag1", API_KEY)
    assert "SMSList" not in body
    for number, answer in zip(NUMBERS, answers, strict=True):
        assert isinstance(answer, SendOutcome)
        assert answer.provider_message_ids == {number: "307"}
        assert answer.cost == pytest.approx(0.038)


def test_different_texts_are_one_bulk_send_answered_per_entry() -> None:
    seen, handler = recorder(reply(bulk_ok(NUMBERS)))
    calls, gate = gate_counter()
    messages = [sms(n, f"Code {i}") for i, n in enumerate(NUMBERS)]
    answers = driver(handler).send_batch(messages, "dwbtag2", gate)
    assert len(seen) == 1 and len(calls) == 1
    body = json.loads(seen[0].content)
    assert seen[0].url.path.endswith("/bulk-send")
    assert body["SMSList"] == [
        {"phoneNumber": n, "message": f"Code {i}"} for i, n in enumerate(NUMBERS)
    ]
    assert body["tag"] == "dwbtag2"
    assert all(isinstance(a, SendOutcome) for a in answers)
    assert [a.provider_message_ids for a in answers if isinstance(a, SendOutcome)] == [
        {n: "2254444"} for n in NUMBERS
    ]


def test_bulk_true_forces_bulk_send_even_for_one_text() -> None:
    seen, handler = recorder(reply(bulk_ok(NUMBERS)))
    driver(handler).send_batch([sms(n) for n in NUMBERS], "dwbt", lambda: None, bulk=True)
    assert seen[0].url.path.endswith("/bulk-send")


def test_the_gate_runs_after_the_request_is_built_and_stops_it() -> None:
    seen, handler = recorder(reply(bulk_ok(NUMBERS)))

    class Stop(Exception):
        pass

    def gate() -> None:
        raise Stop

    with pytest.raises(Stop):
        driver(handler).send_batch([sms(n, n) for n in NUMBERS], "dwbt", gate)
    assert seen == []


# -- per-entry answers ---------------------------------------------------------------------


def test_a_refused_entry_fails_only_that_message() -> None:
    stop = {"success": False, "code": 14, "phoneNumber": NUMBERS[1], "message": "STOP"}
    late = {"success": False, "code": 22, "phoneNumber": NUMBERS[2], "message": "heure"}
    body = bulk_ok(NUMBERS, **{NUMBERS[1]: stop, NUMBERS[2]: late})
    _, handler = recorder(reply(body))
    answers = driver(handler).send_batch([sms(n, n) for n in NUMBERS], "dwbt", lambda: None)
    assert isinstance(answers[0], SendOutcome)
    assert isinstance(answers[1], RecipientRejectedError) and answers[1].provider_code == "14"
    assert isinstance(answers[2], DeferredError) and answers[2].provider_code == "22"


def test_a_whole_send_refused_for_one_number_asks_again_per_entry() -> None:
    _, handler = recorder(reply({"success": False, "code": 14, "message": "STOP"}, 400))
    answers = driver(handler).send_batch([sms(n) for n in NUMBERS], "dwbt", lambda: None)
    assert answers == [None, None, None]


def test_a_whole_bulk_refused_for_one_entry_asks_again_one_by_one() -> None:
    _, handler = recorder(reply({"success": False, "code": 14, "message": "STOP"}))
    answers = driver(handler).send_batch([sms(n, n) for n in NUMBERS], "dwbt", lambda: None)
    assert answers == [None, None, None]


@pytest.mark.parametrize(
    ("code", "kind"), [(11, AccountBlockedError), (10, DeliveryError), (500, TransientError)]
)
def test_a_refusal_of_the_request_is_raised_for_all(code: int, kind: type[DeliveryError]) -> None:
    _, handler = recorder(reply({"success": False, "code": code, "message": "non"}))
    messages = [sms(NUMBERS[0])]  # one entry: nothing to ask again per entry
    with pytest.raises(kind):
        driver(handler).send_batch(messages, "dwbt", lambda: None)


def test_an_entry_the_answer_does_not_account_for_is_unknown_for_that_message_only() -> None:
    body = bulk_ok(NUMBERS[:2])  # the third number is missing
    body["SMSResponse_List"].append(dict(body["SMSResponse_List"][0]))  # the first twice
    _, handler = recorder(reply(body))
    answers = driver(handler).send_batch([sms(n, n) for n in NUMBERS], "dwbt", lambda: None)
    assert isinstance(answers[0], UnknownOutcomeError)
    assert isinstance(answers[1], SendOutcome)
    assert isinstance(answers[2], UnknownOutcomeError)


def test_national_numbers_in_the_answer_match() -> None:
    body = bulk_ok(["0612000001"])
    _, handler = recorder(reply(body))
    answers = driver(handler).send_batch([sms(NUMBERS[0], "x")], "dwbt", lambda: None)
    assert isinstance(answers[0], SendOutcome)


# -- reconciliation by the batch's tag -----------------------------------------------------


def test_reconcile_finds_the_message_under_its_batch_tag() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.params["tag"] == "dwbfirst":
            return reply({"success": True, "code": 200, "StatutResponse_List": [], "total": 0})
        items = [{"phoneNumber": n, "status": "Waiting"} for n in NUMBERS]
        return reply(
            {"success": True, "code": 200, "message_id": "77", "StatutResponse_List": items}
        )

    ctx = SendContext(
        delivery_id="d1", idempotency_key="d1", tag="dwown", batch_tags=("dwbfirst", "dwblast")
    )
    found = driver(handler).reconcile(sms(NUMBERS[1]), ctx)
    assert found is not None and found.provider_message_ids == {NUMBERS[1]: "77"}
    assert [r.url.params["tag"] for r in seen] == ["dwblast"]  # newest first


def test_reconcile_not_under_any_batch_tag_asks_the_delivery_tag_too() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        other = [{"phoneNumber": "+33699999999", "status": "Waiting"}]
        return reply({"success": True, "code": 200, "StatutResponse_List": other, "total": 1})

    ctx = SendContext(delivery_id="d1", idempotency_key="d1", tag="dwown", batch_tags=("dwb1",))
    assert driver(handler).reconcile(sms(NUMBERS[0]), ctx) is None
    assert [r.url.params["tag"] for r in seen] == ["dwb1", "dwown"]


def test_reconcile_with_more_pages_than_read_stays_unknown() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        other = [{"phoneNumber": "+33699999999"}]
        return reply({"success": True, "code": 200, "StatutResponse_List": other, "total": 900})

    ctx = SendContext(delivery_id="d1", idempotency_key="d1", batch_tags=("dwb1",))
    with pytest.raises(UnknownOutcomeError):
        driver(handler).reconcile(sms(NUMBERS[0]), ctx)


# -- hostile answers -----------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 1000),
    st.text(max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
entry = st.fixed_dictionaries(
    {},
    optional={
        "success": st.one_of(st.booleans(), scalars),
        "code": st.one_of(st.sampled_from([200, 14, 22, 9, 500, 11, "200", "14"]), scalars),
        "phoneNumber": st.one_of(st.sampled_from([*NUMBERS, "0612000001"]), scalars),
        "cost": scalars,
        "message": scalars,
    },
)
bulk_bodies = st.fixed_dictionaries(
    {},
    optional={
        "success": st.one_of(st.just(True), scalars),
        "code": st.one_of(st.sampled_from([200, 14, 11, 500]), scalars),
        "message_id": st.one_of(st.integers(1, 10**6), scalars, json_values),
        "currency": scalars,
        "SMSResponse_List": st.one_of(
            st.lists(st.one_of(entry, json_values), max_size=6), json_values
        ),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(bulk_bodies, json_values), status=st.sampled_from([200, 201, 400, 500, 503]))
def test_hostile_bulk_answers_are_classified_per_message(body: Any, status: int) -> None:
    _, handler = recorder(httpx.Response(status, json=body))
    messages = [sms(n, n) for n in NUMBERS]
    try:
        answers = driver(handler).send_batch(messages, "dwbt", lambda: None)
    except DeliveryError:
        return  # a refusal or unreadable answer of the whole request: classified
    assert len(answers) == len(messages)
    for number, answer in zip(NUMBERS, answers, strict=True):
        assert answer is None or isinstance(answer, (SendOutcome, DeliveryError))
        if isinstance(answer, SendOutcome):
            # Accepted only on a success envelope, with an id, for this message's number.
            assert isinstance(body, dict) and body.get("success") is True
            assert list(answer.provider_message_ids) == [number]
            assert all(answer.provider_message_ids.values())


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200), status=st.sampled_from([200, 400, 502]))
def test_non_json_bulk_answers_are_classified(raw: bytes, status: int) -> None:
    _, handler = recorder(httpx.Response(status, content=raw))
    try:
        answers = driver(handler).send_batch([sms(n, n) for n in NUMBERS], "dwbt", lambda: None)
    except DeliveryError as exc:
        try:
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        if not isinstance(parsed, dict):
            # Unreadable: a 2xx may have been accepted (reconcile, never resend blindly).
            expected = UnknownOutcomeError if status == 200 else TransientError
            assert isinstance(exc, expected)
        return
    assert len(answers) == 3
