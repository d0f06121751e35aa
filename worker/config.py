"""Configuration from the environment (``DELIVERY_*``), validated once at start."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.http import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S
from worker.limits import DEFAULT_LIMITS as DEFAULT_MESSAGE_LIMITS
from worker.limits import MessageLimits
from worker.providers import DRIVERS, PROVIDERS, channel_providers
from worker.redaction import register_secret, register_url_password
from worker.redis_client import check_urls as check_redis_urls
from worker.scheduling.defaults import LEASE_S as SCHEDULE_LEASE_S
from worker.scheduling.defaults import TICK_S as SCHEDULE_TICK_S
from worker.stores.health import BreakerConfig
from worker.stores.limiter import DEFAULT_HIGH_SHARE, DEFAULT_SAFETY_MARGIN_S, Limit
from worker.tracking.policy import DEFAULT_POLL, EVENTS_QUEUE, TASK_NAME, PollPolicy

__all__ = ["PROVIDERS", "Settings", "get_settings"]

_BREAKER = BreakerConfig()
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _provider_fields() -> dict[str, Any]:
    """``<name>_api_key``, ``<name>_base_url`` and each declared extra setting, per provider.

    Read from ``DELIVERY_<NAME>_API_KEY``, ``DELIVERY_<NAME>_BASE_URL`` and
    ``DELIVERY_<NAME>_<SETTING>`` (the public contract); the registry says which exist.
    """
    fields: dict[str, Any] = {}
    for name, driver in DRIVERS.items():
        fields[f"{name}_api_key"] = (SecretStr | None, None)
        fields[f"{name}_base_url"] = (str | None, None)  # None: the driver's default
        for setting, description in driver.extra_settings.items():
            fields[f"{name}_{setting}"] = (str | None, Field(default=None, description=description))
    return fields


if TYPE_CHECKING:
    _ProviderSettings = BaseSettings
else:
    _ProviderSettings = create_model(
        "_ProviderSettings", __base__=BaseSettings, **_provider_fields()
    )


_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_limits(spec: str) -> tuple[Limit, ...]:
    """``"10/s"``, ``"2000/min"``, ``"5/60s"``, ``"5/min;2000/h"`` → limits; ``""`` → none."""
    limits = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        count_text, _, window_text = part.partition("/")
        match = re.fullmatch(r"(\d*\.?\d*)\s*([a-z]+)", window_text.strip())
        if not count_text.strip().isdigit() or not match or match.group(2) not in _UNITS:
            raise ValueError(f"rate limit {part!r} is not like '10/s', '2000/min' or '5/60s'")
        amount = float(match.group(1)) if match.group(1) else 1.0
        limits.append(Limit(int(count_text), amount * _UNITS[match.group(2)]))
    return tuple(limits)


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(_ProviderSettings):
    """Every knob of the worker. Environment names are ``DELIVERY_`` + the upper-case field."""

    model_config = SettingsConfigDict(env_prefix="DELIVERY_", extra="ignore", frozen=True)

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    result_expires_s: int = Field(default=7 * 24 * 3600, ge=60)
    redis_url: str | None = None
    """Shared state (limiter, provider health, ledger); defaults to the broker's Redis."""
    # Redis Sentinel (worker.redis_client): any of the three URLs above may be
    # ``sentinel://host:26379/0;sentinel://host2:26379`` naming one monitored master.
    redis_master_name: str | None = None
    """The master the sentinels monitor; needed when a URL is ``sentinel://``."""
    redis_sentinel_password: SecretStr | None = None
    """The sentinels' own password (their ``requirepass``); Redis's goes in the URL."""
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)
    """A producer's enqueue returns only once this many replicas hold it (``WAIT``); 0: off."""
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)
    """How long an enqueue waits for those replicas before it raises ``NotReplicated``."""
    redis_namespace: str = Field(default="dw", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    """The first part of every shared-state key (``<namespace>:delivery:<id>``): deployments
    that share one Redis each take their own (``worker.stores.keys``)."""
    allow_eviction: bool = False
    """Run on a Redis whose ``maxmemory-policy`` evicts keys (a loud warning instead of a
    refusal): evicted ledger records, idempotency keys and locks mean duplicates or losses."""

    providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Providers this worker must be able to use; each needs an API key. Empty: those with a key."""

    egress_identity: str = "default"
    """Names this host's source IP for provider rate limits; hosts with other IPs use others."""
    local_address: str | None = None
    """Bind outgoing connections to this source address (optional)."""

    http_connect_timeout_s: float = Field(default=DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    http_read_timeout_s: float = Field(default=DEFAULT_READ_TIMEOUT_S, gt=0)
    http_total_timeout_s: float | None = Field(default=None, gt=0)
    """The most one provider request may take, connect to last byte (``worker.http``); None:
    connect + read timeout (35 s). The read timeout bounds each read only: an answer trickled
    byte by byte would outlive the send lock (``send_lock_ttl_s``), which it must stay below."""

    final_write_retry_s: float = Field(default=30.0, ge=0, le=600)
    """How long a run keeps retrying its final ledger write while Redis refuses it (OOM,
    READONLY during a failover, a restart) before it keeps the write in the local spool."""
    spool_dir: str = Field(default_factory=lambda: str(Path(tempfile.gettempdir()) / "dw-spool"))
    """Where final writes Redis refused are kept until the next worker start replays them
    (``worker.delivery.spool``); a persistent volume keeps them across container restarts."""

    reconcile_grace_s: float = Field(default=60.0, ge=0)
    """After a send whose outcome is unknown (read timeout, dropped answer), how long to wait
    before asking the provider whether it accepted the send (SMS Partner's status by tag), and
    before any resend. A provider can accept a request seconds after the client gave up; asked
    at once, it shows nothing yet and a resend duplicates the message. The default is above
    the 30 s read timeout; it must stay below ``visibility_timeout_s``."""

    max_retries: int = Field(default=8, ge=0, le=100)
    retry_backoff_base_s: float = Field(default=2.0, gt=0)
    retry_backoff_max_s: float = Field(default=600.0, gt=0)
    default_ttl_s: int = Field(default=24 * 3600, gt=0)
    """A message without ``deadline`` expires this long after it was enqueued."""

    rate_limits: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Overrides of the documented provider limits, JSON: ``{"emailmassivo": {"send": "10/s"}}``.
    A value lists limits separated by ``;`` (``"5/min;2000/h"``); ``""`` removes the limit."""
    limiter_safety_margin_s: float = Field(default=DEFAULT_SAFETY_MARGIN_S, ge=0, le=1)
    """Added to every limiter window: the spread of grant-to-arrival delays it must absorb
    (the default and its measurement: ``worker.stores.limiter.DEFAULT_SAFETY_MARGIN_S``)."""
    limiter_max_inline_wait_s: float = Field(default=2.0, ge=0, le=30)
    """A task reserves a limiter slot up to this far ahead and sleeps until it; a later slot is
    not reserved and the task is rescheduled."""
    limiter_ahead_s: float = Field(default=0.5, ge=0, le=30)
    """With lanes on, a ``normal``/``bulk`` task reserves a slot at most this far ahead (and at
    most ``limiter_max_inline_wait_s``); a later one sends it back into its lane, due then. So
    pool processes are not all asleep on campaign slots when a ``high`` message comes."""
    limiter_high_share: float = Field(default=DEFAULT_HIGH_SHARE, ge=0, le=1)
    """The share of every limiter window that ``normal``/``bulk`` reservations leave free for
    ``high`` requests (borrowed when no ``high`` request waits): ``docs/limiter.md``."""

    # The breaker's defaults are BreakerConfig's (worker.stores.health).
    breaker_failure_threshold: int = Field(default=_BREAKER.failure_threshold, ge=1)
    breaker_window_s: float = Field(default=_BREAKER.window_s, gt=0)
    breaker_open_s: float = Field(default=_BREAKER.open_s, gt=0)
    breaker_max_open_s: float = Field(default=_BREAKER.max_open_s, gt=0)
    balance_check_interval_s: float = Field(default=60.0, ge=5)
    """How often beat asks paused providers for their balance (``GET /me``)."""

    max_unfinished_runs: int = Field(default=3, ge=1, le=100)
    """A delivery whose task started this many times without finishing (its worker died each
    time) is a poison message: it goes to the dead letters instead of killing more workers."""
    sweep_interval_s: float = Field(default=30.0, ge=1)
    sweep_sending_after_s: float = Field(default=300.0, ge=1)
    """A delivery left in ``sending`` this long (its worker died and nothing redelivered it)
    is re-enqueued by the sweeper."""
    sweep_queued_after_s: float = Field(default=3600.0, ge=1)
    """A delivery still ``queued`` this long is re-enqueued (lost between broker and worker)."""
    schedule_tick_s: float = Field(default=SCHEDULE_TICK_S, gt=0, le=1)
    """The schedule mover's longest sleep between passes (``worker.scheduling.mover``)."""
    quiet_hours: str = ""
    """Per-channel sending windows (JSON, ``worker.scheduling.quiet``); empty: none."""
    schedule_lease_s: float = Field(default=SCHEDULE_LEASE_S, ge=1)
    """A due message the mover published is published again if its run has not started
    within this long (its worker died, or the broker lost it)."""

    lanes: bool = True
    """``DELIVERY_LANES``: producers put waiting work in Redis lanes by priority and tenant
    (``worker.lanes``) and each worker's dispatcher feeds the broker queue from them, keeping
    it short; off: producers publish to the broker queue directly (one FIFO line)."""
    lane_weights: str = "normal=4,bulk=1"
    """``DELIVERY_LANE_WEIGHTS``: the shares of ``normal`` and ``bulk`` while both wait
    (``high`` is always taken first)."""
    tenant_weights: str = ""
    """``DELIVERY_TENANT_WEIGHTS``: ``tenant=weight,...``; a tenant not named weighs 1."""
    lane_buffer: int = Field(default=2, ge=1, le=1000)
    """``DELIVERY_LANE_BUFFER``: how many messages the dispatcher keeps in the broker queue
    beyond what workers hold; small, so that ``high`` work waits behind little."""
    lane_tick_s: float = Field(default=0.02, gt=0, le=1)
    """How often a dispatcher looks for room in the broker queue."""

    # Delivery status tracking (worker.tracking); defaults in worker.tracking.policy.
    events_task: str | None = None
    """``DELIVERY_EVENTS_TASK``: a Celery task name that receives each new delivery event
    (``myapp.tasks.on_delivery_event``); unset: nothing is published."""
    events_queue: str = EVENTS_QUEUE
    """The queue ``events_task`` is published to; the application's workers consume it."""
    tracking_poll_first_s: float = Field(default=DEFAULT_POLL.first_s, gt=0)
    tracking_poll_max_backoff_s: float = Field(default=DEFAULT_POLL.max_backoff_s, gt=0)
    tracking_poll_max_s: float = Field(default=DEFAULT_POLL.max_s, gt=0)
    tracking_poll_interval_s: float = Field(default=DEFAULT_POLL.interval_s, ge=0.2)
    tracking_poll_batch: int = Field(default=DEFAULT_POLL.batch, ge=1, le=100_000)

    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["delivery", "celery"])
    """Queues a worker consumes when started without ``-Q``; the first is where this project's
    producers publish. ``celery`` is Celery's default queue: a bare client calling
    ``send_task("tasks.send_email", args=[msg])`` with no ``queue`` publishes there, and the
    contract says such a call is served. Leave it out (``DELIVERY_QUEUES=delivery``) when another
    Celery application shares the broker database and uses its default queue: a worker would
    take that application's tasks too, and reject them as unknown."""

    max_message_bytes: int = Field(default=DEFAULT_MESSAGE_LIMITS.max_bytes, ge=64 * 1024)
    """Largest task body (encoded JSON) a worker takes or a producer sends (``worker.limits``)."""
    max_message_depth: int = Field(default=DEFAULT_MESSAGE_LIMITS.max_depth, ge=8, le=200)
    """Deepest nesting of lists/objects in a task body (the body is depth 1, the message 3)."""
    max_message_items: int = Field(default=DEFAULT_MESSAGE_LIMITS.max_items, ge=100)
    """Most list items plus object keys in a task body."""
    max_message_string: int = Field(default=DEFAULT_MESSAGE_LIMITS.max_string, ge=1024)
    """Longest string (or object key) in a task body, in characters."""
    max_main_process_crashes: int = Field(default=2, ge=1, le=100)
    """A task whose worker *main* process died this many times while handing it to the pool
    is set aside as a dead letter on its next delivery (``worker.guard``). Two, not one: a
    worker killed whole (the OOM killer, ``kill -9`` at a deploy) dies with every task it had
    received and not yet started in hand; with one, each such task would become a dead letter
    although it did nothing wrong. A task that really kills main processes takes two down."""

    visibility_timeout_s: int = Field(default=3600, ge=60)
    worker_prefetch_multiplier: int = Field(default=1, ge=1)
    task_events: bool = False
    """Celery task events from workers (``DELIVERY_TASK_EVENTS``, or ``-E``): about 2 broker
    commands per message and the main process's CPU to publish them. Flower turns them on in
    every worker while it runs (its ``enable_events``), so it needs neither."""
    task_sent_event: bool = False
    """``task-sent`` events at enqueue (``DELIVERY_TASK_SENT_EVENT``): one more broker command
    per message, for Flower to list tasks before a worker received them."""
    task_track_started: bool = False
    """Celery's ``STARTED`` result state (``DELIVERY_TASK_TRACK_STARTED``): five more result
    backend commands per message; the ledger already records ``sending``."""

    batching: bool = False
    """Coalesce ``send_sms`` tasks into one provider request where the provider module declares
    a bulk endpoint (``Driver.batch_limit``; SMS Partner ``/send`` and ``/bulk-send``). See
    ``worker.batching``."""
    batch_linger_s: float = Field(default=0.05, ge=0, le=60)
    """How long the first message of a batch waits for others before the batch is sent."""
    batch_max_items: int = Field(default=500, ge=1, le=500)
    """Messages per batch at most (and never more than the provider's declared maximum)."""
    batch_threads: int = Field(default=16, ge=1, le=128)
    """Threads per pool process for a batch's per-message Redis work (ledger, lock, result)."""

    # Suppression (worker.stores.suppression, docs/suppression.md).
    suppression: bool = True
    """Check every send against the channel's suppression list (``DELIVERY_SUPPRESSION``)."""
    suppression_secret: SecretStr | None = None
    """Key of the recipients' hashes (HMAC-SHA256); unset: ``tracking_secret``; neither:
    SHA-256. Changing it orphans every entry (they no longer match): export before."""
    suppression_soft_threshold: int = Field(default=3, ge=1, le=1000)
    """Soft bounces of one recipient within ``suppression_soft_window_s`` that suppress it."""
    suppression_soft_window_s: float = Field(default=7 * 86400.0, gt=0)
    suppression_soft_suppress_s: float = Field(default=14 * 86400.0, gt=0)
    """How long a soft-bounce suppression lasts."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    # Delivery tracking, push side: the receiver (``delivery-worker receiver``) and the
    # per-delivery callback URLs given to SMS/Voice Partner (``worker.tracking.callbacks``).
    tracking_public_url: str | None = None
    """The receiver's public base URL (https; http only on loopback). With a secret, SMS/Voice
    sends carry ``<url>/hooks/<provider>/<delivery_id>/<token>`` as urlDlr / notifyUrl."""
    tracking_secret: SecretStr | None = None
    """Key of the callback URL tokens (HMAC-SHA256); at least 32 characters; never logged."""
    postal_webhook_public_key: str | None = None
    """The Postal server's public key as Postal shows it (base64 DER, the ``p=`` value of
    ``postal default-dkim-record``) or PEM: the receiver's Postal endpoint needs it."""
    postal_webhook_allow_sha1: bool = True
    """Accept webhooks signed only with the legacy ``X-Postal-Signature`` (SHA-1; older Postal
    versions send nothing else). Off: ``X-Postal-Signature-256`` is required."""
    postal_webhook_max_age_s: float = Field(default=12 * 3600, ge=60)
    """A Postal envelope whose ``timestamp`` is older than this is refused (a replay past the
    dedupe window). Postal retries for about 36 minutes (docs/providers/postal.md §4.6)."""
    tracking_dedupe_ttl_s: int = Field(default=24 * 3600, ge=120)
    """How long the receiver remembers a Postal envelope ``uuid`` (a retry is applied once)."""
    tracking_hint_interval_s: float = Field(default=15.0, ge=1, le=24 * 3600)
    """At most one SMS/Voice Partner callback hint per delivery is published in this window
    (each costs a task and a provider lookup); the callback token itself expires after
    ``tracking_poll_max_s`` (the tracking horizon)."""
    receiver_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Largest request body the receiver reads; a larger one is answered 413."""
    # The receiver's deadlines and caps (docs/threat-model-receiver.md says why each number).
    receiver_header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """From a connection's first byte (or its opening) to a complete request head: else closed."""
    receiver_body_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """The whole body must arrive within this; a trickled body is answered 408 and closed."""
    receiver_keep_alive_s: int = Field(default=5, ge=1, le=300)
    """An idle keep-alive connection is closed after this many seconds."""
    receiver_max_connections: int = Field(default=256, ge=1, le=100_000)
    """Open connections per server process; a request past the cap is answered 503."""
    receiver_max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    """Largest request head (request line + headers); a larger one is answered 400."""
    receiver_backlog: int = Field(default=128, ge=1, le=65_535)
    """Connections the kernel queues before the server accepts them."""

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str) -> str:
        from worker.scheduling.quiet import parse_quiet_hours

        parse_quiet_hours(value)  # ValueError names the problem
        return value

    @field_validator("lane_weights", "tenant_weights")
    @classmethod
    def _weights(cls, value: str) -> str:
        from worker.lanes.weights import parse_weights

        parse_weights(value)  # ValueError names the problem
        return value

    @field_validator("providers", "queues", mode="before")
    @classmethod
    def _csv(cls, v: object) -> object:
        return _split_list(v)

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one queue is needed")
        bad = [q for q in v if not _QUEUE_NAME.fullmatch(q)]
        if bad:
            raise ValueError(f"queue names are letters, digits and . _ - only: {bad}")
        return list(dict.fromkeys(v))

    @field_validator("providers")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [p for p in v if p not in PROVIDERS]
        if unknown:
            raise ValueError(f"unknown provider(s) {unknown}; known: {', '.join(PROVIDERS)}")
        return v

    @field_validator("rate_limits")
    @classmethod
    def _limits_parse(cls, v: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for provider, buckets in v.items():
            if provider not in PROVIDERS:
                raise ValueError(f"unknown provider {provider!r} in rate_limits")
            for spec in buckets.values():
                parse_limits(spec)
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        for name in PROVIDERS:
            key = self.api_key(name)
            if key:
                register_secret(key)
        if self.suppression_secret is not None:
            register_secret(self.suppression_secret.get_secret_value() or None)
        check_redis_urls(self)
        for url in (self.broker_url, self.result_backend, self.redis_url):
            register_url_password(url)
        if self.redis_sentinel_password is not None:
            register_secret(self.redis_sentinel_password.get_secret_value())
        missing = [p for p in self.providers if not self.api_key(p)]
        if missing:
            names = ", ".join(f"DELIVERY_{p.upper()}_API_KEY" for p in missing)
            raise ValueError(f"providers {missing} are enabled but have no API key: set {names}")
        for name in self.enabled_providers():
            if DRIVERS[name].default_base_url is None and not self.base_url(name):
                raise ValueError(
                    f"{name} is enabled but DELIVERY_{name.upper()}_BASE_URL is not set"
                )
        if self.retry_backoff_max_s >= self.visibility_timeout_s:
            raise ValueError(
                f"retry_backoff_max_s ({self.retry_backoff_max_s:g}) must stay below "
                f"visibility_timeout_s ({self.visibility_timeout_s}): with the Redis broker a "
                "countdown longer than the visibility timeout runs the task twice"
            )
        _check_tracking(self)
        if self.events_task is not None and not TASK_NAME.fullmatch(self.events_task):
            raise ValueError("events_task (DELIVERY_EVENTS_TASK) is not a Celery task name")
        if not _QUEUE_NAME.fullmatch(self.events_queue) or self.events_queue in self.queues:
            raise ValueError(
                "events_queue must be a queue name that delivery workers do not consume "
                "(not one of DELIVERY_QUEUES)"
            )
        if self.send_worst_case_s + 5.0 > self.send_lock_ttl_s:
            raise ValueError(
                f"http_total_timeout_s ({self.http_deadline_s:g}) leaves a send running past "
                f"its lock ({self.send_lock_ttl_s:g} s): keep it at most connect + read timeout"
            )
        if self.reconcile_grace_s >= self.visibility_timeout_s:
            raise ValueError(
                f"reconcile_grace_s ({self.reconcile_grace_s:g}) must stay below "
                f"visibility_timeout_s ({self.visibility_timeout_s})"
            )
        return self

    def poll_policy(self) -> PollPolicy:
        return PollPolicy(
            first_s=self.tracking_poll_first_s,
            max_backoff_s=self.tracking_poll_max_backoff_s,
            max_s=self.tracking_poll_max_s,
            interval_s=self.tracking_poll_interval_s,
            batch=self.tracking_poll_batch,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from an explicit ``DELIVERY_*`` mapping (a worker's environment elsewhere)."""
        values: dict[str, Any] = {
            k.removeprefix("DELIVERY_").lower(): v
            for k, v in env.items()
            if k.startswith("DELIVERY_")
        }
        return cls(**values)

    @property
    def http_deadline_s(self) -> float:
        """The whole-request deadline each provider request gets (``http_total_timeout_s``)."""
        if self.http_total_timeout_s is not None:
            return self.http_total_timeout_s
        return self.http_connect_timeout_s + self.http_read_timeout_s

    @property
    def send_worst_case_s(self) -> float:
        """The longest one attempt can hold the lock before its final write: the limiter's
        inline wait, two connect failures retried in-attempt, then one request to its deadline,
        plus 1 s for the tenacity waits between them (at most 0.55 s each)."""
        return (
            self.limiter_max_inline_wait_s
            + 2 * self.http_connect_timeout_s
            + self.http_deadline_s
            + 1.0
        )

    @property
    def suppression_key(self) -> bytes | None:
        """The key of the recipients' hashes (``None``: plain SHA-256)."""
        for secret in (self.suppression_secret, self.tracking_secret):
            if secret is not None and secret.get_secret_value():
                return secret.get_secret_value().encode()
        return None

    @property
    def task_soft_time_limit_s(self) -> float:
        """Celery's soft limit: past the lock and the final write's retries, so it only ever
        interrupts a stalled run (``tasks._deliver`` turns it into a settling retry)."""
        return self.send_lock_ttl_s + self.final_write_retry_s + 5.0

    @property
    def task_time_limit_s(self) -> float:
        """Celery's hard limit: the last net, after the soft limit's handling had its chance."""
        return self.task_soft_time_limit_s + 30.0

    @property
    def send_lock_ttl_s(self) -> float:
        """How long one attempt may hold a delivery: limiter wait + connect tries + read + slack."""
        return (
            self.limiter_max_inline_wait_s
            + 3 * self.http_connect_timeout_s
            + self.http_read_timeout_s
            + 10.0
        )

    def api_key(self, provider: str) -> str | None:
        secret: SecretStr | None = getattr(self, f"{provider}_api_key")
        return secret.get_secret_value() if secret is not None else None

    def base_url(self, provider: str) -> str | None:
        value: str | None = getattr(self, f"{provider}_base_url")
        return value or DRIVERS[provider].default_base_url

    def provider_extras(self, provider: str) -> dict[str, str | None]:
        """The provider's declared extra settings, as its driver's keyword arguments."""
        return {
            setting: getattr(self, f"{provider}_{setting}")
            for setting in DRIVERS[provider].extra_settings
        }

    def enabled_providers(self) -> list[str]:
        """The providers this worker can send through, in reference order."""
        if self.providers:
            return list(self.providers)
        return [p for p in PROVIDERS if self.api_key(p)]

    def channel_providers(self, channel: str) -> list[str]:
        enabled = set(self.enabled_providers())
        return [p for p in channel_providers(channel) if p in enabled]

    def limits(self, provider: str, bucket: str) -> tuple[Limit, ...]:
        """The rate limits for ``provider``'s ``bucket``: configured, else documented.

        Each limit over a short window (<= 1 s) is also paced: at most one grant per
        ``window / count``. The provider counts arrivals; ten grants released as one burst
        queue up on the way and at the provider, and that spread is what can push the 11th
        arrival of a sliding second under the limit. Evenly spaced grants keep the same rate
        with far less jitter. The limiter adds its margin to every window, so the pacing
        window is shortened by it to keep the spacing at exactly ``window / count``.
        """
        configured = self.rate_limits.get(provider, {}).get(bucket)
        if configured is not None:
            limits = parse_limits(configured)
        else:
            limits = DRIVERS[provider].rate_limits.get(bucket, ())
        paced = []
        for limit in limits:
            spacing = limit.window_s / limit.count - self.limiter_safety_margin_s
            if limit.count > 1 and limit.window_s <= 1.0 and spacing > 0:
                paced.append(Limit(1, spacing))
        return (*limits, *paced)

    def message_limits(self) -> MessageLimits:
        return MessageLimits(
            max_bytes=self.max_message_bytes,
            max_depth=self.max_message_depth,
            max_items=self.max_message_items,
            max_string=self.max_message_string,
        )

    @property
    def shared_redis_url(self) -> str:
        return self.redis_url or self.broker_url


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _check_tracking(settings: Settings) -> None:
    """The tracking settings (``worker.receiver``): a secret with the public URL, a URL the
    token may travel in, a Postal key that loads, a dedupe window longer than the max age."""
    # An empty value (an unset variable in docker-compose) is no secret.
    secret = settings.tracking_secret.get_secret_value() if settings.tracking_secret else None
    if secret:
        register_secret(secret)
        if len(secret) < 32:
            raise ValueError("tracking_secret must be at least 32 characters")
    url = settings.tracking_public_url
    if url:
        parsed = urlsplit(url)
        loopback = parsed.scheme == "http" and (parsed.hostname or "") in _LOOPBACK_HOSTS
        if not parsed.hostname or not (parsed.scheme == "https" or loopback):
            raise ValueError("tracking_public_url must be an https:// URL (http only on loopback)")
        if not secret:
            raise ValueError("tracking_public_url needs DELIVERY_TRACKING_SECRET")
    if settings.postal_webhook_public_key:
        from worker.providers.postal_webhook import load_public_key

        load_public_key(settings.postal_webhook_public_key)
    if settings.tracking_dedupe_ttl_s <= settings.postal_webhook_max_age_s:
        raise ValueError("tracking_dedupe_ttl_s must exceed postal_webhook_max_age_s")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
