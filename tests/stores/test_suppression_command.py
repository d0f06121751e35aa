"""``delivery-worker suppression list|add|remove|import|export`` over a real redis-server."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from worker.config import get_settings
from worker.ops.cli import main
from worker.stores.suppression import Entry, RecipientHasher, RedisSuppressionStore

SECRET = "k" * 32
A, B = "+33612345678", "Jane.Doe@Example.com"


@pytest.fixture
def shared(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/12")
    client.flushdb()
    monkeypatch.setenv("DELIVERY_REDIS_URL", f"{redis_url}/12")
    monkeypatch.setenv("DELIVERY_SUPPRESSION_SECRET", SECRET)
    get_settings.cache_clear()
    yield client
    get_settings.cache_clear()
    client.flushdb()
    client.close()


@pytest.fixture
def store(shared: redis.Redis) -> RedisSuppressionStore:
    return RedisSuppressionStore(shared)


HASHER = RecipientHasher(SECRET.encode())


def test_add_list_remove(
    store: RedisSuppressionStore, shared: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["suppression", "add", "sms", "+33 6 12 34 56 78"]) == 0
    assert "suppressed sms +3361*****78 (manual, until removed)" in capsys.readouterr().out
    assert main(["suppression", "add", "email", B, "--reason", "complaint"]) == 0
    capsys.readouterr()
    key_a, key_b = HASHER.key("sms", A), HASHER.key("email", B)
    found = store.check("sms", [key_a])
    assert found[key_a].source == "manual" and found[key_a].reason == "manual"
    assert store.check("email", [HASHER.key("email", B.lower())])[key_b].reason == "complaint"
    dump = b"".join(v for k in shared.keys("dw:supp:*") for v in shared.hvals(k))
    assert b"12345678" not in dump and b"jane" not in dump.lower()  # no plain recipient

    assert main(["suppression", "list"]) == 0
    out = capsys.readouterr().out
    assert "+3361*****78" in out and "complaint" in out and "2 suppressed" in out
    assert A not in out and B not in out and key_a in out

    assert main(["suppression", "remove", "sms", A]) == 0
    assert "removed sms +3361*****78" in capsys.readouterr().out
    assert store.check("sms", [key_a]) == {}
    assert main(["suppression", "remove", "sms", A]) == 1
    assert "is not suppressed" in capsys.readouterr().err
    assert main(["suppression", "remove", "email", key_b]) == 0  # by key, as exported
    assert main(["suppression", "list"]) == 0
    assert "no suppressed recipients" in capsys.readouterr().out


def test_add_refuses_a_bad_recipient_and_keeps_a_permanent_entry(
    store: RedisSuppressionStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["suppression", "add", "email", "not-an-address"]) == 2
    assert "not an e-mail address" in capsys.readouterr().err
    assert main(["suppression", "add", "sms", "12"]) == 2
    assert store.count("email") == 0 and store.count("sms") == 0
    assert main(["suppression", "add", "sms", A, "--reason", "stop"]) == 0
    assert main(["suppression", "add", "sms", A, "--expires-in", "1d"]) == 1
    assert "a permanent entry stands" in capsys.readouterr().err
    key = HASHER.key("sms", A)
    entry = store.check("sms", [key])[key]
    assert entry.reason == "stop" and entry.expires_at is None


def test_export_then_import_restores_every_entry(
    store: RedisSuppressionStore,
    shared: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.add(Entry("sms", HASHER.key("sms", A), "stop", "send", "smspartner", 1.7e9,
                    masked="+3361*****78"))  # fmt: skip
    store.add(Entry("email", HASHER.key("email", B), "soft_bounce", "tracking", "postal", 1.7e9,
                    expires_at=4.1e9, masked="j***@example.com"))  # fmt: skip
    store.add(Entry("email", "f" * 32, "hard_bounce", "tracking", "postal", 1.6e9,
                    expires_at=1.0))  # expired: not exported  # fmt: skip
    path = tmp_path / "supp.csv"
    assert main(["suppression", "export", "--output", str(path)]) == 0
    assert "exported 2 entries" in capsys.readouterr().err
    text = path.read_text()
    assert A not in text and B not in text and "jane" not in text.lower()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {(r["channel"], r["reason"], r["source"]) for r in rows} == {
        ("sms", "stop", "send"),
        ("email", "soft_bounce", "tracking"),
    }
    before = {c: {e.key: e for e in store.entries(c)} for c in ("sms", "email")}
    shared.flushdb()
    assert main(["suppression", "import", str(path)]) == 0
    assert "imported 2 entries" in capsys.readouterr().out
    after = {c: {e.key: e for e in store.entries(c)} for c in ("sms", "email")}
    assert after == before


def test_import_takes_recipients_and_is_all_or_nothing(
    store: RedisSuppressionStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"channel,recipient,reason\nsms,{A},stop\nemail,{B},spam\n")
    assert main(["suppression", "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "reason must be one of" in err and B not in err
    assert store.count("sms") == 0  # the good first row was not written either
    good = tmp_path / "good.csv"
    good.write_text(f"channel,recipient,reason\nsms,{A},stop\nemail,{B},\n")
    assert main(["suppression", "import", str(good)]) == 0
    assert "imported 2 entries" in capsys.readouterr().out
    key = HASHER.key("email", B)
    entry = store.check("email", [key])[key]
    assert (entry.reason, entry.source, entry.masked) == ("manual", "import", "j***@example.com")
    assert main(["suppression", "import", str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
