"""``delivery-worker cancel ID…``: take deliveries back (``worker.scheduling.cancel``).

Prints one line per id: the id, the answer (``cancelled``, ``cancelled_at_provider``,
``already_sent``, ``too_late_at_provider``, ``already_final``, ``in_flight``,
``provider_error``, ``unknown``) and why; ``--json`` prints a list of objects. Exits 0 when
every id was cancelled, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``cancel`` subcommand to ``delivery-worker``'s subparsers."""
    cancel = sub.add_parser("cancel", help="cancel deliveries not yet sent (or at the provider)")
    cancel.add_argument("ids", nargs="+", metavar="ID", help="delivery ids")
    cancel.add_argument("--json", action="store_true", help="print the answers as JSON")
    cancel.set_defaults(func=_cmd_cancel)


def _cmd_cancel(args: argparse.Namespace) -> int:
    from worker.app import app
    from worker.runtime import get_runtime
    from worker.scheduling.cancel import cancel_deliveries

    results = cancel_deliveries(get_runtime(), app, list(args.ids))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.delivery_id}  {r.answer}" + (f"  ({r.detail})" if r.detail else ""))
    return 0 if all(r.cancelled for r in results) else 1
