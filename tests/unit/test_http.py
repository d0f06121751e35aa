"""The HTTP boundary: every httpx transport failure maps into the delivery taxonomy."""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from worker.errors import (
    ConfigurationError,
    DeliveryError,
    TransientError,
    UnknownOutcomeError,
)
from worker.http import MAX_RESPONSE_BYTES, join_url, map_transport_error, parse_retry_after
from worker.models import EmailMessage, SmsMessage, VoiceMessage
from worker.providers import PROVIDERS, make_driver
from worker.providers.base import Driver, SendContext
from worker.providers.postal import PostalDriver

from .driver_support import Handler, mock_client


def _subclasses(cls: type[BaseException]) -> Iterator[type[BaseException]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


TRANSPORT_ERRORS: list[type[BaseException]] = sorted(
    {httpx.TransportError, *_subclasses(httpx.TransportError)}, key=lambda c: c.__name__
)


def test_the_walk_finds_the_known_tree() -> None:
    names = {cls.__name__ for cls in TRANSPORT_ERRORS}
    assert {"ConnectError", "ReadTimeout", "RemoteProtocolError", "ProxyError"} <= names
    assert len(TRANSPORT_ERRORS) >= 15


# -- map_transport_error --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", TRANSPORT_ERRORS, ids=lambda c: c.__name__)
def test_every_transport_error_maps_to_a_delivery_error(cls: type[httpx.TransportError]) -> None:
    error = map_transport_error(cls("boom"), provider="smspartner")
    assert isinstance(error, DeliveryError)
    assert error.provider == "smspartner"
    assert cls.__name__ in error.message


@pytest.mark.parametrize("cls", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_failures_before_the_request_left_are_plain_transient(
    cls: type[httpx.TransportError],
) -> None:
    error = map_transport_error(cls("refused"), provider="postal")
    assert isinstance(error, TransientError)
    assert not isinstance(error, UnknownOutcomeError)


@pytest.mark.parametrize(
    "cls", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.CloseError]
)
def test_failures_after_the_request_left_are_unknown_outcomes(
    cls: type[httpx.TransportError],
) -> None:
    assert isinstance(map_transport_error(cls("dropped"), provider="postal"), UnknownOutcomeError)


@pytest.mark.parametrize("cls", [httpx.UnsupportedProtocol, httpx.ProxyError])
def test_setup_failures_are_configuration_errors(cls: type[httpx.TransportError]) -> None:
    assert isinstance(map_transport_error(cls("bad"), provider="postal"), ConfigurationError)


def test_transport_error_text_never_reaches_the_message() -> None:
    # httpx texts can carry URLs (and Voice Partner puts its key in URL paths,
    # docs/providers/voicepartner.md §3.1).
    error = map_transport_error(
        httpx.ConnectError("http://h/v1/me/SECRETKEY123 refused"), provider="voicepartner"
    )
    assert "SECRETKEY123" not in str(error)


# -- parse_retry_after ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("1.5", 1.5), ("999999", 3600.0), ("-5", 0.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(30.0)


def test_retry_after_date_in_the_past_is_zero() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "Thu, 99 Foo 2024", "1e"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_join_url_keeps_the_base_path_prefix() -> None:
    assert join_url("http://sandbox.test/prefix/smspartner/v1", "send") == (
        "http://sandbox.test/prefix/smspartner/v1/send"
    )
    assert join_url("http://h/v1/", "/send") == "http://h/v1/send"


# -- Driver.transmit ---------------------------------------------------------------------------

CTX = SendContext(delivery_id="dlv-http", idempotency_key="idem-http", tag="dwhttp")
KEY = "the-secret-key-5f1d2c"

MESSAGES: dict[str, EmailMessage | SmsMessage | VoiceMessage] = {
    "postal": EmailMessage.model_validate(
        {
            "provider": "postal",
            "to": [{"email": "a@example.com"}],
            "from": {"email": "b@example.com"},
            "subject": "s",
            "text": "t",
        }
    ),
    "emailmassivo": EmailMessage.model_validate(
        {
            "provider": "emailmassivo",
            "to": [{"email": "a@example.com"}],
            "from": {"email": "b@example.com"},
            "subject": "s",
            "text": "t",
        }
    ),
    "mailpartner": EmailMessage.model_validate(
        {"provider": "mailpartner", "to": [{"email": "a@example.com"}], "subject": "s", "text": "t"}
    ),
    "smspartner": SmsMessage.model_validate({"to": ["+33612345678"], "text": "hi"}),
    "voicepartner": VoiceMessage.model_validate(
        {"mode": "tts", "to": ["+33612345678"], "text": "hi"}
    ),
}


def driver_for(provider: str, handler: Handler, key: str = KEY) -> Driver[Any]:
    client = mock_client(handler)
    return make_driver(
        provider, client, api_key=key, base_url=f"http://sandbox.test/prefix/{provider}"
    )


def test_registry_builds_every_driver() -> None:
    for provider in PROVIDERS:
        driver = driver_for(provider, lambda r: httpx.Response(200))
        assert driver.name == provider
        assert driver.base_url == f"http://sandbox.test/prefix/{provider}"


def test_transmit_retries_a_connect_error_then_succeeds() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"status": "success", "data": {}})

    driver = driver_for("postal", handler)
    response = driver.transmit(httpx.Request("POST", "http://sandbox.test/prefix/postal/x"))
    assert response.status_code == 200
    assert response.json() == {"status": "success", "data": {}}
    assert len(calls) == 2


