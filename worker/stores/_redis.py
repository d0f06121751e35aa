"""What every Redis store shares: its Lua scripts as package files, and reply decoding."""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

__all__ = ["composed", "load_script", "lua_source", "text"]


def lua_source(package: str, name: str) -> str:
    """The text of the Lua script ``name`` that ships beside the store in ``package``."""
    return resources.files(package).joinpath(name).read_text("utf-8")


def load_script(client: redis.Redis, package: str, name: str) -> Script:
    """Register the Lua script ``name`` that ships beside the store in ``package``."""
    return client.register_script(lua_source(package, name))


def composed(main: str, **functions: str) -> str:
    """One script from several: each of ``functions`` (name → a script's text) becomes a local
    function ``name(KEYS, ARGV)`` that ``main`` calls. A script's body runs unchanged inside it
    (its ``KEYS``/``ARGV`` are the parameters, its ``return`` the function's), so a composed
    step does exactly what the stand-alone script does, in the same atomic call."""
    parts = [
        f"local function {name}(KEYS, ARGV)\n{body}\nend\n" for name, body in functions.items()
    ]
    return "".join(parts) + main


def text(value: Any) -> str:
    """A Redis reply (bytes, or str on a decoding client) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
