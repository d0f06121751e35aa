"""Safe network defaults: nothing the stack runs is reachable from other hosts unless opted in.

docker-compose publishes every port on the host's loopback only (inside the compose network
services listen on 0.0.0.0, which is fine: the mapping decides who reaches them), and every
Procfile process binds 127.0.0.1 unless an environment variable says otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]


def _published_ports() -> list[tuple[str, str]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return [
        (name, str(mapping))
        for name, service in compose["services"].items()
        for mapping in service.get("ports", [])
    ]


def test_every_published_compose_port_is_bound_to_loopback() -> None:
    published = _published_ports()
    # The services a user reaches from the host: all of them are published, on loopback.
    assert {name for name, _ in published} >= {"prometheus", "grafana", "flower", "sandbox"}
    for name, mapping in published:
        assert isinstance(mapping, str) and mapping.startswith("127.0.0.1:"), (name, mapping)
        assert len(mapping.split(":")) == 3, (name, mapping)  # host-ip:host-port:container-port


def test_procfile_processes_bind_loopback_by_default() -> None:
    lines = [
        line
        for line in (ROOT / "Procfile").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines
    for line in lines:
        assert "0.0.0.0" not in line, line  # noqa: S104 - the string looked for
    procfile = "\n".join(lines)
    # The metrics exporter and Flower: loopback unless METRICS_HOST / FLOWER_HOST opt in.
    assert re.search(r"^metrics: .*--host \$\{METRICS_HOST:-127\.0\.0\.1\}", procfile, re.M)
    assert re.search(r"^flower: .*--address=\$\{FLOWER_HOST:-127\.0\.0\.1\}", procfile, re.M)
    assert re.search(r"^receiver: .*--host 127\.0\.0\.1", procfile, re.M)
    assert re.search(r"^sandbox: .*--host 127\.0\.0\.1", procfile, re.M)


def test_compose_redis_never_evicts() -> None:
    """Ledger records, idempotency keys and locks carry TTLs: an evicting Redis drops them."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    for name in ("redis", "redis-replica"):
        command = compose["services"][name]["command"]
        at = command.index("--maxmemory-policy")
        assert command[at + 1] == "noeviction", name
