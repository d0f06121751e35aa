"""The sandbox inbox page in a real headless Chromium: messages sent through real workers show
up, and no script in a mail ever runs (checked through side effects it would cause)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from .browser import INBOX_TITLE, headless_chromium, list_item_with, wait_for

pytestmark = pytest.mark.integration

CANARY = "smspartner"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    with headless_chromium() as d:
        yield d


def hostile_html(sandbox_url: str) -> str:
    """What a hostile mail would do if its scripts ran: retitle the page and spend a canary
    balance on the sandbox (a request the test can see)."""

    def spend(credits: int) -> str:
        body = json.dumps({"provider": CANARY, "credits": credits})
        return (
            f"fetch('{sandbox_url}/_admin/balance',{{method:'POST',mode:'no-cors',"
            f"body:'{body}'}});try{{top.document.title='pwned'}}catch(e){{}}"
        )

    return (
        "<h1>Offer</h1>"
        f"<script>{spend(11)}</script>"
        f'<img src="missing.png" onerror="{spend(22)}">'
        f'<svg onload="{spend(33)}"></svg>'
    )


def balance(sandbox: Any) -> int:
    return int(sandbox.http.get("/_admin/balance").json()["balances"][CANARY])


def send_and_wait(producer: Any, channel: str, message: dict[str, Any]) -> str:
    result = producer.enqueue(channel, message)
    outcome = result.get(timeout=60)
    assert outcome["status"] == "sent", outcome
    return str(result.id)


def test_page_shows_messages_sent_through_the_worker(
    driver: Any, producer: Any, sandbox: Any, sandbox_url: str, worker_proc: Any
) -> None:
    driver.get(f"{sandbox_url}/_inbox/")
    assert driver.title == INBOX_TITLE
    wait_for(lambda: "0 messages" in driver.find_element(By.ID, "status").text, what="empty")

    send_and_wait(
        producer,
        "sms",
        {"provider": "smspartner", "to": ["+33612340001"], "text": "Code 9876", "sender": "Shop"},
    )
    send_and_wait(
        producer,
        "email",
        {
            "provider": "postal",
            "to": [{"email": "grace@example.com", "name": "Grace"}],
            "from": {"email": "shop@example.org"},
            "subject": "Welcome aboard",
            "text": "Hello Grace",
            "html": "<p>Hello <b>Grace</b></p>",
            "attachments": [
                {"filename": "terms.pdf", "content_type": "application/pdf", "content": "JVBE"}
            ],
        },
    )
    # Live: the page picks both up without a reload, newest first.
    mail = wait_for(lambda: list_item_with(driver, "grace@example.com"), what="the mail")
    items = driver.find_elements(By.CSS_SELECTOR, "#list li")
    assert "grace@example.com" in items[0].text and "+33612340001" in items[1].text
    mail.click()
    detail = driver.find_element(By.ID, "detail")
    wait_for(lambda: "Welcome aboard" in detail.text, what="the mail's detail")
    assert "terms.pdf" in detail.text and "200 accepted" in detail.text
    frame = detail.find_element(By.TAG_NAME, "iframe")
    assert frame.get_attribute("sandbox") == ""
    driver.switch_to.frame(frame)
    assert driver.find_element(By.TAG_NAME, "b").text == "Grace"
    driver.switch_to.default_content()

    sms = list_item_with(driver, "+33612340001")
    assert sms is not None
    sms.click()
    wait_for(lambda: "Code 9876" in detail.text, what="the SMS text")
    assert "Shop" in detail.text  # the sender

    # Filters: by provider, then by part of a recipient.
    driver.find_element(By.CSS_SELECTOR, "#provider option[value=smspartner]").click()
    wait_for(lambda: list_item_with(driver, "grace@example.com") is None, what="provider filter")
    assert list_item_with(driver, "+33612340001") is not None
    driver.find_element(By.CSS_SELECTOR, "#provider option[value='']").click()
    driver.find_element(By.ID, "recipient").send_keys("grace")
    wait_for(lambda: list_item_with(driver, "+33612340001") is None, what="recipient filter")
    assert list_item_with(driver, "grace@example.com") is not None


def test_a_script_in_a_mail_never_runs(
    driver: Any, producer: Any, sandbox: Any, sandbox_url: str, worker_proc: Any
) -> None:
    sandbox.set_balance(CANARY, 500)
    html = hostile_html(sandbox_url)
    subject = '<img src=x onerror="document.title=1">Deal'
    send_and_wait(
        producer,
        "email",
        {
            "provider": "postal",
            "to": [{"email": "mallory@example.com"}],
            "from": {"email": "shop@example.org"},
            "subject": subject,
            "html": html,
        },
    )
    driver.get(f"{sandbox_url}/_inbox/")
    detail = driver.find_element(By.ID, "detail")
    wait_for(lambda: "Deal" in detail.text, what="the hostile mail")
    frame = detail.find_element(By.TAG_NAME, "iframe")
    assert frame.get_attribute("sandbox") == ""
    assert "<script>" in (frame.get_attribute("srcdoc") or "")  # the body really is there
    driver.switch_to.frame(frame)
    assert driver.find_element(By.TAG_NAME, "h1").text == "Offer"  # and rendered
    driver.switch_to.default_content()
    # The subject is text, not markup.
    assert driver.find_element(By.ID, "subject").text == subject
    # Give any script, handler or image error time to fire, then look for its side effects.
    driver.execute_async_script("setTimeout(arguments[0], 1500)")
    assert driver.title == INBOX_TITLE
    assert balance(sandbox) == 500

    # The control: the same body in an unsandboxed frame does spend the canary, so the
    # assertions above would catch a script that ran.
    driver.get(f"{sandbox_url}/_admin/health")
    driver.execute_script(
        "const f = document.createElement('iframe'); f.srcdoc = arguments[0];"
        "document.body.append(f);",
        html,
    )
    wait_for(lambda: balance(sandbox) != 500, what="the control's side effect")
    assert balance(sandbox) in (11, 22, 33)
