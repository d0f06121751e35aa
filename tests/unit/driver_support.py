"""Shared pieces of the driver unit tests: a MockTransport client and a recording handler."""

from __future__ import annotations

from collections.abc import Callable

import httpx

Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(handler: Handler) -> httpx.Client:
    """An ``httpx.Client`` whose transport is ``handler`` (the seam drivers are given)."""
    return httpx.Client(transport=httpx.MockTransport(handler))


def recorder(response: httpx.Response) -> tuple[list[httpx.Request], Handler]:
    """A handler answering ``response`` to every request, and the list of what it saw."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response

    return seen, handler
