"""Secrets scan: API keys, bodies and addresses stay out of results, logs and Flower.

docs/design.md §3.7 and the mher/flower#231 trap (docs/design.md §9). One batch goes through the
real worker (every provider, a send by name, two permanent failures, a retry after a 503, a send
whose answer was lost and had to be reconciled), then every place an operator could read is scanned
for canaries: the result backend (through Celery and raw in Redis), the worker's log file, and a
real Flower process (its JSON API, the task-event fields it keeps, its task and worker pages).
The scan is also positive: Flower must show every task with its redacted arguments, so a Flower
that sees nothing fails the test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from devstack.processes import Proc, free_port, start_flower, wait_for_port
from worker.producer import Producer

from .conftest import SandboxAdmin

pytestmark = pytest.mark.integration

RESULT_TIMEOUT_S = 30
FLOWER_TIMEOUT_S = 30
FLOWER_AUTH = ("scan-user", "scan-pw-5150")

BODY = "BODY-CANARY-7731"
NAME = "Namecanary Persona"
SENDER = "canary.sender@example.org"
POSTAL_TO = "canary.postal@example.com"
POSTAL_CC = "canary.postal.cc@example.com"
MASSIVO_TO = "canary.massivo@example.com"
MAILPARTNER_TO = "canary.mailpartner@example.com"
BYNAME_TO = "canary.byname@example.com"
INVALID_TO = "canary.invalid@@example.com"
REJECTED_TO = "unsubscribed.canary@example.com"
UNVERIFIED_FROM = "canary.from@unverified.example.com"
SMS_TO = ("+33677731001", "+33677731002")
VOICE_TO = "+33677731003"
ADDRESSES = (
    SENDER,
    POSTAL_TO,
    POSTAL_CC,
    MASSIVO_TO,
    MAILPARTNER_TO,
    BYNAME_TO,
    INVALID_TO,
    REJECTED_TO,
    UNVERIFIED_FROM,
)
NUMBERS = (*SMS_TO, VOICE_TO)

# The only lines the worker may write outside structlog, each matched whole: Celery's startup
# banner (printed, not logged), its shutdown notice, and the SecurityWarning it emits when run
# as root, before the setup_logging signal fires. Anything else must be structlog JSON.
KNOWN_NON_JSON = tuple(
    re.compile(pattern)
    for pattern in (
        # celery.apps.worker.Worker.emit_banner
        r" -------------- \S+@\S+ v\d\S* \([\w-]+\)",
        r"--- \*{5} -----",
        r"-- \*{7} ---- .+",
        r"- \*{3} --- \* ---(?: \.> (?:concurrency|task events): .+)?",
        r"- \*\* ---------- (?:\[config\]|\.> (?:app|transport|results): .+)",
        r" -------------- \[queues\]",
        r" +\.> \S+ +exchange=\S+ key=\S+",
        r"\[tasks\]",
        r"  \. (?:tasks|delivery)\.\w+",  # the banner lists delivery.track_* too
        # celery.apps.worker: safe_say on SIGTERM / SIGINT / SIGQUIT
        r"worker: (?:Warm|Cold) shutdown \(MainProcess\)",
        # celery.platforms.check_privileges, through warnings.warn, only as root
        r".*celery[\\/]platforms\.py:\d+: SecurityWarning: You're running the worker with "
        r"superuser privileges: this is",
        r"absolutely not recommended!",
        r"Please specify a different user using the --uid option\.",
        r"User information: uid=\d+ euid=\d+ gid=\d+ egid=\d+",
        r" +_warn_or_raise_security_error\(egid, euid, gid, uid,",
    )
)


def email(provider: str, to: str, body: str = BODY, **extra: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "to": [{"email": to, "name": NAME}],
        "from": {"email": SENDER, "name": "Shop"},
        "reply_to": {"email": SENDER},
        "subject": f"Order {body}",
        "preview_text": f"Preview {body}",
        "html": f"<p>{body}</p>",
        "text": f"Plain {body}",
        **extra,
    }


def key_canaries(stack_env: dict[str, str]) -> dict[str, str]:
    """Label → needle for every configured API key, raw and URL-encoded."""
    keys = {name: value for name, value in stack_env.items() if name.endswith("_API_KEY")}
    assert len(keys) == 5 and all(keys.values()), keys
    return {
        f"{name} ({how})": form
        for name, value in keys.items()
        for how, form in (
            ("raw", value),
            ("quote", quote(value, safe="")),
            ("quote_plus", quote_plus(value)),
        )
    }


def personal_canaries(
    body: str, addresses: tuple[str, ...], numbers: tuple[str, ...]
) -> dict[str, str]:
    """Label → needle for bodies, names, addresses and numbers, in the forms they could leak."""
    found = {"body": body, "recipient name": NAME.split()[0]}
    for address in addresses:
        found[address] = address
        # The local part alone is personal too; the mask keeps only its first letter.
        found[f"local part of {address}"] = address.partition("@")[0]
    for number in numbers:
        found[number] = number
        # Whatever the format (+33…, 0033…, 06…), the national part is in it.
        found[f"national part of {number}"] = number.removeprefix("+33")
    return found


def leaks(text: str, needles: dict[str, str]) -> list[str]:
    return [label for label, needle in needles.items() if needle in text]


class Leak(AssertionError):
    """A canary where it must not be (the known-leak tests expect exactly this failure)."""


def assert_no_leak(text: str, needles: dict[str, str], context: object) -> None:
    found = leaks(text, needles)
    if found:
        raise Leak(f"{found} in {context}")


# -- Flower ---------------------------------------------------------------------------------------


class Flower:
    def __init__(self, proc: Proc, url: str, worker_name: str) -> None:
        self.proc = proc
        self.url = url
        self.worker_name = worker_name
        self.http = httpx.Client(base_url=url, auth=FLOWER_AUTH, timeout=10)

    def get(self, path: str, **params: Any) -> httpx.Response:
        response = self.http.get(path, params=params)
        assert response.status_code == 200, (path, response.status_code, self.proc.log_tail())
        return response

    def tasks(self) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] = self.get("/api/tasks").json()
        return data

    def worker_info(self) -> dict[str, Any]:
        """What Flower's worker page shows, freshly inspected (scheduled, reserved, conf, …)."""
        data = self.get("/api/workers", workername=self.worker_name, refresh=1).json()
        info: dict[str, Any] = data[self.worker_name]
        return info

    def wait_for_tasks(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Flower's view once every task's events arrived (they come asynchronously)."""
        deadline = time.monotonic() + FLOWER_TIMEOUT_S
        while True:
            shown = self.tasks()
            if all(
                shown.get(i, {}).get("state") == "SUCCESS"
                and shown[i].get("args")
                and shown[i].get("result")
                for i in ids
            ):
                return shown
            if time.monotonic() > deadline:
                missing = {
                    i: shown.get(i) for i in ids if shown.get(i, {}).get("state") != "SUCCESS"
                }
                raise AssertionError(f"flower does not show these tasks as done: {missing}")
            time.sleep(0.25)

    def wait_for_worker(self) -> None:
        """Flower's event consumer is live once the worker's heartbeat reached its state."""
        deadline = time.monotonic() + FLOWER_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.alive(), f"flower exited:\n{self.proc.log_tail()}"
            workers = self.get("/workers", json=1).json()["data"]
            if any(w.get("hostname") == self.worker_name for w in workers):
                return
            time.sleep(0.2)
        raise AssertionError(f"flower never saw {self.worker_name}:\n{self.proc.log_tail()}")


@pytest.fixture(scope="module")
def flower(
    stack_env: dict[str, str],
    worker_proc: Proc,
    client: Celery,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Flower]:
    """A real Flower (basic auth) on the session's broker, stopped after the module."""
    port = free_port()
    workdir = Path(tmp_path_factory.mktemp("flower"))
    proc = start_flower(
        workdir, stack_env, port=port, basic_auth=f"{FLOWER_AUTH[0]}:{FLOWER_AUTH[1]}"
    )
    prefix = worker_proc.name.removeprefix("worker-") + "@"
    names = [name for reply in client.control.ping(timeout=1) for name in reply]
    worker_name = next((name for name in names if name.startswith(prefix)), "")
    flower = Flower(proc, f"http://127.0.0.1:{port}", worker_name)
    try:
        assert worker_name, f"worker {worker_proc.name} does not answer ping"
        try:
            wait_for_port(port, timeout_s=FLOWER_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError(f"flower did not start:\n{proc.log_tail()}") from None
        # Without credentials Flower refuses: its API is not open to anyone (flower#231).
        assert httpx.get(f"{flower.url}/api/tasks", timeout=10).status_code == 401
        flower.wait_for_worker()
        yield flower
    finally:
        flower.http.close()
        proc.stop()


# -- helpers for the scans ------------------------------------------------------------------------


def redis_dump(client: redis.Redis) -> dict[str, str]:
    """Every key of one database with its value as text, whatever its type."""
    out: dict[str, str] = {}
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        out[key.decode(errors="replace")] = repr(value)
    return out


def parse_log(text: str) -> list[dict[str, Any]]:
    """Every line of the worker's log as a structlog JSON event; nothing skipped silently."""
    events: list[dict[str, Any]] = []
    bad: list[str] = []
    for line in text.splitlines():
        if not line.strip() or any(p.fullmatch(line.rstrip()) for p in KNOWN_NON_JSON):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(event, dict) or not {"event", "level", "timestamp"} <= event.keys():
            bad.append(line)
            continue
        events.append(event)
    assert not bad, "worker log lines that are not structlog JSON:\n" + "\n".join(bad[:20])
    return events


def wait_for_log(proc: Proc, ids: list[str]) -> str:
    """The log once Celery logged each task's outcome (it does so after storing the result)."""
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while True:
        text = proc.log_path.read_text(encoding="utf-8")
        done = [line for line in text.splitlines() if "succeeded in" in line]
        if all(any(i in line for line in done) for i in ids) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def send_batch(
    producer: Producer, client: Celery, sandbox: SandboxAdmin
) -> dict[str, AsyncResult[Any]]:
    sandbox.set_faults(
        [
            {"provider": "mailpartner", "action": "status", "status": 503, "first_n": 1},
            # SMS Partner processes the send, then the answer is lost: the worker must
            # reconcile by tag, a GET that carries the key in its query string.
            {"provider": "smspartner", "path": "/send", "action": "accept_then_drop", "first_n": 1},
        ]
    )
    postal = email(
        "postal", POSTAL_TO, cc=[{"email": POSTAL_CC, "name": NAME}], headers={"X-Canary": BODY}
    )
    return {
        "postal": producer.enqueue("email", postal),
        "emailmassivo": producer.enqueue("email", email("emailmassivo", MASSIVO_TO)),
        "mailpartner-retried": producer.enqueue("email", email("mailpartner", MAILPARTNER_TO)),
        "sms-reconciled": producer.enqueue(
            "sms",
            {"provider": "smspartner", "to": list(SMS_TO), "text": BODY, "sender": "Shop"},
        ),
        "voice-tts": producer.enqueue(
            "voice",
            {
                "provider": "voicepartner",
                "mode": "tts",
                "to": [VOICE_TO],
                "text": f"Bonjour {BODY}",
                "lang": "fr",
            },
        ),
        "rejected": producer.enqueue("email", email("emailmassivo", REJECTED_TO)),
        "unverified": producer.enqueue(
            "email", email("postal", POSTAL_TO, **{"from": {"email": UNVERIFIED_FROM}})
        ),
        "by-name": client.send_task("tasks.send_email", args=[email("emailmassivo", BYNAME_TO)]),
        "invalid-by-name": client.send_task(
            "tasks.send_email", args=[email("postal", INVALID_TO, reply_to=SENDER)]
        ),
    }


# What Flower's args must show instead of each task's recipients.
EXPECTED_MASKS = {
    "postal": "c***@example.com",
    "emailmassivo": "c***@example.com",
    "mailpartner-retried": "c***@example.com",
    "sms-reconciled": "+3367*****01",
    "voice-tts": "+3367*****03",
    "rejected": "u***@example.com",
    "unverified": "c***@example.com",
    "by-name": "c***@example.com",
    "invalid-by-name": "c***@@example.com",
}


# -- the tests ------------------------------------------------------------------------------------


def test_keys_bodies_and_addresses_stay_out_of_results_logs_and_flower(
    flower: Flower,
    worker_proc: Proc,
    producer: Producer,
    client: Celery,
    sandbox: SandboxAdmin,
    stack_env: dict[str, str],
    redis_url: str,
) -> None:
    secrets = key_canaries(stack_env)
    everything = {**secrets, **personal_canaries(BODY, ADDRESSES, NUMBERS)}

    pending = send_batch(producer, client, sandbox)
    results = {label: r.get(timeout=RESULT_TIMEOUT_S) for label, r in pending.items()}
    ids = {label: r.id for label, r in pending.items()}

    # The batch took the paths it was meant to take.
    for label in ("postal", "emailmassivo", "mailpartner-retried", "sms-reconciled", "voice-tts"):
        assert results[label]["status"] == "sent", (label, results[label])
    assert results["by-name"]["status"] == "sent", results["by-name"]
    assert results["mailpartner-retried"]["attempts"] == 2
    assert [r["status"] for r in sandbox.requests("mailpartner")] == [503, 200]
    assert [r["method"] for r in sandbox.requests("smspartner")] == ["POST", "GET"]
    assert results["rejected"]["error"]["kind"] == "recipient_rejected"
    assert results["unverified"]["error"]["code"] == "UnauthenticatedFromAddress"
    assert results["invalid-by-name"]["error"]["kind"] == "invalid_message"
    # The canaries did reach the providers: the scans below look for something real.
    arrived = json.dumps(sandbox.messages())
    assert all(needle in arrived for needle in (BODY, POSTAL_TO, SMS_TO[0], VOICE_TO, NAME))

    # (a) Results, as Celery returns them and raw in the result backend (db 1); and the keys
    # nowhere in Redis (db 0: queues, ledger, limiter and breaker state).
    for label, result in results.items():
        assert leaks(json.dumps(result), everything) == [], (label, result)
    backend = redis.Redis.from_url(f"{redis_url}/1")
    broker = redis.Redis.from_url(f"{redis_url}/0")
    try:
        raw_results = redis_dump(backend)
        for task_id in ids.values():
            assert f"celery-task-meta-{task_id}" in raw_results
        for key, value in raw_results.items():
            assert leaks(key + value, everything) == [], (key, value)
        for key, value in redis_dump(broker).items():
            assert leaks(key + value, secrets) == [], key
    finally:
        backend.close()
        broker.close()

    # (c, d) Flower shows every task, with redacted arguments, once its events arrived.
    shown = flower.wait_for_tasks(list(ids.values()))
    assert leaks(flower.get("/api/tasks").text, everything) == []
    for label, task_id in ids.items():
        info_text = flower.get(f"/api/task/info/{task_id}").text
        info = json.loads(info_text)
        for field in ("args", "kwargs", "result", "exception", "traceback"):
            assert leaks(str(info.get(field)), everything) == [], (label, field, info[field])
        assert leaks(info_text, everything) == [], (label, info)
        assert info["state"] == "SUCCESS", (label, info)
        assert EXPECTED_MASKS[label] in info["args"], (label, info["args"])
        assert "[redacted]" in info["args"], (label, info["args"])
        assert info["kwargs"] == "{}", (label, info["kwargs"])
        assert f"'status': '{results[label]['status']}'" in info["result"], (label, info)
        # The task page an operator opens, and Flower's own read of the result backend.
        page = flower.get(f"/task/{task_id}").text
        assert task_id in page and EXPECTED_MASKS[label] in page, label
        assert leaks(page, everything) == [], label
        assert leaks(flower.get(f"/api/task/result/{task_id}").text, everything) == [], label
    assert shown[ids["mailpartner-retried"]]["retries"] == 1
    # The worker page (stats, conf, queues; its task lists are empty by now).
    assert leaks(json.dumps(flower.worker_info()), secrets) == []
    assert leaks(flower.get(f"/worker/{flower.worker_name}").text, secrets) == []
    assert leaks(flower.proc.log_path.read_text(errors="replace"), everything) == []

    # (b) The worker's log: every line structlog JSON, no canary on any line.
    text = wait_for_log(worker_proc, list(ids.values()))
    events = parse_log(text)
    for label, task_id in ids.items():
        assert any(task_id in json.dumps(e) for e in events), f"no log line for {label}"
    assert any(e["event"] == "delivery.reconciled" for e in events)
    for number, line in enumerate(text.splitlines(), 1):
        assert leaks(line, everything) == [], (number, line)


def test_bare_celery_client_by_name_is_redacted_in_flower(
    flower: Flower, sandbox: SandboxAdmin, stack_env: dict[str, str]
) -> None:
    body, to = "BODY-CANARY-BARE-4417", "canary.bare@example.com"
    canaries = {**key_canaries(stack_env), **personal_canaries(body, (to, SENDER), ())}
    # A separate interpreter: the worker's before_task_publish hook is not loaded there. The
    # README example omits the queue, and the worker consumes only "delivery", so name it.
    code = (
        "import json, sys\n"
        "from celery import Celery\n"
        "app = Celery('bare', broker=sys.argv[1], backend=sys.argv[2])\n"
        "r = app.send_task('tasks.send_email', args=[json.loads(sys.argv[3])], queue='delivery')\n"
        "print(json.dumps([r.id, r.get(timeout=30)]))\n"
    )
    argv = [
        sys.executable, "-c", code,
        stack_env["DELIVERY_BROKER_URL"], stack_env["DELIVERY_RESULT_BACKEND"],
        json.dumps(email("postal", to, body)),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    task_id, result = json.loads(done.stdout)
    assert result["status"] == "sent"
    flower.wait_for_tasks([task_id])
    info_text = flower.get(f"/api/task/info/{task_id}").text
    assert_no_leak(info_text, canaries, json.loads(info_text)["args"])


def test_task_waiting_in_the_worker_is_redacted_in_flowers_worker_view(
    flower: Flower,
    producer: Producer,
    sandbox: SandboxAdmin,
    stack_env: dict[str, str],
) -> None:
    body, to = "BODY-CANARY-WAIT-9052", "canary.waiting@example.com"
    canaries = {**key_canaries(stack_env), **personal_canaries(body, (to, SENDER), ())}
    # A countdown keeps the task in the worker's timer, as a retry's backoff does.
    pending = producer.enqueue("email", email("postal", to, body), countdown=4)
    try:
        deadline = time.monotonic() + 3
        scheduled: list[Any] = []
        while not scheduled and time.monotonic() < deadline:
            info = flower.worker_info()
            scheduled = [s for s in info.get("scheduled") or [] if s["request"]["id"] == pending.id]
        assert scheduled, "the task never showed in Flower's scheduled list"
        page = flower.get(f"/worker/{flower.worker_name}").text
        assert_no_leak(json.dumps(info) + page, canaries, scheduled)
    finally:
        # Never leave a send behind for later tests' sandbox.
        assert pending.get(timeout=RESULT_TIMEOUT_S)["status"] == "sent"


# -- the tracking receiver ------------------------------------------------------------------------

RECEIVER_SECRET = "scan-tracking-secret-5150-0123456789abcdef"
RECEIVER_BODY = "BODY-CANARY-HOOK-6093"
HOOK_TO = ("canary.hook@example.com", "canary.hook.cc@example.com")
HOOK_NUMBER = "+33677731009"


@pytest.fixture(scope="module")
def receiver(
    stack_env: dict[str, str], sandbox_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """``delivery-worker receiver`` on the session's broker, trusting the sandbox's Postal key;
    the session worker applies what it publishes. DEBUG: it logs all it ever would."""
    from devstack.receiver import start_receiver

    key = httpx.get(sandbox_url + "/_admin/webhooks", timeout=10).json()["postal"]["public_key"]
    env = {
        **stack_env,
        "DELIVERY_POSTAL_WEBHOOK_PUBLIC_KEY": key,
        "DELIVERY_TRACKING_SECRET": RECEIVER_SECRET,
        "DELIVERY_LOG_FORMAT": "json",
        "DELIVERY_LOG_LEVEL": "DEBUG",
    }
    proc = start_receiver(Path(tmp_path_factory.mktemp("receiver")), env)
    yield proc
    proc.stop()


def test_the_receivers_log_holds_no_key_secret_token_body_or_address(
    receiver: Proc,
    worker_proc: Proc,
    producer: Producer,
    sandbox: SandboxAdmin,
    stack_env: dict[str, str],
) -> None:
    from delivery_sandbox.webhooks import PostalSigner
    from worker.tracking.callbacks import callback_token

    url = str(receiver.extra["url"])
    token = callback_token(RECEIVER_SECRET, "voicepartner", "dlv-scan-1")
    canaries = {
        **key_canaries(stack_env),
        **personal_canaries(RECEIVER_BODY, (*HOOK_TO, SENDER), (HOOK_NUMBER,)),
        "tracking secret": RECEIVER_SECRET,
        "hint token": token,
    }
    # The real push: a Postal send through the worker; the sandbox signs a MessageSent per
    # recipient (addresses, subject and message token inside) and posts it to the receiver.
    sandbox.http.post("/_admin/webhooks", json={"postal_url": url + "/hooks/postal"})
    message = email("postal", HOOK_TO[0], RECEIVER_BODY, cc=[{"email": HOOK_TO[1]}])
    assert producer.enqueue("email", message).get(timeout=RESULT_TIMEOUT_S)["status"] == "sent"
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    attempts: list[dict[str, Any]] = []
    while len(attempts) < 2 and time.monotonic() < deadline:
        attempts = sandbox.http.get("/_admin/webhooks").json()["attempts"]
        time.sleep(0.1)
    assert [a["status"] for a in attempts] == [200, 200], attempts

    # A hint with its token and a body full of canaries; refusals that echo nothing back.
    hostile = {"phoneNumber": HOOK_NUMBER, "text": RECEIVER_BODY, "to": HOOK_TO[0]}
    assert httpx.post(f"{url}/hooks/voicepartner/dlv-scan-1/{token}", data=hostile).status_code == (
        200
    )
    bad = f"{url}/hooks/voicepartner/{HOOK_TO[0]}/{token}"
    assert httpx.post(bad, data=hostile).status_code in (403, 404)
    forged_body = json.dumps({"event": "MessageSent", "uuid": "u-scan", "timestamp": time.time(),
                              "payload": {"message": {"id": 1, "to": HOOK_TO[0]},
                                          "details": RECEIVER_BODY}}).encode()  # fmt: skip
    forged = PostalSigner().headers(forged_body)
    assert httpx.post(f"{url}/hooks/postal", content=forged_body, headers=forged).status_code == (
        403
    )
    assert httpx.post(f"{url}/hooks/postal", content=forged_body).status_code == 401
    time.sleep(0.5)

    text = receiver.log_path.read_text(errors="replace")
    lines = text.splitlines()
    assert lines[0].startswith("receiver listening on http://127.0.0.1:")
    logged = [json.loads(line) for line in lines[1:] if line.strip()]  # every other line JSON
    names = [e["event"] for e in logged]
    assert names.count("receiver.published") >= 3 and "receiver.refused" in names, names
    for number, line in enumerate(lines, 1):
        assert leaks(line, canaries) == [], (number, line)
    # The worker applied the receiver's events; its log stays clean too.
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    worker_log = ""
    while "Task delivery.track_events[" not in worker_log and time.monotonic() < deadline:
        time.sleep(0.2)
        worker_log = worker_proc.log_path.read_text(errors="replace")
    assert "Task delivery.track_events[" in worker_log
    for number, line in enumerate(worker_log.splitlines()):
        assert leaks(line, canaries) == [], (number, line)
