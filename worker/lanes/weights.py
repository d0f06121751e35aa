"""``name=weight,...`` settings (``DELIVERY_LANE_WEIGHTS``, ``DELIVERY_TENANT_WEIGHTS``)."""

from __future__ import annotations

import re

__all__ = ["parse_weights"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_WEIGHT = 1000


def parse_weights(value: str) -> dict[str, int]:
    """``"normal=4,bulk=1"`` → ``{"normal": 4, "bulk": 1}``; a ValueError names the bad part.

    Weights are whole numbers from 1 to 1000: the round robin's credits stay integers."""
    weights: dict[str, int] = {}
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        name, sep, number = part.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(f"{part!r}: expected name=weight (name: letters, digits, _ . -)")
        try:
            weight = int(number.strip())
        except ValueError:
            raise ValueError(f"{part!r}: the weight must be a whole number") from None
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"{part!r}: the weight must be from 1 to {MAX_WEIGHT}")
        weights[name] = weight
    return weights
