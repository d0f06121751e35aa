"""The one-command run: Redis, the sandbox, a worker and Flower, then a demo batch.

Everything runs locally with no account: every provider is pointed at the sandbox. The batch
goes through all five providers, includes one message refused at enqueue and one provider that
runs out of credit, and ends with a table of outcomes. Ctrl-C stops every process it started.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from delivery_sandbox.inbox import INBOX_PATH
from devstack.demo_batch import BAD_MESSAGE, DEMO_BATCH, OUT_OF_CREDIT, DemoItem
from devstack.processes import (
    Proc,
    free_port,
    sandbox_env,
    start_flower,
    start_metrics_exporter,
    start_redis,
    start_sandbox,
    start_worker,
    wait_for_port,
)

__all__ = ["run_demo"]


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def run_demo(
    *,
    workdir: str,
    flower: bool,
    flower_port: int,
    stay: bool,
    workers: int,
    env_file: str | None = ".demo.env",
) -> int:
    """Run the demo; the defaults are the CLI's (``delivery-worker demo --help``)."""
    from worker.app import client_app
    from worker.config import Settings
    from worker.models import InvalidMessage
    from worker.ops.operations import Operations
    from worker.producer import Producer
    from worker.redis_client import redis_client
    from worker.stores import RedisLedger
    from worker.stores.tracking import RedisTrackingStore

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress reaches pipes as it happens
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    cleanup: list[Path] = []

    def stop_all(*_: Any) -> None:
        # A second Ctrl-C while stopping must not leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in reversed(procs):
            proc.stop()
        for path in cleanup:  # the environment points at ports that are closed now
            path.unlink(missing_ok=True)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        print("starting redis-server, the provider sandbox and a worker …")
        redis_proc = start_redis(root / "redis")
        procs.append(redis_proc)
        sandbox = start_sandbox(root, extra_args=["--quiet"])
        procs.append(sandbox)
        redis_url = str(redis_proc.extra["url"])
        sandbox_url = str(sandbox.extra["url"])
        env = {
            "DELIVERY_BROKER_URL": f"{redis_url}/0",
            "DELIVERY_RESULT_BACKEND": f"{redis_url}/1",
            "DELIVERY_LOG_FORMAT": "json",
            # Delivery tracking: beat (in the worker) polls the sandbox's status lookups soon.
            "DELIVERY_TRACKING_POLL_FIRST_S": "1",
            "DELIVERY_TRACKING_POLL_MAX_BACKOFF_S": "2",
            "DELIVERY_TRACKING_POLL_INTERVAL_S": "1",
            **sandbox_env(sandbox_url),
            # Prometheus multiprocess files of this demo's worker, served by the exporter.
            "PROMETHEUS_MULTIPROC_DIR": str(root / "metrics"),
        }
        for stale in (root / "metrics").glob("*.db"):  # a new Redis: counts start anew
            stale.unlink()
        worker = start_worker(
            root,
            env,
            name="demo",
            concurrency=workers,
            extra_args=["-B", "-s", str(root / "beat-schedule")],
        )
        procs.append(worker)
        exporter = start_metrics_exporter(root, env, port=free_port())
        procs.append(exporter)
        flower_auth = ""
        if flower:
            flower_auth = f"demo:{secrets.token_urlsafe(9)}"
            procs.append(_start_flower(root, env, flower_port, flower_auth))

        provider, credits = OUT_OF_CREDIT
        httpx.post(
            f"{sandbox_url}/_admin/balance", json={"provider": provider, "credits": credits}
        ).raise_for_status()

        app = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"], name="demo")
        ledger = RedisLedger(redis_client(env["DELIVERY_BROKER_URL"]))
        producer = Producer(app=app, ledger=ledger)
        _wait_worker_ready(app, worker)

        print(f"enqueueing {len(DEMO_BATCH) + 1} demo messages through 5 providers …")
        sent: list[tuple[DemoItem, str]] = []
        rows: list[list[str]] = []
        for item in [*DEMO_BATCH[:3], BAD_MESSAGE, *DEMO_BATCH[3:]]:
            try:
                result = producer.enqueue(item.channel, item.message)
            except InvalidMessage as exc:
                rows.append(
                    [
                        item.label,
                        "-",
                        "refused",
                        "0",
                        "-",
                        str(exc).removeprefix("invalid message: "),
                    ]
                )
                continue
            sent.append((item, str(result.id)))

        ids = [d for _, d in sent]
        _follow(ledger, ids, timeout_s=60)
        parked = [d for d in ids if (r := ledger.get(d)) is not None and r.state == "parked"]
        if parked:
            print(
                f"{provider} ran out of credit: it is paused for every worker and "
                f"{len(parked)} message(s) are parked, not failed."
            )
            print(
                f"topping up the sandbox account and resuming, as an operator would with "
                f"`delivery-worker resume {provider}` …"
            )
            httpx.post(
                f"{sandbox_url}/_admin/balance", json={"provider": provider, "credits": 1000}
            ).raise_for_status()
            ops = Operations.on_redis(ledger.redis, settings=Settings.from_env(env), app=app)
            ops.resume(provider)
            _follow(ledger, ids, timeout_s=60, final={"sent", "failed", "expired", "dead"})
        tracking = RedisTrackingStore(ledger.redis)
        _follow_tracking(tracking, ids, timeout_s=20)
        for item, delivery_id in sent:
            record = ledger.get(delivery_id)
            row = _row(item, delivery_id, record, _delivery_status(tracking, delivery_id))
            if delivery_id in parked and record is not None and record.state == "sent":
                row[2] = "sent (parked, resumed)"
            rows.append(row)
        _print_table(rows)
        print(f"\nwall time: {time.monotonic() - started:.1f}s; logs in {root}")
        counts = Counter(r[2] for r in rows)
        print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if stay:  # with --exit they are stopped next: their URLs would lead nowhere
            cli = cli_command()
            print(
                f"\nMetrics: {exporter.extra['url']}  "
                f"(live view: {cli} top --url {exporter.extra['url']})"
            )
            if flower:
                user, password = flower_auth.split(":", 1)
                print(
                    f"\nFlower: http://127.0.0.1:{flower_port}  (user {user}, password {password})"
                )
            handover = handover_env(env, sandbox_url)
            print(f"\nsandbox inbox (what each provider received): {sandbox_url}{INBOX_PATH}")
            print("to send your own messages through this stack, in another shell:")
            if env_file:
                written = write_env_file(Path(env_file), handover)
                cleanup.append(written)
                print(f"  source {env_file}    # written: {written}")
            else:
                print("\n".join(f"  {line}" for line in env_lines(handover)))
            print(f'  {cli} send sms --to +33612345678 --text "Hello" --wait')
            print("everything keeps running; press Ctrl-C to stop all processes")
            while all(p.alive() for p in procs):
                time.sleep(0.5)
            gone = ", ".join(p.name for p in procs if not p.alive())
            print(f"{gone} exited; stopping everything (see {root})", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("\nstopping …")
        return 0
    finally:
        stop_all()


def cli_command(cwd: str | None = None) -> str:
    """How a new shell runs this CLI without activating the virtualenv: the script beside
    the running interpreter (``.venv/bin/delivery-worker`` from the project's folder)."""
    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "delivery-worker")
    if not os.access(script, os.X_OK):
        return "delivery-worker"  # installed some other way: on PATH
    relative = os.path.relpath(script, os.path.abspath(cwd or os.getcwd()))
    if relative.startswith(".."):
        return shlex.quote(script)
    return shlex.quote(relative if os.sep in relative else os.path.join(".", relative))


