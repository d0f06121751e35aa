"""Every Redis key family the worker (and Celery's Redis transport under it) writes.

A key either expires by itself (a TTL set by whoever writes it) or belongs to an owner that
keeps it bounded: removes its entries as they finish, caps it, or holds one small key per
provider or per queue. :data:`NO_TTL_OWNERS` lists the families that live without a TTL, with
their owner and what bounds them; anything else must carry a TTL. The integration test
``tests/integration/test_key_owners.py`` runs a mixed workload over real processes and fails
on any key that has neither. ``docs/operations.md`` shows the same table to operators.
The worker's own families follow the key namespace (``worker.stores.keys``): :func:`no_ttl_owners`
builds the table for one namespace, :data:`NO_TTL_OWNERS` is the default ``dw`` one.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from worker.stores.keys import DEFAULT_NAMESPACE, Keys

__all__ = ["NO_TTL_OWNERS", "no_ttl_owners", "owner_of"]

_OWNERS: dict[str, str] = {
    # Celery's Redis transport (kombu): queues, bindings and the unacknowledged set.
    "_kombu.binding*": "kombu: one set per queue and exchange (bounded by the queues)",
    "delivery": "kombu: the send queue; consumers pop it",
    "celery": "kombu: Celery's default queue; consumers pop it",
    "delivery\x06\x16*": "kombu: a priority step of the send queue; consumers pop it",
    "unacked": "kombu: messages being worked on; acked or restored after the visibility timeout",
    "unacked_index": "kombu: the index of `unacked`, cleaned with it",
    "unacked_mutex": "kombu: a short lock with its own expiry",
    # The worker's own families without a TTL.
    "{ns}:active": "ledger: live deliveries; an entry leaves when its delivery ends, the sweeper "
    "finishes stragglers",
    "{ns}:scheduled": "scheduler: due times of held messages; the mover takes each when due, "
    "cancel removes it",
    "{ns}:scheduled:claims": "scheduler: leases of the mover, removed on publish",
    "{ns}:lane:*": "lanes: one sorted set per (priority, tenant) of waiting deliveries; the "
    "dispatcher takes each entry, an empty lane is removed by Redis",
    "{ns}:lanes:tenants:*": "lanes: one set per priority of the tenants with waiting work; a "
    "tenant leaves when its lane empties",
    "{ns}:lanes:turns": "lanes: one hash of round-robin credits, one field per class and per "
    "tenant with waiting work (removed when its lane empties)",
    "{ns}:lanes:due": "lanes: one hash, per priority and provider the limiter sent work back "
    "from, when it is due again; a take removes a field once passed",
    "{ns}:lanes:taken": "lanes: entries between take and publish; removed on publish, put back "
    "in their lane when the lease ends",
    "{ns}:lanes:chunk:*": "lanes: a campaign chunk waiting in a lane (its task's name and "
    "message); removed when its dispatcher publishes it",
    "{ns}:track:poll": "tracking: deliveries being followed; an entry leaves at a final state or "
    "after the tracking horizon (48 h)",
    "{ns}:track:outbox": "tracking: index of outboxes waiting to publish; an expired outbox is "
    "dropped from it",
    "{ns}:metrics:*": "metrics: one hash of counters per provider (bounded by the providers)",
    "{ns}:balances": "balances: one hash, one field per provider",
    "{ns}:health:paused": "health: one hash, one field per paused provider; resume removes it",
    "{ns}:health:breaker:*": "health: one hash per provider whose breaker has state",
    "{ns}:parked:*": "parking: one hash per paused provider; resume empties it",
    "{ns}:rejected": "guard: one hash of refusal counts by reason (bounded by the reasons)",
    "{ns}:supp:email": "suppression: one hash, one field per suppressed address; an expired entry "
    "is dropped when met, `suppression remove` removes one",
    "{ns}:supp:sms": "suppression: one hash, one field per suppressed number (as email)",
    "{ns}:supp:voice": "suppression: one hash, one field per suppressed number (as email)",
    "{ns}:repl:fence": "producer: one key, the replication fence",
}


def no_ttl_owners(namespace: str = DEFAULT_NAMESPACE) -> dict[str, str]:
    """Key pattern (``fnmatch``, case-sensitive) → its owner and what keeps it bounded, for the
    worker's families under ``namespace``."""
    ns = Keys(namespace).namespace
    return {pattern.replace("{ns}", ns): owner for pattern, owner in _OWNERS.items()}


NO_TTL_OWNERS = no_ttl_owners()
"""The table of the default namespace."""


def owner_of(key: str, namespace: str = DEFAULT_NAMESPACE) -> str | None:
    """The owner of a key that lives without a TTL, or None when it must carry one."""
    for pattern, owner in no_ttl_owners(namespace).items():
        if fnmatchcase(key, pattern):
            return owner
    return None
