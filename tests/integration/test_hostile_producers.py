"""Hostile producers: whatever arrives on the queue by name, the workers stay up.

Real redis-server, the sandbox, ``celery worker`` processes of our own (Redis databases 10/11,
so the session worker never takes these tasks). Messages are generated with hypothesis and sent
by name from a separate interpreter that imports no delivery-worker code
(``bare_client.py``: plain ``send_task``, and raw publishes for corrupt bodies and other
content types). Every message must end final in the ledger and the result backend (or, with no
readable id, as a counted rejection); the worker's main and pool processes are the same before
and after; a valid message sent after the storm is delivered; the log holds no key, no canary
from a body or an address, and no "Unrecoverable error".
"""

from __future__ import annotations

import base64
import bz2
import json
import lzma
import os
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.processes import Proc, _spawn, start_worker
from worker.app import client_app
from worker.guard import MAIN_MARK_PREFIX, REJECTED_KEY
from worker.guard.refusals import REFUSED_COPY_SUFFIX
from worker.producer import Producer
from worker.stores import FINAL_STATES, RedisLedger

from .conftest import wait_ready

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
CANARY = "HOSTILE-CANARY-5521"
CANARY_LOCAL = "canary.hostile"
LIMITS_ENV = {
    # Small enough that "huge" stays cheap to generate; the defaults are tested in unit tests.
    "DELIVERY_MAX_MESSAGE_BYTES": str(1024 * 1024),
    "DELIVERY_MAX_MESSAGE_ITEMS": "2000",
    "DELIVERY_MAX_MESSAGE_STRING": "100000",
}
INJECTIONS = [
    f"{CANARY_LOCAL}@example.com\r\nBcc: evil@example.org",
    f"Order {CANARY}\r\nX-Injected: yes",
    f"{CANARY}\nBcc: evil@example.org",
    f"{CANARY_LOCAL}@example.com%0d%0aBcc:evil@example.org",
    f"\x00{CANARY}",
    f"{CANARY}\u2028Bcc: evil@example.org",
]


def nested(depth: int, leaf: Any = CANARY) -> Any:
    value = leaf
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def base_message(channel: str) -> dict[str, Any]:
    if channel == "email":
        return {
            "provider": "postal",
            "to": [{"email": f"{CANARY_LOCAL}@example.com"}],
            "from": {"email": "shop@example.org"},
            "subject": f"Order {CANARY}",
            "text": f"Body {CANARY}",
        }
    if channel == "sms":
        return {"provider": "smspartner", "to": ["+33612345678"], "text": f"Code {CANARY}"}
    return {"provider": "voicepartner", "mode": "tts", "to": ["+33612345678"], "text": CANARY}


TASKS = {"email": "tasks.send_email", "sms": "tasks.send_sms", "voice": "tasks.send_voice"}
odd_text = st.text(
    st.one_of(
        st.characters(max_codepoint=0x2FFF),
        st.sampled_from(["\ud800", "\udfff", "\x00", "\x1b", "\r", "\n", "\u2028", "\ufeff"]),
    ),
    max_size=30,
).map(lambda t: CANARY + t)
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
hostile = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
huge = st.one_of(
    st.integers(33, 900).map(nested),  # deep (kombu's JSON encoder recurses: <= ~990 by name)
    st.integers(100_001, 250_000).map(lambda n: CANARY + "x" * n),  # long string
    st.integers(2_001, 4_000).map(lambda n: list(range(n))),  # many items
    st.integers(1_100, 1_400).map(lambda n: ["y" * 999] * n),  # over the byte limit
)
value = st.one_of(hostile, huge, st.sampled_from(INJECTIONS))
FIELDS = [
    "to", "cc", "from", "subject", "text", "html", "provider", "tag", "template", "headers",
    "attachments", "mode", "deadline", "idempotency_key", "lang", "raw", "surprise",
]  # fmt: skip


