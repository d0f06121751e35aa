"""Writes the Grafana dashboard: one row per provider, a fleet row on top.

``python -m devstack.dashboard`` regenerates ``monitoring/grafana/dashboards/delivery-worker.json``
(a test checks the committed file is this output, and that every metric it uses is scraped).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from worker.providers import PROVIDERS

__all__ = ["DASHBOARD_PATH", "build", "main"]

DASHBOARD_PATH = Path("monitoring/grafana/dashboards/delivery-worker.json")
_DS = {"type": "prometheus", "uid": "prometheus"}


class _Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.next_id = 1

    def row(self, title: str) -> None:
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
    for p in PROVIDERS:
        sel = f'provider="{p}"'
        lay.row(p)
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
            **_mapping(
                {"0": ("closed", "green"), "1": ("half-open", "orange"), "2": ("OPEN", "red")}
            ),
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
        "templating": {"list": []},
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
