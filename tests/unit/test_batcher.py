"""The main-process side of batching (``worker.batching.strategy.Batcher``) against recording
fakes of Celery's consumer parts: when a batch leaves, what the pool job gets, how each
message is answered (Celery's own ``on_success`` / ``on_failure``), and the prefetch."""

from __future__ import annotations

from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError

from worker.batching.runner import run_batch
from worker.batching.strategy import Batcher
from worker.config import Settings


class FakeQos:
    def __init__(self) -> None:
        self.value = 4

    def increment_eventually(self, n: int = 1) -> None:
        self.value += n

    def decrement_eventually(self, n: int = 1) -> None:
        self.value -= n


class FakeTimer:
    def __init__(self) -> None:
        self.entries: list[list[Any]] = []

    def call_after(self, secs: float, fun: Any) -> Any:
        entry = [secs, fun, False]
        self.entries.append(entry)

        class Ref:
            def cancel(self) -> None:
                entry[2] = True

        return Ref()

    def fire(self) -> None:
        for entry in list(self.entries):
            if not entry[2]:
                entry[2] = True
                entry[1]()


class FakePool:
    limit = 2

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def apply_async(self, fn: Any, **kwargs: Any) -> None:
        self.jobs.append({"fn": fn, **kwargs})


class FakeConsumer:
    def __init__(self) -> None:
        self.qos = FakeQos()
        self.timer = FakeTimer()
        self.pool = FakePool()


class FakeRequest:
    def __init__(self, n: int, retries: int = 0) -> None:
        self.id = f"t-{n}"
        self.name = "tasks.send_sms"
        self.args = ({"to": ["+33612000001"], "text": f"m{n}"},)
        self.request_dict = {"retries": retries}
        self.calls: list[tuple[str, Any]] = []

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        self.calls.append(("accepted", pid))

    def on_success(self, failed_retval_runtime: Any) -> None:
        self.calls.append(("success", failed_retval_runtime[0]))

    def on_failure(self, einfo: Any) -> None:
        self.calls.append(("failure", einfo))


def batcher(**overrides: Any) -> tuple[Batcher, FakeConsumer]:
    consumer = FakeConsumer()
    settings = Settings(batching=True, batch_linger_s=0.2, batch_max_items=3, **overrides)
    return Batcher(consumer, settings), consumer


def test_a_full_batch_leaves_at_once_as_one_pool_job() -> None:
    b, consumer = batcher()
    requests = [FakeRequest(n, retries=n) for n in range(4)]
    for r in requests:
        b.add(r)
    assert len(consumer.pool.jobs) == 1
    job = consumer.pool.jobs[0]
    assert job["fn"] is run_batch
    (tasks,) = job["args"]
    assert [t[0] for t in tasks] == ["t-0", "t-1", "t-2"]
    assert [t[3] for t in tasks] == [0, 1, 2]  # Celery retries travel with each task
    assert tasks[0][2] == requests[0].args[0]
    assert b.buffer == [requests[3]]


def test_the_linger_sends_a_partial_batch() -> None:
    b, consumer = batcher()
    b.add(FakeRequest(1))
    b.add(FakeRequest(2))
    assert consumer.pool.jobs == []
    assert [e[0] for e in consumer.timer.entries] == [0.2]  # one timer, from the first message
    consumer.timer.fire()
    assert len(consumer.pool.jobs) == 1 and len(consumer.pool.jobs[0]["args"][0]) == 2


def test_each_message_is_answered_by_celerys_own_handlers() -> None:
    b, consumer = batcher()
    requests = [FakeRequest(n) for n in range(3)]
    for r in requests:
        b.add(r)
    job = consumer.pool.jobs[0]
    job["accept_callback"](1234, 0.0)
    job["callback"](["done", "retry", "parked"])
    for r in requests:
        assert r.calls == [("accepted", 1234), ("success", False)]


def test_a_lost_pool_process_hands_every_message_to_on_failure() -> None:
    b, consumer = batcher()
    requests = [FakeRequest(n) for n in range(3)]
    for r in requests:
        b.add(r)
    try:
        raise WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)")
    except WorkerLostError:
        einfo = ExceptionInfo()
    consumer.pool.jobs[0]["error_callback"](einfo)
    for r in requests:
        assert r.calls == [("failure", einfo)]
    assert consumer.qos.value == 4 + 3  # prefetch given back; the headroom stays


def test_prefetch_headroom_of_a_batch_and_one_per_message_given_back_on_the_answer() -> None:
    b, consumer = batcher()
    start = consumer.qos.value
    requests = [FakeRequest(n) for n in range(3)]
    for r in requests:
        b.add(r)
    assert consumer.qos.value == start + 3 + 3  # headroom (max items) + one per message
    consumer.pool.jobs[0]["callback"](["done"] * 3)
    assert consumer.qos.value == start + 3
