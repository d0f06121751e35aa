"""The metrics facade, the shared-state gauges, the balance recording, ``top``'s view, and the
monitoring files (dashboard and alert rules)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from structlog.testing import capture_logs

from devstack import dashboard
from worker.config import PROVIDERS, Settings
from worker.delivery import Done, Retry, process
from worker.errors import TransientError
from worker.metrics import record, top
from worker.metrics.shared import SharedStateCollector
from worker.ops.operations import Operations
from worker.providers import Balance
from worker.runtime import Runtime
from worker.stores import Limit, RecordedBalance, Stores, limiter_key

ROOT = Path(__file__).resolve().parents[2]


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


# -- the facade --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [(200, "2xx"), (201, "2xx"), (429, "4xx"), (503, "5xx"), (302, "3xx"), (None, "none"),
     (0, "none"), (1000, "none")],
)  # fmt: skip
def test_status_class(code: int | None, expected: str) -> None:
    assert record.status_class(code) == expected


def _value(metric: Any, **labels: str) -> float:
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(("_total", "_count")) and s.labels == labels:
                return float(s.value)
    return 0.0


def test_cost_is_money_with_a_currency_and_credits_without() -> None:
    before_eur = _value(record.COST, provider="smspartner", unit="money", currency="EUR")
    record.cost("smspartner", 0.038, "EUR")
    record.cost("smspartner", 0.038, "eur")
    record.cost("smspartner", 0.038, "€")  # a sign is its ISO 4217 code: one series
    after = _value(record.COST, provider="smspartner", unit="money", currency="EUR")
    assert after == pytest.approx(before_eur + 0.114)
    before_credits = _value(record.COST, provider="voicepartner", unit="credits", currency="")
    record.cost("voicepartner", 2, None)
    assert _value(record.COST, provider="voicepartner", unit="credits", currency="") == (
        before_credits + 2
    )
    # Mail Partner's cost is credits whatever currency it names
    # (docs/providers/mailpartner.md §2.2).
    before_mail = _value(record.COST, provider="mailpartner", unit="credits", currency="")
    record.cost("mailpartner", 1, "EUR")
    assert _value(record.COST, provider="mailpartner", unit="credits", currency="") == (
        before_mail + 1
    )


def test_hostile_cost_answers_mint_no_labels_and_never_raise() -> None:
    record.cost("postal", 1.0, "<script>alert(1)</script>")
    record.cost("postal", float("nan"), "EUR")
    record.cost("postal", -5, "EUR")
    record.cost("postal", float("inf"), "EUR")
    currencies = {
        s.labels["currency"]
        for family in record.COST.collect()
        for s in family.samples
        if s.labels.get("provider") == "postal"
    }
    assert currencies <= {"other"}
    assert _value(record.COST, provider="postal", unit="money", currency="other") >= 1.0


def test_a_throttled_request_counts_a_request_and_a_429() -> None:
    labels = {"provider": "emailmassivo", "channel": "email"}
    before = _value(record.PROVIDER_THROTTLED, **labels)
    record.provider_request("emailmassivo", "email", 429, "throttled", 0.01)
    assert _value(record.PROVIDER_THROTTLED, **labels) == before + 1
    assert record.attempt_fields(429, "throttled", 0.01234, 0.5) == {
        "status": "4xx",
        "kind": "throttled",
        "request_duration_seconds": 0.0123,
        "limiter_wait_seconds": 0.5,
    }


# -- shared state ------------------------------------------------------------------------------


def test_shared_gauges_read_the_redis_stores(redis_client: redis.Redis) -> None:
    settings = Settings(queues=["delivery"], rate_limits={"smspartner": {"send": "3/min"}})
    stores = Stores.on_redis(redis_client)
    stores.health.pause("smspartner", "out of credit", "test")
    stores.parking.park("smspartner", "d-1", "tasks.send_sms", {"to": ["+33600000001"]})
    stores.parking.park("smspartner", "d-2", "tasks.send_sms", {"to": ["+33600000002"]})
    for _ in range(3):
        stores.health.record_failure("postal")
    stores.ledger.create("d-dead", channel="sms", provider="smspartner", extra={})
    stores.ledger.bury("d-dead", reason="crashed", task_name="tasks.send_sms", message={})
    stores.balances.record(RecordedBalance("voicepartner", 19.0, "money", "€", 1_700_000_000.0))
    key = limiter_key("smspartner", settings.egress_identity, "send")
    assert stores.limiter.acquire(key, [Limit(3, 60.0)]) == 0.0
    # A ready message in the queue whose delivery was enqueued 30 s ago.
    stores.ledger.create("d-old", channel="sms", provider="smspartner", extra={})
    redis_client.hset(stores.ledger.key("d-old"), "created_at", "1700000000.0")
    redis_client.lpush("delivery", json.dumps({"headers": {"id": "d-old"}}))
    redis_client.lpush("delivery", json.dumps({"headers": {"id": "d-new"}}))
    redis_client.lpush("delivery\x06\x169", json.dumps({"headers": {"id": "d-prio"}}))

    registry = CollectorRegistry()
    registry.register(
        SharedStateCollector(stores, redis_client, settings, clock=lambda: 1_700_000_030.0)
    )
    s = samples(registry)

    def g(name: str, **labels: str) -> float:
        return s[(name, frozenset(labels.items()))]

    assert g("delivery_shared_state_up") == 1
    assert g("delivery_provider_paused", provider="smspartner") == 1
    assert g("delivery_provider_paused", provider="postal") == 0
    assert g("delivery_parked_messages", provider="smspartner") == 2
    assert g("delivery_breaker_state", provider="emailmassivo") == 0
    assert g("delivery_dead_letters") == 1
    assert g("delivery_queue_depth", queue="delivery") == 3
    assert g("delivery_queue_oldest_age_seconds", queue="delivery") == 30.0
    assert g("delivery_limiter_usage_ratio", provider="smspartner", limit="send:3/60s") == (
        pytest.approx(1 / 3)
    )
    # EmailMassivo's pacing limit (1 per 0.06 s) is internal spacing, not a provider limit.
    em = {dict(ls)["limit"] for n, ls in s if n == "delivery_limiter_usage_ratio"
          and dict(ls)["provider"] == "emailmassivo"}  # fmt: skip
    assert em == {"send:10/1s"}
    # Voice Partner's /me writes the sign; the label is the ISO code, as on delivery_cost_total.
    assert g("delivery_credit_balance", provider="voicepartner", unit="money", currency="EUR") == 19
    assert g("delivery_credit_balance_checked_timestamp_seconds", provider="voicepartner") == (
        1_700_000_000.0
    )
    # Every provider has a pause and breaker gauge.
    assert {dict(ls)["provider"] for n, ls in s if n == "delivery_provider_paused"} == set(
        PROVIDERS
    )


def test_the_breaker_gauge_reads_open(redis_client: redis.Redis) -> None:
    stores = Stores.on_redis(redis_client)
    for _ in range(10):
        stores.health.record_failure("postal")
    registry = CollectorRegistry()
    registry.register(SharedStateCollector(stores, redis_client, Settings()))
    assert samples(registry)[("delivery_breaker_state", frozenset({("provider", "postal")}))] == 2


def test_unreachable_redis_gives_up_zero_not_an_error() -> None:
    client = redis.Redis(port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    registry = CollectorRegistry()
    registry.register(SharedStateCollector(Stores.on_redis(client), client, Settings()))
    s = samples(registry)
    assert s == {("delivery_shared_state_up", frozenset()): 0.0}


# -- balances on beat --------------------------------------------------------------------------


class FakeDriver:
    def __init__(self, balance: Balance | None, fail: bool = False) -> None:
        self.balance = balance
        self.fail = fail
        self.calls = 0

    def check_balance(self) -> Balance | None:
        self.calls += 1
        if self.fail:
            raise TransientError("down", provider="x")
        return self.balance


def test_balance_check_records_active_providers_within_five_a_minute() -> None:
    now = [1_700_000_000.0]
    stores = Stores.in_memory(clock=lambda: now[0])
    settings = Settings(
        smspartner_api_key="k1", voicepartner_api_key="k2", postal_api_key="k3",
        postal_base_url="https://postal.example.org",
    )  # fmt: skip
    ops = Operations.for_stores(stores, settings=settings, app=Celery(), clock=lambda: now[0])
    drivers = {
        "smspartner": FakeDriver(Balance("smspartner", True, credits=120.0, currency="EUR")),
        "voicepartner": FakeDriver(Balance("voicepartner", True, credits=19.0, currency="€")),
        "postal": FakeDriver(None),
    }
    assert ops.check_balances(drivers.__getitem__) == {}  # nothing paused: nothing to report
    got = stores.balances.read_all()
    assert got["smspartner"] == RecordedBalance("smspartner", 120.0, "credits", "", now[0])
    assert got["voicepartner"] == RecordedBalance("voicepartner", 19.0, "money", "€", now[0])
    assert "postal" not in got
    for _ in range(10):
        ops.check_balances(drivers.__getitem__)
    # 5 a minute per provider (docs/providers/voicepartner.md §3.2), whatever the beat interval.
    assert drivers["voicepartner"].calls == 5
    assert drivers["smspartner"].calls == 5


def test_a_paused_providers_reading_is_recorded_and_failures_are_not() -> None:
    stores = Stores.in_memory()
    settings = Settings(smspartner_api_key="k1", mailpartner_api_key="k2")
    ops = Operations.for_stores(stores, settings=settings, app=Celery())
    stores.health.pause("smspartner", "out of credit", "test")
    drivers = {
        "smspartner": FakeDriver(Balance("smspartner", False, credits=0.0, currency="EUR")),
        "mailpartner": FakeDriver(None, fail=True),
    }
    assert ops.check_balances(drivers.__getitem__) == {"smspartner": "still out of credit"}
    assert set(stores.balances.read_all()) == {"smspartner"}
    assert stores.balances.read_all()["smspartner"].amount == 0.0


# -- top ---------------------------------------------------------------------------------------


EXPOSITION = """
delivery_messages_finished_total{provider="postal",channel="email",status="sent",kind="none"} 40
delivery_messages_finished_total{provider="postal",status="failed",kind="permanent"} 2
delivery_provider_requests_total{provider="postal",channel="email",status="2xx",kind="accepted"} 40
delivery_provider_requests_total{provider="postal",channel="email",status="5xx",kind="transient"} 3
delivery_provider_throttled_total{provider="emailmassivo",channel="email"} 7
delivery_provider_paused{provider="smspartner"} 1
delivery_breaker_state{provider="postal"} 2
delivery_parked_messages{provider="smspartner"} 5
delivery_limiter_usage_ratio{provider="emailmassivo",limit="send:10/1s"} 0.9
delivery_credit_balance{provider="voicepartner",unit="money",currency="EUR"} 19
delivery_queue_depth{queue="delivery"} 12
delivery_queue_oldest_age_seconds{queue="delivery"} 42
delivery_dead_letters 1
delivery_shared_state_up 1
"""


def test_top_renders_the_figures_per_provider() -> None:
    before = top.parse(EXPOSITION.replace("} 40", "} 30"), at=100.0)
    now = top.parse(EXPOSITION, at=102.0)
    console = Console(record=True, width=250)
    console.print(top.render(now, before))
    out = console.export_text()
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ")}
    postal = lines["postal"]
    assert "OPEN" in postal and "40" in postal and "5.0/s" in postal  # (40 - 30) / 2 s
    assert "40/0/3/0" in postal
    assert "PAUSED" in lines["smspartner"] and "5" in lines["smspartner"]
    assert "90 %" in lines["emailmassivo"] and " 7 " in lines["emailmassivo"]
    assert "19 EUR" in lines["voicepartner"]
    assert "delivery: 12 waiting, oldest 42s" in out and "dead letters: 1" in out


# -- monitoring files --------------------------------------------------------------------------


def test_the_committed_dashboard_is_the_generated_one() -> None:
    assert (ROOT / dashboard.DASHBOARD_PATH).read_text(encoding="utf-8") == dashboard.render()


def test_the_dashboard_has_a_fleet_row_a_provider_row_and_a_sound_grid() -> None:
    data = json.loads((ROOT / dashboard.DASHBOARD_PATH).read_text(encoding="utf-8"))
    rows = [p for p in data["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Fleet", "$provider"]
    assert rows[1]["repeat"] == "provider"  # one row per selected provider
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert _balanced(target["expr"]), target["expr"]
    # Each panel of the provider row filters on the row's provider.
    current = None
    for panel in data["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
        elif current == "$provider":
            for target in panel["targets"]:
                assert 'provider=~"$provider"' in target["expr"], target["expr"]


def test_the_dashboard_names_no_data_source_and_imports_anywhere() -> None:
    """Every panel and target queries ${datasource} (a datasource variable over Prometheus), a
    provider variable feeds the provider row, and __inputs/__requires allow an import."""
    data = json.loads((ROOT / dashboard.DASHBOARD_PATH).read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["provider"]["datasource"]["uid"] == "${datasource}"
    assert variables["provider"]["includeAll"] and variables["provider"]["multi"]
    panels = [p for p in data["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", (panel["title"], target)
    assert '"prometheus"' not in json.dumps([p.get("datasource") for p in data["panels"]]).replace(
        '"type": "prometheus"', ""
    )
    [ds_input] = data["__inputs"]
    assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")
    required = {(r["type"], r["id"]) for r in data["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    assert {("panel", p["type"]) for p in panels} <= required


_DURATION = re.compile(r"^\d+[smhd]$")


def test_alert_rules_parse_and_cover_what_operators_watch() -> None:
    data = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text(encoding="utf-8"))
    rules = [r for g in data["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {
        "DeliveryProviderPaused",
        "DeliveryBreakerOpen",
        "DeliveryDeadLetters",
        "DeliveryLimiterSaturated",
        "DeliveryCreditLow",
        "DeliveryQueueAgeGrowing",
        "DeliveryRedisMemoryHigh",
        "DeliveryScrapeTargetDown",
    } <= names
    assert len(names) == len(rules)
    # A target that cannot be scraped silences every other rule: it alerts on its own.
    [down] = [r for r in rules if r["expr"].replace(" ", "") == "up==0"]
    assert down["for"] == "2m" and down["labels"]["severity"] == "page"
    assert "$labels.instance" in down["annotations"]["summary"]
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert _DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning", "info"}
        assert rule["annotations"]["summary"]
        assert _balanced(rule["expr"]), rule["alert"]
    prometheus = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"


def test_every_metric_named_in_the_monitoring_files_is_one_the_code_defines() -> None:
    defined = _defined_metric_names()
    text = (ROOT / dashboard.DASHBOARD_PATH).read_text() + (
        ROOT / "monitoring" / "alerts.yml"
    ).read_text()
    used = set(re.findall(r"\b(delivery_[a-z0-9_]+)", text))
    assert used and used <= defined, sorted(used - defined)


def _defined_metric_names() -> set[str]:
    names: set[str] = set()
    for metric in vars(record).values():
        if hasattr(metric, "_type") and hasattr(metric, "_name"):
            base = metric._name
            if metric._type == "counter":
                names.add(base + "_total")
            elif metric._type == "histogram":
                names |= {base + "_bucket", base + "_sum", base + "_count"}
    source = (ROOT / "worker" / "metrics" / "shared.py").read_text()
    names |= set(re.findall(r'"(delivery_[a-z0-9_]+)"', source))
    return names


def _balanced(expr: str) -> bool:
    depth = 0
    for ch in expr:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1, "[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


# -- the pipeline's hooks: one attempt event, the counters it feeds (in-memory stores) ----------


def _pipeline_runtime(answers: list[httpx.Response]) -> Runtime:
    def handler(_request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    settings = Settings(
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://provider.test/smspartner/v1",
    )
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return Runtime.in_memory(settings, client=client)


def _sms(delivery_id: str, rt: Runtime) -> Any:
    message = {"provider": "smspartner", "to": ["+33612345678"], "text": "Hello"}
    return process("sms", message, delivery_id=delivery_id, task_name="tasks.send_sms", rt=rt)


def test_each_attempt_logs_one_event_named_like_the_metrics() -> None:
    ok = {"success": True, "code": 200, "message_id": 307, "cost": 0.038, "currency": "EUR"}
    rt = _pipeline_runtime([httpx.Response(503, json={}), httpx.Response(200, json=ok)])
    sms = {"provider": "smspartner", "channel": "sms"}
    sent_before = _value(record.MESSAGES_FINISHED, **sms, status="sent", kind="none")
    ok_before = _value(record.PROVIDER_REQUESTS, **sms, status="2xx", kind="accepted")
    failed_before = _value(record.PROVIDER_REQUESTS, **sms, status="5xx", kind="transient")
    with capture_logs() as logs:
        first = _sms("d-metrics-1", rt)
        assert isinstance(first, Retry)
        second = _sms("d-metrics-1", rt)
        assert isinstance(second, Done) and second.result.status == "sent"
    attempts = [e for e in logs if e["event"] == "delivery.attempt"]
    assert [(e["status"], e["kind"]) for e in attempts] == [
        ("5xx", "transient"),
        ("2xx", "accepted"),
    ]
    for event in attempts:
        assert event["request_duration_seconds"] >= 0
        assert event["limiter_wait_seconds"] == 0
    assert _value(record.MESSAGES_FINISHED, **sms, status="sent", kind="none") == sent_before + 1
    assert _value(record.PROVIDER_REQUESTS, **sms, status="2xx", kind="accepted") == ok_before + 1
    assert (
        _value(record.PROVIDER_REQUESTS, **sms, status="5xx", kind="transient") == failed_before + 1
    )


def test_a_message_refused_before_the_gate_is_no_attempt() -> None:
    # An invalid message never reaches the provider: a final state, no attempt event.
    labels = {"provider": "none", "channel": "sms", "status": "failed", "kind": "invalid_message"}
    before = _value(record.MESSAGES_FINISHED, **labels)
    rt = _pipeline_runtime([])
    with capture_logs() as logs:
        outcome = process("sms", {"provider": "smspartner", "to": []}, delivery_id="d-inv",
                          task_name="tasks.send_sms", rt=rt)  # fmt: skip
    assert isinstance(outcome, Done) and outcome.result.status == "failed"
    assert not [e for e in logs if e["event"] == "delivery.attempt"]
    assert _value(record.MESSAGES_FINISHED, **labels) == before + 1


def test_compose_runs_the_exporter_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"metrics", "prometheus", "grafana"} <= set(services)
    # Workers and the exporter share the multiprocess directory.
    mp_dir = services["worker"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert services["metrics"]["environment"]["PROMETHEUS_MULTIPROC_DIR"] == mp_dir
    assert f"metrics-data:{mp_dir}" in services["worker"]["volumes"]
    assert f"metrics-data:{mp_dir}" in services["metrics"]["volumes"]
    assert services["metrics"]["command"][:2] == ["delivery-worker", "metrics"]
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "./monitoring/prometheus.yml:" in mounts and "./monitoring/alerts.yml:" in mounts
    prometheus = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    target = prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0]
    assert target == "metrics:" + services["metrics"]["command"][-1]
    grafana = " ".join(services["grafana"]["volumes"])
    assert "./monitoring/grafana/dashboards:" in grafana
    provisioning = ROOT / "monitoring" / "grafana" / "provisioning"
    for path in provisioning.rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
    procfile = (ROOT / "Procfile").read_text()
    assert re.search(r"^metrics: .*delivery-worker metrics", procfile, re.M)


def test_the_exporter_serves_the_workers_series_not_flowers(tmp_path: Path) -> None:
    """A program sharing PROMETHEUS_MULTIPROC_DIR (Flower, started with the workers'
    environment) writes flower_* files there: the exporter leaves them out."""
    import os
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry, generate_latest

    from worker.metrics.exporter import OwnSeries

    script = (
        "from prometheus_client import Counter\n"
        "Counter('flower_events', 'Flower', ['task']).labels('tasks.send_sms').inc()\n"
        "Counter('delivery_messages_parked', 'worker', ['provider']).labels('postal').inc()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    registry.register(OwnSeries(str(tmp_path)))
    text = generate_latest(registry).decode()
    assert 'delivery_messages_parked_total{provider="postal"} 1.0' in text
    assert "flower_" not in text


LANES_EXPOSITION = """
delivery_lane_depth{priority="high",tenant="default"} 2
delivery_lane_depth{priority="bulk",tenant="acme"} 4800
delivery_lane_oldest_wait_seconds{priority="high",tenant="default"} 0.4
delivery_lane_oldest_wait_seconds{priority="bulk",tenant="acme"} 95
delivery_lane_wait_seconds_sum{priority="high",tenant="default"} 3
delivery_lane_wait_seconds_count{priority="high",tenant="default"} 10
"""


def test_top_shows_the_lanes_by_priority_and_tenant() -> None:
    before = top.parse(LANES_EXPOSITION.replace("} 3\n", "} 1\n").replace("} 10\n", "} 6\n"))
    now = top.parse(LANES_EXPOSITION)
    assert now.lanes[("bulk", "acme")] == (4800.0, 95.0)
    console = Console(record=True, width=200)
    console.print(top.render(now, before))
    out = console.export_text()
    rows = [line for line in out.splitlines() if line.startswith("│ ") and "waiting" not in line]
    lanes = [line.split("│")[1:6] for line in rows if line.split()[1] in ("high", "bulk")]
    cells = [[c.strip() for c in row] for row in lanes]
    # high first; the mean wait of what left since the last frame: (3 - 1) / (10 - 6).
    assert cells[0] == ["high", "default", "2", "0.4s", "0.50s"]
    assert cells[1] == ["bulk", "acme", "4800", "95.0s", "-"]
