"""SMS Partner driver: the wire format of docs/providers/smspartner.md §1, against a MockTransport
fake."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeferredError,
    DeliveryError,
    PermanentError,
    RecipientRejectedError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import SmsMessage
from worker.providers.base import SendContext
from worker.providers.partner import PROVIDER_TZ, next_marketing_slot
from worker.providers.smspartner import SMS_CODES, SmsPartnerDriver, encode_text

from .driver_support import Handler, mock_client, recorder

API_KEY = "smspartner-test-key-c81f"
BASE = "http://sandbox.test/prefix/smspartner/v1"
CTX = SendContext(delivery_id="dlv-0004", idempotency_key="idem-0004", tag="dwabc123")
NUMBERS = ["+33612345678", "+33698765432"]

# docs/providers/smspartner.md §1.2.2, success and validation-error fixtures (the latter served with
# HTTP 400).
SUCCESS = {
    "success": True,
    "code": 200,
    "message_id": 307,
    "nb_sms": 1,
    "cost": 0.038,
    "currency": "EUR",
}
VALIDATION = {
    "success": False,
    "code": 9,
    "error": [
        {"elementId": "children[message].data", "message": "Le message est requis"},
        {
            "elementId": "children[sender].data",
            "message": "L'emetteur ne peut pas etre plus long que 11 caracteres",
        },
    ],
}
# docs/providers/smspartner.md §1.2.1, both shapes.
ME_DOC = {
    "success": True,
    "code": 200,
    "user": {"username": "example@email.com", "firstname": "John", "lastname": "Doe"},
    "credits": {
        "creditSms": 269082,
        "creditSmsECO": 444570,
        "creditHlr": 2045023,
        "toSend": 0,
        "balance": "10225.119",
        "currency": "EUR",
    },
}
ME_GO: dict[str, Any] = {
    "code": 200,
    "credits": {
        "balance": "0.900",
        "creditHlr": 180,
        "creditSms": 20,
        "creditSmsLowCost": 37,
        "currency": "EUR",
        "solde": "0.900",
        "toSend": 0,
    },
    "success": True,
    "user": {"username": "example@gmail.com"},
}


def make_driver(handler: Handler, base_url: str | None = BASE) -> SmsPartnerDriver:
    client = mock_client(handler)
    return SmsPartnerDriver(client, api_key=API_KEY, base_url=base_url)


def message(**overrides: Any) -> SmsMessage:
    data: dict[str, Any] = {"to": NUMBERS, "text": "Votre code: 1234"}
    data.update(overrides)
    return SmsMessage.model_validate(data)


# -- request shape ----------------------------------------------------------------------------


def test_send_request_shape() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    msg = message(text='Total 5€\nMerci "Bob"', sender="MyShop", tag="user-tag")
    make_driver(handler).send(msg, CTX)

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://sandbox.test/prefix/smspartner/v1/send"
    assert request.headers["Cache-Control"] == "no-cache"
    assert request.url.params.get("apiKey") is None
    assert json.loads(request.content) == {
        "apiKey": API_KEY,
        "phoneNumbers": "+33612345678,+33698765432",
        "message": 'Total 5:euro::br:Merci "Bob"',
        "sender": "MyShop",
        # The caller's tag reaches the provider as set (docs/providers/smspartner.md §1.2.2); the
        # service then reconciles by it with the stricter rules for shared tags (was: replaced by
        # the delivery's tag).
        "tag": "user-tag",
    }


def test_message_tag_is_used_without_a_delivery_tag() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    ctx = SendContext(delivery_id="d", idempotency_key="k")
    make_driver(handler).send(message(tag="user-tag"), ctx)
    body = json.loads(seen[0].content)
    assert body["tag"] == "user-tag"
    assert "sender" not in body


def test_default_base_url() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    make_driver(handler, base_url=None).send(message(), CTX)
    assert str(seen[0].url) == "https://api.smspartner.fr/v1/send"


def test_encode_text_markup() -> None:
    assert encode_text("a\r\nb\nc €") == "a:br:b:br:c :euro:"


# -- success ------------------------------------------------------------------------------------


def test_success_maps_message_id_per_number() -> None:
    _, handler = recorder(httpx.Response(200, json=SUCCESS))
    outcome = make_driver(handler).send(message(), CTX)
    assert outcome.provider_message_ids == {"+33612345678": "307", "+33698765432": "307"}
    assert outcome.cost == 0.038
    assert outcome.currency == "EUR"


def test_scheduled_success_fixture() -> None:
    body = {**SUCCESS, "message_id": 2270142, "scheduledDeliveryDate": "2018-08-18 20:00:00"}
    _, handler = recorder(httpx.Response(200, json=body))
    outcome = make_driver(handler).send(message(), CTX)
    assert set(outcome.provider_message_ids.values()) == {"2270142"}


def test_success_without_message_id_is_an_unknown_outcome() -> None:
    _, handler = recorder(httpx.Response(200, json={"success": True, "code": 200}))
    with pytest.raises(UnknownOutcomeError):
        make_driver(handler).send(message(), CTX)


# -- errors (docs/providers/smspartner.md §1.3) ----------------------------------------------------

EXPECTED_CLASS: dict[int, type[DeliveryError]] = {
    **{code: PermanentError for code in SMS_CODES},
    1: ConfigurationError,
    3: ConfigurationError,
    10: ConfigurationError,
    20: ConfigurationError,
    30: ConfigurationError,
    40: ConfigurationError,
    96: ConfigurationError,
    11: AccountBlockedError,
    14: RecipientRejectedError,
    22: DeferredError,
    23: DeferredError,
    429: ThrottledError,
    500: TransientError,
}


def test_code_table_covers_the_reference() -> None:
    documented = {1, 2, 4, 9, 10, 11, 13, 14, 15, 20, 22, 23, 30, 40, 42, 43, 44}
    documented |= {45, 46, 47, 48, 49, 50, 51, 52, 55, 90, 96, 500, 992}
    assert documented <= set(SMS_CODES)


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED_CLASS.items()))
def test_code_classes(code: int, expected: type[DeliveryError]) -> None:
    body = {"success": False, "code": code, "message": f"texte {code}"}
    _, handler = recorder(httpx.Response(200, json=body))
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).send(message(), CTX)
    assert type(info.value) is expected
    assert info.value.provider_code == str(code)
    assert f"texte {code}" in info.value.message


def test_validation_fixture_with_http_400() -> None:
    _, handler = recorder(httpx.Response(400, json=VALIDATION))
    with pytest.raises(PermanentError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.provider_code == "9"
    assert info.value.status_code == 400
    assert "children[message].data: Le message est requis" in info.value.message


def test_errors_key_variant_is_accepted() -> None:
    body = {"success": False, "code": 9, "errors": VALIDATION["error"]}
    _, handler = recorder(httpx.Response(400, json=body))
    with pytest.raises(PermanentError, match="Le message est requis"):
        make_driver(handler).send(message(), CTX)


def test_code_as_string_is_read() -> None:
    _, handler = recorder(httpx.Response(200, json={"success": False, "code": "11"}))
    with pytest.raises(AccountBlockedError):
        make_driver(handler).send(message(), CTX)


def test_simple_error_shape() -> None:
    body = {"success": False, "code": 10, "message": "Clé API incorrecte"}
    _, handler = recorder(httpx.Response(200, json=body))
    with pytest.raises(ConfigurationError, match="Clé API incorrecte"):
        make_driver(handler).send(message(), CTX)


@pytest.mark.parametrize("code", [22, 23])
def test_marketing_window_codes_defer_this_message_to_the_next_slot(code: int) -> None:
    # docs/providers/smspartner.md §1.3 codes 22/23 are "deferrable"
    # (docs/providers/smspartner.md §1.2.2: held until the next business day at 08:00): not a
    # provider-wide throttle (was ThrottledError with a 60 s Retry-After).
    _, handler = recorder(httpx.Response(200, json={"success": False, "code": code}))
    before = time.time()
    with pytest.raises(DeferredError) as info:
        make_driver(handler).send(message(), CTX)
    error = info.value
    assert error.kind == "deferred" and error.provider_code == str(code)
    assert error.retry_after_s is None
    slot = datetime.fromtimestamp(error.not_before, PROVIDER_TZ)
    assert before < error.not_before <= before + 3 * 24 * 3600
    assert (slot.hour, slot.minute, slot.second) == (8, 0, 0)
    assert slot.weekday() != 6  # never a Sunday


# -- balance ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "credits"), [(ME_DOC, 269082.0), (ME_GO, 20.0)])
def test_check_balance(body: dict[str, Any], credits: float) -> None:
    seen, handler = recorder(httpx.Response(200, json=body))
    balance = make_driver(handler).check_balance()
    assert balance is not None
    assert balance.has_credit is True
    assert balance.credits == credits
    assert balance.currency == "EUR"
    (request,) = seen
    assert request.method == "GET"
    assert request.url.path == "/prefix/smspartner/v1/me"
    assert request.url.params["apiKey"] == API_KEY


def test_check_balance_empty_account() -> None:
    body = {**ME_GO, "credits": {**ME_GO["credits"], "creditSms": 0}}
    _, handler = recorder(httpx.Response(200, json=body))
    balance = make_driver(handler).check_balance()
    assert balance is not None and balance.has_credit is False


def test_check_balance_without_credits_object() -> None:
    _, handler = recorder(httpx.Response(200, json={"success": True, "code": 200}))
    with pytest.raises(TransientError):
        make_driver(handler).check_balance()


# -- reconcile (docs/providers/smspartner.md §1.2.10, §1.5) ----------------------------------------

BY_TAG = {
    "success": True,
    "code": 200,
    "message_id": "111",
    "StatutResponse_List": [
        {
            "phoneNumber": "+33612345678",
            "status": "Delivered",
            "stopSMS": False,
            "date": "1517989111",
        }
    ],
    "currentPage": 1,
    "total": 1,
}


def test_reconcile_finds_an_earlier_send_by_tag() -> None:
    seen, handler = recorder(httpx.Response(200, json=BY_TAG))
    driver = make_driver(handler)
    assert driver.supports_reconcile is True
    found = driver.reconcile(message(), CTX)
    assert found is not None
    assert found.provider_message_ids == {"+33612345678": "111"}
    (request,) = seen
    assert request.method == "GET"
    assert request.url.path == "/prefix/smspartner/v1/bulk-status-by-tag"
    assert request.url.params["apiKey"] == API_KEY
    assert request.url.params["tag"] == "dwabc123"


def test_reconcile_prefers_item_message_ids() -> None:
    body = {
        **BY_TAG,
        "StatutResponse_List": [{"phoneNumber": "+33698765432", "messageId": 9, "status": "x"}],
    }
    _, handler = recorder(httpx.Response(200, json=body))
    found = make_driver(handler).reconcile(message(), CTX)
    assert found is not None and found.provider_message_ids == {"+33698765432": "9"}


def test_reconcile_empty_list_means_nothing_was_accepted() -> None:
    body = {**BY_TAG, "StatutResponse_List": [], "total": 0}
    _, handler = recorder(httpx.Response(200, json=body))
    assert make_driver(handler).reconcile(message(), CTX) is None


def test_reconcile_without_tag_asks_nothing() -> None:
    seen, handler = recorder(httpx.Response(200, json=BY_TAG))
    ctx = SendContext(delivery_id="d", idempotency_key="k")
    assert make_driver(handler).reconcile(message(), ctx) is None
    assert seen == []


def test_reconcile_errors_are_classified() -> None:
    _, handler = recorder(httpx.Response(502, html="<html>bad gateway</html>"))
    with pytest.raises(TransientError):
        make_driver(handler).reconcile(message(), CTX)


# -- hostile answers ----------------------------------------------------------------------------

HUGE = b'{"success":true,"code":200,"message_id":"' + b"9" * (2 * 1024 * 1024) + b'"}'


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(
            httpx.Response(502, html="<html><h1>502 Bad Gateway</h1></html>"),
            TransientError,
            id="html-502",
        ),
        pytest.param(
            httpx.Response(200, content=b'{"success":true,"code":200,"message_id":3'),
            UnknownOutcomeError,
            id="truncated-json-200",
        ),
        pytest.param(httpx.Response(200, json=[SUCCESS]), UnknownOutcomeError, id="array"),
        pytest.param(
            httpx.Response(200, json={"success": "yes", "code": 200, "message_id": 1}),
            UnknownOutcomeError,
            id="success-yes",
        ),
        pytest.param(
            httpx.Response(200, json={"success": True, "code": 200, "message_id": True}),
            UnknownOutcomeError,
            id="bool-id",
        ),
        pytest.param(
            httpx.Response(200, json={"success": False, "code": 1.5}),
            UnknownOutcomeError,
            id="float-code",
        ),
        pytest.param(httpx.Response(200, content=HUGE), UnknownOutcomeError, id="huge-body"),
        pytest.param(httpx.Response(401, text="Unauthorized"), TransientError, id="401-text"),
        pytest.param(httpx.Response(429, text="slow down"), ThrottledError, id="429-text"),
    ],
)
def test_hostile_answers_are_classified(
    response: httpx.Response, expected: type[DeliveryError]
) -> None:
    _, handler = recorder(response)
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).send(message(), CTX)
    assert type(info.value) is expected
    assert len(str(info.value)) < 1000


# -- unicode (docs/providers/smspartner.md §1.2.2) -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("Votre code: 1234 é à ü €", None),  # all GSM 7-bit (basic and extension tables)
        ("Ça coûte 5 €", 1),  # ê, û are not GSM 7-bit
        ("Merci 😀", 1),
        ("Привет", 1),
    ],
)
def test_text_outside_gsm7_is_sent_with_is_unicode(text: str, flag: int | None) -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    make_driver(handler).send(message(text=text), CTX)
    assert json.loads(seen[0].content).get("isUnicode") == flag


# -- marketing window: the next allowed slot (docs/providers/smspartner.md §1.2.2, §1.3 codes 22/23)
# -------------


def paris(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=PROVIDER_TZ).timestamp()


@pytest.mark.parametrize(
    ("now", "code", "slot"),
    [
        ("2025-03-12 21:30", 22, "2025-03-13 08:00"),  # Wednesday evening: tomorrow 08:00
        ("2025-03-12 06:15", 22, "2025-03-12 08:00"),  # Wednesday before 08:00: today
        ("2025-03-15 22:45", 22, "2025-03-17 08:00"),  # Saturday night: Monday (no Sundays)
        ("2025-03-16 11:00", 23, "2025-03-17 08:00"),  # Sunday: Monday
        ("2025-03-16 07:00", 22, "2025-03-17 08:00"),  # Sunday morning: Monday, not Sunday 08:00
        ("2025-05-01 10:00", 23, "2025-05-02 08:00"),  # a holiday (Thursday): the next day
        ("2025-03-29 21:00", 22, "2025-03-31 08:00"),  # across the switch to summer time
    ],
)
def test_next_marketing_slot(now: str, code: int, slot: str) -> None:
    assert next_marketing_slot(paris(now), code) == paris(slot)


# -- reconcile under a caller's tag (docs/providers/smspartner.md §1.2.10, §1.5) -------------------

SENT_AFTER = 1_700_000_000.0
CALLER_CTX = SendContext(
    delivery_id="dlv-0005",
    idempotency_key="k",
    tag="promo",
    tag_is_callers=True,
    sent_after=SENT_AFTER,
)


def by_tag(*items: tuple[str, object], message_id: str = "777") -> dict[str, Any]:
    listed = [
        {"phoneNumber": number, "status": "Waiting", "stopSMS": False, "date": date}
        for number, date in items
    ]
    return {
        "success": True,
        "code": 200,
        "message_id": message_id,
        "StatutResponse_List": listed,
        "currentPage": 1,
        "total": len(listed),
    }


def reconcile_with(body: dict[str, Any], ctx: SendContext = CALLER_CTX) -> Any:
    _, handler = recorder(httpx.Response(200, json=body))
    return make_driver(handler).reconcile(message(), ctx)


def test_caller_tag_send_found_when_every_number_is_listed_after_the_first_attempt() -> None:
    late = str(int(SENT_AFTER) + 40)
    found = reconcile_with(by_tag((NUMBERS[0], late), (NUMBERS[1], late)))
    assert found is not None
    assert found.provider_message_ids == {NUMBERS[0]: "777", NUMBERS[1]: "777"}


def test_caller_tag_older_sends_are_not_this_delivery() -> None:
    old = str(int(SENT_AFTER) - 3600)
    assert reconcile_with(by_tag((NUMBERS[0], old), (NUMBERS[1], old))) is None


def test_caller_tag_send_needs_every_number_and_a_readable_date() -> None:
    late = str(int(SENT_AFTER) + 5)
    assert reconcile_with(by_tag((NUMBERS[0], late))) is None  # one /send lists them all
    assert reconcile_with(by_tag((NUMBERS[0], late), (NUMBERS[1], "hier"))) is None


def test_caller_tag_date_in_paris_wall_time_is_read() -> None:
    # docs/providers/smspartner.md §1.2.7 shows dates as "Y-m-d H:i:s" too; Paris time is
    # [INFERRED].
    when = datetime.fromtimestamp(SENT_AFTER + 60, PROVIDER_TZ).strftime("%Y-%m-%d %H:%M:%S")
    assert reconcile_with(by_tag((NUMBERS[0], when), (NUMBERS[1], when))) is not None


def test_caller_tag_with_other_sends_listed_reports_no_foreign_id() -> None:
    late, old = str(int(SENT_AFTER) + 5), str(int(SENT_AFTER) - 600)
    found = reconcile_with(by_tag((NUMBERS[0], late), (NUMBERS[1], late), ("+33611111111", old)))
    assert found is not None
    assert found.provider_message_ids == {}  # the top-level id may be the other send's


def test_by_tag_answer_with_more_pages_is_not_a_not_found() -> None:
    body = {**by_tag(), "total": 3}
    with pytest.raises(UnknownOutcomeError, match="more pages"):
        reconcile_with(body)


def test_by_tag_code_4_means_nothing_under_the_tag() -> None:
    body = {"success": False, "code": 4, "message": "Message introuvable"}
    assert reconcile_with(body, CTX) is None
