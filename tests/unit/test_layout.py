"""The package layout: the worker stands without the local-stack tooling, and has no import cycle.

``delivery_sandbox`` and ``devstack`` (local processes for tests, benchmarks and the demo) ship
in the same source tree, but a production worker must not need them: nothing in ``worker`` or
``tasks`` imports them, apart from the CLI's ``demo`` command, which loads ``devstack.demo`` when
it runs and says what to install when it is missing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).parents[2]
LOCAL_STACK = ("delivery_sandbox", "devstack")


def _module_files(package: str) -> dict[str, Path]:
    """Dotted module name → source file, for every module of ``package``."""
    files = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every module ``path`` imports, anywhere in it (function bodies included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in known else base


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it makes Python import.

    Importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``: those count too,
    except a module's own enclosing packages (already being imported when it runs).
    """
    files = _module_files(package)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = graph.setdefault(name, set())
        for target in _imports(name, path, files):
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                imported = ".".join(parts[:end])
                if imported in files and not (name + ".").startswith(imported + "."):
                    deps.add(imported)
    return graph


def test_no_import_cycle_among_worker_modules() -> None:
    graph = _import_graph("worker")
    assert "worker.app" in graph and "worker.ops.cli" in graph  # the walk found the package
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_worker_and_tasks_never_import_the_local_stack() -> None:
    """Not even inside a function: only the CLI's demo command may load it (lazily)."""
    allowed = {("worker.ops.cli", "devstack.demo")}
    found = set()
    for package in ("worker", "tasks"):
        files = _module_files(package)
        for name, path in files.items():
            for target in _imports(name, path, files):
                if target.partition(".")[0] in LOCAL_STACK:
                    found.add((name, target))
    assert found == allowed


_WITHOUT_LOCAL_STACK = """
import importlib, importlib.abc, pkgutil, sys

BLOCKED = {blocked!r}
attempts = []

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
for name in list(sys.modules):
    if name.partition(".")[0] in BLOCKED:
        del sys.modules[name]

import worker, worker.app, worker.ops.cli, worker.ops.operations, tasks
from worker import celery
celery.loader.import_default_modules()
assert "tasks.send_email" in celery.tasks, sorted(celery.tasks)
for info in pkgutil.walk_packages(worker.__path__, "worker."):
    importlib.import_module(info.name)
print("imported", len([m for m in sys.modules if m.startswith("worker.")]), "worker modules")
print("attempts", attempts)

from worker.ops.cli import main
sys.exit(main(["demo", "--exit", "--no-flower", "--workdir", {workdir!r}]))
"""


def test_worker_imports_without_sandbox_or_devstack(tmp_path: Path) -> None:
    script = _WITHOUT_LOCAL_STACK.format(blocked=LOCAL_STACK, workdir=str(tmp_path / "demo"))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Every worker module imported, none of them reached for the local stack...
    assert "attempts []" in done.stdout, done.stdout + done.stderr
    imported = int(done.stdout.split("imported ", 1)[1].split()[0])
    assert imported >= len(_module_files("worker")) - 1  # all but ``worker`` itself
    # ... and the demo command says what is missing instead of a traceback.
    assert done.returncode == 2, done.stderr
    assert "needs the local-stack tooling" in done.stderr
    assert "'devstack.demo'" in done.stderr or "'devstack'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "demo").exists()  # nothing was started


LEDGER_WRITES = frozenset(
    {
        "bury",
        "cancel",
        "claim_due",
        "create",
        "create_many",
        "forget",
        "hold",
        "incr",
        "lock",
        "mark_outcome_known",
        "mark_outcome_unknown",
        "note_tag_use",
        "record_provider",
        "record_result",
        "record_send_at",
        "revive",
        "set_aside",
        "set_fields",
        "touch",
        "transition",
        "unlock",
        "untrack",
    }
)
"""The ``Ledger`` methods that change shared state (``worker.stores.ledger.base``)."""

FLOW_WRITER = "worker/delivery/writer.py"
OUTSIDE_THE_FLOW = {
    # The outcome writer's local spool: a final write Redis refused after its retries
    # (worker.delivery.writer.final_write), replayed into the ledger at the next start.
    ("worker/delivery/spool.py", "transition"),
    # The producer records a delivery before it is published, and forgets it when the publish
    # failed (no task will ever run for it).
    ("worker/producer.py", "create"),
    ("worker/producer.py", "create_many"),
    ("worker/producer.py", "forget"),
    # The worker main process's guard: refused and undecodable queue items, before any run.
    ("worker/guard/refusals.py", "create"),
    ("worker/guard/refusals.py", "bury"),
    ("worker/guard/refusals.py", "set_aside"),
    ("worker/guard/refusals.py", "record_result"),
    ("worker/guard/refusals.py", "transition"),
    # Cancel, the durable schedule at enqueue and its mover, the operator's commands.
    ("worker/scheduling/cancel.py", "cancel"),
    ("worker/scheduling/cancel.py", "lock"),
    ("worker/scheduling/cancel.py", "unlock"),
    ("worker/scheduling/enqueue.py", "hold"),
    ("worker/scheduling/mover.py", "claim_due"),
    ("worker/ops/operations.py", "revive"),
    ("worker/ops/operations.py", "touch"),
    ("worker/ops/operations.py", "untrack"),
}