def handover_env(env: dict[str, str], sandbox_url: str) -> dict[str, str]:
    """What points a shell or an application at the running demo stack.

    The API keys are the sandbox's fixed, fake ones (``delivery_sandbox.accounts``): printing
    them is fine. ``DELIVERY_SANDBOX_URL`` is for people and tests (the inbox page); the worker
    ignores it.
    """
    keep = {k: v for k, v in env.items() if k != "DELIVERY_LOG_FORMAT"}
    return {
        **keep,
        "DELIVERY_REDIS_URL": env["DELIVERY_BROKER_URL"],
        "DELIVERY_SANDBOX_URL": sandbox_url,
    }


def env_lines(env: dict[str, str]) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]


def write_env_file(path: Path, env: dict[str, str]) -> Path:
    """``export NAME=value`` lines a POSIX shell can ``source``; removed when the demo stops."""
    path = path.resolve()
    header = "# Written by `delivery-worker demo` while its stack runs; removed when it stops.\n"
    path.write_text(header + "\n".join(env_lines(env)) + "\n", encoding="utf-8")
    return path


def _start_flower(root: Path, env: dict[str, str], port: int, auth: str) -> Proc:
    proc = start_flower(root, env, port=port, basic_auth=auth)
    try:
        wait_for_port(port, timeout_s=20)
    except TimeoutError:
        print(f"flower did not start (port {port} busy?); see {proc.log_path}", file=sys.stderr)
    return proc


