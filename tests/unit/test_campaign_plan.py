"""The campaign's pure parts: chunk sizes and cuts, the chunk payload's checks, what Flower
shows of a campaign task."""

from __future__ import annotations

import json
import uuid

from worker.app import _many_repr
from worker.campaign import (
    DEFAULT_CHUNK,
    MAX_PER_TASK,
    Validated,
    chunk_size,
    fresh_ids,
    plan_chunks,
)
from worker.delivery.campaign import chunk_items
from worker.providers import parse_message


def _sms(i: int, provider: str = "smspartner") -> dict[str, object]:
    return {"provider": provider, "to": [f"+3361200{i:04d}"], "text": f"Code {i}"}


def test_chunks_follow_the_provider_batch_limit_in_input_order() -> None:
    assert chunk_size("sms", "smspartner") == 500 == MAX_PER_TASK
    assert chunk_size("email", "postal") == DEFAULT_CHUNK  # one request per message
    models = [Validated.of(i, parse_message("sms", _sms(i))) for i in range(1203)]
    chunks = list(plan_chunks("sms", models))
    assert [len(c) for c in chunks] == [500, 500, 203]
    assert [v.index for c in chunks for v in c] == list(range(1203))


def test_a_change_of_provider_starts_a_new_chunk() -> None:
    def mail(i: int, provider: str) -> dict[str, object]:
        return {
            "provider": provider,
            "to": [{"email": f"u{i}@example.org"}],
            "subject": "s",
            "text": "t",
            "from": {"email": "a@example.org"},
        }

    providers = ["postal"] * 3 + ["mailpartner"] * 2 + ["postal"]
    models = [Validated.of(i, parse_message("email", mail(i, p))) for i, p in enumerate(providers)]
    chunks = list(plan_chunks("email", models))
    assert [[v.index for v in c] for c in chunks] == [[0, 1, 2], [3, 4], [5]]


def test_a_validated_message_keeps_the_normalised_json_of_its_model() -> None:
    model = parse_message("sms", {**_sms(7), "idempotency_key": "k7"})
    kept = Validated.of(7, model)
    assert (kept.index, kept.provider, kept.idempotency_key) == (7, "smspartner", "k7")
    expected = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert json.loads(kept.body) == expected


def test_fresh_ids_are_distinct_version_4_uuids() -> None:
    ids = fresh_ids(1000)
    assert len(set(ids)) == 1000
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    assert fresh_ids(0) == []


def test_a_chunk_payload_is_checked_before_anything_runs() -> None:
    assert chunk_items([]) == "the chunk is not an object"
    assert chunk_items({"channel": "fax", "items": []}) == "channel: not one of email, sms, voice"
    too_many = {"channel": "sms", "items": [{"id": "x", "message": {}}] * (MAX_PER_TASK + 1)}
    assert str(chunk_items(too_many)).startswith("items:")
    assert str(chunk_items({"channel": "sms", "items": [{"message": {}}]})).startswith("items:")
    assert chunk_items({"channel": "sms", "items": [{"id": "d1", "message": {"a": 1}}]}) == (
        "sms",
        [("d1", {"a": 1})],
    )


def test_flower_sees_a_campaign_task_as_a_channel_and_a_count() -> None:
    secret = {"to": ["+33612345678"], "text": "code 123456"}
    shown = _many_repr(([{"channel": "sms", "messages": [secret, secret]}], {}, {}))
    assert shown == "({'channel': 'sms', 'messages': 2},)"
    assert "3361" not in _many_repr(([{"channel": "+33612345678", "items": [secret]}],))
    assert _many_repr("garbage") == "({'channel': '[invalid]', 'messages': 0},)"
