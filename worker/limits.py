"""Bounds on the size and shape of a task message, checked without recursion.

A message arrives from any Celery client, so the worker checks it before anything that
recurses over it (pickling for the prefork pool, ``repr`` for Flower, our redaction, pydantic)
touches it: a dict nested a few hundred levels deep used to kill the worker's main process
while the pool pickled it. The producer checks the same bounds before it publishes.

What is measured, on the Celery protocol-2 body ``[args, kwargs, embed]`` (the message dict
itself is at depth 3):

``max_bytes``
    the encoded JSON body (``DELIVERY_MAX_MESSAGE_BYTES``);
``max_depth``
    nesting of lists and objects, the body itself being depth 1 (``DELIVERY_MAX_MESSAGE_DEPTH``);
``max_items``
    list items plus object keys, summed over the whole body (``DELIVERY_MAX_MESSAGE_ITEMS``);
``max_string``
    characters of any one string or object key (``DELIVERY_MAX_MESSAGE_STRING``).

The defaults sit above every message the contract accepts (``worker.models``): ``raw`` up to
6,000,000 characters, one attachment up to 10 MiB (13,981,016 base64 characters), 1,500
addresses, html and text of 2,000,000 characters each even when JSON escapes every character.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_LIMITS",
    "MessageLimits",
    "body_of",
    "check_encoded_size",
    "check_encoded_structure",
    "check_message",
    "check_structure",
    "shape",
]


@dataclass(frozen=True)
class MessageLimits:
    max_bytes: int = 96 * 1024 * 1024
    max_depth: int = 32
    max_items: int = 20_000
    max_string: int = 16 * 1024 * 1024


DEFAULT_LIMITS = MessageLimits()


def check_encoded_size(size: int, limits: MessageLimits) -> str | None:
    if size > limits.max_bytes:
        return f"message size {size} bytes exceeds the limit of {limits.max_bytes} bytes"
    return None


# One token of a JSON text for :func:`check_encoded_structure`: a whole string (escapes included,
# matched in C; an unterminated one runs to the end, so every attempt succeeds and the scan stays
# linear), a bracket, or a comma.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\[\s\S]?[^"\\]*)*(?:"|\Z)|[\[\]{},]')
_EMPTY = re.compile(rb"[ \t\r\n]*[\]}]")
_OPENING, _CLOSING, _COMMA = frozenset(b"[{"), frozenset(b"]}"), ord(",")


def check_encoded_structure(body: bytes | str, limits: MessageLimits) -> str | None:
    """:func:`check_structure`'s item bound, read off the encoded JSON *before* it is decoded;
    ``None`` when within it (a body also too deep says so in the reason).

    Decoding is what costs: a 90 MiB body of empty lists (a 4 KiB bz2 bomb) decodes into tens
    of millions of list objects, gigabytes in the worker's main process, before any check of
    the decoded value can run. This scan walks the text's tokens (strings matched whole by a
    regular expression, so commas and brackets inside them do not count) and stops once
    ``max_items`` is passed, so its work is bounded whatever the body. Items are counted as
    :func:`check_structure` counts them: a non-empty container holds one more item than it has
    commas. Strings are not items, but valid JSON has at most two per item (a key and its
    value) and a bracket pair per container: more than ``5 * max_items + 8`` tokens is more
    items than allowed, which bounds the work on a body of many strings too. Not a validator:
    a body that is not JSON is left to the decoder.
    """
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    depth = deepest = items = 0
    most_tokens = 5 * limits.max_items + 8
    for scanned, match in enumerate(_TOKEN.finditer(data)):
        token = data[match.start()]
        if token in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
            if not _EMPTY.match(data, match.end()):
                items += 1
        elif token in _CLOSING:
            depth -= 1
        elif token == _COMMA:
            items += 1
        if items > limits.max_items or scanned > most_tokens:
            if deepest > limits.max_depth:
                return (
                    f"nesting depth of at least {deepest} exceeds the limit of "
                    f"{limits.max_depth} (refused before decoding)"
                )
            return f"more than {limits.max_items} items (list items and object keys)"
    # Within the item bound decoding is cheap: a depth over the limit is left to
    # check_structure on the decoded value, whose refusal carries the message's outline.
    return None


def check_structure(value: Any, limits: MessageLimits) -> str | None:
    """The first limit ``value`` breaks, as a reason naming it; ``None`` when within them.

    Iterative (an explicit stack) and bounded: it stops once ``max_items`` is passed, so its
    work is at most ``max_items`` steps whatever the input. A depth over the limit is reported
    with the deepest level seen (the walk goes on, within the item bound, to measure it).
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    items = 0
    deepest = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if len(node) > limits.max_string:
                return (
                    f"a string of {len(node)} characters exceeds the limit of "
                    f"{limits.max_string} characters"
                )
            continue
        children: list[Any]
        if isinstance(node, dict):
            children = [*node.keys(), *node.values()]
            items += len(node)
        elif isinstance(node, list | tuple):
            children = list(node)
            items += len(node)
        else:
            continue
        deepest = max(deepest, depth)
        if items > limits.max_items:
            return f"more than {limits.max_items} items (list items and object keys)"
        for child in children:
            if isinstance(child, dict | list | tuple):
                stack.append((child, depth + 1))
            elif isinstance(child, str):
                stack.append((child, depth))
    if deepest > limits.max_depth:
        return f"nesting depth {deepest} exceeds the limit of {limits.max_depth}"
    return None


