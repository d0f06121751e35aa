"""Writes the Grafana dashboard: a fleet row on top, then a row per provider.

``python -m devstack.dashboard`` regenerates ``monitoring/grafana/dashboards/delivery-worker.json``
(a test checks the committed file is this output, and that every metric it uses is scraped).

Nothing in it names one Grafana's data source: every panel queries ``${datasource}`` (a
variable of type datasource, any Prometheus), and the provider row repeats for each value of
``$provider``. ``__inputs``/``__requires`` let "Dashboards → Import" take it into an existing
Grafana; the compose stack provisions it as it is (the variable picks the default Prometheus).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD_PATH", "PROVIDER_SELECTOR", "build", "main"]

DASHBOARD_PATH = Path("monitoring/grafana/dashboards/delivery-worker.json")
_DS = {"type": "prometheus", "uid": "${datasource}"}
PROVIDER_SELECTOR = 'provider=~"$provider"'
"""Every provider panel's selector: inside the repeated row, ``$provider`` is that row's one."""

_TEMPLATING = [
    {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "includeAll": False,
        "multi": False,
    },
    {
        "name": "provider",
        "label": "Provider",
        "type": "query",
        "datasource": _DS,
        # Exported for every provider the workers know, paused or not (worker.metrics.shared).
        "definition": "label_values(delivery_provider_paused, provider)",
        "query": {
            "query": "label_values(delivery_provider_paused, provider)",
            "refId": "provider",
        },
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 0,
        "regex": "",
        "hide": 0,
        "includeAll": True,
        "multi": True,
        "options": [],
    },
]

_INPUTS = [
    {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "description": "The Prometheus that scrapes delivery-worker metrics",
        "type": "datasource",
        "pluginId": "prometheus",
        "pluginName": "Prometheus",
    }
]
_REQUIRES = [
    {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
    {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
    {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
    {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
]


class _Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def row(self, title: str, **extra: Any) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
                **extra,
            }
        )
        self.y += 1

    def panel(
        self, kind: str, title: str, width: int, targets: list[tuple[str, str]], **extra: Any
    ) -> None:
        if self.x + width > 24:
            self.y += 8
            self.x = 0
        panel: dict[str, Any] = {
            "id": self._id(),
            "type": kind,
            "title": title,
            "datasource": _DS,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "targets": [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": _DS,
                    "expr": expr,
                    "legendFormat": legend,
                }
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        panel.update(extra)
        self.panels.append(panel)
        self.x += width

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _mapping(values: dict[str, tuple[str, str]]) -> dict[str, Any]:
    return {
        "fieldConfig": {
            "defaults": {
                "mappings": [
                    {
                        "type": "value",
                        "options": {
                            k: {"text": text, "color": color, "index": i}
                            for i, (k, (text, color)) in enumerate(values.items())
                        },
                    }
                ],
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {"colorMode": "background", "reduceOptions": {"calcs": ["lastNotNull"]}},
    }


def _unit(unit: str) -> dict[str, Any]:
    return {"fieldConfig": {"defaults": {"unit": unit}, "overrides": []}}


def build() -> dict[str, Any]:
    lay = _Layout()
    lay.row("Fleet")
    lay.panel(
        "timeseries",
        "Queue depth",
        8,
        [("max by (queue) (delivery_queue_depth)", "{{queue}}")],
    )
    lay.panel(
        "timeseries",
        "Oldest message age",
        8,
        [("max by (queue) (delivery_queue_oldest_age_seconds)", "{{queue}}")],
        **_unit("s"),
    )
    lay.panel("stat", "Dead letters", 4, [("max(delivery_dead_letters)", "dead letters")])
    lay.panel(
        "stat",
        "Shared state readable",
        4,
        [("min(delivery_shared_state_up)", "up")],
        **_mapping({"0": ("NO", "red"), "1": ("yes", "green")}),
    )
    # Lanes (worker.lanes): waiting work and waits by priority; tenants in the legend.
    lay.panel(
        "timeseries",
        "Lane depth by priority and tenant",
        8,
        [("max by (priority, tenant) (delivery_lane_depth)", "{{priority}} {{tenant}}")],
    )
    lay.panel(
        "timeseries",
        "Oldest wait in each lane",
        8,
        [
            (
                "max by (priority, tenant) (delivery_lane_oldest_wait_seconds)",
                "{{priority}} {{tenant}}",
            )
        ],
        **_unit("s"),
    )
    lay.panel(
        "timeseries",
        "Lane wait p99 (enqueue to dispatch)",
        8,
        [
            (
                "histogram_quantile(0.99, sum by (priority, le) "
                "(rate(delivery_lane_wait_seconds_bucket[5m])))",
                "{{priority}}",
            )
        ],
        **_unit("s"),
    )
    sel = PROVIDER_SELECTOR
    # One row, repeated by Grafana for each selected provider.
    lay.row("$provider", repeat="provider")
    lay.panel(
        "stat",
        "State",
        3,
        [(f"max(delivery_provider_paused{{{sel}}})", "paused")],
        **_mapping({"0": ("active", "green"), "1": ("PAUSED", "red")}),
    )
    lay.panel(
        "stat",
        "Breaker",
        3,
        [(f"max(delivery_breaker_state{{{sel}}})", "breaker")],
        **_mapping({"0": ("closed", "green"), "1": ("half-open", "orange"), "2": ("OPEN", "red")}),
    )
    lay.panel(
        "timeseries",
        "Messages finished /s",
        9,
        [
            (
                f"sum by (status, kind) (rate(delivery_messages_finished_total{{{sel}}}[5m]))",
                "{{status}} {{kind}}",
            ),
            (f"sum(rate(delivery_messages_parked_total{{{sel}}}[5m]))", "parked"),
        ],
    )
    lay.panel(
        "timeseries",
        "Requests /s by status class and outcome",
        9,
        [
            (
                f"sum by (status, kind) (rate(delivery_provider_requests_total{{{sel}}}[5m]))",
                "{{status}} {{kind}}",
            ),
            (f"sum(rate(delivery_provider_throttled_total{{{sel}}}[5m]))", "429 / throttled"),
            (f"sum(rate(delivery_limiter_holds_total{{{sel}}}[5m]))", "limiter holds"),
        ],
    )
    lay.panel(
        "timeseries",
        "Latency (p95)",
        8,
        [
            (
                "histogram_quantile(0.95, sum by (le) "
                f"(rate(delivery_provider_request_duration_seconds_bucket{{{sel}}}[5m])))",
                "provider request",
            ),
            (
                "histogram_quantile(0.95, sum by (le) "
                f"(rate(delivery_enqueue_to_accept_seconds_bucket{{{sel}}}[5m])))",
                "enqueue to accepted",
            ),
            (
                "histogram_quantile(0.95, sum by (le) "
                f"(rate(delivery_limiter_wait_seconds_bucket{{{sel}}}[5m])))",
                "limiter wait",
            ),
        ],
        **_unit("s"),
    )
    lay.panel(
        "timeseries",
        "Limiter usage",
        6,
        [(f"max by (limit) (delivery_limiter_usage_ratio{{{sel}}})", "{{limit}}")],
        **_unit("percentunit"),
    )
    lay.panel("stat", "Parked", 3, [(f"max(delivery_parked_messages{{{sel}}})", "parked")])
    lay.panel(
        "stat",
        "Balance",
        3,
        [
            (
                f"max by (unit, currency) (delivery_credit_balance{{{sel}}})",
                "{{unit}} {{currency}}",
            )
        ],
    )
    lay.panel(
        "timeseries",
        "Cost per hour",
        4,
        [
            (
                f"sum by (unit, currency) (increase(delivery_cost_total{{{sel}}}[1h]))",
                "{{unit}} {{currency}}",
            )
        ],
    )
    return {
        "__inputs": _INPUTS,
        "__requires": _REQUIRES,
        "uid": "delivery-worker",
        "title": "delivery-worker: providers",
        "tags": ["delivery-worker"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "editable": True,
        "panels": lay.panels,
        "templating": {"list": _TEMPLATING},
        "annotations": {"list": []},
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    DASHBOARD_PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {DASHBOARD_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
