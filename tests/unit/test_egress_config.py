"""check-config's egress notes: one rate budget per public source IP
(docs/providers/index.md §6)."""

from __future__ import annotations

import pytest

from worker.config import Settings
from worker.ops.cli import main
from worker.ops.egress import egress_notes


def notes(**env: str) -> list[str]:
    return egress_notes(Settings(**env))  # type: ignore[arg-type]


def test_default_identity_without_address_is_quiet() -> None:
    assert notes() == []


def test_identity_named_after_the_bound_address_is_quiet() -> None:
    assert notes(local_address="127.0.0.2", egress_identity="ip-127.0.0.2") == []
    assert notes(local_address="10.0.0.7", egress_identity="eu-west-a") == []


def test_bound_address_with_the_default_identity_shares_the_budget() -> None:
    (note,) = notes(local_address="127.0.0.2")
    assert "shares one rate budget" in note
    assert "DELIVERY_EGRESS_IDENTITY=ip-127.0.0.2" in note


def test_identity_naming_another_address_is_flagged() -> None:
    (note,) = notes(local_address="127.0.0.1", egress_identity="ip-127.0.0.2")
    assert "names the address 127.0.0.2" in note
    assert "429" in note


def test_identity_without_a_bound_address_is_flagged() -> None:
    (note,) = notes(egress_identity="ip-203.0.113.9")
    assert "without DELIVERY_LOCAL_ADDRESS" in note


def test_check_config_prints_the_identity_and_warns_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DELIVERY_SMSPARTNER_API_KEY", "k-sms-123456")
    monkeypatch.setenv("DELIVERY_LOCAL_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("DELIVERY_EGRESS_IDENTITY", "ip-127.0.0.2")
    assert main(["check-config"]) == 0
    captured = capsys.readouterr()
    assert "egress: identity 'ip-127.0.0.2', source address 127.0.0.1" in captured.out
    assert captured.err.startswith("warning: DELIVERY_EGRESS_IDENTITY names the address 127.0.0.2")
