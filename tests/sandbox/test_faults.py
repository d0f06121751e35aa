"""The fault plan: injected statuses, latency, timeouts, resets and accepted-then-dropped sends."""

from __future__ import annotations

import time

import httpx
import pytest

EM_SEND = "/emailmassivo/api/v1/external-mails/send"
EM_HEADERS = {"X-Api-Key": "sandbox-emailmassivo-key"}
SMS = "/smspartner/v1"
SMS_KEY = "sandbox-smspartner-key"


def em_send(client, subject="Hi", **kwargs):
    mail = {
        "to": {"email": "ann@example.com"},
        "from": {"email": "app@example.test"},
        "subject": subject,
        "text": "hello",
    }
    return client.post(EM_SEND, json={"mail": mail}, headers=EM_HEADERS, **kwargs)


def sms_send(client, tag="t1", **kwargs):
    payload = {"apiKey": SMS_KEY, "phoneNumbers": "0600000001", "message": "Hi", "tag": tag}
    return client.post(f"{SMS}/send", json=payload, **kwargs)


def test_status_503_for_the_first_n_requests(client, set_faults, requests_of):
    set_faults(
        {
            "provider": "emailmassivo",
            "action": "status",
            "status": 503,
            "retry_after": 2,
            "first_n": 2,
        }
    )
    responses = [em_send(client, subject=f"s{i}") for i in range(3)]

    assert [r.status_code for r in responses] == [503, 503, 200]
    assert responses[0].json() == {"message": "Service Unavailable", "statusCode": 503}
    assert responses[0].headers["Retry-After"] == "2"
    records = requests_of("emailmassivo")
    assert [(r["outcome"], r["fault"]) for r in records] == [
        ("fault", "status"),
        ("fault", "status"),
        ("accepted", None),
    ]
    [rule] = client.get("/_admin/faults").json()["rules"]
    assert (rule["seen"], rule["applied"]) == (3, 2)


def test_injected_status_uses_each_provider_error_shape(client, set_faults):
    set_faults({"provider": "*", "action": "status", "status": 500})

    sms = sms_send(client)
    assert (sms.status_code, sms.json()) == (500, {"success": False, "code": 500})
    postal = client.post("/postal/api/v1/send/message", json={})
    assert postal.status_code == 500
    assert postal.headers["content-type"].startswith("text/html")
    assert "500 Internal Server Error" in postal.text
    voice = client.get("/voicepartner/v1/me/x")
    assert (voice.status_code, voice.json()) == (500, {"success": False, "code": 500})


def test_faulted_requests_count_in_the_rate_window(make_sandbox):
    # The provider's throttler sees every attempt, including one an injected fault answers.
    # (Until now faulted requests were not counted.)
    sandbox = make_sandbox(limits={"emailmassivo_per_s": 1})
    with httpx.Client(base_url=sandbox.url) as client:
        client.post(
            "/_admin/faults",
            json={"rules": [{"provider": "emailmassivo", "action": "status", "first_n": 1}]},
        )
        assert em_send(client).status_code == 503
        assert em_send(client).status_code == 429
        client.post(
            "/_admin/faults",
            json={"rules": [{"provider": "emailmassivo", "action": "reset", "first_n": 1}]},
        )
        time.sleep(1.1)
        with pytest.raises(httpx.ReadError):
            em_send(client, subject="reset")
        assert em_send(client, subject="after").status_code == 429


def test_latency_delays_a_normal_answer(client, set_faults):
    set_faults({"provider": "smspartner", "action": "latency", "delay_ms": 150})
    started = time.monotonic()
    response = sms_send(client)
    assert time.monotonic() - started >= 0.15
    assert response.json()["success"] is True


def test_timeout_waits_first_then_the_provider_accepts_after_the_client_gave_up(
    client, set_faults, messages, requests_of
):
    set_faults({"provider": "smspartner", "path": "/send", "action": "timeout", "delay_ms": 800})
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        sms_send(client, tag="late", timeout=0.2)
    # The client gave up at 0.2 s; the provider has not processed the send yet (late acceptance).
    assert messages("smspartner") == []
    deadline = started + 5
    while not messages("smspartner") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert time.monotonic() - started >= 0.8
    assert [m["tag"] for m in messages("smspartner")] == ["late"]
    [record] = requests_of("smspartner")
    assert (record["outcome"], record["fault"]) == ("accepted", "timeout")


def test_reset_aborts_the_connection_before_processing(client, set_faults, messages, requests_of):
    set_faults({"provider": "emailmassivo", "action": "reset", "first_n": 1})
    with pytest.raises(httpx.ReadError):  # ECONNRESET: the request was sent, then RST
        em_send(client)
    assert messages("emailmassivo") == []
    [record] = requests_of("emailmassivo")
    assert (record["status"], record["outcome"], record["fault"]) == (None, "fault", "reset")
    assert em_send(client).status_code == 200  # a new connection works again


def test_accept_then_drop_keeps_the_message(client, set_faults, messages, requests_of):
    set_faults(
        {"provider": "smspartner", "path": "/send", "action": "accept_then_drop", "first_n": 1}
    )
    with pytest.raises(httpx.RemoteProtocolError):
        sms_send(client, tag="lost")

    [message] = messages("smspartner")
    assert message["tag"] == "lost"
    [record] = requests_of("smspartner")
    assert (record["status"], record["outcome"], record["fault"]) == (
        None,
        "accepted",
        "accept_then_drop",
    )
    # The documented way to reconcile: status by tag finds the accepted send
    # (docs/providers/smspartner.md §1.5).
    found = client.get(
        f"{SMS}/bulk-status-by-tag", params={"apiKey": SMS_KEY, "tag": "lost"}
    ).json()
    assert found["message_id"] == message["message_id"]


def test_every_nth_and_path_matching(client, set_faults):
    set_faults({"provider": "smspartner", "path": "/send", "action": "status", "every_nth": 3})
    statuses = [sms_send(client, tag=f"t{i}").status_code for i in range(6)]
    me = client.get(f"{SMS}/me", params={"apiKey": SMS_KEY})
    assert statuses == [200, 200, 503, 200, 200, 503]
    assert me.status_code == 200  # /me does not end with /send


def _pattern(client, seed):
    client.post("/_admin/reset")
    client.post(
        "/_admin/faults",
        json={
            "rules": [{"provider": "smspartner", "action": "status", "fraction": 0.5, "seed": seed}]
        },
    )
    return [client.get(f"{SMS}/me", params={"apiKey": SMS_KEY}).status_code for _ in range(20)]


def test_fraction_is_reproducible_with_a_seed(client):
    first = _pattern(client, 7)
    assert first == _pattern(client, 7)
    assert 0 < first.count(503) < 20
    assert first != _pattern(client, 8)


def test_invalid_rules_are_refused_and_faults_can_be_cleared(client, set_faults):
    bad = client.post(
        "/_admin/faults", json={"rules": [{"provider": "nobody", "action": "status"}]}
    )
    assert bad.status_code == 400
    assert "provider" in bad.json()["error"]
    two_selectors = {"action": "reset", "first_n": 1, "fraction": 0.5}
    assert client.post("/_admin/faults", json={"rules": [two_selectors]}).status_code == 400

    set_faults({"provider": "smspartner", "action": "status"})
    assert client.delete("/_admin/faults").json() == {"rules": []}
    assert sms_send(client).status_code == 200