@st.composite
def task_case(draw: st.DrawFn) -> dict[str, Any]:
    channel = draw(st.sampled_from(sorted(TASKS)))
    message = base_message(channel)
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
        if field == "to" and draw(st.booleans()):
            message["to"] = [{"email": draw(st.sampled_from(INJECTIONS))}]
        else:
            message[field] = draw(value)
    args: list[Any] = [message]
    kwargs: dict[str, Any] = {}
    shape = draw(st.sampled_from(["plain"] * 5 + ["non-dict", "extra-arg", "extra-kw", "none"]))
    if shape == "non-dict":
        args = [draw(st.one_of(hostile, huge).filter(lambda v: not isinstance(v, dict)))]
    elif shape == "extra-arg":
        args.append(draw(hostile))
    elif shape == "extra-kw":
        kwargs = {draw(st.sampled_from(["x", "message", CANARY])): draw(hostile)}
    elif shape == "none":
        args = []
    name = TASKS[channel]
    if draw(st.integers(0, 9)) == 0:
        name = "tasks." + draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20))
    return {"kind": "task", "id": str(uuid.uuid4()), "name": name, "args": args, "kwargs": kwargs}


def headers(task_id: str | None, name: str = "tasks.send_email") -> dict[str, Any]:
    out: dict[str, Any] = {"lang": "py", "task": name, "argsrepr": "()", "kwargsrepr": "{}"}
    if task_id is not None:
        out["id"] = task_id
        out["root_id"] = task_id
    return out


@st.composite
def raw_case(draw: st.DrawFn) -> dict[str, Any]:
    """A corrupt body, another content type, or no id at all, published as bytes."""
    has_id = draw(st.integers(0, 4)) > 0
    task_id = str(uuid.uuid4()) if has_id else None
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/x-python-serialize",
                "text/plain",
                "application/x-yaml",
            ]
        )
    )
    body = draw(st.binary(max_size=200)) + CANARY.encode()
    return {
        "kind": "raw",
        "id": task_id,
        "headers": headers(task_id, draw(st.sampled_from(sorted(TASKS.values())))),
        "body_b64": base64.b64encode(body).decode(),
        "content_type": content_type,
        "content_encoding": draw(st.sampled_from(["utf-8", "binary"])),
    }


