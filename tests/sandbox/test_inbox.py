"""The inbox page's JSON API and headers: what the browser page reads (no browser here)."""

from __future__ import annotations

import base64

from delivery_sandbox import DEFAULT_KEYS
from delivery_sandbox.state import INBOX_FIELD_CHARS, MAX_FIELD_CHARS

POSTAL = "/postal/api/v1/send/message"
POSTAL_HEADERS = {"X-Server-API-Key": DEFAULT_KEYS["postal"]}


def postal_send(client, to="ada@example.com", **extra):
    params = {
        "to": [f"Ada <{to}>"],
        "from": "Shop <shop@example.org>",
        "subject": "Your order",
        "plain_body": "Thanks",
        **extra,
    }
    response = client.post(POSTAL, json=params, headers=POSTAL_HEADERS)
    assert response.status_code == 200, response.text
    return response.json()


def sms_send(client, numbers="+33612345678", message="Code 1234", **extra):
    payload = {"apiKey": DEFAULT_KEYS["smspartner"], "phoneNumbers": numbers, "message": message}
    response = client.post("/smspartner/v1/send", json={**payload, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def inbox(client, **params):
    response = client.get("/_inbox/api/messages", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_page_and_assets_carry_a_strict_csp(client):
    page = client.get("/_inbox/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/_inbox/inbox.js"' in page.text
    js = client.get("/_inbox/inbox.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text  # message content only ever goes in as text or srcdoc
    assert client.get("/_inbox/inbox.css").status_code == 200
    assert client.get("/_inbox/nothing").status_code == 404
    assert client.post("/_inbox/api/messages").status_code == 405


def test_newest_first_with_the_providers_answer(client):
    answer = postal_send(
        client,
        html_body="<p>Hi</p>",
        cc=["bo@example.com"],
        attachments=[
            {"name": "invoice.pdf", "content_type": "application/pdf", "data": "JVBERg=="}
        ],
    )
    sms_send(client, sender="Shop")
    data = inbox(client)
    assert data["total"] == 2
    sms, mail = data["messages"]
    assert (sms["channel"], sms["provider"], sms["text"], sms["sender"]) == (
        "sms",
        "smspartner",
        "Code 1234",
        "Shop",
    )
    assert sms["to"] == ["+33612345678"] and sms["parts"] == 1
    assert sms["answer"]["status"] == 200 and sms["answer"]["outcome"] == "accepted"
    assert mail["channel"] == "email" and mail["subject"] == "Your order"
    assert mail["from"] == "Shop <shop@example.org>"
    assert mail["to"] == ["Ada <ada@example.com>"] and mail["cc"] == ["bo@example.com"]
    assert (mail["text"], mail["html"]) == ("Thanks", "<p>Hi</p>")
    assert mail["attachments"] == [
        {"name": "invoice.pdf", "content_type": "application/pdf", "size": 6}
    ]
    message_id = answer["data"]["message_id"]
    assert mail["message_id"] == message_id == mail["answer"]["message_id"]
    assert sms["seq"] > mail["seq"] and data["latest_seq"] == sms["seq"]
    one = client.get(f"/_inbox/api/messages/{mail['seq']}").json()["message"]
    assert one["subject"] == "Your order"
    assert client.get("/_inbox/api/messages/99999").status_code == 404


def test_filters_by_provider_and_recipient(client):
    postal_send(client, to="ada@example.com")
    postal_send(client, to="bo@example.com")
    sms_send(client, numbers="+33612345678")
    assert [m["provider"] for m in inbox(client, provider="smspartner")["messages"]] == [
        "smspartner"
    ]
    only_bo = inbox(client, recipient="BO@EXAMPLE")["messages"]
    assert [m["to"] for m in only_bo] == [["Ada <bo@example.com>"]]
    assert inbox(client, recipient="345678")["messages"][0]["to"] == ["+33612345678"]
    assert inbox(client, recipient="nobody")["messages"] == []
    assert client.get("/_inbox/api/messages", params={"provider": "x"}).status_code == 400
    assert client.get("/_inbox/api/messages", params={"limit": "0"}).status_code == 400
    assert len(inbox(client, limit=1)["messages"]) == 1


def test_a_long_body_is_shown_whole_and_a_huge_one_is_named(client):
    long_html = "<p>" + "x" * (MAX_FIELD_CHARS * 3) + "</p>"
    postal_send(client, html_body=long_html)
    [mail] = inbox(client)["messages"]
    assert mail["html"] == long_html  # longer than the request log keeps
    logged = client.get("/_admin/messages").json()["messages"][0]["fields"]["html_body"]
    assert logged["chars"] == len(long_html)  # the log itself is unchanged

    huge = "y" * (INBOX_FIELD_CHARS + 1)
    postal_send(client, plain_body=huge)
    mail = inbox(client)["messages"][0]
    assert mail["text"] is None
    assert mail["not_kept"] == [
        {"field": "plain_body", "chars": len(huge), "sha256": mail["not_kept"][0]["sha256"]}
    ]
    assert len(mail["not_kept"][0]["sha256"]) == 64


def test_a_reset_empties_the_inbox(client):
    sms_send(client)
    client.post("/_admin/reset").raise_for_status()
    assert inbox(client) == {"messages": [], "total": 0, "latest_seq": 0}


def test_raw_postal_messages_are_read_back(client):
    raw = (
        b"From: Shop <shop@example.org>\r\nTo: ada@example.com\r\nSubject: Raw hello\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nBody here\r\n"
    )
    response = client.post(
        "/postal/api/v1/send/raw",
        json={
            "mail_from": "shop@example.org",
            "rcpt_to": ["ada@example.com"],
            "data": base64.b64encode(raw).decode(),
        },
        headers=POSTAL_HEADERS,
    )
    assert response.status_code == 200, response.text
    [mail] = inbox(client)["messages"]
    assert mail["subject"] == "Raw hello"
    assert mail["text"].strip() == "Body here"
    assert mail["to"] == ["ada@example.com"]
