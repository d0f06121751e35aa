"""``delivery-worker top``: the exporter's figures per provider in a live terminal view.

It reads the same exposition Prometheus scrapes: from an exporter (``--url``), or built in this
process from ``PROMETHEUS_MULTIPROC_DIR`` and the shared Redis state. Rates are the change
between two refreshes (one second apart by default).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.providers import PROVIDERS

__all__ = ["Snapshot", "parse", "render", "run"]

_BREAKER = {0.0: "closed", 1.0: "half-open", 2.0: "OPEN"}


@dataclass
class Snapshot:
    at: float
    counters: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    """(provider, figure) → value; figures: sent, failed, expired, dead, parked_total,
    req_2xx…req_none, throttled, holds, cost:<unit>:<currency>, latency_sum, latency_count."""
    gauges: dict[tuple[str, str], float] = field(default_factory=dict)
    """(provider, figure) → value: paused, breaker, parked, limiter (highest ratio), balance."""
    balance_unit: dict[str, str] = field(default_factory=dict)
    queues: dict[str, tuple[float, float]] = field(default_factory=dict)
    """queue → (depth, oldest age in seconds)."""
    lanes: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    """(priority, tenant) → (depth, oldest wait in seconds) of the lanes (worker.lanes)."""
    lane_waits: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    """(priority, tenant) → (sum of waits, count) of deliveries dispatched from the lanes."""
    dead_letters: float = 0.0
    shared_up: bool = False


def parse(exposition: str, at: float | None = None) -> Snapshot:
    snap = Snapshot(at=time.time() if at is None else at)
    depth: dict[str, float] = {}
    age: dict[str, float] = {}
    lane_depth: dict[tuple[str, str], float] = {}
    lane_age: dict[tuple[str, str], float] = {}
    waits: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            labels, value = s.labels, float(s.value)
            provider = labels.get("provider", "")
            if s.name == "delivery_messages_finished_total":
                snap.counters[(provider, labels["status"])] += value
            elif s.name == "delivery_messages_parked_total":
                snap.counters[(provider, "parked_total")] += value
            elif s.name == "delivery_provider_requests_total":
                snap.counters[(provider, "req_" + labels["status"])] += value
            elif s.name == "delivery_provider_throttled_total":
                snap.counters[(provider, "throttled")] += value
            elif s.name == "delivery_limiter_holds_total":
                snap.counters[(provider, "holds")] += value
            elif s.name == "delivery_cost_total":
                snap.counters[(provider, f"cost:{labels['unit']}:{labels['currency']}")] += value
            elif s.name == "delivery_provider_request_duration_seconds_sum":
                snap.counters[(provider, "latency_sum")] += value
            elif s.name == "delivery_provider_request_duration_seconds_count":
                snap.counters[(provider, "latency_count")] += value
            elif s.name == "delivery_provider_paused":
                snap.gauges[(provider, "paused")] = value
            elif s.name == "delivery_breaker_state":
                snap.gauges[(provider, "breaker")] = value
            elif s.name == "delivery_parked_messages":
                snap.gauges[(provider, "parked")] = value
            elif s.name == "delivery_limiter_usage_ratio":
                key = (provider, "limiter")
                snap.gauges[key] = max(snap.gauges.get(key, 0.0), value)
            elif s.name == "delivery_credit_balance":
                snap.gauges[(provider, "balance")] = value
                currency = labels.get("currency", "")
                snap.balance_unit[provider] = currency if labels["unit"] == "money" else "credits"
            elif s.name == "delivery_queue_depth":
                depth[labels["queue"]] = value
            elif s.name == "delivery_queue_oldest_age_seconds":
                age[labels["queue"]] = value
            elif s.name == "delivery_lane_depth":
                lane_depth[(labels["priority"], labels["tenant"])] = value
            elif s.name == "delivery_lane_oldest_wait_seconds":
                lane_age[(labels["priority"], labels["tenant"])] = value
            elif s.name == "delivery_lane_wait_seconds_sum":
                waits[(labels["priority"], labels["tenant"])][0] += value
            elif s.name == "delivery_lane_wait_seconds_count":
                waits[(labels["priority"], labels["tenant"])][1] += value
            elif s.name == "delivery_dead_letters":
                snap.dead_letters = value
            elif s.name == "delivery_shared_state_up":
                snap.shared_up = value == 1.0
    snap.queues = {q: (depth[q], age.get(q, 0.0)) for q in depth}
    snap.lanes = {k: (lane_depth[k], lane_age.get(k, 0.0)) for k in lane_depth}
    snap.lane_waits = {k: (v[0], v[1]) for k, v in waits.items()}
    return snap


_PRIORITY_ORDER = {"high": 0, "normal": 1, "bulk": 2}


def lanes_table(now: Snapshot, before: Snapshot | None = None) -> Table:
    """Waiting work per priority and tenant, and the mean wait of what left since ``before``."""
    table = Table(title="lanes", title_justify="left", expand=False)
    for name in ("priority", "tenant", "waiting", "oldest", "avg wait"):
        table.add_column(name, justify="left" if name in ("priority", "tenant") else "right")
    keys = sorted(
        set(now.lanes) | set(now.lane_waits), key=lambda k: (_PRIORITY_ORDER.get(k[0], 9), k[1])
    )
    for key in keys:
        depth, oldest = now.lanes.get(key, (0.0, 0.0))
        total, count = now.lane_waits.get(key, (0.0, 0.0))
        if before is not None:
            b_total, b_count = before.lane_waits.get(key, (0.0, 0.0))
            total, count = total - b_total, count - b_count
        avg = f"{total / count:.2f}s" if count > 0 else "-"
        table.add_row(key[0], key[1], _n(depth), f"{oldest:.1f}s", avg)
    return table


def _rate(now: Snapshot, before: Snapshot | None, provider: str, figure: str) -> str:
    if before is None or now.at <= before.at:
        return "-"
    delta = now.counters.get((provider, figure), 0.0) - before.counters.get((provider, figure), 0.0)
    return f"{max(delta, 0.0) / (now.at - before.at):.1f}/s"


def _n(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def render(now: Snapshot, before: Snapshot | None = None) -> Group:
    table = Table(title="delivery-worker: providers", title_justify="left", expand=False)
    for name, justify in (
        ("provider", "left"),
        ("state", "left"),
        ("breaker", "left"),
        ("sent", "right"),
        ("sent rate", "right"),
        ("failed", "right"),
        ("expired", "right"),
        ("dead", "right"),
        ("parked", "right"),
        ("2xx/4xx/5xx/none", "right"),
        ("429s", "right"),
        ("avg req", "right"),
        ("limiter", "right"),
        ("balance", "right"),
        ("cost", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for p in PROVIDERS:
        c = now.counters
        paused = now.gauges.get((p, "paused"), 0.0) == 1.0
        breaker = _BREAKER.get(now.gauges.get((p, "breaker"), 0.0), "?")
        count = c.get((p, "latency_count"), 0.0)
        latency = f"{c.get((p, 'latency_sum'), 0.0) / count * 1000:.0f} ms" if count else "-"
        requests = "/".join(_n(c.get((p, f"req_{k}"), 0.0)) for k in ("2xx", "4xx", "5xx", "none"))
        balance = now.gauges.get((p, "balance"))
        balance_text = "-" if balance is None else f"{_n(balance)} {now.balance_unit[p]}".strip()
        costs = [
            f"{_n(v)} {k.split(':', 2)[2] or 'credits'}"
            for (prov, k), v in sorted(c.items())
            if prov == p and k.startswith("cost:") and v
        ]
        table.add_row(
            p,
            Text("PAUSED", style="bold red") if paused else Text("active", style="green"),
            Text(breaker, style="bold red" if breaker == "OPEN" else ""),
            _n(c.get((p, "sent"), 0.0)),
            _rate(now, before, p, "sent"),
            _n(c.get((p, "failed"), 0.0)),
            _n(c.get((p, "expired"), 0.0)),
            _n(c.get((p, "dead"), 0.0)),
            _n(now.gauges.get((p, "parked"), 0.0)),
            requests,
            _n(c.get((p, "throttled"), 0.0)),
            latency,
            f"{now.gauges.get((p, 'limiter'), 0.0) * 100:.0f} %",
            balance_text,
            ", ".join(costs) or "-",
        )
    queues = "  ".join(
        f"{q}: {_n(d)} waiting, oldest {a:.0f}s" for q, (d, a) in sorted(now.queues.items())
    )
    footer = Text(
        f"queues  {queues or '-'}   dead letters: {_n(now.dead_letters)}"
        + ("" if now.shared_up else "   (shared Redis state unreadable)"),
    )
    stamp = Text(time.strftime("%H:%M:%S", time.localtime(now.at)), style="dim")
    return Group(table, lanes_table(now, before), footer, stamp)


def run(
    fetch: Callable[[], str],
    *,
    interval_s: float = 1.0,
    once: bool = False,
    console: Console | None = None,
) -> Snapshot:
    """Refresh every ``interval_s`` until Ctrl-C (``once``: one frame after one interval, so
    the rates have a baseline). Returns the last snapshot."""
    console = console or Console()
    before = parse(fetch())
    if once:
        time.sleep(interval_s)
        now = parse(fetch())
        console.print(render(now, before))
        return now
    with Live(render(before), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval_s)
                now = parse(fetch())
                live.update(render(now, before))
                before = now
        except KeyboardInterrupt:
            pass
    return before
