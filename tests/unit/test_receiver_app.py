"""The receiver's app in-process (httpx's ASGI transport): answers, and what it publishes.

The publisher here records instead of reaching a broker; the real server, Redis and broker
are in tests/integration/test_receiver.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery_sandbox.webhooks import PostalSigner
from worker.receiver.app import ReceiverConfig, create_app
from worker.receiver.publish import MemoryDedupe
from worker.tracking.callbacks import callback_token, callback_url
from worker.tracking.events import DeliveryEvent, EventType


class AppClient:
    """A synchronous client straight into the ASGI app (no socket)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __enter__(self) -> AppClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
                content = kwargs.pop("content", None)
                if content is not None and not isinstance(content, bytes):
                    chunks = list(content)

                    async def stream() -> Any:
                        for chunk in chunks:
                            yield chunk

                    content = stream()
                return await c.request(method, path, content=content, **kwargs)

        return asyncio.run(go())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


SIGNER = PostalSigner()
FORGER = PostalSigner()
SECRET = "s" * 40


class Recorder:
    def __init__(self) -> None:
        self.events: list[list[DeliveryEvent]] = []
        self.hints: list[tuple[str, str]] = []
        self.fail = False

    def publish_events(self, events: list[DeliveryEvent]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.events.append(events)

    def publish_hint(self, provider: str, delivery_id: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.hints.append((provider, delivery_id))

    def ping(self) -> None:
        if self.fail:
            raise ConnectionError("broker down")


def _client(recorder: Recorder, *, max_body: int = 64 * 1024, **overrides: Any) -> AppClient:
    config = ReceiverConfig(
        postal_public_key=SIGNER.public_key,
        tracking_secret=SECRET,
        max_body_bytes=max_body,
        **overrides,
    )
    return AppClient(create_app(config, recorder, MemoryDedupe()))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> Iterator[AppClient]:
    with _client(recorder) as c:
        yield c


def _sent(message_id: int = 37171, **envelope: Any) -> dict[str, Any]:
    return {
        "message": {"id": message_id, "direction": "outgoing", "to": "john@example.com"},
        "status": "Sent",
        "details": "ok",
        "output": "250 OK",
        "sent_with_ssl": True,
        "timestamp": time.time(),
        "time": 0.1,
        **envelope,
    }


def _signed(
    event: str = "MessageSent", payload: dict[str, Any] | None = None
) -> tuple[str, bytes, dict[str, str]]:
    return SIGNER.signed_request(event, payload or _sent())


def test_health(client: AppClient, recorder: Recorder) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    recorder.fail = True
    assert client.get("/health").status_code == 503


def test_a_signed_webhook_is_published_once(client: AppClient, recorder: Recorder) -> None:
    uuid, body, headers = _signed()
    first = client.post("/hooks/postal", content=body, headers=headers)
    assert first.status_code == 200 and first.json()["status"] == "published"
    [[event]] = recorder.events
    assert event.event_id == uuid and event.type is EventType.DELIVERED
    again = client.post("/hooks/postal", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(recorder.events) == 1


def test_refusals_publish_nothing(client: AppClient, recorder: Recorder) -> None:
    _, body, headers = _signed()
    unsigned = {"Content-Type": "application/json"}
    assert client.post("/hooks/postal", content=body, headers=unsigned).status_code == 401
    forged = FORGER.headers(body)
    assert client.post("/hooks/postal", content=body, headers=forged).status_code == 403
    tampered = body.replace(b'"Sent"', b'"Held"')
    assert client.post("/hooks/postal", content=tampered, headers=headers).status_code == 403
    garbage = b"{not json"
    response = client.post("/hooks/postal", content=garbage, headers=SIGNER.headers(garbage))
    assert response.status_code == 400
    assert client.get("/hooks/postal").status_code == 405
    assert recorder.events == []


def test_stale_and_future_envelopes_are_refused(recorder: Recorder) -> None:
    with _client(recorder, postal_max_age_s=60) as client:
        _, body, _ = _signed()
        envelope = json.loads(body)
        for when in (time.time() - 120, time.time() + 3600):
            envelope["timestamp"] = when
            raw = json.dumps(envelope).encode()
            response = client.post("/hooks/postal", content=raw, headers=SIGNER.headers(raw))
            assert response.status_code == 400, response.text
    assert recorder.events == []


def test_oversized_bodies_are_413(recorder: Recorder) -> None:
    with _client(recorder, max_body=2048) as client:
        big = json.dumps({"x": "y" * 4096}).encode()
        response = client.post("/hooks/postal", content=big, headers=SIGNER.headers(big))
        assert response.status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: streamed
            yield b"{" + b" " * 1500
            yield b" " * 1500 + b"}"

        streamed = client.post("/hooks/postal", content=chunks(), headers=SIGNER.headers(b"{}"))
        assert streamed.status_code == 413
    assert recorder.events == []


def test_server_events_are_acknowledged_and_not_published(
    client: AppClient, recorder: Recorder
) -> None:
    _, body, headers = _signed("DomainDNSError", {"domain": "example.com"})
    response = client.post("/hooks/postal", content=body, headers=headers)
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert recorder.events == []


def test_a_broker_failure_is_503_and_the_retry_is_published(
    client: AppClient, recorder: Recorder
) -> None:
    _, body, headers = _signed()
    recorder.fail = True
    assert client.post("/hooks/postal", content=body, headers=headers).status_code == 503
    recorder.fail = False
    assert client.post("/hooks/postal", content=body, headers=headers).json()["status"] == (
        "published"
    )
    assert len(recorder.events) == 1


class BrokenDedupe(MemoryDedupe):
    def claim(self, key: str) -> Any:
        raise ConnectionError("redis down")


def test_a_dedupe_store_failure_is_503_and_publishes_nothing(recorder: Recorder) -> None:
    config = ReceiverConfig(postal_public_key=SIGNER.public_key)
    with AppClient(create_app(config, recorder, BrokenDedupe())) as client:
        _, body, headers = _signed()
        assert client.post("/hooks/postal", content=body, headers=headers).status_code == 503
    assert recorder.events == []


def test_postal_is_404_without_a_key(recorder: Recorder) -> None:
    config = ReceiverConfig(tracking_secret=SECRET)
    with AppClient(create_app(config, recorder, MemoryDedupe())) as client:
        _, body, headers = _signed()
        assert client.post("/hooks/postal", content=body, headers=headers).status_code == 404
    assert recorder.events == []


@pytest.mark.parametrize("provider", ["smspartner", "voicepartner"])
def test_a_hint_with_its_token_is_published_whatever_the_body(
    client: AppClient, recorder: Recorder, provider: str
) -> None:
    url = callback_url("https://hooks.example.com", SECRET, provider, "d-123")
    assert url is not None
    path = url.removeprefix("https://hooks.example.com")
    response = client.post(path, content=b'{"status": "Delivered", "messageId": 1}')
    assert response.status_code == 200 and response.json()["status"] == "published"
    assert client.get(path.replace("d-123", "d-124") + "?status=whatever").status_code == 403
    assert recorder.hints == [(provider, "d-123")]


def test_hints_are_published_once_per_delivery_per_interval(recorder: Recorder) -> None:
    """A replayed (or chatty) callback costs a task and a provider lookup: one per window."""
    now = [1_764_230_000.0]
    config = ReceiverConfig(tracking_secret=SECRET, hint_interval_s=60.0)
    dedupe = MemoryDedupe(clock=lambda: now[0])
    with AppClient(create_app(config, recorder, dedupe, clock=lambda: now[0])) as client:
        sms = "/hooks/smspartner/d-1/" + callback_token(
            SECRET, "smspartner", "d-1", issued_at=now[0]
        )
        other = "/hooks/smspartner/d-2/" + callback_token(
            SECRET, "smspartner", "d-2", issued_at=now[0]
        )
        answers = [client.post(sms).json()["status"] for _ in range(5)]
        assert answers == ["published"] + ["throttled"] * 4
        assert client.post(other).json()["status"] == "published"  # per delivery
        now[0] += 61
        assert client.post(sms).json()["status"] == "published"
    assert recorder.hints == [("smspartner", "d-1"), ("smspartner", "d-2"), ("smspartner", "d-1")]


def test_an_expired_callback_token_is_refused(recorder: Recorder) -> None:
    issued = 1_764_230_000.0
    now = [issued + 48 * 3600 - 1]
    config = ReceiverConfig(tracking_secret=SECRET, hint_max_age_s=48 * 3600, hint_interval_s=1)
    dedupe = MemoryDedupe(clock=lambda: now[0])
    url = "/hooks/voicepartner/d-9/" + callback_token(
        SECRET, "voicepartner", "d-9", issued_at=issued
    )
    with AppClient(create_app(config, recorder, dedupe, clock=lambda: now[0])) as client:
        assert client.post(url).status_code == 200
        now[0] = issued + 48 * 3600 + 2
        refused = client.post(url)
        assert refused.status_code == 403
    assert recorder.hints == [("voicepartner", "d-9")]


def test_hints_with_a_wrong_token_are_refused(client: AppClient, recorder: Recorder) -> None:
    token = callback_token(SECRET, "smspartner", "d-123")
    for path in (
        f"/hooks/smspartner/d-124/{token}",  # another delivery's
        f"/hooks/voicepartner/d-123/{token}",  # another provider's
        f"/hooks/smspartner/d-123/{token[:-1]}x",
        f"/hooks/smspartner/d-123/{callback_token('t' * 40, 'smspartner', 'd-123')}",
        "/hooks/smspartner/..%2F..%2Fetc/x",
    ):
        assert client.post(path, content=b"{}").status_code in (403, 404), path
    assert client.post(f"/hooks/emailmassivo/d-123/{token}").status_code == 404
    assert recorder.hints == []


@settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    deadline=None,
)
@given(
    body=st.binary(max_size=400),
    headers=st.dictionaries(
        st.sampled_from(
            ["x-postal-signature", "x-postal-signature-256", "content-type", "content-length"]
        ),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
        max_size=4,
    ),
)
def test_hostile_postal_requests_are_4xx_and_publish_nothing(
    client: AppClient, recorder: Recorder, body: bytes, headers: dict[str, str]
) -> None:
    response = client.post("/hooks/postal", content=body, headers=headers)
    assert 400 <= response.status_code < 500
    assert recorder.events == []


_segment = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"),
    min_size=1,
    max_size=60,
)


@settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    deadline=None,
)
@given(
    provider=st.sampled_from(["smspartner", "voicepartner", "postal", "emailmassivo"]) | _segment,
    delivery_id=_segment,
    token=_segment,
    body=st.binary(max_size=200),
)
def test_hostile_hints_publish_only_with_the_right_token(
    client: AppClient,
    recorder: Recorder,
    provider: str,
    delivery_id: str,
    token: str,
    body: bytes,
) -> None:
    recorder.hints.clear()
    response = client.post(f"/hooks/{provider}/{delivery_id}/{token}", content=body)
    right = provider in ("smspartner", "voicepartner") and token == callback_token(
        SECRET, provider, delivery_id
    )
    assert not right  # a random token never matches…
    assert 400 <= response.status_code < 500
    assert recorder.hints == []
    good = callback_token(SECRET, "smspartner", delivery_id)
    answer = client.post(f"/hooks/smspartner/{delivery_id}/{good}", content=body)
    # …and the right one works for any id the producer could make (ours are UUIDs).
    if answer.status_code == 200 and answer.json()["status"] == "published":
        assert recorder.hints == [("smspartner", delivery_id)]
    elif answer.status_code == 200:  # the same id drawn again within the hint interval
        assert answer.json()["status"] == "throttled" and recorder.hints == []
    else:
        # A refused id (403), or one the URL itself cannot carry (``.`` and ``..`` are path
        # segments a client or router resolves: 404): a 4xx, and nothing published.
        assert 400 <= answer.status_code < 500 and recorder.hints == []
