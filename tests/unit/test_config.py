"""Settings: environment names, start-up checks with reasons, secrets kept secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.config import Settings
from worker.http import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S
from worker.ops.cli import main
from worker.runtime import breaker_config
from worker.stores import DEFAULT_SAFETY_MARGIN_S, BreakerConfig


def test_defaults_point_at_local_redis_and_documented_base_urls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DELIVERY_SMSPARTNER_API_KEY", "k-sms")
    settings = Settings()
    assert settings.broker_url.startswith("redis://127.0.0.1:6379")
    assert settings.base_url("smspartner") == "https://api.smspartner.fr/v1"
    assert settings.base_url("emailmassivo") == "https://api.emailmassivo.com"
    assert settings.base_url("postal") is None
    assert settings.enabled_providers() == ["smspartner"]
    assert settings.channel_providers("sms") == ["smspartner"]
    assert "k-sms" not in repr(settings)


def test_enabled_provider_without_key_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_PROVIDERS", "smspartner,emailmassivo")
    monkeypatch.setenv("DELIVERY_SMSPARTNER_API_KEY", "k-sms")
    with pytest.raises(ValidationError, match="DELIVERY_EMAILMASSIVO_API_KEY"):
        Settings()


def test_postal_needs_its_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_POSTAL_API_KEY", "k-postal")
    with pytest.raises(ValidationError, match="DELIVERY_POSTAL_BASE_URL"):
        Settings()


def test_unknown_provider_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_PROVIDERS", "sendgrid")
    with pytest.raises(ValidationError, match="sendgrid"):
        Settings()


def test_retry_delay_must_stay_below_visibility_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_RETRY_BACKOFF_MAX_S", "4000")
    monkeypatch.setenv("DELIVERY_VISIBILITY_TIMEOUT_S", "3600")
    with pytest.raises(ValidationError, match="visibility"):
        Settings()


def test_check_config_reports_the_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DELIVERY_PROVIDERS", "voicepartner")
    assert main(["check-config"]) == 1
    assert "DELIVERY_VOICEPARTNER_API_KEY" in capsys.readouterr().err


def test_check_config_lists_providers_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DELIVERY_SMSPARTNER_API_KEY", "k-sms-123456")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "smspartner: https://api.smspartner.fr/v1" in out
    assert "k-sms-123456" not in out


def test_documented_limits_and_pacing_of_short_windows() -> None:
    from worker.stores import Limit

    settings = Settings()
    # EmailMassivo: 10 in any second, granted at most one per 100 ms (60 ms + 40 ms margin).
    (window, pace) = settings.limits("emailmassivo", "send")
    assert window == Limit(10, 1.0)
    assert pace.count == 1 and pace.window_s + settings.limiter_safety_margin_s == pytest.approx(
        0.1
    )
    # Per-minute and per-hour limits are not paced: bursts are allowed within them.
    assert settings.limits("mailpartner", "send") == (Limit(2000, 60.0),)
    assert settings.limits("voicepartner", "campaign") == (Limit(5, 60.0), Limit(2000, 3600.0))
    assert settings.limits("postal", "send") == ()


def test_rate_limits_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.stores import Limit

    monkeypatch.setenv("DELIVERY_RATE_LIMITS", '{"emailmassivo": {"send": "20/s"}}')
    settings = Settings()
    (window, pace) = settings.limits("emailmassivo", "send")
    assert window == Limit(20, 1.0)
    assert pace.count == 1 and pace.window_s == pytest.approx(0.05 - 0.04)


def test_bad_rate_limit_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_RATE_LIMITS", '{"emailmassivo": {"send": "ten per second"}}')
    with pytest.raises(ValidationError, match="ten per second"):
        Settings()


def test_workers_also_consume_celerys_default_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare ``send_task`` with no ``queue`` goes to ``celery``: a default worker serves it."""
    from worker.app import celery_config

    assert Settings().queues == ["delivery", "celery"]
    config = celery_config()
    assert [q.name for q in config["task_queues"]] == ["delivery", "celery"]
    assert config["task_default_queue"] == "delivery"
    monkeypatch.setenv("DELIVERY_QUEUES", "mail-high, delivery")
    assert Settings().queues == ["mail-high", "delivery"]


@pytest.mark.parametrize("value", ["", "bad queue", "-x"])
def test_bad_queue_names_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DELIVERY_QUEUES", value)
    with pytest.raises(ValidationError, match="queue"):
        Settings()


def test_setting_defaults_are_the_parts_own_defaults() -> None:
    """One default per setting: the part that uses it declares it, the settings read it."""
    settings = Settings()
    assert settings.limiter_safety_margin_s == DEFAULT_SAFETY_MARGIN_S == 0.04
    assert breaker_config(settings) == BreakerConfig()
    assert settings.http_connect_timeout_s == DEFAULT_CONNECT_TIMEOUT_S
    assert settings.http_read_timeout_s == DEFAULT_READ_TIMEOUT_S


def test_every_send_ends_before_its_lock_and_celery_limits_sit_above_it() -> None:
    from worker.app import app

    settings = Settings()
    # Defaults: 2 s limiter + 2 x 5 s connect failures + 35 s request + 1 s waits < 57 s lock.
    assert settings.http_deadline_s == 35.0
    assert settings.send_worst_case_s < settings.send_lock_ttl_s
    # The soft limit waits out the lock and the final write's retries: it only stops a stall.
    assert settings.task_soft_time_limit_s > settings.send_lock_ttl_s + settings.final_write_retry_s
    assert app.conf.task_soft_time_limit == settings.task_soft_time_limit_s
    assert app.conf.task_time_limit == settings.task_time_limit_s
    assert app.conf.task_time_limit > app.conf.task_soft_time_limit  # Celery refuses otherwise


def test_a_total_timeout_that_outlives_the_lock_is_refused() -> None:
    with pytest.raises(ValueError, match="http_total_timeout_s"):
        Settings(http_total_timeout_s=120.0)
