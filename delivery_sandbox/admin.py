"""``/_admin/*``: the sandbox's own loopback API for tests, benchmarks and operators (no auth).

GET    /_admin/health                  {"status": "ok", "providers": {name: prefix}, ...}
GET    /_admin/requests?provider=&since=  {"requests": [request records]}
GET    /_admin/messages?provider=&since=  {"messages": [accepted-message records]}
GET    /_admin/stats                   {"providers": {name: counts}, "balances": {...}}
POST   /_admin/reset                   clears records, faults, rate windows, provider
                                       state; restores the starting balances
GET    /_admin/balance                 {"balances": {name: credits}}
POST   /_admin/balance                 {"provider": name, "credits": N}
GET    /_admin/config                  {"config": {field: value}} (the runtime-settable fields)
POST   /_admin/config                  {field: value, ...}: e.g. {"emailmassivo_success_status":
                                       201}; reset restores the starting values
GET    /_admin/faults                  {"rules": [rules with seen/applied counters]}
POST   /_admin/faults                  {"rules": [...]} replaces the plan
DELETE /_admin/faults                  removes every rule
GET    /_admin/settings                {"settings": {name: {...}}}: providers' account settings
POST   /_admin/settings                {name: {...}} changes them (reset restores the
                                       configured ones); postal: {"domains": [...],
                                       "send_limit": N|null, "suppressed": {address: reason}};
                                       voicepartner: {"senders": [...]}
GET    /_admin/webhooks                {"postal": {"url", "public_key" (base64 DER, as Postal
                                       shows it), "kid", "retry_delays_s", "timeout_s"},
                                       "pending": N, "attempts": [push attempts]}
POST   /_admin/webhooks                {"postal_url": URL|null, "retry_delays_s": [s, ...]}
                                       (reset restores the starting ones)
GET    /_admin/status?provider=&message_id=&recipient=
                                       {"status", "at", "detail", "history": [...]}: one
                                       recipient's delivery timeline (Postal: the per-recipient
                                       id; SMS/Mail/Voice Partner: the send's id)
POST   /_admin/status                  {"provider", "message_id", "recipient" (optional: all),
                                       "status", "detail"}: show this status from now on (the
                                       provider's own words, STATUS_WORDS) and publish it
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from delivery_sandbox.accounts import METERED, PREFIXES
from delivery_sandbox.config import EMAILMASSIVO_SUCCESS_STATUSES, RUNTIME_FIELDS
from delivery_sandbox.faults import FaultPlan, FaultPlanError
from delivery_sandbox.wire import Reply, json_reply

if TYPE_CHECKING:
    from delivery_sandbox.server import Sandbox

__all__ = ["ADMIN_PREFIX", "handle_admin"]

ADMIN_PREFIX = "/_admin"

Handler = Callable[["Sandbox", Mapping[str, list[str]], Any], Reply]


class AdminError(ValueError):
    pass


def handle_admin(
    sandbox: Sandbox, method: str, path: str, query: Mapping[str, list[str]], body: bytes
) -> Reply:
    route = path.removeprefix(ADMIN_PREFIX).rstrip("/") or "/"
    handler = ROUTES.get((method, route))
    if handler is None:
        known = sorted({r for _, r in ROUTES})
        return json_reply(404, {"error": f"no admin endpoint {method} {route}", "known": known})
    try:
        payload = json.loads(body.decode("utf-8")) if body.strip() else None
        return handler(sandbox, query, payload)
    except (ValueError, UnicodeDecodeError) as exc:  # FaultPlanError and AdminError too
        return json_reply(400, {"error": str(exc)})


def _health(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    return json_reply(
        200,
        {"status": "ok", "url": sandbox.url, "providers": PREFIXES, "uptime_s": sandbox.uptime_s},
    )


def _records(kind: str) -> Handler:
    def handler(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
        provider = _arg(query, "provider")
        if provider is not None and provider not in PREFIXES:
            raise AdminError(f"unknown provider {provider!r}")
        since = _arg(query, "since") or "0"
        if not since.isdigit():
            raise AdminError("since must be a sequence number")
        select = sandbox.recorder.requests if kind == "requests" else sandbox.recorder.messages
        return json_reply(200, {kind: select(provider, int(since))})

    return handler


def _stats(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    body = {"providers": sandbox.recorder.stats(), "balances": sandbox.accounts.balances()}
    return json_reply(200, body)


def _reset(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    sandbox.reset()
    return json_reply(200, {"status": "reset", "balances": sandbox.accounts.balances()})


def _get_balance(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    return json_reply(200, {"balances": sandbox.accounts.balances()})


def _set_balance(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    if not isinstance(payload, dict):
        raise AdminError('expected {"provider": name, "credits": N}')
    provider = payload.get("provider")
    credits = payload.get("credits")
    if provider not in METERED:
        raise AdminError(f"provider must be one of {', '.join(METERED)} (postal has no balance)")
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
        raise AdminError("credits must be a non-negative integer")
    sandbox.accounts.set_balance(provider, credits)
    return json_reply(200, {"provider": provider, "credits": credits})


def _get_config(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    return json_reply(200, {"config": {f: getattr(sandbox.config, f) for f in RUNTIME_FIELDS}})


def _set_config(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    if not isinstance(payload, dict) or not payload:
        raise AdminError(f"expected {{field: value}} with fields from {', '.join(RUNTIME_FIELDS)}")
    unknown = sorted(set(payload) - set(RUNTIME_FIELDS))
    if unknown:
        raise AdminError(f"unknown config field(s) {unknown}; known: {', '.join(RUNTIME_FIELDS)}")
    for name, value in payload.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise AdminError(f"{name} must be a non-negative number")
    status = payload.get("emailmassivo_success_status")
    if status is not None and status not in EMAILMASSIVO_SUCCESS_STATUSES:
        raise AdminError("emailmassivo_success_status must be 200 or 201")
    sandbox.configure(**payload)
    return _get_config(sandbox, query, None)


def _get_faults(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    return json_reply(200, {"rules": sandbox.faults.describe()})


def _set_faults(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    if payload is None:
        raise FaultPlanError('expected {"rules": [...]}')
    sandbox.faults.replace(FaultPlan.parse(payload))
    return json_reply(200, {"rules": sandbox.faults.describe()})


def _clear_faults(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    sandbox.faults.clear()
    return json_reply(200, {"rules": []})


def _get_settings(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    return json_reply(200, {"settings": _all_settings(sandbox)})


def _set_settings(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    if not isinstance(payload, dict) or not payload:
        raise AdminError('expected {"postal": {...}} or {"voicepartner": {...}}')
    for name, changes in payload.items():
        provider = sandbox.providers.get(name)
        if provider is None or provider.settings() is None:
            known = ", ".join(sorted(_all_settings(sandbox)))
            raise AdminError(f"no settings for {name!r}; providers with settings: {known}")
        if not isinstance(changes, dict):
            raise AdminError(f"settings for {name} must be an object")
    for name, changes in payload.items():
        sandbox.providers[name].configure(changes)
    return json_reply(200, {"settings": _all_settings(sandbox)})


def _get_webhooks(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    return json_reply(200, sandbox.webhooks.describe())


def _set_webhooks(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    if (
        not isinstance(payload, dict)
        or not payload
        or set(payload) - {"postal_url", "retry_delays_s"}
    ):
        raise AdminError('expected {"postal_url": URL|null, "retry_delays_s": [seconds, ...]}')
    delays = payload.get("retry_delays_s")
    if delays is not None and (
        not isinstance(delays, list)
        or any(isinstance(d, bool) or not isinstance(d, (int, float)) for d in delays)
    ):
        raise AdminError("retry_delays_s must be a list of seconds")
    if "postal_url" in payload:
        sandbox.webhooks.set_postal_url(payload["postal_url"])
    if delays is not None:
        sandbox.webhooks.set_retry_delays(delays)
    return _get_webhooks(sandbox, query, None)


def _all_settings(sandbox: Sandbox) -> dict[str, Any]:
    found = {name: provider.settings() for name, provider in sandbox.providers.items()}
    return {name: value for name, value in found.items() if value is not None}


STATUS_WORDS: dict[str, frozenset[str]] = {
    # docs/providers/smspartner.md §1.4: the status endpoints' values.
    "smspartner": frozenset({"Waiting", "Delivered", "Not delivered"}),
    # docs/providers/mailpartner.md §2.2: the values are [NOT FOUND]; those S-MIS assumes.
    "mailpartner": frozenset({"Pending", "Delivered", "Bounced", "Opened", "Clicked", "Failed"}),
    # docs/providers/postal.md §4.4: the message statuses in Postal's code.
    "postal": frozenset(
        {"Pending", "Sent", "SoftFail", "HardFail", "Held", "Bounced", "HoldCancelled", "Error"}
    ),
    # docs/providers/voicepartner.md §3.3: no status lookup nor notifyUrl payload documented; the
    # sandbox's words [INFERRED].
    "voicepartner": frozenset({"Waiting", "Delivered", "Not delivered"}),
}


def _get_status(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    provider, message_id, recipient = (
        _arg(query, "provider"),
        _arg(query, "message_id"),
        _arg(query, "recipient"),
    )
    if provider is None or message_id is None or recipient is None:
        raise AdminError("provider, message_id and recipient are required")
    history = sandbox.env.timeline.history(provider, message_id, recipient)
    if not history:
        return json_reply(404, {"error": "no such message on the timeline"})
    at, status, detail = history[-1]
    return json_reply(
        200,
        {
            "status": status,
            "at": at,
            "detail": detail,
            "history": [{"at": a, "status": s, "detail": d} for a, s, d in history],
        },
    )


def _force_status(sandbox: Sandbox, query: Mapping[str, list[str]], payload: Any) -> Reply:
    if not isinstance(payload, dict):
        raise AdminError('expected {"provider", "message_id", "recipient"?, "status", "detail"?}')
    provider, message_id = payload.get("provider"), payload.get("message_id")
    recipient, status, detail = (
        payload.get("recipient"),
        payload.get("status"),
        payload.get("detail"),
    )
    if provider not in STATUS_WORDS:
        raise AdminError(f"provider must be one of {', '.join(sorted(STATUS_WORDS))}")
    if not isinstance(message_id, (str, int)) or isinstance(message_id, bool):
        raise AdminError("message_id must be a string or an integer")
    if recipient is not None and not isinstance(recipient, str):
        raise AdminError("recipient must be a string")
    if status not in STATUS_WORDS[provider]:
        words = ", ".join(sorted(STATUS_WORDS[provider]))
        raise AdminError(f"{provider} status must be one of {words}")
    if detail is not None and not isinstance(detail, str):
        raise AdminError("detail must be a string")
    changed = sandbox.env.timeline.force(provider, str(message_id), recipient, status, detail)
    if not changed:
        return json_reply(404, {"error": "no such message on the timeline", "changed": 0})
    return json_reply(200, {"changed": changed})


def _arg(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/health"): _health,
    ("GET", "/requests"): _records("requests"),
    ("GET", "/messages"): _records("messages"),
    ("GET", "/stats"): _stats,
    ("POST", "/reset"): _reset,
    ("GET", "/balance"): _get_balance,
    ("POST", "/balance"): _set_balance,
    ("GET", "/config"): _get_config,
    ("POST", "/config"): _set_config,
    ("GET", "/faults"): _get_faults,
    ("POST", "/faults"): _set_faults,
    ("DELETE", "/faults"): _clear_faults,
    ("GET", "/settings"): _get_settings,
    ("POST", "/settings"): _set_settings,
    ("GET", "/webhooks"): _get_webhooks,
    ("POST", "/webhooks"): _set_webhooks,
    ("GET", "/status"): _get_status,
    ("POST", "/status"): _force_status,
}
