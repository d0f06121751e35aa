"""The guard's checks: headers, body size, content type, decoding, shape, task signature.

Without recursion and within fixed work (see :mod:`worker.guard`); a failed check is a
:class:`Refusal` naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from celery.utils.time import maybe_iso8601, maybe_make_aware

from worker.limits import (
    MessageLimits,
    check_encoded_size,
    check_encoded_structure,
    check_structure,
    shape,
)

__all__ = ["Accepted", "Refusal", "inspect_message", "is_body"]

_IDENT = re.compile(r"[\x21-\x7e]{1,200}")


@dataclass(frozen=True)
class Refusal:
    """Why a message is not handed to the pool."""

    kind: str
    """``invalid_message`` (checks) or ``dead_letter`` (its worker's main process died)."""
    reason: str
    task_id: str | None = None
    task_name: str | None = None
    outline: Any = None
    """A redacted outline of the message for the dead letter (keys and types)."""
    message: Any = None
    """The whole message, only for a replayable dead letter (it passed every check)."""


@dataclass(frozen=True)
class Accepted:
    task_id: str
    task_name: str


def inspect_message(
    message: Any, registered: Any, app: Any, limits: MessageLimits
) -> Accepted | Refusal:
    """Accept the message for the task strategy, or say why it is refused."""
    headers = message.headers
    if not isinstance(headers, dict):
        return Refusal("unreadable", "the headers are not an object")
    task_id, task_name = _ident(headers.get("id")), _ident(headers.get("task"))
    if task_id is None:
        return Refusal("unreadable", "no readable task id in the headers")
    if task_name is None:
        return Refusal("invalid_message", "no readable task name in the headers", task_id)

    def refuse(reason: str, payload: Any = None) -> Refusal:
        outline = shape(payload[0][0]) if is_body(payload) and payload[0] else None
        return Refusal("invalid_message", reason, task_id, task_name, outline)

    reason = check_structure(headers, limits)
    if reason is not None:
        return refuse(f"headers: {reason}")
    read_refusal = getattr(message, "read_refusal", None)
    if isinstance(read_refusal, str):  # worker.app.GuardedRedisMessage: bounded inflation
        return refuse(read_refusal)
    for name in ("eta", "expires"):
        if not _valid_time(headers.get(name)):
            # Celery's Request would raise InvalidTaskError on it and drop the message with no
            # outcome anywhere; refuse it here, where the refusal is recorded.
            return refuse(f"the {name} header is not an ISO 8601 date and time")
    body = message.body
    size = len(body) if isinstance(body, bytes | str) else 0
    reason = check_encoded_size(size, limits)
    if reason is not None:
        return refuse(reason)
    if task_name not in registered:
        return refuse(f"unknown task name {task_name[:100]!r}")
    if message.content_type != "application/json":
        return refuse(
            f"content type {_printable(message.content_type)!r} is not accepted (JSON only)"
        )
    # Bounded before decoding: the decoded value of a small body can be gigabytes.
    reason = check_encoded_structure(body, limits) if isinstance(body, bytes | str) else None
    if reason is not None:
        return refuse(reason)
    try:
        payload = message.decode()
    except Exception as exc:
        if _too_deep(exc):
            return refuse(
                f"nesting depth exceeds the limit of {limits.max_depth} (too deep to decode)"
            )
        return refuse(f"the body is not valid JSON ({type(exc).__name__})")
    reason = check_structure(payload, limits)
    if reason is not None:
        return refuse(reason, payload)
    if not is_body(payload):
        return refuse("the body is not a Celery protocol 2 body [args, kwargs, embed]")
    args, kwargs, _embed = payload
    task = app.tasks.get(task_name)
    check = getattr(task, "__header__", None)
    if check is not None:
        try:
            check(*args, **kwargs)
        except TypeError:
            # Our own words: the TypeError would quote keyword names the producer chose.
            return refuse(
                f"arguments do not match {task_name}: got {len(args)} positional and "
                f"{len(kwargs)} keyword arguments",
                payload,
            )
    return Accepted(task_id, task_name)


def _ident(value: Any) -> str | None:
    return value if isinstance(value, str) and _IDENT.fullmatch(value) else None


def _printable(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(type(value).__name__)
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _too_deep(exc: BaseException) -> bool:
    """Whether a decode error comes from ``RecursionError`` (kombu wraps it in DecodeError)."""
    seen: list[BaseException] = [exc]
    for _ in range(8):
        if not seen:
            break
        current = seen.pop()
        if isinstance(current, RecursionError):
            return True
        seen.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        seen.extend(a for a in current.args if isinstance(a, BaseException))
    return False


def is_body(payload: Any) -> bool:
    return (
        isinstance(payload, list | tuple)
        and len(payload) == 3
        and isinstance(payload[0], list | tuple)
        and isinstance(payload[1], dict)
        and (payload[2] is None or isinstance(payload[2], dict))
    )


def _valid_time(value: Any) -> bool:
    """Whether Celery's ``Request`` can read an ``eta``/``expires`` header (or it is absent)."""
    if value is None:
        return True
    try:
        parsed = maybe_iso8601(value)
        if parsed is not None:
            maybe_make_aware(parsed)
    except Exception:  # what Celery's Request turns into InvalidTaskError, and anything else
        return False
    return True