LEDGER_ROLES = ("ledger", "records", "run_locks", "schedule", "dead_letters", "tag_index")
"""The names the ledger goes by: the whole store, and its role handles (``Runtime.records``, ...,
``worker.stores.ledger.base``)."""


def _store_calls(path: Path, store: str, methods: frozenset[str]) -> Iterator[str]:
    """The ``methods`` called on ``<...>.<store>`` or a name containing ``store`` in ``path``
    (for ``"ledger"``: any name of :data:`LEDGER_ROLES`)."""
    names = LEDGER_ROLES if store == "ledger" else (store,)
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func.value
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if any(n in name.lower() for n in names) and node.func.attr in methods:
            yield node.func.attr


def _sources(*packages: str) -> Iterator[tuple[str, Path]]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith("worker/stores/"):  # the stores implement the writes
                yield rel, path


def test_only_the_outcome_writer_writes_the_ledger() -> None:
    """In the delivery flow (tasks, ``worker.delivery``, ``worker.batching``) only the outcome
    writer writes the ledger; outside it, only the producer's create and the features listed
    (the guard, cancel, the schedule, the operator's commands) do."""
    found = set()
    for rel, path in _sources("worker", "tasks"):
        for method in _store_calls(path, "ledger", LEDGER_WRITES):
            found.add((rel, method))
    assert {m for rel, m in found if rel == FLOW_WRITER} >= {"transition", "create", "incr"}
    outside = {(rel, m) for rel, m in found if rel != FLOW_WRITER}
    assert outside <= OUTSIDE_THE_FLOW, (
        f"ledger written outside the writer: {outside - OUTSIDE_THE_FLOW}"
    )
    flow = ("tasks/", "worker/delivery/", "worker/batching/")
    in_flow = {(rel, m) for rel, m in outside if rel.startswith(flow)}
    assert in_flow <= {("worker/delivery/spool.py", "transition")}, in_flow


def test_nothing_outside_the_stores_writes_ledger_fields_by_name() -> None:
    """``set_fields`` (a bag of hash fields) is the stores' own: the writer and every feature
    name what happened (``record_provider``, ``mark_outcome_unknown``, ``record_result``,
    ...), so the field names live in ``worker.stores.ledger`` only."""
    found = {
        (rel, m)
        for rel, path in _sources("worker", "tasks")
        for m in _store_calls(path, "ledger", frozenset({"set_fields"}))
    }
    assert found == set(), found
    marks = {"record_provider", "record_result", "record_send_at", "mark_outcome_unknown"}
    writer = set(_store_calls(ROOT / FLOW_WRITER, "ledger", LEDGER_WRITES))
    assert marks | {"mark_outcome_known"} <= writer, writer


def test_only_the_outcome_writer_runs_the_hot_path_scripts_and_the_counters() -> None:
    """The run's first and last scripts, the parking lot, the Redis counters, the tracking
    registration of a send and the suppression list are written by the outcome writer only."""
    writes = {
        (
            "hotpath",
            frozenset(
                {"begin", "finish", "clear_mark", "begin_chunk", "sending_chunk", "finish_chunk"}
            ),
        ),
        ("parking", frozenset({"park"})),
        ("suppression", frozenset({"add", "soft_bounce", "remove"})),
    }
    found = set()
    for rel, path in _sources("tasks", "worker/delivery", "worker/batching"):
        for store, methods in writes:
            found |= {(rel, m) for m in _store_calls(path, store, methods)}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id in {"track_sent", "registered", "remember"}:
                found.add((rel, node.id))
            # The shared counters: a metrics facade call handed the runtime's shared store
            # (``rt.metrics``), or the store's own ``incr``.
            if isinstance(node, ast.Call):
                passed = [*node.args, *(k.value for k in node.keywords)]
                if any(isinstance(a, ast.Attribute) and a.attr == "metrics" for a in passed):
                    found.add((rel, "shared counter"))
                f = node.func
                if (
                    isinstance(f, ast.Attribute)
                    and f.attr == "incr"
                    and isinstance(f.value, ast.Attribute)
                    and f.value.attr == "metrics"
                ):
                    found.add((rel, "shared counter"))
    assert {rel for rel, _ in found} == {FLOW_WRITER}, found
    assert (FLOW_WRITER, "shared counter") in found


def test_features_depend_on_the_ledger_role_they_use() -> None:
    """The flow, cancel and the schedule, the tracking service and the operator's commands reach
    the ledger through a role (``rt.records``, ``rt.run_locks``, ``rt.schedule``,
    ``rt.dead_letters``, ``rt.tag_index``), never through the whole store (``rt.ledger``)."""
    found = set()
    for rel, path in _sources("tasks", "worker/delivery", "worker/scheduling", "worker/ops",
                              "worker/tracking", "worker/batching"):  # fmt: skip
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "ledger":
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name == "rt":
                    found.add(rel)
    assert found == set(), found