def test_transmit_gives_up_after_connect_attempts() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectTimeout("connect timed out", request=request)

    driver = driver_for("smspartner", handler)
    with pytest.raises(TransientError) as info:
        driver.send(MESSAGES["smspartner"], CTX)
    assert not isinstance(info.value, UnknownOutcomeError)
    assert len(calls) == driver.connect_attempts


@pytest.mark.parametrize("cls", [httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_transmit_does_not_retry_after_the_request_left(cls: type[httpx.TransportError]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise cls("gone", request=request)

    with pytest.raises(UnknownOutcomeError):
        driver_for("postal", handler).send(MESSAGES["postal"], CTX)
    assert len(calls) == 1


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("cls", TRANSPORT_ERRORS, ids=lambda c: c.__name__)
def test_every_transport_error_through_every_driver(
    provider: str, cls: type[httpx.TransportError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise cls("failure", request=request)

    driver = driver_for(provider, handler)
    driver.connect_attempts = 1  # type: ignore[misc]  # one try: this test is about mapping
    with pytest.raises(DeliveryError) as info:
        driver.send(MESSAGES[provider], CTX)
    assert info.value.provider == provider


def test_read_is_bounded() -> None:
    body = b"x" * (3 * MAX_RESPONSE_BYTES)
    driver = driver_for("postal", lambda r: httpx.Response(200, content=body))
    response = driver.transmit(httpx.Request("GET", "http://sandbox.test/prefix/postal/x"))
    assert len(response.content) == MAX_RESPONSE_BYTES


# -- configuration and secrets -----------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url", ["not a url", "ftp://example.com/v1", "http://", "http://[::1"]
)
def test_bad_base_url_is_a_configuration_error(base_url: str) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with pytest.raises(ConfigurationError, match="DELIVERY_POSTAL_BASE_URL"):
        PostalDriver(client, api_key=KEY, base_url=base_url)


def test_missing_api_key_is_a_configuration_error() -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with pytest.raises(ConfigurationError, match="DELIVERY_SMSPARTNER_API_KEY"):
        make_driver("smspartner", client, api_key="")


def _echo_key_answers(key: str) -> list[httpx.Response]:
    """Answers that quote the key back, in each provider's error vocabulary."""
    return [
        httpx.Response(200, json={"success": False, "code": 10, "message": f"bad key {key}"}),
        httpx.Response(401, json={"message": f"Неверный ключ API {key}", "statusCode": 401}),
        httpx.Response(
            200,
            json={"status": "error", "data": {"code": "InvalidServerAPIKey", "message": key}},
        ),
        httpx.Response(200, json={"success": False, "error": key}),
        httpx.Response(500, text=f"<html>Traceback: api_key={key}</html>"),
        httpx.Response(200, text=f"apiKey={key}"),
    ]


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_the_api_key_never_appears_in_repr_or_errors(provider: str) -> None:
    key = f"k3y-{provider}-9d8c7b6a"
    answers = iter(_echo_key_answers(key))
    errors: list[DeliveryError] = []

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers)

    driver = driver_for(provider, handler, key=key)
    assert key not in repr(driver)
    assert key not in str(driver)
    for _ in range(len(_echo_key_answers(key))):
        with pytest.raises(DeliveryError) as info:
            driver.send(MESSAGES[provider], CTX)
        errors.append(info.value)
    balance_answers = iter([httpx.Response(401, text=f"denied {key}")])
    driver.client = httpx.Client(transport=httpx.MockTransport(lambda r: next(balance_answers)))
    try:
        driver.check_balance()
    except DeliveryError as exc:
        errors.append(exc)
    for error in errors:
        assert key not in str(error)
        assert key not in repr(error)
        assert key not in str(error.to_dict())
