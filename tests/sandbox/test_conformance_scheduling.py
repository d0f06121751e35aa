"""Scheduling and cancellation in the sandbox, as strict as the provider documentation.

- SMS Partner / Mail Partner: ``scheduledDeliveryDate`` (dd/mm/YYYY) + ``time`` + ``minute``
  (0-55 in steps of 5), read in Paris time ([INFERRED]: the provider docs give no zone; the same
  company's Voice Partner dates say Europe/Paris, docs/providers/voicepartner.md §3.2); a date in
  the past is refused (docs/providers/smspartner.md §1.2.2 fixture,
  docs/providers/smspartner.md §1.6), bad formats with their codes
  (docs/providers/smspartner.md §1.3 45-49 for mail); ``message-cancel`` refuses less than 5 minutes
  before the time (code 6, docs/providers/smspartner.md §1.2.6, docs/providers/mailpartner.md §2.2)
  and after it (7); a scheduled message is ``Waiting`` until its time, then delivered.
- Voice Partner: ``scheduledDate`` ``"YYYY-mm-dd H:m:00"`` (Paris time, [INFERRED]); a campaign
  can be cancelled until its time, not after (400, docs/providers/voicepartner.md §3.2).

The sandbox's clock (``Env.now``) is moved forward to reach a send's time without waiting.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from delivery_sandbox.providers import base as sandbox_base
from delivery_sandbox.providers.partner import PROVIDER_TZ

SMS, SMS_KEY = "/smspartner/v1", "sandbox-smspartner-key"
MAIL, MAIL_KEY = "/mailpartner/v1", "sandbox-mailpartner-key"
VOICE, VOICE_KEY = "/voicepartner/v1", "sandbox-voicepartner-key"


@pytest.fixture
def shift(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Move the sandbox's clock forward by ``seconds`` (real time still passes)."""
    offset = [0.0]
    monkeypatch.setattr(sandbox_base.Env, "now", lambda self: time.time() + offset[0])

    def move(seconds: float) -> None:
        offset[0] = seconds

    return move


def mark(minutes_ahead: int) -> datetime:
    """A 5-minute mark at least ``minutes_ahead`` minutes ahead, Paris wall-clock time."""
    t = datetime.now(PROVIDER_TZ) + timedelta(minutes=minutes_ahead)
    return t.replace(second=0, microsecond=0) + timedelta(minutes=(5 - t.minute % 5) % 5)


def fields(when: datetime) -> dict[str, Any]:
    return {"scheduledDeliveryDate": when.strftime("%d/%m/%Y"), "time": when.hour,
            "minute": when.minute}  # fmt: skip


def sms_send(client: httpx.Client, **extra: Any) -> dict[str, Any]:
    body = {"apiKey": SMS_KEY, "phoneNumbers": "+33611112222", "message": "Rdv", **extra}
    data: dict[str, Any] = client.post(f"{SMS}/send", json=body).json()
    return data


def sms_cancel(client: httpx.Client, message_id: Any) -> dict[str, Any]:
    params = {"apiKey": SMS_KEY, "messageId": message_id}
    data: dict[str, Any] = client.get(f"{SMS}/message-cancel", params=params).json()
    return data


def sms_status(client: httpx.Client, message_id: Any) -> str:
    params = {"apiKey": SMS_KEY, "messageId": message_id, "phoneNumber": "+33611112222"}
    return str(client.get(f"{SMS}/message-status", params=params).json()["statut"])


def test_sms_schedule_is_paris_time_and_echoed(client: httpx.Client) -> None:
    when = mark(10)
    sent = sms_send(client, **fields(when))
    assert sent["success"] is True
    # docs/providers/smspartner.md §1.2.2 scheduled-send fixture:
    # "scheduledDeliveryDate":"2018-08-18 20:00:00".
    assert sent["scheduledDeliveryDate"] == when.strftime("%Y-%m-%d %H:%M:00")


def test_sms_schedule_in_the_past_and_bad_formats_are_refused(client: httpx.Client) -> None:
    past = datetime.now(PROVIDER_TZ) - timedelta(hours=1)
    refused = sms_send(client, **fields(past.replace(minute=past.minute - past.minute % 5)))
    assert (refused["success"], refused["code"]) == (False, 9)
    assert "anterieure a la date actuelle" in str(refused["error"])
    when = mark(10)
    for bad in (
        {"minute": 7},
        {"minute": 60},
        {"time": 25},
        {"scheduledDeliveryDate": "2099-01-01"},
    ):
        answer = sms_send(client, **{**fields(when), **bad})
        assert (answer["success"], answer["code"]) == (False, 9), bad
    missing = sms_send(client, scheduledDeliveryDate=when.strftime("%d/%m/%Y"))
    assert missing["code"] == 9 and "requise" in str(missing["error"])


def test_sms_cancel_window_and_delivery_at_its_time(client: httpx.Client, shift: Any) -> None:
    when = mark(10)
    early = sms_send(client, **fields(when))["message_id"]
    late = sms_send(client, **fields(when))["message_id"]
    left = when.timestamp() - time.time()
    assert sms_status(client, late) == "Waiting"
    assert sms_cancel(client, early)["code"] == 200  # more than 5 minutes before
    assert sms_cancel(client, early)["code"] == 5  # already cancelled
    shift(left - 4 * 60)  # 4 minutes before its time
    too_close = sms_cancel(client, late)
    assert (too_close["success"], too_close["code"]) == (False, 6)
    assert sms_status(client, late) == "Waiting"
    shift(left + 5)  # its time has come: delivered, no longer cancellable
    assert sms_status(client, late) == "Delivered"
    assert sms_status(client, early) == "Cancelled"
    assert sms_cancel(client, late)["code"] == 7