def _wait_worker_ready(app: Any, worker: Proc, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
        replies = app.control.ping(timeout=0.5)
        if replies:
            return
    raise RuntimeError(f"the worker did not answer a ping in {timeout_s:g}s:\n{worker.log_tail()}")


def _follow(
    ledger: Any,
    ids: list[str],
    *,
    timeout_s: float,
    final: frozenset[str] | set[str] = frozenset({"sent", "failed", "expired", "dead", "parked"}),
) -> None:
    """A live progress line until every delivery is final (or parked)."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = Counter((r.state if (r := ledger.get(d)) else "queued") for d in ids)
        done = sum(v for k, v in states.items() if k in final)
        parts = " · ".join(f"{k} {v}" for k, v in sorted(states.items()))
        _stderr(f"\r  {done}/{len(ids)} settled · {parts}".ljust(78))
        if done == len(ids) or time.monotonic() > deadline:
            _stderr("\n")
            return
        time.sleep(0.2)


_SETTLED = frozenset({"delivered", "bounced", "failed", "rejected", "held", "opened", "clicked"})


def _delivery_status(tracking: Any, delivery_id: str) -> str:
    """What the providers said after the send, per recipient (``worker.tracking``)."""
    found = tracking.status(delivery_id)
    if found is None:
        return "-"
    states = Counter(s.state.value for s in found.recipients.values())
    text = ", ".join(k if n == 1 and len(states) == 1 else f"{k} {n}" for k, n in states.items())
    from worker.providers import driver_class

    if found.provider and not driver_class(found.provider).status_lookup:
        text += " (no lookup)"
    return text


def _follow_tracking(tracking: Any, ids: list[str], *, timeout_s: float) -> None:
    """A live line while the poller asks the providers, until nothing is left to learn."""
    deadline = time.monotonic() + timeout_s
    while True:
        states: Counter[str] = Counter()
        waiting = 0
        for d in ids:
            found = tracking.status(d)
            if found is None:
                continue
            for s in found.recipients.values():
                states[s.state.value] += 1
            if found.polling and any(
                s.state.value not in _SETTLED for s in found.recipients.values()
            ):
                waiting += 1
        parts = " · ".join(f"{k} {v}" for k, v in sorted(states.items()))
        _stderr(f"\r  tracking: {parts}".ljust(78))
        if waiting == 0 or time.monotonic() > deadline:
            _stderr("\n")
            return
        time.sleep(0.3)


def _row(item: DemoItem, delivery_id: str, record: Any, delivery_status: str = "-") -> list[str]:
    if record is None:
        return [item.label, delivery_id[:8], "unknown", "0", delivery_status, ""]
    result = record.result or {}
    detail = ""
    if result.get("error"):
        err = result["error"]
        detail = f"{err.get('kind')}: {err.get('message', '')}"[:70]
    elif result.get("provider_message_ids"):
        ids = result["provider_message_ids"]
        detail = ", ".join(f"{k} → {v}" for k, v in list(ids.items())[:2])[:70]
    return [
        item.label,
        delivery_id[:8],
        record.state,
        str(record.attempts),
        delivery_status,
        detail,
    ]


def _print_table(rows: list[list[str]]) -> None:
    header = ["message", "delivery", "status", "tries", "delivery status", "provider ids / error"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
