"""Mail Partner conformance: each rule the sandbox follows, with its docs/providers/mailpartner.md
section or seed line.

Seed = the Mail Partner introduction page (its `POST /v1/send` example nests recipients as
`"params":{"to":[{"email":...}]}`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from delivery_sandbox import DEFAULT_KEYS
from delivery_sandbox.providers.partner import PROVIDER_TZ
from worker.models import EmailMessage
from worker.providers.base import SendContext
from worker.providers.mailpartner import MailPartnerDriver

BASE = "/mailpartner/v1"
KEY = DEFAULT_KEYS["mailpartner"]
CTX = SendContext(delivery_id="dlv-conf-2", idempotency_key="idem-conf-2")


def body(**overrides: Any) -> dict[str, Any]:
    # The seed's example body: apiKey, subject, htmlContent, params.to[{email}].
    base = {
        "apiKey": KEY,
        "subject": "My first email",
        "htmlContent": "Hello world",
        "params": {"to": [{"email": "my@email2.com"}]},
    }
    return {**base, **overrides}


def send(client: httpx.Client, payload: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = client.post(f"{BASE}/send", json=payload).json()
    return data


def cancel(client: httpx.Client, message_id: Any) -> dict[str, Any]:
    params = {"apiKey": KEY} if message_id is None else {"apiKey": KEY, "messageId": message_id}
    data: dict[str, Any] = client.get(f"{BASE}/message-cancel", params=params).json()
    return data


def test_the_seed_example_is_accepted(client):
    data = send(client, body())
    # docs/providers/mailpartner.md §2.2 send response: success, code 200, camelCase messageId,
    # nbMail, cost, currency.
    assert set(data) == {"success", "code", "messageId", "nbMail", "cost", "currency"}
    assert (data["success"], data["code"], data["nbMail"]) == (True, 200, 1)


def test_top_level_to_is_refused(client, messages):
    # docs/providers/mailpartner.md §2.2: "every example nests it under params"; the seed's example
    # too. A top-level `to` is refused, even next to params.to, so a client cannot rely on it.
    alone = body(to=[{"email": "my@email2.com"}])
    del alone["params"]
    assert (send(client, alone)["success"], send(client, alone)["code"]) == (False, 22)
    both = body(to=[{"email": "other@example.com"}])
    assert send(client, both)["code"] == 22
    assert messages("mailpartner") == []


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        # docs/providers/mailpartner.md §2.3 "2 Mail content required" (htmlContent is required,
        # docs/providers/mailpartner.md §2.2).
        ({"htmlContent": ""}, 2),
        # docs/providers/mailpartner.md §2.3 22 "Recipient list required".
        ({"params": {"to": []}}, 22),
        ({"params": {}}, 22),
        # docs/providers/mailpartner.md §2.2 "≤500 recipients"; docs/providers/mailpartner.md §2.3
        # 50 "Max 500 mails".
        ({"params": {"to": [{"email": f"r{i}@example.com"} for i in range(501)]}}, 50),
        # docs/providers/mailpartner.md §2.3 18 "Recipient email required", 19 "Recipient email
        # invalid".
        ({"params": {"to": [{"name": "Ann"}]}}, 18),
        ({"params": {"to": [{"email": ""}]}}, 18),
        ({"params": {"to": [{"email": "not-an-address"}]}}, 19),
        # docs/providers/mailpartner.md §2.3 21 "Recipient name empty": a name key present but
        # empty.
        ({"params": {"to": [{"email": "a@example.com", "name": ""}]}}, 21),
        ({"params": {"to": [{"email": "a@example.com", "name": "  "}]}}, 21),
        # docs/providers/mailpartner.md §2.3 23/24/25: reply-to email required / invalid / name
        # empty.
        ({"replyTo": {}}, 23),
        ({"replyTo": {"email": "nope"}}, 24),
        ({"replyTo": {"email": "r@example.com", "name": ""}}, 25),
        # docs/providers/mailpartner.md §2.3 16 "Attachment name empty"; 8 (no content: "attachment
        # URL required").
        ({"attachments": [{"base64Content": "eA==", "contentType": "text/plain"}]}, 16),
        ({"attachments": [{"filename": "f", "contentType": "text/plain"}]}, 8),
        # docs/providers/mailpartner.md §2.3 9 "Attachment extension not allowed".
        (
            {
                "attachments": [
                    {
                        "filename": "setup",
                        "contentType": "application/x-msdownload",
                        "base64Content": "TVo=",
                    }
                ]
            },
            9,
        ),
    ],
)
def test_field_codes(client, messages, overrides, code):
    data = send(client, body(**overrides))
    assert (data["success"], data["code"]) == (False, code)
    assert messages("mailpartner") == []


def test_a_recipient_without_a_name_key_is_fine(client):
    # docs/providers/mailpartner.md §2.2: `{email, name?}`: name is optional; only an empty one is
    # refused (code 21).
    data = send(client, body(params={"to": [{"email": "a@example.com", "name": "Ann"}]}))
    assert data["success"] is True


def test_first_failure_only(client):
    # [INFERRED] one code per answer, content first (see the provider module).
    data = send(client, body(htmlContent="", params={"to": []}))
    assert set(data) == {"success", "code", "message"}
    assert data["code"] == 2


def future(minutes: int) -> dict[str, Any]:
    when = datetime.now(PROVIDER_TZ) + timedelta(minutes=minutes)
    # 5-minute steps (docs/providers/mailpartner.md §2.2)
    when -= timedelta(minutes=when.minute % 5, seconds=when.second)
    return {"scheduledDeliveryDate": when.strftime("%d/%m/%Y"), "time": when.hour,
            "minute": when.minute}  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        # docs/providers/mailpartner.md §2.2 schedule fields `dd/mm/YYYY`, 0-24, 0-55 in steps of 5;
        # docs/providers/mailpartner.md §2.3 45-49.
        ({"time": 10, "minute": 0}, 45),
        ({"scheduledDeliveryDate": "01/01/2099", "minute": 0}, 46),
        ({"scheduledDeliveryDate": "01/01/2099", "time": 10}, 47),
        ({"scheduledDeliveryDate": "01/01/2099", "time": 10, "minute": 7}, 48),
        ({"scheduledDeliveryDate": "2099-01-01", "time": 10, "minute": 0}, 49),
        ({"scheduledDeliveryDate": "01/01/2001", "time": 10, "minute": 0}, 49),
    ],
)
def test_schedule_codes(client, overrides, code):
    assert send(client, body(**overrides))["code"] == code


def test_cancel_a_scheduled_mail(client):
    # Ahead by more than an hour: 5-minute rounding keeps it outside the 5-minute margin.
    scheduled = send(client, body(**future(90)))
    assert scheduled["success"] is True and "scheduledDeliveryDate" in scheduled
    before = client.get(f"{BASE}/me", params={"apiKey": KEY}).json()["credits"]["creditMail"]

    # docs/providers/mailpartner.md §2.2: {"success":true,"code":200,"message":"The email has been
    # canceled."}.
    assert cancel(client, scheduled["messageId"]) == {
        "success": True,
        "code": 200,
        "message": "The email has been canceled.",
    }
    after = client.get(f"{BASE}/me", params={"apiKey": KEY}).json()["credits"]["creditMail"]
    assert after == before + 1  # [INFERRED] a cancelled mail's credit is refunded
    # docs/providers/mailpartner.md §2.2 codes: 5 already cancelled, 4 not found, 3 message id
    # required.
    assert cancel(client, scheduled["messageId"])["code"] == 5
    assert cancel(client, "no-such-id")["code"] == 4
    assert cancel(client, None)["code"] == 3


def test_cancel_refused_when_sent_or_too_close(client, sandbox):
    # docs/providers/mailpartner.md §2.2 code 7: already sent (an immediate send goes at once).
    assert cancel(client, send(client, body())["messageId"])["code"] == 7
    scheduled = send(client, body(**future(90)))
    due = (
        datetime.strptime(scheduled["scheduledDeliveryDate"], "%Y-%m-%d %H:%M:%S")
        .replace(tzinfo=PROVIDER_TZ)
        .timestamp()
    )
    # The sandbox's clock moved forward: 4 minutes before the time is too close (code 6,
    # "<5 min before the scheduled time"), and after it the mail is sent (code 7).
    sandbox.env.now = lambda: due - 4 * 60  # type: ignore[method-assign]
    assert cancel(client, scheduled["messageId"])["code"] == 6
    sandbox.env.now = lambda: due + 1  # type: ignore[method-assign]
    assert cancel(client, scheduled["messageId"])["code"] == 7
    sandbox.env.now = lambda: due - 6 * 60  # type: ignore[method-assign]
    assert cancel(client, scheduled["messageId"])["code"] == 200


def test_cancel_checks_the_key(client):
    # docs/providers/mailpartner.md §2.2 codes 1 (API key required) and 10 (incorrect API key).
    assert client.get(f"{BASE}/message-cancel", params={"messageId": "x"}).json()["code"] == 1
    bad = {"apiKey": "wrong", "messageId": "x"}
    assert client.get(f"{BASE}/message-cancel", params=bad).json()["code"] == 10


def test_bulk_status_has_the_documented_shape_only(client):
    message_id = send(client, body())["messageId"]
    data = client.get(f"{BASE}/bulk-status", params={"apiKey": KEY, "messageId": message_id}).json()
    # docs/providers/mailpartner.md §2.2 StatutResponseList: no field beyond the documented ones.
    assert set(data) == {"success", "code", "messageId", "StatutResponseList"}
    [item] = data["StatutResponseList"]
    assert set(item) == {"email", "token", "status", "cost", "stopMail", "date"}
    assert isinstance(item["date"], str) and item["date"].isdigit()  # "1599061044"


def test_cancelled_mail_status(client):
    message_id = send(client, body(**future(90)))["messageId"]
    cancel(client, message_id)
    data = client.get(f"{BASE}/bulk-status", params={"apiKey": KEY, "messageId": message_id}).json()
    assert [i["status"] for i in data["StatutResponseList"]] == ["Cancelled"]


# -- the driver against these rules -----------------------------------------------------------


@pytest.fixture
def driver(sandbox) -> Iterator[MailPartnerDriver]:
    with httpx.Client(timeout=5.0) as http:
        yield MailPartnerDriver(http, api_key=KEY, base_url=sandbox.provider_url("mailpartner"))


def email(**overrides: Any) -> EmailMessage:
    data: dict[str, Any] = {
        "provider": "mailpartner",
        "to": [{"email": "ann@example.com", "name": "Ann"}, {"email": "bob@example.com"}],
        "subject": "Hi",
        "html": "<p>hello</p>",
        "reply_to": {"email": "help@example.com"},
    }
    return EmailMessage.model_validate({**data, **overrides})


def test_driver_passes_the_strict_sandbox(driver, messages):
    outcome = driver.send(email(), CTX)
    assert set(outcome.provider_message_ids) == {"ann@example.com", "bob@example.com"}
    assert outcome.warnings == ()
    [recorded] = messages("mailpartner")
    assert "to" not in recorded["fields"]
    assert recorded["fields"]["params"]["to"][1] == {"email": "bob@example.com"}


def test_driver_reports_what_mail_partner_does_not_receive(driver, messages):
    # The rule: a field reaches the provider, is reported in the result, or is refused.
    outcome = driver.send(
        email(**{"from": {"email": "shop@example.org"}, "text": "hi", "preview_text": "teaser"}),
        CTX,
    )
    assert [w.partition(":")[0] for w in outcome.warnings] == ["from", "text", "preview_text"]
    assert all("shop@example.org" not in w and "teaser" not in w for w in outcome.warnings)
    [recorded] = messages("mailpartner")
    assert not {"from", "sender", "text", "preview_text"} & set(recorded["fields"])
