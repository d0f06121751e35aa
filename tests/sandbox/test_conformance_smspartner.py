"""SMS Partner conformance: the sandbox against docs/providers/smspartner.md §1, one rule per test.

Each test names the section its rule comes from; the sandbox must be at least as strict as the
documentation, with no convenience fields a real provider does not send.
"""

from __future__ import annotations

import time

import httpx
import pytest

BASE = "/smspartner/v1"
KEY = "sandbox-smspartner-key"
N1, N2 = "+33600000001", "+33600000002"


def post(client, command, **fields):
    return client.post(f"{BASE}/{command}", json={"apiKey": KEY, **fields})


def get(client, command, **params):
    return client.get(f"{BASE}/{command}", params={"apiKey": KEY, **params}).json()


def send(client, **fields):
    fields = {"phoneNumbers": f"{N1},{N2}", "message": "Hello", **fields}
    return post(client, "send", **fields).json()


# -- docs/providers/smspartner.md §1.1 transport and authentication --------------------------------


def test_api_key_in_the_body_for_post_and_the_query_for_get(client):
    # docs/providers/smspartner.md §1.1: no auth header; apiKey in the JSON body (POST) or the query
    # string (GET).
    assert send(client)["success"] is True
    assert get(client, "me")["success"] is True
    no_key = client.post(f"{BASE}/send", json={"phoneNumbers": N1, "message": "x"}).json()
    # docs/providers/smspartner.md §1.3 code 1
    assert (no_key["success"], no_key["code"]) == (False, 1)
    wrong = client.get(f"{BASE}/me", params={"apiKey": "nope"}).json()
    # docs/providers/smspartner.md §1.3 code 10
    assert (wrong["success"], wrong["code"]) == (False, 10)


# -- docs/providers/smspartner.md §1.2.2 send ------------------------------------------------------


def test_send_success_has_exactly_the_documented_fields(client):
    # docs/providers/smspartner.md §1.2.2 success fixture: success, code, message_id (an integer),
    # nb_sms, cost, currency.
    data = send(client)
    assert set(data) == {"success", "code", "message_id", "nb_sms", "cost", "currency"}
    assert isinstance(data["message_id"], int)


def test_validation_is_code_9_with_an_error_list_over_http_400(client):
    # docs/providers/smspartner.md §1.2.2 validation fixture (served with HTTP 400 in the Go
    # client's test).
    response = post(client, "send", phoneNumbers="922264", message="")
    assert response.status_code == 400
    data = response.json()
    assert (data["success"], data["code"]) == (False, 9)
    assert {e["elementId"] for e in data["error"]} == {
        "children[phoneNumbers].data",
        "children[message].data",
    }


@pytest.mark.parametrize("tag", ["Upper", "with space", "x" * 21])
def test_tag_is_at_most_20_lowercase_characters_without_spaces(client, tag):
    # docs/providers/smspartner.md §1.2.2: tag <= 20 characters, no spaces, lowercase.
    response = post(client, "send", phoneNumbers=N1, message="x", tag=tag)
    assert response.json()["code"] == 9
    assert response.json()["error"][0]["elementId"] == "children[tag].data"


@pytest.mark.parametrize(
    ("text", "unicode", "nb_sms"),
    [
        ("a" * 160, 0, 1),  # docs/providers/smspartner.md §1.2.2: 160 characters per SMS
        ("a" * 161, 0, 2),  # then 1 SMS per 153
        ("ê" * 70, 1, 1),  # docs/providers/smspartner.md §1.2.2 isUnicode: 70 characters per SMS
        ("ê" * 134, 1, 2),  # docs/providers/smspartner.md §1.6: 67 per part [INFERRED]
        ("ê" * 135, 1, 3),
        ("😀" * 35, 1, 1),  # UCS-2: an emoji is two code units
        ("😀" * 36, 1, 2),
    ],
)
def test_billing_by_segments_gsm_and_unicode(client, text, unicode, nb_sms):
    data = send(client, phoneNumbers=N1, message=text, isUnicode=unicode)
    assert data["nb_sms"] == nb_sms


def test_more_than_10_parts_is_code_52(client):
    # docs/providers/smspartner.md §1.3 code 52, docs/providers/smspartner.md §1.6: more than 10
    # concatenated SMS.
    assert send(client, message="a" * (153 * 10 + 1))["code"] == 52


