"""A local simulator of the five delivery providers, in one HTTP server.

Each provider lives under its own path prefix (``accounts.PREFIXES``), speaks its documented
wire format, checks keys and validation, enforces per-IP limits, runs out of credit on demand,
injects faults from a plan, and records every request and accepted message. See
``delivery_sandbox.server.Sandbox`` for in-process use and ``python -m delivery_sandbox --help``
for the command line.
"""

from __future__ import annotations

from delivery_sandbox.accounts import DEFAULT_KEYS, PREFIXES
from delivery_sandbox.config import Limits, SandboxConfig
from delivery_sandbox.faults import FaultPlan, FaultPlanError, FaultRule
from delivery_sandbox.server import Sandbox

__all__ = [
    "DEFAULT_KEYS",
    "PREFIXES",
    "FaultPlan",
    "FaultPlanError",
    "FaultRule",
    "Limits",
    "Sandbox",
    "SandboxConfig",
]
