"""An email campaign's chunk (Postal, Mail Partner, EmailMassivo: one request per message) sends
its messages on the batch threads (``DELIVERY_BATCH_THREADS`` at most at once), each request
through the single path's gate: the limiter's budget holds for a chunk as for single sends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from worker.config import Settings
from worker.delivery import Done
from worker.delivery.batch import BatchEntry, process_batch
from worker.runtime import Runtime

from .driver_support import mock_client

SUCCESS = {"status": "success", "time": 0.01, "flags": {}}  # docs/providers/postal.md §4.2


class Postal:
    """A Postal stand-in counting requests and how many were in flight at once."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(self.latency_s)
        with self.lock:
            self.in_flight -= 1
        (address,) = json.loads(request.content)["to"]
        data = {"message_id": "m@rp.postal.example.com", "messages": {address: {"id": 1}}}
        return httpx.Response(200, json={**SUCCESS, "data": data})


def _entries(rt: Runtime, count: int) -> list[BatchEntry]:
    entries = []
    for i in range(count):
        message = {
            "provider": "postal",
            "to": [{"email": f"user{i}@example.org"}],
            "from": {"email": "shop@example.org"},
            "subject": "Soldes",
            "text": "Jusqu'à -50 %",
        }
        rt.ledger.create(f"mail{i}", channel="email", provider="postal")
        entries.append(BatchEntry("email", message, f"mail{i}", "tasks.send_email"))
    return entries


def _runtime(postal: Postal, **settings: object) -> Iterator[Runtime]:
    base = {"postal_api_key": "postal-key-campaign", "postal_base_url": "http://postal.test"}
    config = Settings(**{**base, **settings})  # type: ignore[arg-type]
    runtime = Runtime.in_memory(config, client=mock_client(postal.handler))
    yield runtime
    runtime.close()


@pytest.fixture(autouse=True)
def _fresh_batch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # The batch threads are created once per process, sized by the first runtime's settings.
    import worker.delivery.batch as batch

    monkeypatch.setattr(batch, "_executor", None)


def test_a_chunk_sends_one_request_per_email_on_at_most_the_batch_threads() -> None:
    postal = Postal(latency_s=0.2)
    for rt in _runtime(postal, batch_threads=3):
        outcomes = process_batch(_entries(rt, 9), rt)
        assert all(isinstance(o, Done) and o.result.status == "sent" for o in outcomes)
        assert postal.requests == 9  # one request per message
        assert 2 <= postal.most <= 3  # in parallel, never beyond DELIVERY_BATCH_THREADS


def test_each_email_of_a_chunk_takes_its_own_limiter_slot() -> None:
    postal = Postal(latency_s=0.0)
    limits = {"postal": {"send": "2/min"}}
    for rt in _runtime(postal, rate_limits=limits, limiter_max_inline_wait_s=0.0):
        outcomes = process_batch(_entries(rt, 6), rt)
        sent = [o for o in outcomes if isinstance(o, Done) and o.result.status == "sent"]
        assert postal.requests == len(sent) == 2  # the budget: two requests a minute
        # The others wait for their slot (rescheduled, nothing sent, nothing failed).
        others = [o for o in outcomes if o not in sent]
        assert len(others) == 4
        for o in others:
            assert not (isinstance(o, Done) and o.result.status in ("failed", "sent"))
