"""What every Redis store shares: its Lua scripts as package files, and reply decoding."""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

__all__ = ["load_script", "text"]


def load_script(client: redis.Redis, package: str, name: str) -> Script:
    """Register the Lua script ``name`` that ships beside the store in ``package``."""
    return client.register_script(resources.files(package).joinpath(name).read_text("utf-8"))


def text(value: Any) -> str:
    """A Redis reply (bytes, or str on a decoding client) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
