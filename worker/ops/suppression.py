"""``delivery-worker suppression list|add|remove|import|export``: the suppression lists by hand.

The lists hold hashes, never addresses (``worker.stores.suppression``): ``add`` and ``remove``
take a recipient and hash it under the deployment's secret; ``remove`` and ``import`` also take
a key as ``export`` writes it, so an export imports back unchanged. CSV columns:
``channel,key,recipient,masked,reason,source,provider,at,expires_at`` (``recipient`` is never
exported; on import a row names ``recipient`` or ``key``). ``docs/suppression.md``.

Exit codes: 0 done, 1 nothing to do (an entry not found, a permanent entry kept), 2 invalid
input (nothing written), 69 Redis unreachable (``worker.ops.cli``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any

from worker.stores.suppression import (
    CHANNELS,
    REASONS,
    SOURCES,
    Entry,
    RecipientHasher,
    SuppressionStore,
    normalise,
)

__all__ = ["COLUMNS", "read_rows", "register", "write_rows"]

COLUMNS = ("channel", "key", "recipient", "masked", "reason", "source", "provider", "at",
           "expires_at")  # fmt: skip


class InvalidRow(ValueError):
    """A recipient, key, reason or time that cannot be an entry."""


def register(sub: Any, duration_s: Callable[[str], float]) -> None:
    """Add the ``suppression`` subcommand to ``delivery-worker``'s subparsers; ``duration_s``:
    the command line's duration type (``30d``, ``12h``)."""
    cmd = sub.add_parser("suppression", help="list, add, remove, import or export suppressions")
    actions = cmd.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="the live entries (masked recipients)")
    listing.add_argument("--channel", choices=CHANNELS, help="one channel (default: all)")
    listing.set_defaults(func=_cmd_list)

    add = actions.add_parser("add", help="suppress a recipient (source: manual)")
    add.add_argument("channel", choices=CHANNELS)
    add.add_argument("recipient", help="an e-mail address or a phone number")
    add.add_argument("--reason", choices=REASONS, default="manual")
    add.add_argument("--expires-in", type=duration_s, metavar="DURATION",
                     help="lift it after this long (30d, 12h); default: until removed")  # fmt: skip
    add.set_defaults(func=_cmd_add)

    remove = actions.add_parser("remove", help="send to a recipient again")
    remove.add_argument("channel", choices=CHANNELS)
    remove.add_argument("recipient", help="the address or number, or its key (from export)")
    remove.set_defaults(func=_cmd_remove)

    export = actions.add_parser("export", help="write the live entries as CSV")
    export.add_argument("--channel", choices=CHANNELS, help="one channel (default: all)")
    export.add_argument("--output", "-o", default="-", help="a file (default: standard output)")
    export.set_defaults(func=_cmd_export)

    imp = actions.add_parser("import", help="add the entries of a CSV file (all or none)")
    imp.add_argument("file", help="a CSV file with a header row ('-': standard input)")
    imp.set_defaults(func=_cmd_import)


def _store() -> tuple[SuppressionStore, RecipientHasher]:
    from worker.config import get_settings
    from worker.redis_client import shared_redis
    from worker.runtime import suppression_policy
    from worker.stores.suppression import RedisSuppressionStore

    settings = get_settings()
    store = RedisSuppressionStore(
        shared_redis(settings), settings.redis_namespace, policy=suppression_policy(settings)
    )
    return store, RecipientHasher(settings.suppression_key)


def _when(at: float | None) -> str:
    if at is None:
        return "never"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cmd_list(args: argparse.Namespace) -> int:
    store, _ = _store()
    count = 0
    for entry in _entries(store, args.channel):
        if count == 0:
            print(f"{'channel':<8}{'recipient':<26}{'reason':<14}{'source':<10}{'provider':<14}"
                  f"{'since':<22}expires  key")  # fmt: skip
        count += 1
        print(f"{entry.channel:<8}{entry.masked or '?':<26}{entry.reason:<14}{entry.source:<10}"
              f"{entry.provider or '-':<14}{_when(entry.at):<22}{_when(entry.expires_at)}  "
              f"{entry.key}")  # fmt: skip
    print(f"{count} suppressed" if count else "no suppressed recipients")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    store, hasher = _store()
    try:
        entry = _from_row(hasher, {"channel": args.channel, "recipient": args.recipient,
                                   "reason": args.reason, "source": "manual"})  # fmt: skip
    except InvalidRow as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    if args.expires_in is not None:
        entry = Entry(entry.channel, entry.key, entry.reason, entry.source, entry.provider,
                      entry.at, time.time() + args.expires_in, entry.masked)  # fmt: skip
    if not store.add(entry):
        print(f"{entry.masked}: a permanent entry stands, kept as it is", file=sys.stderr)
        return 1
    until = "removed" if entry.expires_at is None else _when(entry.expires_at)
    print(f"suppressed {entry.channel} {entry.masked} ({entry.reason}, until {until})")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    store, hasher = _store()
    value = args.recipient.strip()
    key = value if RecipientHasher.is_key(value) else hasher.key(args.channel, value)
    shown = _masked(args.channel, value) if key != value else key
    if store.remove(args.channel, key):
        print(f"removed {args.channel} {shown}: it will be sent to again")
        return 0
    print(f"{args.channel} {shown} is not suppressed", file=sys.stderr)
    return 1


