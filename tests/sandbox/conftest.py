"""The sandbox in-process on a free loopback port, spoken to over a real socket with httpx."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from delivery_sandbox import DEFAULT_KEYS, Limits, Sandbox, SandboxConfig


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "sandbox-log.jsonl"


@pytest.fixture
def make_sandbox(log_path: Path) -> Iterator[Callable[..., Sandbox]]:
    """Start a sandbox; keyword ``limits={...}`` and ``config={...}`` override the defaults."""
    started: list[Sandbox] = []

    def make(limits: dict[str, int] | None = None, **kwargs: Any) -> Sandbox:
        config = SandboxConfig(limits=Limits(**(limits or {})), **kwargs.pop("config", {}))
        kwargs.setdefault("log_file", log_path)
        sandbox = Sandbox("127.0.0.1", 0, config=config, **kwargs).start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=5.0) as c:
        yield c


@pytest.fixture
def keys() -> dict[str, str]:
    return dict(DEFAULT_KEYS)


def admin(client: httpx.Client, path: str) -> Any:
    response = client.get(f"/_admin/{path}")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def messages(client: httpx.Client) -> Callable[[str], list[dict[str, Any]]]:
    """Accepted messages of one provider, as ``/_admin/messages`` reports them."""

    def get(provider: str) -> list[dict[str, Any]]:
        return list(admin(client, f"messages?provider={provider}")["messages"])

    return get


@pytest.fixture
def requests_of(client: httpx.Client) -> Callable[[str], list[dict[str, Any]]]:
    def get(provider: str) -> list[dict[str, Any]]:
        return list(admin(client, f"requests?provider={provider}")["requests"])

    return get


@pytest.fixture
def set_balance(client: httpx.Client) -> Callable[[str, int], None]:
    def put(provider: str, credits: int) -> None:
        response = client.post("/_admin/balance", json={"provider": provider, "credits": credits})
        assert response.status_code == 200, response.text

    return put


@pytest.fixture
def set_faults(client: httpx.Client) -> Callable[..., None]:
    def put(*rules: dict[str, Any]) -> None:
        response = client.post("/_admin/faults", json={"rules": list(rules)})
        assert response.status_code == 200, response.text

    return put