def test_more_than_500_numbers_is_refused(client):
    # docs/providers/smspartner.md §1.2.2: max 500 numbers per request.
    numbers = ",".join(f"+336{i:08d}" for i in range(501))
    assert send(client, phoneNumbers=numbers)["code"] == 9


@pytest.mark.parametrize(("number", "code"), [("+33600000022", 22), ("+33600000023", 23)])
def test_marketing_window_refusals_are_codes_22_and_23(client, messages, number, code):
    # docs/providers/smspartner.md §1.2.2 legal window, docs/providers/smspartner.md §1.3 codes
    # 22/23 (sandbox magic numbers): nothing sent or charged.
    before = get(client, "me")["credits"]["creditSms"]
    data = send(client, phoneNumbers=f"{N1},{number}")
    assert (data["success"], data["code"]) == (False, code)
    assert messages("smspartner") == []
    assert get(client, "me")["credits"]["creditSms"] == before


def test_stop_listed_number_is_code_14(client):
    # docs/providers/smspartner.md §1.2.12: sending to a STOP-listed number gives code 14.
    assert send(client, phoneNumbers="+33600000014")["code"] == 14


def test_insufficient_credit_is_code_11(client, set_balance):
    # docs/providers/smspartner.md §1.3 code 11, docs/providers/smspartner.md §1.6: credits < cost.
    set_balance("smspartner", 1)
    assert send(client)["code"] == 11


# -- docs/providers/smspartner.md §1.2.3 bulk send -------------------------------------------------


def test_bulk_send_answers_per_item_with_its_own_key_casing(client, messages):
    # docs/providers/smspartner.md §1.2.3: nbSMS at the top level, nbSms per item; per-item
    # success/code (partial failure).
    response = post(
        client,
        "bulk-send",
        tag="lot1",
        SMSList=[
            {"phoneNumber": "0600000001", "message": "msg 0"},
            {"phoneNumber": "0600000014", "message": "msg 1"},  # STOP list: code 14
            {"phoneNumber": "0600000002", "message": "a" * 161},
        ],
    )
    data = response.json()
    assert set(data) == {
        "success",
        "code",
        "message_id",
        "currency",
        "cost",
        "nbSMS",
        "SMSResponse_List",
    }
    assert (data["success"], data["code"], data["nbSMS"]) == (True, 200, 3)
    assert data["cost"] == pytest.approx(3 * 0.038)
    first, stopped, long = data["SMSResponse_List"]
    assert first == {"success": True, "code": 200, "nbSms": 1, "cost": 0.038, "phoneNumber": N1}
    assert (stopped["success"], stopped["code"]) == (False, 14)
    assert (long["nbSms"], long["phoneNumber"]) == (2, N2)
    [recorded] = messages("smspartner")
    assert recorded["recipients"] == [N1, N2]
    assert recorded["tag"] == "lot1"


def test_bulk_send_takes_at_most_500_entries(client):
    # docs/providers/smspartner.md §1.2.3: "par lot de 500".
    entries = [{"phoneNumber": f"+336{i:08d}", "message": "x"} for i in range(501)]
    assert post(client, "bulk-send", SMSList=entries).json()["code"] == 9


def test_bulk_send_status_by_tag_lists_its_accepted_numbers(client):
    post(
        client,
        "bulk-send",
        tag="lot2",
        SMSList=[{"phoneNumber": N1, "message": "a"}, {"phoneNumber": N2, "message": "b"}],
    )
    found = get(client, "bulk-status-by-tag", tag="lot2")
    assert [i["phoneNumber"] for i in found["StatutResponse_List"]] == [N1, N2]


# -- docs/providers/smspartner.md §1.2.7-§1.2.10 status lookups: the documented shapes only --------


def test_message_status_shape(client):
    # docs/providers/smspartner.md §1.2.7: "statut" (French), messageId as a string.
    message_id = send(client)["message_id"]
    data = get(client, "message-status", messageId=message_id, phoneNumber=N1)
    assert set(data) == {
        "success",
        "code",
        "number",
        "messageId",
        "stopSms",
        "date",
        "statut",
        "cost",
        "countryCode",
        "currency",
    }
    assert data["messageId"] == str(message_id)


