"""``delivery-worker send-many sms|email|voice --csv FILE``: a campaign from a contact list.

The file is streamed, never held whole: rows are read ``--chunk`` at a time, each chunk becomes
one :func:`worker.producer.send_many` call (validated first; an invalid row is skipped and
reported by its row number, the others go), and with ``--wait`` (the default) the outcomes are
followed on the ledger while later chunks are enqueued. At most ``--window`` deliveries are
followed at once, so memory stays bounded whatever the file's size; the enqueue waits for
room.

The text of each message is ``--text`` (the same for every row), ``--text-column`` (a column of
the file) or ``--template`` (``"Hello {first_name}, ..."``: plain column names only, ``{{``
for a literal brace). A column the template names that the header lacks is refused before
anything is sent.

Each row's message carries the idempotency key ``<prefix>:<row number>``; the prefix defaults
to a digest of the file and the options, so running the same command again after a crash or a
timeout sends nothing twice (the rows already enqueued answer with their first delivery).
``--idempotency-prefix`` names another run on purpose.

Exit status: 0 every row sent (or, with ``--no-wait``, enqueued); 1 some rows invalid, failed,
expired or suppressed; 2 invalid input (flags, file, header); 4 ``--timeout`` passed before
every delivery settled (they go on in the workers); 69 Redis unreachable.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CampaignSummary",
    "Rows",
    "Template",
    "add_send_many_parser",
    "build_row_message",
    "run_campaign",
]

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INVALID = 2
EXIT_TIMEOUT = 4
EXIT_UNAVAILABLE = 69

DEFAULT_CHUNK = 500
"""Rows per ``send_many`` call: SMS Partner's batch limit (docs/providers/smspartner.md §1.2.3)."""
DEFAULT_WINDOW = 20_000
"""Deliveries followed at once with ``--wait``; the enqueue waits for room beyond it."""
MAX_FIELD_CHARS = 10_000
"""A CSV cell longer than this is refused (csv's own default limit is 131,072)."""


class InputError(ValueError):
    """A flag, file or header that cannot make a campaign (exit status 2)."""


class Template:
    """``str.format``-style text with plain column names only: no attribute or index access,
    no format specs, so a template cannot reach anything but the row's own cells."""

    def __init__(self, text: str) -> None:
        self.parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise InputError(f"--template: {exc}") from None
        for literal, name, spec, conversion in parsed:
            if name is not None and (
                not name.strip() or any(c in name for c in ".[]") or spec or conversion
            ):
                raise InputError(
                    f"--template: {{{name}}} must be a plain column name "
                    "(no attributes, indexes or format specs)"
                )
            self.parts.append((literal, name))

    @property
    def columns(self) -> list[str]:
        return [name for _, name in self.parts if name is not None]

    def render(self, row: dict[str, str]) -> str:
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                value = row.get(name) or ""
                if not value.strip():
                    raise ValueError(f"column {name!r} is empty")
                out.append(value)
        return "".join(out)


@dataclass
class Rows:
    """The file's rows, streamed: ``(row number, cells)`` with row 2 the first after the header."""

    source: str
    delimiter: str = ","

    def _open(self) -> IO[str]:
        if self.source == "-":
            return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
        try:
            return Path(self.source).open(encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise InputError(f"--csv: cannot read {self.source}: {exc.strerror}") from None

    def header(self) -> list[str]:
        if self.source == "-":
            raise InputError("--csv -: read the header with iter_rows")  # pragma: no cover
        with self._open() as f:
            return self._header_of(csv.reader(f, delimiter=self.delimiter))

    @staticmethod
    def _header_of(reader: Iterator[list[str]]) -> list[str]:
        try:
            header = next(reader)
        except StopIteration:
            raise InputError("--csv: the file is empty (a header row is needed)") from None
        except csv.Error as exc:
            raise InputError(f"--csv: row 1: {exc}") from None
        names = [h.strip() for h in header]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"--csv: duplicate column(s) in the header: {', '.join(dupes)}")
        return names

    def count(self) -> int | None:
        """Rows after the header (one pass, bounded memory); ``None`` for standard input."""
        if self.source == "-":
            return None
        with self._open() as f:
            return max(sum(1 for _ in csv.reader(f, delimiter=self.delimiter)) - 1, 0)

    def iter_rows(self, on_header: Callable[[list[str]], None]) -> Iterator[tuple[int, Any]]:
        """Each row as a dict, or a string saying why it cannot be read."""
        with self._open() as f:
            reader = csv.reader(f, delimiter=self.delimiter)
            names = self._header_of(reader)
            on_header(names)
            number = 1
            while True:
                number += 1
                # csv's limit is process-wide: set for this read only, not for the caller.
                previous = csv.field_size_limit(MAX_FIELD_CHARS)
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield number, f"unreadable row: {exc}"
                    continue
                finally:
                    csv.field_size_limit(previous)
                if not any(c.strip() for c in cells):
                    continue  # a blank line
                if len(cells) != len(names):
                    yield number, f"{len(cells)} cells for {len(names)} columns"
                    continue
                yield number, {n: c.strip() for n, c in zip(names, cells, strict=True)}