def body_of(message: Any) -> list[Any]:
    """The protocol-2 body Celery publishes for ``send_task(name, args=[message])``."""
    return [[message], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


_SCALARS = (str, bool, type(None))
_FLAT_BODY_ITEMS = 8
"""Items of the body around a message: ``[args, kwargs, embed]``, ``[message]``, the 4 embed
keys."""
_FLAT_BODY_BYTES = 200
"""An upper bound on the encoded body's bytes around the message's own."""


def _within_flat(message: Any, limits: MessageLimits) -> bool:
    """``True`` when ``message`` is a flat object (string keys; values strings, booleans,
    ``None``, small numbers, or lists of those) whose body is surely within every limit: the
    common case of a message built in-process, checked in one pass without encoding it.
    ``False`` says nothing: :func:`check_message` then runs the full checks (which name the
    limit)."""
    if not isinstance(message, dict) or limits.max_depth < 4:
        return False
    most = limits.max_string
    items = _FLAT_BODY_ITEMS + len(message)
    # JSON with ensure_ascii: a character takes at most 12 bytes (an escaped surrogate pair),
    # a string 2 more for its quotes, an item at most 4 more for ", " and ": ".
    size = _FLAT_BODY_BYTES
    for key, value in message.items():
        if not isinstance(key, str) or len(key) > most:
            return False
        size += 12 * len(key) + 6
        values = value if isinstance(value, list) else (value,)
        if values is value:
            items += len(value)
        for v in values:
            if isinstance(v, str):
                if len(v) > most:
                    return False
                size += 12 * len(v) + 6
            elif isinstance(v, _SCALARS):
                size += 9
            elif isinstance(v, int | float) and -1e15 < v < 1e15:
                size += 30
            else:
                return False
    return items <= limits.max_items and size <= limits.max_bytes


def check_message(message: Any, limits: MessageLimits) -> str | None:
    """Producer side: the structure first (bounded), then the size of the encoded body."""
    if _within_flat(message, limits):
        return None
    body = body_of(message)
    reason = check_structure(body, limits)
    if reason is not None:
        return reason
    try:
        # As kombu encodes it (json, ensure_ascii): the size the worker measures.
        encoded = json.dumps(body)
    except (TypeError, ValueError):
        return None  # not JSON at all: the model validation names the field
    return check_encoded_size(len(encoded), limits)


def shape(value: Any, *, max_keys: int = 50) -> Any:
    """A redacted outline of a message for a dead letter: keys and types, never content."""

    def outline(v: Any) -> str:
        if isinstance(v, str):
            return f"str[{len(v)}]"
        if isinstance(v, dict | list | tuple):
            return f"{type(v).__name__}[{len(v)}]"
        return type(v).__name__

    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key in list(value)[:max_keys]:
            name = key if isinstance(key, str) and len(key) <= 64 and key.isprintable() else "?"
            out[name] = outline(value[key])
        if len(value) > max_keys:
            out["…"] = f"+{len(value) - max_keys} keys"
        return out
    return outline(value)
