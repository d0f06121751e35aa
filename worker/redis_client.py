"""Redis clients from the URL settings: a plain ``redis://`` server or a Sentinel group.

Every URL setting (``DELIVERY_BROKER_URL``, ``DELIVERY_RESULT_BACKEND``, ``DELIVERY_REDIS_URL``)
takes either form. A Sentinel URL lists the sentinels, separated by ``;``, in the form Celery
and kombu read for the broker and the result backend::

    sentinel://:redis-password@10.0.0.1:26379/0;sentinel://10.0.0.2:26379;sentinel://10.0.0.3

The password and the database number are the Redis master's and are read from the *first*
sentinel (kombu and Celery read only that one); a later sentinel naming another database is
refused. The port defaults to 26379. The master's name is ``DELIVERY_REDIS_MASTER_NAME`` and the
sentinels' own password (``requirepass`` in sentinel.conf) ``DELIVERY_REDIS_SENTINEL_PASSWORD``:
one Redis group for the three settings.

redis-py's :class:`~redis.sentinel.Sentinel` asks the sentinels for the master on every new
connection; a connection that finds its server demoted to a replica (``READONLY``) is dropped
as a ``ConnectionError`` and the next one asks again, and "no master yet" during an election is
a ``ConnectionError`` too (``MasterNotFoundError``). So the stores' callers, which already treat
a Redis connection error as "retry" (the task is retried, the guard reconnects the consumer),
need nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import redis
from pydantic import SecretStr
from redis.sentinel import Sentinel

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "SentinelTarget",
    "broker_redis",
    "celery_sentinel_options",
    "is_sentinel_url",
    "parse_sentinel_url",
    "redis_client",
    "shared_redis",
]

DEFAULT_SENTINEL_PORT = 26379
SENTINEL_SOCKET_TIMEOUT_S = 2.0
"""A sentinel that does not answer within this is skipped for the next one."""


class Settings(Protocol):
    """What this module reads of :class:`worker.config.Settings` (which imports it)."""

    @property
    def broker_url(self) -> str: ...
    @property
    def result_backend(self) -> str: ...
    @property
    def redis_url(self) -> str | None: ...
    @property
    def shared_redis_url(self) -> str: ...
    @property
    def redis_master_name(self) -> str | None: ...
    @property
    def redis_sentinel_password(self) -> SecretStr | None: ...


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith("sentinel://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The sentinels, database and master credentials of a ``sentinel://…;sentinel://…`` URL."""
    chunks = [c.strip() for c in url.split(";") if c.strip()]
    if not chunks:
        raise ValueError("a sentinel URL lists at least one sentinel://host:port")
    sentinels: list[tuple[str, int]] = []
    first_db: int | None = None
    username = password = None
    for i, chunk in enumerate(chunks):
        parts = urlsplit(chunk)
        if parts.scheme.lower() != "sentinel":
            raise ValueError(
                f"every part of a sentinel URL starts with sentinel://, not {parts.scheme}://"
            )
        try:
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"sentinel {i + 1}: the port is not a number") from None
        if not parts.hostname:
            raise ValueError(f"sentinel {i + 1}: no host")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"sentinel {i + 1}: the database {path!r} is not a number")
        db = int(path) if path else None
        if i == 0:
            first_db = db or 0
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password else None
        elif db is not None and db != first_db:
            raise ValueError(
                "the database number goes on the first sentinel (kombu and Celery read only "
                f"that one); sentinel {i + 1} names /{db}, the first /{first_db}"
            )
        sentinels.append((parts.hostname, port))
    return SentinelTarget(tuple(sentinels), first_db or 0, username, password)


def redis_client(
    url: str,
    *,
    master_name: str | None = None,
    sentinel_password: str | None = None,
    **kwargs: Any,
) -> redis.Redis:
    """A client for ``url``: ``redis://``/``rediss://``/``unix://`` as is, ``sentinel://`` via
    the sentinels to the current master of ``master_name``. ``kwargs`` go to every connection."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    if not master_name:
        raise ValueError("a sentinel:// URL needs the master's name (DELIVERY_REDIS_MASTER_NAME)")
    target = parse_sentinel_url(url)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
    }
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    # Typed as Any: redis-py annotates Sentinel in some releases and not in others.
    sentinel_cls: Any = Sentinel
    sentinel = sentinel_cls(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    client: redis.Redis = sentinel.master_for(
        master_name,
        db=target.db,
        username=target.username,
        password=target.password,
        **kwargs,
    )
    return client


def _sentinel_password(settings: Settings) -> str | None:
    secret = settings.redis_sentinel_password
    return secret.get_secret_value() if secret is not None else None


def shared_redis(settings: Settings, **kwargs: Any) -> redis.Redis:
    """The shared-state Redis (ledger, limiter, health, …) of ``settings``."""
    return redis_client(
        settings.shared_redis_url,
        master_name=settings.redis_master_name,
        sentinel_password=_sentinel_password(settings),
        **kwargs,
    )


def broker_redis(settings: Settings, **kwargs: Any) -> redis.Redis:
    """A plain Redis client on the broker's database (``DELIVERY_BROKER_URL``, either form),
    for reading kombu's queues (their lengths); publishing goes through Celery."""
    return redis_client(
        settings.broker_url,
        master_name=settings.redis_master_name,
        sentinel_password=_sentinel_password(settings),
        **kwargs,
    )


def celery_sentinel_options(settings: Settings, url: str) -> dict[str, Any]:
    """Transport options Celery/kombu need for a ``sentinel://`` broker or result backend.

    ``master_name`` (kombu's ``SentinelChannel`` and Celery's ``SentinelBackend`` both read it)
    and ``sentinel_kwargs`` for the sentinels' own password and timeouts. Nothing for
    ``redis://``.
    """
    if not is_sentinel_url(url):
        return {}
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
    }
    password = _sentinel_password(settings)
    if password:
        sentinel_kwargs["password"] = password
    return {"master_name": settings.redis_master_name, "sentinel_kwargs": sentinel_kwargs}


def check_urls(settings: Settings) -> None:
    """Refuse a malformed Sentinel URL, or one without a master name (``check-config``)."""
    named = {
        "DELIVERY_BROKER_URL": settings.broker_url,
        "DELIVERY_RESULT_BACKEND": settings.result_backend,
        "DELIVERY_REDIS_URL": settings.redis_url,
    }
    for name, url in named.items():
        if url is None or not is_sentinel_url(url):
            continue
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if not settings.redis_master_name:
            raise ValueError(
                f"{name} is a sentinel:// URL: set DELIVERY_REDIS_MASTER_NAME to the name the "
                "sentinels monitor (sentinel monitor <name> …)"
            )