@dataclass(frozen=True)
class MessageSpec:
    """What every row's message shares, and where its own parts come from."""

    channel: str
    to_column: str
    text: str | None = None
    text_column: str | None = None
    template: Template | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    subject: Template | None = None
    idempotency_prefix: str | None = None

    def columns(self) -> list[str]:
        needed = [self.to_column]
        if self.text_column:
            needed.append(self.text_column)
        if self.template:
            needed += self.template.columns
        if self.subject:
            needed += self.subject.columns
        return needed


def build_row_message(spec: MessageSpec, number: int, row: dict[str, str]) -> dict[str, Any]:
    """The message of one row; ``ValueError`` names the empty column."""
    to = row.get(spec.to_column) or ""
    if not to:
        raise ValueError(f"column {spec.to_column!r} is empty")
    if spec.template is not None:
        text = spec.template.render(row)
    elif spec.text_column is not None:
        text = row.get(spec.text_column) or ""
        if not text:
            raise ValueError(f"column {spec.text_column!r} is empty")
    else:
        text = spec.text or ""
    msg: dict[str, Any] = dict(spec.fixed)
    msg["to"] = [{"email": to}] if spec.channel == "email" else [to]
    if text:
        msg["text"] = text
    if spec.subject is not None:
        msg["subject"] = spec.subject.render(row)
    if spec.idempotency_prefix:
        msg["idempotency_key"] = f"{spec.idempotency_prefix}:{number}"
    return msg


@dataclass
class CampaignSummary:
    """What a person reads at the end, and ``--json`` prints."""

    rows: int = 0
    enqueued: int = 0
    invalid: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    """Final status → count (``sent``, ``failed``, ``expired``, ``parked``, ...)."""
    failures: Counter[str] = field(default_factory=Counter)
    """Failure reason (``error.kind`` / ``error.code``) → count."""
    suppressed: int = 0
    """Deliveries that reached no one because every recipient is suppressed."""
    pending: int = 0
    invalid_rows: list[str] = field(default_factory=list)
    """The first invalid rows, ``row N: why``."""

    def record(self, result: dict[str, Any]) -> None:
        status = str(result.get("status", "unknown"))
        error = result.get("error") or {}
        if status == "failed" and error.get("kind") == "suppressed":
            self.suppressed += 1
            return
        self.outcomes[status] += 1
        if status != "sent" and error:
            reason = str(error.get("kind", "error"))
            if error.get("code"):
                reason += f" ({error['code']})"
            self.failures[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "enqueued": self.enqueued,
            "invalid": self.invalid,
            "outcomes": dict(self.outcomes),
            "failures": dict(self.failures),
            "suppressed": self.suppressed,
            "pending": self.pending,
            "invalid_rows": self.invalid_rows,
        }

    def exit_code(self, *, waited: bool) -> int:
        if self.pending:
            return EXIT_TIMEOUT
        bad = (
            self.invalid + self.suppressed + sum(n for s, n in self.outcomes.items() if s != "sent")
        )
        if not waited:
            bad = self.invalid
        return EXIT_SOME_FAILED if bad else EXIT_OK


SendChunk = Callable[[list[dict[str, Any]]], tuple[list[str | None], dict[int, str]]]
"""Enqueue one chunk: a delivery id per message (``None`` where refused) and the refusals by
index."""
Poll = Callable[[list[str]], dict[str, dict[str, Any]]]
"""One poll: the results of those deliveries that have settled (the rest are left out)."""

MAX_INVALID_SHOWN = 20


