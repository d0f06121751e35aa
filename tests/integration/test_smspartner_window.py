"""SMS Partner's marketing window (docs/providers/smspartner.md §1.2.2, §1.3 codes 22/23), with real
processes.

A refusal with code 22 reschedules only that message to the next allowed slot; the shared SMS
budget is not held, so another SMS enqueued at the same time is sent at once. The sandbox answers
code 22 for ``+33600000022`` (its documented magic number).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from worker.providers.partner import PROVIDER_TZ

pytestmark = pytest.mark.integration

_SOAK_PATH = Path(__file__).resolve().parents[2] / "bench" / "fault_soak.py"


def _load_soak() -> Any:
    spec = importlib.util.spec_from_file_location("fault_soak", _SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


soak = sys.modules.get("fault_soak") or _load_soak()


def test_code_22_defers_one_message_while_another_sms_is_sent_at_once(
    redis_url: str, sandbox_url: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **stack_env,
        **soak.FAST_ENV,
        "DELIVERY_BROKER_URL": f"{redis_url}/10",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/11",
    }
    stack = soak.Stack(env=env, sandbox_url=sandbox_url, workdir=tmp_path)
    with soak.Run(stack, "sms-window") as run:
        # The session's sandbox: a send still in flight from an earlier test is recorded after
        # the reset, received before this run began; it is not this test's.
        began = time.time()
        run.start_workers(1, 2)
        refused = run.producer.enqueue(
            "sms", {"provider": "smspartner", "to": ["+33600000022"], "text": "Promo -20%"}
        ).id
        started = time.monotonic()
        other = run.producer.enqueue(
            "sms", {"provider": "smspartner", "to": ["+33612000001"], "text": "Votre code 1234"}
        ).id
        states = run.wait_final([other], 30)
        sent_in_s = time.monotonic() - started
        assert states == {other: "sent"}
        assert sent_in_s < 10  # not behind a 60 s provider-wide hold

        record = run.ledger.get(refused)
        assert record is not None
        # Held on the durable schedule until the slot (worker.scheduling), not polled.
        assert (record.state, record.fields.get("waiting_reason")) == ("scheduled", "deferred")
        slot = datetime.fromtimestamp(float(record.fields["not_before"]), PROVIDER_TZ)
        assert (slot.hour, slot.minute) == (8, 0) and slot.weekday() != 6
        assert slot.timestamp() > time.time()
        assert (record.attempts, record.throttled) == (0, 0)

        # Until the slot nothing runs: no countdown polling, one /send for it only.
        time.sleep(3)  # > DELIVERY_RETRY_BACKOFF_MAX_S: a Celery countdown would have run
        sends = [
            r
            for r in run.admin.requests("smspartner")
            if r["route"] == "/send" and r["time"] >= began
        ]
        assert len(sends) == 2, sends
        again = run.ledger.get(refused)
        assert again is not None and again.state == "scheduled"
        assert again.updated_at == record.updated_at  # it did not run again
        assert run.ledger.redis.zscore("dw:scheduled", refused) == slot.timestamp()