def generate(strategy: st.SearchStrategy[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` hypothesis examples (collected, then sent in one batch by the bare client)."""
    cases: list[dict[str, Any]] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(case: dict[str, Any]) -> None:
        cases.append(case)

    collect()
    return cases[:count]


def fixed_cases() -> list[dict[str, Any]]:
    """The issue's message, and what a generator cannot send by name (order matters)."""
    issue = base_message("email")
    issue["tag"] = nested(500)
    deep = {"kind": "raw", "deep_json": 100_000, "content_encoding": "utf-8"}
    json_type = {"content_type": "application/json", "content_encoding": "utf-8"}
    ids = [str(uuid.uuid4()) for _ in range(4)]
    return [
        {"kind": "task", "id": ids[0], "name": TASKS["email"], "args": [issue], "kwargs": {}},
        {**deep, "id": ids[1], "headers": headers(ids[1]), **json_type},
        {**deep, "id": None, "headers": headers(None), **json_type},
        {
            "kind": "raw",
            "id": ids[2],
            "headers": headers(ids[2]),
            "body_b64": base64.b64encode(b"\x80\x04\x95" + CANARY.encode()).decode(),
            "content_type": "application/x-python-serialize",
            "content_encoding": "binary",
        },
        {
            "kind": "raw",
            "id": ids[3],
            "headers": {**headers(ids[3]), "x": nested(200)},
            "body_b64": base64.b64encode(b"[[], {}, {}]").decode(),
            **json_type,
        },
    ]


def send_bare(env: dict[str, str], cases: list[dict[str, Any]]) -> None:
    argv = [
        sys.executable, str(HERE / "bare_client.py"),
        env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"],
    ]  # fmt: skip
    done = subprocess.run(
        argv, input=json.dumps(cases), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip()) == len(cases)


@pytest.fixture
def hostile_env(stack_env: dict[str, str], redis_url: str) -> Iterator[dict[str, str]]:
    env = {
        **stack_env,
        **LIMITS_ENV,
        "DELIVERY_BROKER_URL": f"{redis_url}/10",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/11",
    }
    for db in (10, 11):
        with redis.Redis.from_url(f"{redis_url}/{db}") as r:
            r.flushdb()
    yield env


@pytest.fixture
def hostile_client(hostile_env: dict[str, str]) -> Celery:
    return client_app(
        hostile_env["DELIVERY_BROKER_URL"], hostile_env["DELIVERY_RESULT_BACKEND"], name="hostile"
    )


def processes(proc: Proc) -> tuple[int, frozenset[int]]:
    """The worker's main process and its pool processes (``ps --ppid``)."""
    out = subprocess.run(
        ["ps", "--ppid", str(proc.pid), "-o", "pid="], capture_output=True, text=True, check=False
    ).stdout
    return proc.pid, frozenset(int(pid) for pid in out.split())


def wait_final(
    ledger: RedisLedger, client: Celery, ids: list[str], timeout_s: float
) -> dict[str, tuple[str, Any]]:
    """``id -> (ledger state, result)`` once each is final in the ledger and ready in the
    result backend; raises with the unfinished ones otherwise."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, tuple[str, Any]] = {}
    while time.monotonic() < deadline and len(done) < len(ids):
        for task_id in ids:
            if task_id in done:
                continue
            record = ledger.get(task_id)
            result = client.AsyncResult(task_id)
            if record is not None and record.final and result.ready():
                done[task_id] = (record.state, result.get(timeout=5, propagate=False))
        time.sleep(0.2)
    missing = {i: (ledger.get(i).state if ledger.get(i) else None) for i in ids if i not in done}
    assert not missing, f"not final: {missing}"
    return done


def assert_clean_log(proc: Proc, env: dict[str, str]) -> None:
    text = proc.log_path.read_text(errors="replace")
    assert "Unrecoverable error" not in text
    assert CANARY not in text
    assert CANARY_LOCAL not in text
    for name, value in env.items():
        if name.endswith("_API_KEY"):
            assert value not in text, name


def test_a_storm_of_hostile_messages_by_name_leaves_every_one_final_and_the_worker_up(
    hostile_env: dict[str, str],
    hostile_client: Celery,
    sandbox: Any,
    tmp_path: Path,
) -> None:
    proc = start_worker(tmp_path, hostile_env, name="hostile", concurrency=2)
    try:
        wait_ready(hostile_client, proc)
        before = processes(proc)
        cases = fixed_cases() + generate(task_case(), 120) + generate(raw_case(), 30)
        send_bare(hostile_env, cases)
        ledger = RedisLedger(redis.Redis.from_url(hostile_env["DELIVERY_BROKER_URL"]))
        ids = [c["id"] for c in cases if c["id"] is not None]
        outcomes = wait_final(ledger, hostile_client, ids, timeout_s=120)
        without_id = sum(1 for c in cases if c["id"] is None)
        rejected = ledger.redis.hgetall(REJECTED_KEY)
        assert sum(int(v) for v in rejected.values()) == without_id

        for task_id, (state, result) in outcomes.items():
            assert isinstance(result, dict), (task_id, result)
            assert result["status"] == state and state in FINAL_STATES, (task_id, result)
        # The issue's message, the 100,000-deep body, the pickle and the deep headers:
        issue, deep, pickled, deep_headers = (cases[i]["id"] for i in (0, 1, 3, 4))
        reasons = {i: outcomes[i][1]["error"] for i in (issue, deep, pickled, deep_headers)}
        assert reasons[issue] == {
            "kind": "invalid_message",
            "message": "nesting depth 503 exceeds the limit of 32",
        }
        # Refused by the scan of the encoded body, before the decoder recursed into it.
        assert reasons[deep]["message"].startswith("nesting depth of at least ")
        assert "application/x-python-serialize" in reasons[pickled]["message"]
        assert reasons[deep_headers]["message"].startswith("headers: nesting depth")
        letters = ledger.dead_letters()
        assert letters[issue]["redacted"] is True and CANARY not in json.dumps(letters[issue])
        assert letters[issue]["outline"]["tag"] == "dict[1]"
        refused = sum(
            1 for _s, r in outcomes.values() if r.get("error", {}).get("kind") == "invalid_message"
        )
        print(
            f"[hostile] messages={len(cases)} final={len(outcomes)} "
            f"rejected_without_id={without_id} invalid={refused}"
        )

        valid = base_message("sms")
        valid["text"] = "Code 1234"
        good_id = str(uuid.uuid4())
        send_bare(
            hostile_env,
            [
                {
                    "kind": "task",
                    "id": good_id,
                    "name": "tasks.send_sms",
                    "args": [valid],
                    "kwargs": {},
                }
            ],
        )
        assert hostile_client.AsyncResult(good_id).get(timeout=60)["status"] == "sent"

        assert proc.alive(), proc.log_tail()
        assert processes(proc) == before
        assert not list(ledger.redis.scan_iter(MAIN_MARK_PREFIX + "*"))  # every mark cleared
        assert_clean_log(proc, hostile_env)
    finally:
        proc.stop()


def crashing_worker(workdir: Path, env: dict[str, str], name: str) -> Proc:
    """A real worker from ``crashing_worker.py``: its main process dies on the marker."""
    argv = [
        sys.executable, str(HERE / "crashing_worker.py"), "-A", "worker", "worker",
        "--loglevel", "INFO", "--concurrency", "1", "--hostname", f"{name}@%h",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    return _spawn(f"worker-{name}", argv, workdir / f"{name}.log", {**os.environ, **env})


def test_a_message_that_kills_the_main_process_is_a_dead_letter_on_its_next_delivery(
    hostile_env: dict[str, str], hostile_client: Celery, sandbox: Any, tmp_path: Path
) -> None:
    # Set aside after one main-process death (the default is two: see the next test).
    hostile_env = {**hostile_env, "DELIVERY_MAX_MAIN_PROCESS_CRASHES": "1"}
    first = crashing_worker(tmp_path, hostile_env, "crashing")
    try:
        wait_ready(hostile_client, first)
        message = base_message("sms")
        message["text"] = "MAIN-CRASH-MARKER"
        task_id = str(uuid.uuid4())
        send_bare(
            hostile_env,
            [
                {
                    "kind": "task",
                    "id": task_id,
                    "name": "tasks.send_sms",
                    "args": [message],
                    "kwargs": {},
                }
            ],
        )
        assert first.popen.wait(timeout=60) == 70  # the main process died with it
    finally:
        first.stop()
    ledger = RedisLedger(redis.Redis.from_url(hostile_env["DELIVERY_BROKER_URL"]))
    # The dead main process is still a holder of the task's mark.
    assert ledger.redis.hlen(MAIN_MARK_PREFIX + task_id) == 1
    # Redis gives an unacknowledged message back after the visibility timeout; do it now.
    with hostile_client.connection_for_write() as conn:
        conn.transport_options["visibility_timeout"] = 0
        qos = conn.default_channel.qos
        qos.visibility_timeout = 0
        qos.restore_visible(num=100)
    assert ledger.redis.llen("delivery") == 1

    second = crashing_worker(tmp_path, hostile_env, "second")
    try:
        wait_ready(hostile_client, second)
        result = hostile_client.AsyncResult(task_id).get(timeout=60)
        assert result["status"] == "dead"
        assert result["error"]["kind"] == "dead_letter"
        assert "main process of its worker died 1 time" in result["error"]["message"]
        record = ledger.get(task_id)
        assert record is not None and record.state == "dead"
        assert task_id in ledger.dead_letters()
        time.sleep(1)
        assert second.alive(), second.log_tail()
        assert "Unrecoverable error" not in second.log_path.read_text()
    finally:
        second.stop()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def send_good_sms(env: dict[str, str]) -> str:
    """A valid SMS by name; its id."""
    good_id = str(uuid.uuid4())
    message = {"provider": "smspartner", "to": ["+33612345678"], "text": "Code 1234"}
    send_bare(
        env,
        [{"kind": "task", "id": good_id, "name": TASKS["sms"], "args": [message], "kwargs": {}}],
    )
    return good_id


def test_compression_bombs_are_refused_before_they_expand_and_the_main_process_stays_small(
    hostile_env: dict[str, str], hostile_client: Celery, sandbox: Any, tmp_path: Path
) -> None:
    # The default limits (a 96 MiB body), as the issue reproduced it: a 4 KiB bz2 body that
    # inflates to 90 MiB of nested lists peaked the main process at 2.6 GB.
    env = {k: v for k, v in hostile_env.items() if k not in LIMITS_ENV}
    lists = b"[" + b"[[]]," * (90 * 1024 * 1024 // 5) + b"[]]"
    bombs = {
        "bz2 lists": ("bzip2", bz2.compress(lists)),
        "zlib zeros": ("zlib", zlib.compress(b"0" * (200 * 1024 * 1024), 9)),
        "lzma lists": ("application/x-lzma", lzma.compress(lists)),
        "unknown": ("snappy", b"\x00" * 64),
    }
    assert len(bombs["bz2 lists"][1]) < 64 * 1024
    ids = {name: str(uuid.uuid4()) for name in bombs}
    cases = [
        {
            "kind": "raw",
            "id": ids[name],
            "headers": {**headers(ids[name], TASKS["sms"]), "compression": method},
            "body_b64": base64.b64encode(data).decode(),
            "content_type": "application/json",
            "content_encoding": "utf-8",
        }
        for name, (method, data) in bombs.items()
    ]
    del lists
    proc = start_worker(tmp_path, env, name="bombs", concurrency=1)
    try:
        wait_ready(hostile_client, proc)
        idle = peak_rss_mb(proc.pid)
        send_bare(env, cases)
        good_id = send_good_sms(env)
        ledger = RedisLedger(redis.Redis.from_url(env["DELIVERY_BROKER_URL"]))
        outcomes = wait_final(ledger, hostile_client, list(ids.values()), timeout_s=120)
        reasons = {name: outcomes[ids[name]][1]["error"]["message"] for name in bombs}
        assert {outcomes[i][0] for i in ids.values()} == {"failed"}, outcomes
        assert reasons["bz2 lists"] == "more than 20000 items (list items and object keys)"
        assert reasons["lzma lists"] == reasons["bz2 lists"]
        assert reasons["zlib zeros"].startswith(
            "the compressed body inflates beyond the limit of 100663296 bytes"
        )
        assert reasons["unknown"] == "the compressed body cannot be inflated (KeyError)"
        assert set(ids.values()) <= set(ledger.dead_letters())
        assert hostile_client.AsyncResult(good_id).get(timeout=60)["status"] == "sent"
        peak = peak_rss_mb(proc.pid)
        print(f"[bombs] main process peak RSS {peak:.0f} MB (idle {idle:.0f} MB)")
        assert peak < 400, f"main process peaked at {peak:.0f} MB"
        assert proc.alive(), proc.log_tail()
        assert "Unrecoverable error" not in proc.log_path.read_text(errors="replace")
    finally:
        proc.stop()


def test_a_malformed_copy_of_a_scheduled_delivery_is_refused_beside_it_and_the_sms_is_sent(
    hostile_env: dict[str, str], hostile_client: Celery, sandbox: Any, tmp_path: Path
) -> None:
    ledger = RedisLedger(redis.Redis.from_url(hostile_env["DELIVERY_BROKER_URL"]))
    producer = Producer(app=hostile_client, ledger=ledger)
    proc = start_worker(tmp_path, hostile_env, name="copies", concurrency=1)
    try:
        wait_ready(hostile_client, proc)
        due = datetime.fromtimestamp(time.time() + 4.0, UTC).isoformat()
        message = {"provider": "smspartner", "to": ["+33612345678"], "text": "Hi", "send_at": due}
        result = producer.enqueue("sms", message)
        deadline = time.monotonic() + 10
        while (record := ledger.get(result.id)) is None or record.state != "scheduled":
            assert time.monotonic() < deadline, record
            time.sleep(0.05)
        copies = [  # the same delivery id: bad arguments, another content type, an unknown task
            {"kind": "task", "id": result.id, "name": TASKS["sms"], "args": [message, 1],
             "kwargs": {}},
            {"kind": "raw", "id": result.id, "headers": headers(result.id, TASKS["sms"]),
             "body_b64": base64.b64encode(b"[[], {}, {}]").decode(),
             "content_type": "text/plain", "content_encoding": "utf-8"},
            {"kind": "task", "id": result.id, "name": "tasks.nope", "args": [], "kwargs": {}},
        ]  # fmt: skip
        send_bare(hostile_env, copies)
        deadline = time.monotonic() + 30
        while result.id + REFUSED_COPY_SUFFIX not in ledger.dead_letters():
            assert time.monotonic() < deadline, "the copies were never refused"
            time.sleep(0.05)
        assert result.get(timeout=30)["status"] == "sent"
        record = ledger.get(result.id)
        assert record is not None and record.state == "sent", record
        assert result.id not in ledger.dead_letters()
        letter = ledger.dead_letters()[result.id + REFUSED_COPY_SUFFIX]
        assert letter["redacted"] is True
        assert len(sandbox.messages("smspartner")) == 1
        assert proc.alive(), proc.log_tail()
    finally:
        proc.stop()
