"""Framework-free request and reply values passed between the HTTP server and the providers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

__all__ = ["AcceptedMessage", "Reply", "Request", "html_reply", "json_reply", "phrase"]

OUTCOMES = ("accepted", "duplicate", "refused", "ok", "fault", "error")
"""``accepted``: a send created a message; ``duplicate``: a send answered with an earlier
message's id and created nothing; ``refused``: any error answer (validation, auth, 429, no
credit); ``ok``: a successful non-send call (balance, status); ``fault``: the fault plan answered
instead of the provider; ``error``: the sandbox itself failed (a bug)."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # full path, without the query string
    route: str  # the path below the provider's prefix, e.g. "/send"
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    client_ip: str
    received_at: float  # epoch seconds

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    def json(self) -> Any:
        """The decoded JSON body; raises ``ValueError`` when it is not JSON."""
        return json.loads(self.body.decode("utf-8")) if self.body.strip() else None


@dataclass
class AcceptedMessage:
    """What a provider accepted: recorded in memory, in ``/_admin/messages`` and the log file."""

    message_id: str
    recipients: list[str]
    fields: dict[str, Any]  # the parsed request, API key removed
    units: int = 1
    idempotency_key: str | None = None
    tag: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str = "ok"
    message_id: str | None = None  # the id answered (also set for duplicates)
    message: AcceptedMessage | None = None
    admitted: bool = True  # counted by the rate limiter


def json_reply(
    status: int,
    payload: object,
    outcome: str = "ok",
    *,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Reply(status=status, body=body, headers=dict(headers or {}), outcome=outcome)


def html_reply(status: int, html: str, outcome: str = "ok") -> Reply:
    return Reply(
        status=status, body=html.encode("utf-8"), content_type="text/html", outcome=outcome
    )


def phrase(status: int) -> str:
    """The standard reason phrase of an HTTP status ("Error" for unassigned codes)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