def _cmd_export(args: argparse.Namespace) -> int:
    store, _ = _store()
    if args.output == "-":
        count = write_rows(sys.stdout, _entries(store, args.channel))
    else:
        with open(args.output, "w", newline="", encoding="utf-8") as out:
            count = write_rows(out, _entries(store, args.channel))
    print(f"exported {count} entr{'y' if count == 1 else 'ies'}", file=sys.stderr)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    store, hasher = _store()
    try:
        if args.file == "-":
            entries = read_rows(sys.stdin, hasher)
        else:
            with open(args.file, newline="", encoding="utf-8") as source:
                entries = read_rows(source, hasher)
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except InvalidRow as exc:
        print(f"invalid, nothing imported: {exc}", file=sys.stderr)
        return 2
    added = sum(1 for entry in entries if store.add(entry))
    kept = len(entries) - added
    note = f" ({kept} kept: a permanent entry stands)" if kept else ""
    print(f"imported {added} entr{'y' if added == 1 else 'ies'}{note}")
    return 0


def _entries(store: SuppressionStore, channel: str | None) -> Iterator[Entry]:
    for name in (channel,) if channel else CHANNELS:
        yield from sorted(store.entries(name), key=lambda e: (e.at, e.key))


def write_rows(out: IO[str], entries: Iterable[Entry]) -> int:
    """``entries`` as CSV with a header row; how many."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    count = 0
    for e in entries:
        expires = "" if e.expires_at is None else repr(e.expires_at)
        writer.writerow([e.channel, e.key, "", e.masked, e.reason, e.source, e.provider,
                         repr(e.at), expires])  # fmt: skip
        count += 1
    return count


def read_rows(source: IO[str], hasher: RecipientHasher) -> list[Entry]:
    """Every row of a CSV file with a header, as entries; :class:`InvalidRow` (naming the line)
    at the first bad one, so that a file is imported whole or not at all."""
    reader = csv.DictReader(source)
    if reader.fieldnames is None or "channel" not in reader.fieldnames:
        raise InvalidRow("the header row must name at least channel and recipient or key")
    entries = []
    for row in reader:
        try:
            entries.append(_from_row(hasher, row, default_source="import"))
        except InvalidRow as exc:
            raise InvalidRow(f"line {reader.line_num}: {exc}") from None
    return entries


def _from_row(
    hasher: RecipientHasher, row: dict[str, str], *, default_source: str = "manual"
) -> Entry:
    channel = (row.get("channel") or "").strip()
    if channel not in CHANNELS:
        raise InvalidRow(f"channel must be one of {', '.join(CHANNELS)}")
    recipient, key = (row.get("recipient") or "").strip(), (row.get("key") or "").strip()
    if recipient:
        _check_recipient(channel, recipient)
        key, masked = hasher.key(channel, recipient), _masked(channel, recipient)
    elif RecipientHasher.is_key(key):
        masked = (row.get("masked") or "").strip()
    else:
        raise InvalidRow("a row needs a recipient or a key (32 hex characters)")
    value = (row.get("reason") or "manual").strip()
    reason = next((r for r in REASONS if r == value), None)
    if reason is None:
        raise InvalidRow(f"reason must be one of {', '.join(REASONS)}")
    value = (row.get("source") or default_source).strip()
    source = next((s for s in SOURCES if s == value), None)
    if source is None:
        raise InvalidRow(f"source must be one of {', '.join(SOURCES)}")
    at, expires = _time(row.get("at")), _time(row.get("expires_at"))
    provider = (row.get("provider") or "").strip()[:40]
    return Entry(channel, key, reason, source, provider, at or time.time(), expires, masked)


def _time(value: str | None) -> float | None:
    if not value or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidRow(f"not a time in Unix seconds: {value[:20]!r}") from None
    if not (0 < number < 1e11):
        raise InvalidRow(f"not a time in Unix seconds: {value[:20]!r}")
    return number


def _check_recipient(channel: str, recipient: str) -> None:
    if channel == "email":
        local, at, domain = recipient.rpartition("@")
        if not (local and at and "." in domain) or any(c.isspace() for c in recipient):
            raise InvalidRow("not an e-mail address")
        return
    digits = normalise(channel, recipient)
    if not (digits.startswith("+") and 8 <= len(digits) - 1 <= 15 and digits[1:].isdigit()):
        raise InvalidRow("not a phone number in international form (+33612345678)")


def _masked(channel: str, recipient: str) -> str:
    from worker.redaction import mask_email, mask_phone

    value = normalise(channel, recipient)
    return mask_email(value) if channel == "email" else mask_phone(value)
