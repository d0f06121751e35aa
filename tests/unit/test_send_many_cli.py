"""The campaign command's pure parts: templates, streamed rows, the follow window, the summary.

The enqueue and the polls are plain functions handed in, so these run without Redis; the
command over a real redis-server, worker and sandbox is in tests/integration/test_campaigns.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.ops.send_many import (
    CampaignSummary,
    InputError,
    MessageSpec,
    Rows,
    Template,
    build_row_message,
    run_campaign,
)


def test_template_renders_plain_columns_and_literal_braces() -> None:
    t = Template("Hi {first}, code {{x}} {code}")
    assert t.columns == ["first", "code"]
    assert t.render({"first": "Ana", "code": "42"}) == "Hi Ana, code {x} 42"


@pytest.mark.parametrize(
    "text", ["{a.__class__}", "{a[0]}", "{a!r}", "{a:>10}", "{}", "{ }", "unclosed {a"]
)
def test_template_refuses_anything_but_a_plain_column(text: str) -> None:
    with pytest.raises(InputError, match="--template"):
        Template(text)


def test_template_names_the_empty_column() -> None:
    with pytest.raises(ValueError, match="'first' is empty"):
        Template("Hi {first}").render({"first": "  "})


def _csv(tmp_path: Path, text: str) -> Rows:
    path = tmp_path / "contacts.csv"
    path.write_text(text, encoding="utf-8")
    return Rows(str(path))


def test_rows_stream_with_row_numbers_and_report_bad_rows(tmp_path: Path) -> None:
    rows = _csv(
        tmp_path,
        '\ufeffto,first\n+33612345678,Ana\n\n+33612345679\n+33612345680,"Bo, Jr"\n',
    )
    assert rows.count() == 4  # the blank line is a row for csv, skipped when read
    headers: list[list[str]] = []
    got = list(rows.iter_rows(headers.append))
    assert headers == [["to", "first"]]  # the byte-order mark is not part of the name
    assert got == [
        (2, {"to": "+33612345678", "first": "Ana"}),
        (4, "1 cells for 2 columns"),
        (5, {"to": "+33612345680", "first": "Bo, Jr"}),
    ]


def test_rows_refuse_an_empty_file_and_duplicate_columns(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        list(_csv(tmp_path, "").iter_rows(lambda _: None))
    with pytest.raises(InputError, match=r"duplicate column.*to"):
        list(_csv(tmp_path, "to,to\n1,2\n").iter_rows(lambda _: None))


def test_rows_refuse_an_oversized_cell_as_one_bad_row(tmp_path: Path) -> None:
    huge = "x" * 20_000
    rows = _csv(tmp_path, f"to,text\n+33612345678,{huge}\n+33612345679,ok\n")
    got = list(rows.iter_rows(lambda _: None))
    assert isinstance(got[0][1], str) and "unreadable row" in got[0][1]
    assert got[-1] == (3, {"to": "+33612345679", "text": "ok"})


def test_row_message_per_channel() -> None:
    sms = MessageSpec(
        "sms",
        "to",
        template=Template("Hi {first}"),
        fixed={"provider": "smspartner"},
        idempotency_prefix="run1",
    )
    assert build_row_message(sms, 7, {"to": "+33612345678", "first": "Ana"}) == {
        "provider": "smspartner",
        "to": ["+33612345678"],
        "text": "Hi Ana",
        "idempotency_key": "run1:7",
    }
    email = MessageSpec(
        "email",
        "email",
        text="Hello",
        fixed={"from": {"email": "news@example.com"}},
        subject=Template("For {first}"),
    )
    assert build_row_message(email, 2, {"email": "a@example.com", "first": "Ana"}) == {
        "from": {"email": "news@example.com"},
        "to": [{"email": "a@example.com"}],
        "text": "Hello",
        "subject": "For Ana",
    }
    with pytest.raises(ValueError, match="'to' is empty"):
        build_row_message(sms, 3, {"to": "", "first": "Ana"})


class FakeQueue:
    """Hands out ids, refuses rows whose text says so, settles ids on the second poll."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.polled: list[int] = []
        self.seen: dict[str, int] = {}
        self.max_followed = 0

    def send_chunk(self, messages: list[dict[str, Any]]) -> tuple[list[str | None], dict[int, str]]:
        self.calls.append(len(messages))
        ids: list[str | None] = []
        errors: dict[int, str] = {}
        for i, m in enumerate(messages):
            if m.get("text") == "bad":
                ids.append(None)
                errors[i] = "text: refused"
            else:
                ids.append(f"id-{m['to'][0]}")
        return ids, errors

    def poll(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        self.polled.append(len(ids))
        self.max_followed = max(self.max_followed, len(ids))
        out = {}
        for delivery_id in ids:
            self.seen[delivery_id] = self.seen.get(delivery_id, 0) + 1
            if self.seen[delivery_id] >= 2:
                status = "failed" if delivery_id.endswith("9") else "sent"
                result: dict[str, Any] = {"status": status}
                if status == "failed":
                    result["error"] = {"kind": "rejected", "code": "10", "message": "x"}
                out[delivery_id] = result
        return out


def _rows(n: int) -> list[tuple[int, Any]]:
    return [
        (i + 2, {"to": f"+3361234{i:04d}", "text": "bad" if i == 5 else "ok"}) for i in range(n)
    ]


def test_campaign_chunks_follows_within_the_window_and_counts_outcomes() -> None:
    q = FakeQueue()
    spec = MessageSpec("sms", "to", text_column="text")
    s = run_campaign(
        iter(_rows(25)), spec, q.send_chunk, q.poll, chunk=10, window=12, sleep=lambda _: None
    )
    assert q.calls == [10, 10, 5]
    assert q.max_followed <= 12 + 10  # never more than the window plus the chunk just sent
    assert s.rows == 25 and s.enqueued == 24 and s.invalid == 1
    assert s.invalid_rows == ["row 7: text: refused"]
    assert s.outcomes == {"sent": 22, "failed": 2}  # ids ending in 9: rows 9 and 19
    assert s.failures == {"rejected (10)": 2}
    assert s.pending == 0 and s.exit_code(waited=True) == 1


def test_campaign_without_wait_only_enqueues() -> None:
    q = FakeQueue()
    rows = [(i + 2, {"to": f"+3361234{i:04d}", "text": "ok"}) for i in range(3)]
    s = run_campaign(iter(rows), MessageSpec("sms", "to", text_column="text"), q.send_chunk, None)
    assert q.polled == [] and s.enqueued == 3 and s.exit_code(waited=False) == 0


def test_campaign_timeout_leaves_pending() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    spec = MessageSpec("sms", "to", text="hi")
    s = run_campaign(
        iter([(2, {"to": "+33612345678"})]),
        spec,
        lambda ms: ([f"id{i}" for i in range(len(ms))], {}),
        lambda ids: {},
        timeout_s=2.0,
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert s.pending == 1 and s.exit_code(waited=True) == 4


def test_summary_counts_suppressed_apart() -> None:
    s = CampaignSummary()
    s.record({"status": "failed", "error": {"kind": "suppressed", "message": "stop"}})
    s.record({"status": "sent"})
    assert s.suppressed == 1 and s.outcomes == {"sent": 1} and not s.failures
