"""Start and stop real local processes: redis-server, the sandbox, Celery workers.

Used by the integration tests, the benchmarks and the demo run command, so all three exercise
the same parts the way an operator would run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from delivery_sandbox.accounts import DEFAULT_KEYS, PREFIXES

__all__ = [
    "Proc",
    "free_port",
    "running",
    "sandbox_env",
    "start_flower",
    "start_metrics_exporter",
    "start_redis",
    "start_sandbox",
    "start_worker",
    "wait_for_port",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:g}s")


@dataclass
class Proc:
    """A child process with its log file; stopping it is idempotent."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        else:
            # The leader is gone; make sure no child of its group survives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(name: str, argv: list[str], log_path: Path, env: Mapping[str, str] | None) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    popen = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env) if env is not None else None,
        start_new_session=True,  # its own process group: stop() reaches every child
    )
    log.close()
    return Proc(name=name, popen=popen, log_path=log_path)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError(
            "redis-server is not installed (Debian: apt-get install redis-server)"
        )
    return found


def start_redis(
    workdir: Path,
    port: int | None = None,
    *,
    appendonly: bool = True,
    extra_args: list[str] | None = None,
) -> Proc:
    """A private redis-server on loopback, persisting to ``workdir`` (AOF on by default).

    ``appendfsync always``: Redis writes and fsyncs the AOF before it answers. With
    ``everysec`` it may postpone the write (up to 2 s while a background fsync is slow) yet
    still answer, so a SIGKILL or a host crash can lose a message the producer was told was
    queued (design semantics 6). The price is one fsync per event-loop turn.
    """
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "always",
        "--protected-mode", "yes",
        "--daemonize", "no",
        *(extra_args or []),
    ]  # fmt: skip
    proc = _spawn("redis", argv, workdir / "redis.log", None)
    proc.extra["port"] = port
    proc.extra["url"] = f"redis://127.0.0.1:{port}"
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"redis-server did not start:\n{proc.log_tail()}") from None
    return proc


def start_sandbox(
    workdir: Path, port: int | None = None, *, extra_args: list[str] | None = None
) -> Proc:
    """The provider sandbox as its own process (``python -m delivery_sandbox``)."""
    port = port or free_port()
    argv = [
        sys.executable, "-m", "delivery_sandbox",
        "--host", "127.0.0.1", "--port", str(port),
        "--log-file", str(workdir / "sandbox-log.jsonl"),
        *(extra_args or []),
    ]  # fmt: skip
    proc = _spawn("sandbox", argv, workdir / "sandbox.out", None)
    proc.extra["port"] = port
    proc.extra["url"] = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"sandbox did not start:\n{proc.log_tail()}") from None
    return proc


def sandbox_env(sandbox_url: str) -> dict[str, str]:
    """Point every provider at the sandbox, with the sandbox's default keys."""
    env: dict[str, str] = {}
    for provider, prefix in PREFIXES.items():
        env[f"DELIVERY_{provider.upper()}_BASE_URL"] = sandbox_url + prefix
        env[f"DELIVERY_{provider.upper()}_API_KEY"] = DEFAULT_KEYS[provider]
    return env


def start_worker(
    workdir: Path,
    env: Mapping[str, str],
    *,
    name: str = "w1",
    concurrency: int = 2,
    queues: str | None = None,
    extra_args: list[str] | None = None,
    events: bool = True,
) -> Proc:
    """A real ``celery -A worker worker`` process, with task events on unless ``events`` is
    false (Flower turns them on anyway while it runs)."""
    argv = [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "--loglevel", "INFO",
        "--concurrency", str(concurrency),
        "--hostname", f"{name}@%h",
        *(["-E"] if events else []),
        "--without-gossip", "--without-mingle",
        *(["-Q", queues] if queues else []),
        *(extra_args or []),
    ]  # fmt: skip
    full_env = {**os.environ, **env}
    return _spawn(f"worker-{name}", argv, workdir / f"worker-{name}.log", full_env)


def start_flower(workdir: Path, env: Mapping[str, str], *, port: int, basic_auth: str) -> Proc:
    """Flower on loopback behind basic auth (``user:password``); the caller waits for its port."""
    argv = [
        sys.executable, "-m", "celery", "-A", "worker", "flower",
        f"--port={port}", "--address=127.0.0.1", f"--basic-auth={basic_auth}",
    ]  # fmt: skip
    # Not the workers' PROMETHEUS_MULTIPROC_DIR: Flower's flower_* series would land in the
    # files the workers' exporter serves. Flower keeps them in memory for its own /metrics.
    full_env = {k: v for k, v in {**os.environ, **env}.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = _spawn("flower", argv, workdir / "flower.log", full_env)
    proc.extra["port"] = port
    return proc


def start_metrics_exporter(workdir: Path, env: Mapping[str, str], *, port: int) -> Proc:
    """``delivery-worker metrics`` on loopback; ``env`` must name the workers'
    ``PROMETHEUS_MULTIPROC_DIR``. Waits for its port."""
    argv = [
        sys.executable, "-m", "worker.ops.cli", "metrics",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    proc = _spawn("metrics", argv, workdir / "metrics.log", {**os.environ, **env})
    proc.extra["port"] = port
    proc.extra["url"] = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"metrics exporter did not start:\n{proc.log_tail()}") from None
    return proc


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[tuple[Proc, ...]]:
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop()
