"""A local Redis Sentinel group: a master, a replica and three sentinels on free ports.

Sentinels are ``redis-server --sentinel`` (the Debian ``redis-server`` package runs them; no
``redis-sentinel`` package is needed). Used by the failover tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from devstack.processes import (
    Proc,
    _spawn,
    free_port,
    redis_server_binary,
    start_redis,
    wait_for_port,
)

__all__ = ["RedisGroup", "start_redis_group"]


@dataclass
class RedisGroup:
    """The processes of one Sentinel-managed Redis, and how to reach and steer it."""

    workdir: Path
    master_name: str
    servers: dict[int, Proc]
    """redis-server processes by port (the first master and its replica)."""
    sentinels: list[Proc]
    sentinel_ports: list[int]
    down_after_ms: int
    dirs: dict[int, Path] = field(default_factory=dict)

    def url(self, db: int = 0) -> str:
        """``sentinel://…/db;sentinel://…``: the database on the first sentinel (kombu's way)."""
        first, *rest = self.sentinel_ports
        return ";".join(
            [f"sentinel://127.0.0.1:{first}/{db}", *(f"sentinel://127.0.0.1:{p}" for p in rest)]
        )

    @staticmethod
    def _sentinel_at(port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def master_port(self) -> int:
        """The master's port as the sentinels report it (the first one that answers)."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError), self._sentinel_at(port) as s:
                addr = s.sentinel_get_master_addr_by_name(self.master_name)
                if addr:
                    return int(addr[1])
        raise RuntimeError("no sentinel answers")

    def direct(self, port: int, db: int = 0) -> redis.Redis:
        return redis.Redis(port=port, db=db, socket_timeout=5)

    def wait_healthy(self, *, replicas: int = 1, timeout_s: float = 30.0) -> None:
        """Until every sentinel sees the master, ``replicas`` replicas and the other sentinels."""
        deadline = time.monotonic() + timeout_s
        others = len(self.sentinel_ports) - 1
        while time.monotonic() < deadline:
            ok = True
            for port in self.sentinel_ports:
                try:
                    with redis.Redis(port=port, socket_timeout=2) as s:
                        info = s.sentinel_master(self.master_name)
                except redis.RedisError:
                    ok = False
                    break
                flags = str(info.get("flags", ""))
                if (
                    int(info.get("num-other-sentinels", 0)) < others
                    or int(info.get("num-slaves", 0)) < replicas
                    or "down" in flags
                ):
                    ok = False
                    break
            if ok and self._replicas_online(self.master_port()) >= replicas:
                return
            time.sleep(0.2)
        raise TimeoutError(f"sentinel group not healthy after {timeout_s:g}s")

    def _replicas_online(self, master_port: int) -> int:
        try:
            with self.direct(master_port) as m:
                info = m.info("replication")
        except redis.RedisError:
            return 0
        return sum(
            1
            for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
        )

    def kill_master(self) -> int:
        """SIGKILL the current master; its port."""
        port = self.master_port()
        self.servers[port].stop(signal.SIGKILL)
        return port

    def wait_failover(self, old_port: int, timeout_s: float = 60.0) -> int:
        """Until the sentinels name a new master; its port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                port = self.master_port()
                if port != old_port:
                    return port
            time.sleep(0.1)
        raise TimeoutError(f"no failover after {timeout_s:g}s")

    def restart_server(self, port: int) -> Proc:
        """Start a killed server again on its port and directory (AOF); the sentinels turn a
        former master into a replica of the current one."""
        proc = start_redis(self.dirs[port], port, extra_args=_SERVER_ARGS)
        self.servers[port] = proc
        return proc

    def stop(self) -> None:
        for proc in [*self.sentinels, *self.servers.values()]:
            proc.stop()


_SERVER_ARGS = [
    # Send the first full sync at once (Redis 7 defaults to waiting 5 s for more replicas).
    "--repl-diskless-sync-delay", "0",
]  # fmt: skip


def start_redis_group(
    workdir: Path,
    *,
    master_name: str = "dw-master",
    sentinels: int = 3,
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 10_000,
) -> RedisGroup:
    """A master, one replica (both AOF ``always``, as :func:`start_redis`) and ``sentinels``
    sentinels agreeing with ``quorum`` that the master is down after ``down_after_ms``."""
    master_port, replica_port = free_port(), free_port()
    dirs = {master_port: workdir / "redis-a", replica_port: workdir / "redis-b"}
    servers: dict[int, Proc] = {}
    group: RedisGroup | None = None
    try:
        servers[master_port] = start_redis(dirs[master_port], master_port, extra_args=_SERVER_ARGS)
        servers[replica_port] = start_redis(
            dirs[replica_port],
            replica_port,
            extra_args=[*_SERVER_ARGS, "--replicaof", "127.0.0.1", str(master_port)],
        )
        procs, ports = [], []
        for i in range(sentinels):
            port = free_port()
            sdir = workdir / f"sentinel-{i}"
            sdir.mkdir(parents=True, exist_ok=True)
            conf = sdir / "sentinel.conf"  # the sentinel rewrites it with what it learns
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {sdir}\n"
                f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n"
                f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
                f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {master_name} 1\n"
            )
            argv = [redis_server_binary(), str(conf), "--sentinel"]
            proc = _spawn(f"sentinel-{i}", argv, sdir / "sentinel.log", None)
            procs.append(proc)
            ports.append(port)
        group = RedisGroup(
            workdir=workdir,
            master_name=master_name,
            servers=servers,
            sentinels=procs,
            sentinel_ports=ports,
            down_after_ms=down_after_ms,
            dirs=dirs,
        )
        for port in ports:
            wait_for_port(port)
        group.wait_healthy()
        return group
    except BaseException:
        if group is not None:
            group.stop()
        else:
            for proc in servers.values():
                proc.stop()
        raise
