"""Reading a raw queue item: kombu's own envelopes pass, anything else is refused by reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kombu import Connection

from worker.guard.raw_items import REASONS, ItemRefusal, read_envelope

CODECS = ("base64",)


def kombu_envelope(**publish: Any) -> dict[str, Any]:
    """What kombu's virtual transport stores for a Celery-like publish (as JSON, like Redis)."""
    with Connection("memory://") as conn:
        channel = conn.default_channel
        producer = conn.Producer(channel)
        producer.publish(
            {"x": 1}, routing_key="delivery", exchange="", declare=[], headers={"id": "a"},
            **publish,
        )  # fmt: skip
        payload: dict[str, Any] = json.loads(json.dumps(channel._get("delivery")))
        return payload


@pytest.mark.parametrize("publish", [{}, {"compression": "zlib"}, {"serializer": "json"}])
def test_an_envelope_kombu_wrote_is_read_as_it_is(publish: dict[str, Any]) -> None:
    payload = kombu_envelope(**publish)
    assert read_envelope(json.dumps(payload).encode(), CODECS) == payload


def _env(**changes: Any) -> bytes:
    payload = kombu_envelope()
    payload.update(changes)
    return json.dumps(payload).encode()


def _props(**changes: Any) -> dict[str, Any]:
    props: dict[str, Any] = kombu_envelope()["properties"]
    props.update(changes)
    return {k: v for k, v in props.items() if v is not None}


@pytest.mark.parametrize(
    ("item", "reason", "detail"),
    [
        (b"not json", "not_json", "the item is not JSON (JSONDecodeError)"),
        (b"\xff\xfe{}", "not_json", "the item is not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "not_json", "the item is nested too deeply to decode"),
        (b"[1]", "not_an_object", "the item is a JSON array"),
        (b'"s"', "not_an_object", "the item is a JSON string"),
        (b"null", "not_an_object", "the item is a JSON null"),
        (b"true", "not_an_object", "the item is a JSON boolean"),
        (b"12", "not_an_object", "the item is a JSON number"),
        (b"{}", "not_an_envelope", "properties is not an object"),
        (_env(properties=_props(delivery_tag=None)), "not_an_envelope",
         "properties.delivery_tag is not a string"),
        (_env(properties=_props(delivery_tag=7)), "not_an_envelope",
         "properties.delivery_tag is not a string"),
        (_env(properties=_props(delivery_info=None)), "not_an_envelope",
         "properties.delivery_info is not an object"),
        (_env(properties=_props(delivery_info={"exchange": ""})), "not_an_envelope",
         "properties.delivery_info.routing_key is not a string"),
        (_env(headers=None), "not_an_envelope", "headers is not an object"),
        (_env(headers="h"), "not_an_envelope", "headers is not an object"),
        (_env(body=None), "not_an_envelope", "body is not a string"),
        (_env(body=[1]), "not_an_envelope", "body is not a string"),
        (_env(**{"content-type": 5}), "not_an_envelope", "content-type is not a string"),
        (_env(properties=_props(body_encoding="rot13")), "bad_body_encoding",
         "properties.body_encoding is unknown"),
        (_env(properties=_props(body_encoding=3)), "bad_body_encoding",
         "properties.body_encoding is unknown"),
        (_env(body="abc"), "bad_body_encoding", "the body is not valid base64"),
        (_env(body="ab!="), "bad_body_encoding", "the body is not valid base64"),
        (_env(body="a==="), "bad_body_encoding", "the body is not valid base64"),
    ],
)  # fmt: skip
def test_an_item_that_is_not_an_envelope_is_refused_with_its_reason(
    item: bytes, reason: str, detail: str
) -> None:
    assert read_envelope(item, CODECS) == ItemRefusal(reason, detail)
    assert reason in REASONS


def test_both_broker_channels_read_raw_items_through_the_check() -> None:
    from kombu.transport import redis as kombu_redis

    from worker.app import RedisTransport, SentinelTransport, _RawItemReading

    for transport in (RedisTransport, SentinelTransport):
        channel = transport.Channel
        assert issubclass(channel, _RawItemReading)
        assert channel._brpop_read is _RawItemReading._brpop_read
        assert channel._get is _RawItemReading._get
        assert channel._brpop_read is not kombu_redis.Channel._brpop_read
