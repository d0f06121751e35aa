"""Every Redis client of the shipped code comes from ``worker.redis_client``.

Any URL setting may be ``sentinel://`` (Redis Sentinel), which ``redis.Redis.from_url`` refuses:
a client built from a URL anywhere else starts fine on ``redis://`` and dies on a Sentinel
deployment (the schedule mover did, at worker start). This walks the source of the packages
that run in production or build the local stack and refuses every ``*.from_url(…)`` call and
every direct ``Redis(…)``/``StrictRedis(…)``/``Sentinel(…)`` construction outside the module
that knows both forms.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("worker", "tasks", "devstack", "delivery_sandbox")
ALLOWED = {
    # The one place that turns a URL (either form) into a client.
    "worker/redis_client.py",
    # Starts a Sentinel group and talks to chosen nodes and sentinels by port, never to a
    # configured URL.
    "devstack/sentinel.py",
}
CONSTRUCTORS = {"Redis", "StrictRedis", "Sentinel"}


def _offences(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "from_url" or name in CONSTRUCTORS:
            found.append((node.lineno, ast.unparse(func)))
    return found


def _sources() -> list[Path]:
    files: list[Path] = []
    for package in CHECKED:
        files.extend(sorted((ROOT / package).rglob("*.py")))
    return files


def test_the_check_sees_each_form() -> None:
    source = (
        "import redis\n"
        "a = redis.Redis.from_url(url)\n"
        "b = redis.from_url(url)\n"
        "c = redis.ConnectionPool.from_url(url)\n"
        "d = redis.Redis(host='h')\n"
        "e = Sentinel([('h', 1)])\n"
        "f = shared_redis(settings)\n"
    )
    assert [line for line, _ in _offences(ast.parse(source))] == [2, 3, 4, 5, 6]


def test_no_module_builds_a_redis_client_past_redis_client() -> None:
    sources = _sources()
    assert len(sources) > 50  # the walk really covers the packages
    offences = []
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        for line, call in _offences(ast.parse(path.read_text(), filename=rel)):
            offences.append(f"{rel}:{line}: {call}(...)")
    assert offences == [], (
        "build Redis clients with worker.redis_client (shared_redis, broker_redis, "
        "redis_client): URLs may be sentinel://\n" + "\n".join(offences)
    )