def test_mail_schedule_codes_cancel_window_and_delivery(client: httpx.Client, shift: Any) -> None:
    def send(**extra: Any) -> dict[str, Any]:
        body = {"apiKey": MAIL_KEY, "subject": "Rdv", "htmlContent": "<p>Rdv</p>",
                "params": {"to": [{"email": "ada@example.com"}]}, **extra}  # fmt: skip
        data: dict[str, Any] = client.post(f"{MAIL}/send", json=body).json()
        return data

    def cancel(message_id: Any) -> int:
        params = {"apiKey": MAIL_KEY, "messageId": message_id}
        return int(client.get(f"{MAIL}/message-cancel", params=params).json()["code"])

    def status(message_id: Any) -> str:
        params = {"apiKey": MAIL_KEY, "messageId": message_id}
        data = client.get(f"{MAIL}/bulk-status", params=params).json()
        return str(data["StatutResponseList"][0]["status"])

    when = mark(10)
    # docs/providers/smspartner.md §1.3: 5..55 in steps of 5
    assert send(**{**fields(when), "minute": 7})["code"] == 48
    assert send(**{**fields(when), "scheduledDeliveryDate": "2099-01-01"})["code"] == 49
    sent = send(**fields(when))
    assert sent["scheduledDeliveryDate"] == when.strftime("%Y-%m-%d %H:%M:00")
    left = when.timestamp() - time.time()
    shift(left - 60)
    # docs/providers/mailpartner.md §2.2: less than 5 minutes before
    assert cancel(sent["messageId"]) == 6
    assert status(sent["messageId"]) == "Pending"
    shift(left + 5)
    assert status(sent["messageId"]) == "Delivered"


def test_voice_campaign_cancel_until_its_time(client: httpx.Client, shift: Any) -> None:
    when = datetime.now(PROVIDER_TZ).replace(second=0, microsecond=0) + timedelta(minutes=10)
    body = {"apiKey": VOICE_KEY, "phoneNumbers": "+33611112222", "text": "Rdv", "lang": "fr",
            "scheduledDate": when.strftime("%Y-%m-%d %H:%M:00")}  # fmt: skip
    first = client.post(f"{VOICE}/tts/send", json=body).json()["campaignId"]
    second = client.post(f"{VOICE}/tts/send", json=body).json()["campaignId"]
    assert client.delete(f"{VOICE}/campaign/cancel/{VOICE_KEY}/{first}").status_code == 200
    shift(when.timestamp() - time.time() + 1)  # Paris time: due now
    assert client.delete(f"{VOICE}/campaign/cancel/{VOICE_KEY}/{second}").status_code == 400
    bad = {**body, "scheduledDate": when.strftime("%d/%m/%Y %H:%M")}
    refused = client.post(f"{VOICE}/tts/send", json=bad)
    assert refused.status_code == 400 and refused.json()["error"] == "SCHEDULED_DATE_INVALID"


def test_scheduled_sends_move_at_their_time_and_cancelled_ones_never(
    make_sandbox: Any, shift: Any
) -> None:
    """The timeline reads the sandbox's clock: each scheduled send (SMS, mail, voice) is
    published as delivered once its time has come, and a cancelled one never is (no webhook
    or callback may say a cancelled message was delivered)."""
    sandbox = make_sandbox(config={"sms_delivery_delay_s": 0.2})
    heard: list[tuple[str, str, str]] = []
    sandbox.listeners.subscribe(lambda c: heard.append((c.provider, c.message_id, c.status)))
    when = mark(10)
    voice_when = when.strftime("%Y-%m-%d %H:%M:00")
    ids: dict[str, list[str]] = {}
    with httpx.Client(base_url=sandbox.url) as client:
        ids["smspartner"] = [str(sms_send(client, **fields(when))["message_id"]) for _ in "ab"]
        mail = {"apiKey": MAIL_KEY, "subject": "Rdv", "htmlContent": "<p>Rdv</p>",
                "params": {"to": [{"email": "ada@example.com"}]}, **fields(when)}  # fmt: skip
        ids["mailpartner"] = [
            str(client.post(f"{MAIL}/send", json=mail).json()["messageId"]) for _ in "ab"
        ]
        voice = {"apiKey": VOICE_KEY, "phoneNumbers": "+33611112222", "text": "Rdv",
                 "lang": "fr", "scheduledDate": voice_when}  # fmt: skip
        ids["voicepartner"] = [
            str(client.post(f"{VOICE}/tts/send", json=voice).json()["campaignId"]) for _ in "ab"
        ]
        assert sms_cancel(client, ids["smspartner"][0])["code"] == 200
        cancel = {"apiKey": MAIL_KEY, "messageId": ids["mailpartner"][0]}
        assert client.get(f"{MAIL}/message-cancel", params=cancel).json()["code"] == 200
        gone = client.delete(f"{VOICE}/campaign/cancel/{VOICE_KEY}/{ids['voicepartner'][0]}")
        assert gone.status_code == 200
        time.sleep(0.8)
        assert heard == []  # nothing before its time
        shift(when.timestamp() - time.time() + 5)
        deadline = time.monotonic() + 5
        while len(heard) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)  # anything more would have come by now
        assert sms_status(client, ids["smspartner"][1]) == "Delivered"
        assert sms_status(client, ids["smspartner"][0]) == "Cancelled"
    assert sorted(heard) == sorted((p, kept, "Delivered") for p, (_, kept) in ids.items())