def run_campaign(
    rows: Iterator[tuple[int, Any]],
    spec: MessageSpec,
    send_chunk: SendChunk,
    poll: Poll | None,
    *,
    chunk: int = DEFAULT_CHUNK,
    window: int = DEFAULT_WINDOW,
    timeout_s: float = 600.0,
    on_progress: Callable[[CampaignSummary, int], None] = lambda s, f: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> CampaignSummary:
    """Stream ``rows`` into ``send_chunk`` calls; with ``poll``, follow every delivery to its
    outcome, never following more than ``window`` at once. ``on_progress(summary, followed)``
    after every chunk and poll."""
    summary = CampaignSummary()
    followed: dict[str, None] = {}  # insertion-ordered set of unsettled ids

    def invalid(number: int, why: str) -> None:
        summary.invalid += 1
        if len(summary.invalid_rows) < MAX_INVALID_SHOWN:
            summary.invalid_rows.append(f"row {number}: {why}")

    def poll_once() -> None:
        assert poll is not None
        ids = list(followed)
        if not ids:
            return
        for delivery_id, result in poll(ids).items():
            if delivery_id in followed:
                del followed[delivery_id]
                summary.record(result)
        on_progress(summary, len(followed))

    def flush(batch: list[tuple[int, dict[str, Any]]]) -> None:
        if not batch:
            return
        ids, refused = send_chunk([m for _, m in batch])
        for index, (number, _) in enumerate(batch):
            delivery_id = ids[index] if index < len(ids) else None
            if delivery_id is None:
                invalid(number, refused.get(index, "refused"))
            else:
                summary.enqueued += 1
                if poll is not None:
                    followed[delivery_id] = None
        batch.clear()
        on_progress(summary, len(followed))

    batch: list[tuple[int, dict[str, Any]]] = []
    for number, row in rows:
        summary.rows += 1
        if isinstance(row, str):
            invalid(number, row)
            continue
        try:
            batch.append((number, build_row_message(spec, number, row)))
        except ValueError as exc:
            invalid(number, str(exc))
            continue
        if len(batch) >= chunk:
            flush(batch)
            while poll is not None and len(followed) >= window:
                poll_once()
                if len(followed) >= window:
                    sleep(0.2)
    flush(batch)
    if poll is not None:
        deadline = clock() + timeout_s
        delay = 0.05
        while followed:
            poll_once()
            if not followed or clock() >= deadline:
                break
            sleep(delay)
            delay = min(delay * 1.5, 1.0)
        summary.pending = len(followed)
    on_progress(summary, len(followed))
    return summary


# -- command line ------------------------------------------------------------------------------


def add_send_many_parser(sub: Any) -> None:
    p = sub.add_parser(
        "send-many",
        help="send a campaign from a CSV contact list",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog="exit status: 0 all sent (or enqueued, with --no-wait); 1 some rows invalid, "
        "failed or suppressed; 2 invalid input; 4 --timeout passed; 69 Redis unreachable.",
    )
    p.add_argument("channel", choices=["sms", "email", "voice"])
    p.add_argument("--csv", required=True, metavar="FILE", help="the contact list ('-': stdin)")
    p.add_argument("--delimiter", default=",", help="the CSV delimiter (default ',')")
    p.add_argument("--to-column", default="to", help="the recipient column (default 'to')")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text", help="the same text for every row")
    text.add_argument("--text-column", metavar="COLUMN", help="each row's text from this column")
    text.add_argument("--template", help='text with columns, e.g. "Hi {first_name}"')
    p.add_argument("--provider", help="provider name (default: the channel's own or routed)")
    p.add_argument("--sender", help="sms: 3-11 alphanumerics; voice: E.164 caller id")
    p.add_argument("--tag", help="the provider tag of every message")
    p.add_argument("--subject", help="email: the subject (may name columns like --template)")
    p.add_argument("--from", dest="from_", metavar="ADDR", help="email: the sender address")
    p.add_argument("--mode", choices=["tts", "voicemail"], default="tts", help="voice: the mode")
    p.add_argument(
        "--idempotency-prefix",
        help="row N's key is PREFIX:N (default: a digest of the file and the options, so the "
        "same command run again sends nothing twice)",
    )
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="rows per enqueue call")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="deliveries followed at once")
    p.add_argument(
        "--no-wait", dest="wait", action="store_false", help="end once every row is enqueued"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for outcomes")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_send_many)


def _spec(args: argparse.Namespace) -> MessageSpec:
    channel = args.channel
    if args.chunk < 1 or args.window < 1:
        raise InputError("--chunk and --window must be at least 1")
    if channel in ("sms", "voice") and not (args.text or args.text_column or args.template):
        raise InputError(f"{channel}: one of --text, --text-column or --template is needed")
    if channel == "email" and not (args.from_ and args.subject):
        raise InputError("email: --from and --subject are needed")
    fixed: dict[str, Any] = {}
    if args.provider:
        fixed["provider"] = args.provider
    elif channel in ("sms", "voice"):
        fixed["provider"] = {"sms": "smspartner", "voice": "voicepartner"}[channel]
    if args.tag:
        fixed["tag"] = args.tag
    if args.sender and channel != "email":
        fixed["sender"] = args.sender
    if channel == "email":
        fixed["from"] = {"email": args.from_}
    if channel == "voice":
        fixed["mode"] = args.mode
    template = Template(args.template) if args.template else None
    subject = Template(args.subject) if channel == "email" and args.subject else None
    prefix = args.idempotency_prefix
    if prefix is None and args.csv != "-":
        digest = hashlib.sha256()
        with Path(args.csv).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        options = [channel, args.to_column, args.text, args.text_column, args.template]
        options += [args.subject, json.dumps(fixed, sort_keys=True)]
        digest.update(json.dumps(options).encode())
        prefix = "csv-" + digest.hexdigest()[:16]
    return MessageSpec(
        channel=channel,
        to_column=args.to_column,
        text=args.text,
        text_column=args.text_column,
        template=template,
        fixed=fixed,
        subject=subject,
        idempotency_prefix=prefix,
    )


def _producer_hooks(channel: str, wait: bool) -> tuple[SendChunk, Poll | None]:
    from worker.campaign import SendManyResult
    from worker.producer import Producer
    from worker.stores import FINAL_STATES

    producer = Producer()

    def send_chunk(messages: list[dict[str, Any]]) -> tuple[list[str | None], dict[int, str]]:
        result = producer.send_many(channel, messages, on_invalid="skip")
        assert isinstance(result, SendManyResult)
        why = {
            i: "; ".join(f"{x['field']}: {x['message']}" for x in e.errors)
            for i, e in result.errors.items()
        }
        return result.ids, why

    def poll(ids: list[str]) -> dict[str, dict[str, Any]]:
        # One round trip per poll, whatever the number of ids (a pipeline of reads).
        settled: dict[str, dict[str, Any]] = {}
        for delivery_id, record in zip(ids, producer.ledger.get_many(ids), strict=True):
            if record is not None and (record.state in FINAL_STATES or record.state == "parked"):
                settled[delivery_id] = record.result or {"status": record.state}
        return settled

    return send_chunk, (poll if wait else None)


def _cmd_send_many(args: argparse.Namespace) -> int:
    import redis
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    err = Console(stderr=True)
    try:
        spec = _spec(args)
        rows = Rows(args.csv, args.delimiter)
        total = rows.count()
    except (InputError, OSError) as exc:
        err.print(f"send-many: {exc}")
        return EXIT_INVALID

    def check_header(names: list[str]) -> None:
        missing = [c for c in dict.fromkeys(spec.columns()) if c not in names]
        if missing:
            raise InputError(
                f"--csv: the header has no column {', '.join(map(repr, missing))} "
                f"(it has {', '.join(names)})"
            )

    progress = Progress(
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=args.quiet,
    )
    started = time.monotonic()

    def rate(n: int) -> str:
        elapsed = time.monotonic() - started
        return f"{n / elapsed:,.0f} msg/s" if elapsed > 0 and n else ""

    with progress:
        enq = progress.add_task("enqueued", total=total, rate="")
        done = progress.add_task("settled", total=total, rate="", visible=args.wait)

        def on_progress(s: CampaignSummary, following: int) -> None:
            progress.update(enq, completed=s.enqueued + s.invalid, rate=rate(s.enqueued))
            settled = s.enqueued - following
            progress.update(done, completed=settled + s.invalid, rate=rate(settled))

        try:
            send_chunk, poll = _producer_hooks(args.channel, args.wait)
            summary = run_campaign(
                rows.iter_rows(check_header),
                spec,
                send_chunk,
                poll,
                chunk=args.chunk,
                window=args.window,
                timeout_s=args.timeout,
                on_progress=on_progress,
            )
        except InputError as exc:
            err.print(f"send-many: {exc}")
            return EXIT_INVALID
        except redis.ConnectionError as exc:
            err.print(f"send-many: Redis unreachable ({type(exc).__name__})")
            return EXIT_UNAVAILABLE
    _print_summary(summary, args, spec, time.monotonic() - started)
    return summary.exit_code(waited=args.wait)


def _print_summary(
    s: CampaignSummary, args: argparse.Namespace, spec: MessageSpec, elapsed_s: float
) -> None:
    if args.json:
        out = s.as_dict() | {"idempotency_prefix": spec.idempotency_prefix}
        print(json.dumps(out, indent=2, sort_keys=True))
        return
    lines = [
        f"rows       {s.rows:>9,}",
        f"enqueued   {s.enqueued:>9,}   in {elapsed_s:.1f} s",
        f"invalid    {s.invalid:>9,}",
    ]
    if args.wait:
        for status in sorted(s.outcomes, key=lambda k: (k != "sent", k)):
            lines.append(f"{status:<10} {s.outcomes[status]:>9,}")
        lines.append(f"suppressed {s.suppressed:>9,}")
        if s.pending:
            lines.append(f"pending    {s.pending:>9,}   (not settled in --timeout)")
        for reason, n in s.failures.most_common():
            lines.append(f"  failed: {reason}: {n:,}")
    for row in s.invalid_rows:
        lines.append(f"  {row}")
    if s.invalid > len(s.invalid_rows):
        lines.append(f"  ... and {s.invalid - len(s.invalid_rows):,} more invalid rows")
    if spec.idempotency_prefix:
        lines.append(f"idempotency prefix: {spec.idempotency_prefix} (run again: nothing twice)")
    print("\n".join(lines))