def test_multi_status_shape(client):
    # docs/providers/smspartner.md §1.2.8: SMSStatut_List in; StatutResponse_List out, "status" (not
    # "statut") per item.
    message_id = send(client)["message_id"]
    data = post(
        client,
        "multi-status",
        SMSStatut_List=[
            {"phoneNumber": N1, "messageId": message_id},
            {"phoneNumber": "+33699999992", "messageId": 1000},
        ],
    ).json()
    assert set(data) == {"success", "code", "StatutResponse_List"}
    found, missing = data["StatutResponse_List"]
    assert set(found) == {
        "success",
        "code",
        "phoneNumber",
        "messageId",
        "status",
        "date",
        "stopSms",
        "isSpam",
    }
    assert set(missing) == {"success", "code", "phoneNumber", "messageId", "status"}
    assert (missing["success"], missing["code"]) == (False, 4)


def test_bulk_status_shape(client):
    # docs/providers/smspartner.md §1.2.9: message_id at the top level (a string); items
    # phoneNumber, status, stopSMS, date.
    message_id = send(client)["message_id"]
    data = get(client, "bulk-status", messageId=message_id)
    assert set(data) == {"success", "code", "message_id", "StatutResponse_List"}
    assert data["message_id"] == str(message_id)
    for item in data["StatutResponse_List"]:
        assert set(item) == {"phoneNumber", "status", "stopSMS", "date"}
        assert item["date"].isdigit()  # epoch seconds, as a string


def test_bulk_status_by_tag_shape(client):
    # docs/providers/smspartner.md §1.2.10: the docs/providers/smspartner.md §1.2.9 answer plus
    # currentPage and total.
    send(client, tag="conf")
    data = get(client, "bulk-status-by-tag", tag="conf")
    assert set(data) == {
        "success",
        "code",
        "message_id",
        "StatutResponse_List",
        "currentPage",
        "total",
    }
    assert (data["currentPage"], data["total"]) == (1, 2)
    for item in data["StatutResponse_List"]:
        assert set(item) == {"phoneNumber", "status", "stopSMS", "date"}


# -- docs/providers/smspartner.md §1.5 late acceptance ---------------------------------------------


def test_a_send_can_be_accepted_after_the_client_gave_up(client, set_faults):
    # docs/providers/smspartner.md §1.5: a status-by-tag check right after a timeout can see nothing
    # yet; the send shows up later (fault "timeout": the provider waits, then processes).
    set_faults({"provider": "smspartner", "path": "/send", "action": "timeout", "delay_ms": 600})
    payload = {"apiKey": KEY, "phoneNumbers": N1, "message": "x", "tag": "late1"}
    with pytest.raises(httpx.ReadTimeout):
        client.post(f"{BASE}/send", json=payload, timeout=0.2)
    assert get(client, "bulk-status-by-tag", tag="late1")["StatutResponse_List"] == []
    time.sleep(0.8)
    later = get(client, "bulk-status-by-tag", tag="late1")["StatutResponse_List"]
    assert [i["phoneNumber"] for i in later] == [N1]


def test_bulk_send_refuses_magic_numbers_per_entry(client, messages):
    # docs/providers/smspartner.md §1.2.3 per-item success/code, with the
    # docs/providers/smspartner.md §1.3 codes [INFERRED]: a marketing refusal (22) and the queue
    # failure (500) refuse their own entry only; the others are accepted and billed.
    response = post(
        client,
        "bulk-send",
        tag="lot3",
        SMSList=[
            {"phoneNumber": "+33600000022", "message": "promo"},
            {"phoneNumber": N1, "message": "a"},
            {"phoneNumber": "+33600000500", "message": "b"},
        ],
    )
    data = response.json()
    assert (data["success"], data["code"], data["nbSMS"]) == (True, 200, 1)
    codes = [(i["success"], i["code"]) for i in data["SMSResponse_List"]]
    assert codes == [(False, 22), (True, 200), (False, 500)]
    [recorded] = messages("smspartner")
    assert recorded["recipients"] == [N1]


def test_bulk_send_with_no_entry_accepted_answers_the_first_entrys_code(client, messages):
    # [INFERRED] (sandbox rule): nothing accepted → the request is refused with the first entry's
    # code and no per-item list; nothing is recorded or billed.
    response = post(
        client,
        "bulk-send",
        SMSList=[
            {"phoneNumber": "0600000014", "message": "a"},
            {"phoneNumber": "+33600000022", "message": "b"},
        ],
    )
    data = response.json()
    assert (data["success"], data["code"]) == (False, 14)
    assert "SMSResponse_List" not in data
    assert messages("smspartner") == []
