"""Benchmark: the tracking poller for 10,000 tracked deliveries.

Starts a private redis-server and the provider sandbox (``--sms-delivery-delay`` and
``--postal-delivery-delay``: every message is ``Waiting``/``Pending`` for DELAY seconds, then
delivered; about 1 % of SMS numbers end ``Not delivered`` and 1 % of Mail Partner addresses
``Bounced``, the sandbox's magic recipients) as real processes. Sends N deliveries (one
recipient each; by default 5,000 SMS Partner, 4,500 Postal, 500 Mail Partner: Mail Partner
allows 2,000 requests a minute, sends and lookups alike) through the real drivers over HTTP,
registers each as the send pipeline does (``worker.tracking.service.on_sent``), while the
poller's rounds (``worker.tracking.poller.poll_round``, what beat runs, every ``--interval``)
run beside the sends and go on until no delivery is watched any more, and prints:

- provider requests (lookups) per tracked message, per provider (SMS Partner batches up to 500
  pairs per ``/multi-status``; Mail Partner asks one ``/bulk-status`` per send; Postal one
  ``messages/message`` per message);
- each delivery's time from its send to the round that saw it final (median, p90, max): the
  sandbox's delay plus the polling's lag;
- nothing lost: every delivery ends in the state the sandbox gave it (delivered, failed,
  bounced), none left watched.

Exits 1 when something is lost. Writes the figures to ``bench/results/tracking_poll-<ts>.json``.

    python bench/tracking_poll.py [--sms 5000] [--postal 4500] [--mail 500] [--delay 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from devstack.processes import sandbox_env, start_redis, start_sandbox
from worker.config import Settings
from worker.providers import SendContext, parse_message
from worker.runtime import Runtime
from worker.stores.tracking import POLL_KEY
from worker.tracking.poller import poll_round
from worker.tracking.service import on_sent

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def message(provider: str, i: int) -> tuple[str, dict[str, Any], str]:
    """(channel, message, the final state the sandbox will give it)."""
    if provider == "smspartner":
        magic = i % 100 == 0
        # Ending in 1, a number never meets the sandbox's magic suffixes (0014 STOP, 0404...).
        number = f"+3360{i // 100:03d}0404" if magic else f"+337{i:07d}1"
        return (
            "sms",
            {"provider": provider, "to": [number], "text": "code"},
            ("failed" if magic else "delivered"),
        )
    bounce = provider == "mailpartner" and i % 100 == 0
    address = f"bounce{i}@example.com" if bounce else f"user{i}@example.com"
    body: dict[str, Any] = {"provider": provider, "to": [{"email": address}], "subject": "s"}
    body.update({"html": "<p>x</p>"} if provider == "mailpartner" else {"text": "t"})
    if provider == "postal":
        body["from"] = {"email": "shop@example.org"}
    return "email", body, "bounced" if bounce else "delivered"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sms", type=int, default=5000)
    parser.add_argument("--postal", type=int, default=4500)
    parser.add_argument("--mail", type=int, default=500)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--first", type=float, default=1.0, help="first lookup after the send")
    parser.add_argument("--max-backoff", type=float, default=4.0)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between rounds")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tracking-bench-"))
    redis_proc = start_redis(workdir / "redis", appendonly=False)
    sandbox = start_sandbox(
        workdir,
        extra_args=["--quiet", "--sms-delivery-delay", str(args.delay),
                    "--postal-delivery-delay", str(args.delay)],
    )  # fmt: skip
    try:
        return run(args, str(redis_proc.extra["url"]), str(sandbox.extra["url"]))
    finally:
        sandbox.stop()
        redis_proc.stop()


def run(args: argparse.Namespace, redis_url: str, sandbox_url: str) -> int:
    env = {
        **sandbox_env(sandbox_url),
        "DELIVERY_BROKER_URL": f"{redis_url}/0",
        "DELIVERY_TRACKING_POLL_FIRST_S": str(args.first),
        "DELIVERY_TRACKING_POLL_MAX_BACKOFF_S": str(args.max_backoff),
        "DELIVERY_TRACKING_POLL_BATCH": "20000",
    }
    settings = Settings.from_env(env)
    rt = Runtime(settings)
    plan = [(p, i) for p, n in (("smspartner", args.sms), ("postal", args.postal),
                                ("mailpartner", args.mail)) for i in range(n)]  # fmt: skip
    expected: dict[str, str] = {}

    def send(item: tuple[str, int]) -> None:
        provider, i = item
        channel, body, final = message(provider, i)
        parsed = parse_message(channel, body)
        delivery_id = f"{provider}-{i}"
        ctx = SendContext(delivery_id=delivery_id, idempotency_key=delivery_id)
        outcome = rt.driver(provider).send(parsed, ctx)
        sent_at[delivery_id] = time.time()
        on_sent(rt, delivery_id, provider, outcome.provider_message_ids)
        expected[delivery_id] = final

    total = len(plan)
    sent_at: dict[str, float] = {}
    lags: list[float] = []
    requests: Counter[str] = Counter()
    sending = threading.Event()
    sending.set()
    rounds = 0

    def poller() -> None:
        nonlocal rounds
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            report = poll_round(rt)
            rounds += 1
            requests.update(report.per_provider)
            now = time.time()
            open_ids = {d for d in list(sent_at) if d not in finished}
            pipe = rt.tracking.redis.pipeline(transaction=False)  # type: ignore[attr-defined]
            ordered = sorted(open_ids)
            for d in ordered:
                pipe.zscore(POLL_KEY, d)
            for d, score in zip(ordered, pipe.execute(), strict=True):
                if score is None and d in expected:
                    finished.add(d)
                    lags.append(now - sent_at[d])
            if not sending.is_set() and len(finished) == total:
                return
            time.sleep(args.interval)

    finished: set[str] = set()
    print(f"sending {total} deliveries through the sandbox, polling beside …", flush=True)
    thread = threading.Thread(target=poller, daemon=True)
    started = time.monotonic()
    thread.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, plan))
    sending.clear()
    print(f"  sent and registered in {time.monotonic() - started:.1f}s; polling …", flush=True)
    thread.join()
    lags.sort()
    marks = {
        50: lags[len(lags) // 2] if lags else 0.0,
        90: lags[int(len(lags) * 0.9)] if lags else 0.0,
        100: lags[-1] if lags else 0.0,
    }

    states: Counter[str] = Counter()
    lost = []
    for delivery_id, final in expected.items():
        found = rt.tracking.status(delivery_id)
        got = next(iter(found.recipients.values())).state.value if found else "missing"
        states[got] += 1
        if got != final:
            lost.append((delivery_id, final, got))
    counts = Counter(p for p, _ in plan)
    figures: dict[str, Any] = {
        "deliveries": total,
        "sandbox_delay_s": args.delay,
        "poll": {"first_s": args.first, "max_backoff_s": args.max_backoff, "rounds": rounds},
        "lookups_per_message": {p: round(requests[p] / counts[p], 3) for p in counts},
        "lookups": dict(requests),
        "overall_lookups_per_message": round(sum(requests.values()) / total, 3),
        "send_to_final_s": {f"p{k}": round(v, 2) for k, v in marks.items()},
        "final_states": dict(states),
        "lost": len(lost),
        "still_watched": rt.tracking.watching(),
    }
    print()
    print(f"{'provider':<13}{'tracked':>9}{'lookups':>10}{'per message':>13}")
    for p in counts:
        print(f"{p:<13}{counts[p]:>9}{requests[p]:>10}{figures['lookups_per_message'][p]:>13}")
    print(f"{'all':<13}{total:>9}{sum(requests.values()):>10}"
          f"{figures['overall_lookups_per_message']:>13}")  # fmt: skip
    print(
        f"send to final state (sandbox delay {args.delay:g}s, first lookup {args.first:g}s, "
        f"rounds every {args.interval:g}s): "
        + ", ".join(f"p{k} {v:.1f}s" for k, v in sorted(marks.items()))
        + f"; {rounds} rounds"
    )
    print(
        f"final states: {dict(states)}; lost: {len(lost)}; still watched: {rt.tracking.watching()}"
    )
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS_DIR / f"tracking_poll-{stamp}.json").write_text(json.dumps(figures, indent=2))
    rt.close()
    redis.Redis.from_url(redis_url).close()
    return 1 if lost or figures["still_watched"] else 0


if __name__ == "__main__":
    sys.exit(main())
