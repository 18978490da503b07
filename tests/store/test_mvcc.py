"""The versioned store: revisions, history, ranges, transactions, compaction, bad input, reopening."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import Compacted, Delete, EventKind, FailedPrecondition, InvalidArgument, MVCCStore, Put
from corral.limits import Limits


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MVCCStore]:
    s = MVCCStore(tmp_path / "s.db")
    yield s
    s.close()


def test_put_get_bookkeeping(store: MVCCStore) -> None:
    assert store.revision == 0
    assert store.get("a") is None
    assert store.put("a", b"1") == 1
    assert store.put("b", b"x") == 2
    assert store.put("a", b"2") == 3
    kv = store.get("a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", 1, 3, 2)
    assert store.delete("a") == 4
    assert store.get("a") is None
    assert store.put("a", b"3") == 5
    kv = store.get("a")
    assert kv is not None
    # Re-created after a delete: new create_revision, version starts again at 1.
    assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)


def test_read_the_past(store: MVCCStore) -> None:
    store.put("k", b"v1")
    store.put("k", b"v2")
    store.delete("k")
    store.put("k", b"v4")
    got = [store.get("k", revision=r) for r in range(1, 5)]
    assert [kv.value if kv else None for kv in got] == [b"v1", b"v2", None, b"v4"]
    with pytest.raises(InvalidArgument, match="in the future"):
        store.get("k", revision=5)


def test_delete_missing_key_still_takes_a_revision(store: MVCCStore) -> None:
    assert store.delete("nothing") == 1
    assert store.changes(1) == []
    assert store.put("x", b"1") == 2


def test_range_by_prefix_now_and_then(store: MVCCStore) -> None:
    store.put("/a/1", b"1")
    store.put("/a/2", b"2")
    store.put("/b/1", b"3")
    store.put("/a/3", b"4")
    store.delete("/a/1")
    assert [kv.key for kv in store.range("/a/")] == ["/a/2", "/a/3"]
    assert [kv.key for kv in store.range("/a/", revision=3)] == ["/a/1", "/a/2"]
    assert [kv.key for kv in store.range("")] == ["/a/2", "/a/3", "/b/1"]
    assert [kv.key for kv in store.range("/a/", limit=1)] == ["/a/2"]
    assert store.range("/zz") == []


def test_range_prefix_with_non_ascii_and_high_bytes(store: MVCCStore) -> None:
    store.put("é/1", b"x")
    store.put("é/2", b"y")
    store.put("ê", b"z")
    store.put("\U0010ffff", b"max")
    assert [kv.key for kv in store.range("é/")] == ["é/1", "é/2"]
    assert [kv.key for kv in store.range("\U0010ffff")] == ["\U0010ffff"]


def test_txn_is_atomic_at_one_revision(store: MVCCStore) -> None:
    store.put("b", b"old")
    applied = store.txn([Put("a", b"1"), Delete("b"), Put("c", b"3")])
    assert applied.revision == 2
    assert applied.prev[1] is not None and applied.prev[1].value == b"old"
    assert applied.prev[0] is None
    a, c = store.get("a"), store.get("c")
    assert a and c and a.mod_revision == c.mod_revision == 2
    # A bad write anywhere in the transaction rejects all of it.
    with pytest.raises(InvalidArgument, match="appears twice"):
        store.txn([Put("x", b"1"), Put("x", b"2")])
    with pytest.raises(InvalidArgument, match=r"limit is 1\.0 MiB"):
        store.txn([Put("y", b"1"), Put("z", b"x" * (1024 * 1024 + 1))])
    assert store.revision == 2 and store.get("y") is None


def test_a_rolled_back_apply_leaves_no_trace_in_later_bookkeeping(store: MVCCStore) -> None:
    """The store keeps the newest state of written keys in memory; a rollback must forget it."""
    store.put("a", b"1")
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.apply([Put("a", b"2"), Put("new", b"x")])
        kv = tx.get("a")
        assert kv is not None and kv.version == 2
        raise RuntimeError("boom")
    assert store.put("a", b"3") == 2
    assert store.put("new", b"y") == 3
    a, new = store.get("a"), store.get("new")
    assert a is not None and (a.value, a.create_revision, a.version) == (b"3", 1, 2)
    assert new is not None and (new.create_revision, new.version) == (3, 1)


def test_bookkeeping_holds_past_the_in_memory_bound_and_for_large_values(store: MVCCStore) -> None:
    from corral.store.mvcc import HEAD_CACHE_MAX, HEAD_CACHE_VALUE_MAX

    big = b"v" * (HEAD_CACHE_VALUE_MAX + 1)
    with store.transaction() as tx:
        for i in range(HEAD_CACHE_MAX + 10):
            tx.apply([Put(f"k{i}", big if i % 2 else b"v")])
    with store.transaction() as tx:
        for i in range(HEAD_CACHE_MAX + 10):
            tx.apply([Put(f"k{i}", b"w")])
    store.delete("k1")
    for key, version, create in (("k0", 2, 1), ("k7", 2, 8), (f"k{HEAD_CACHE_MAX + 9}", 2, HEAD_CACHE_MAX + 10)):
        kv = store.get(key)
        assert kv is not None and (kv.value, kv.version, kv.create_revision) == (b"w", version, create)
    assert store.get("k1") is None
    assert store.put("k1", b"again") == store.revision
    again = store.get("k1")
    assert again is not None and (again.version, again.create_revision) == (1, store.revision)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("", b"v", "key is empty"),
        ("a" * 1025, b"v", "1025 bytes; the limit is 1024"),
        ("é" * 513, b"v", "1026 bytes"),
        ("a\x00b", b"v", "NUL"),
        (b"bytes-key", b"v", "key must be a str, got bytes"),
        (7, b"v", "key must be a str, got int"),
        ("k", "text", "value must be bytes, got str; encode text first"),
        ("k", 42, "value must be bytes, got int"),
        ("k", None, "value must be bytes, got NoneType"),
        ("k", b"x" * (1024 * 1024 + 1), "value is 1.0 MiB; the limit is 1.0 MiB"),
    ],
)
def test_bad_input_is_rejected_and_nothing_is_written(
    store: MVCCStore, key: object, value: object, message: str
) -> None:
    store.put("keep", b"me")
    with pytest.raises(InvalidArgument, match=message):
        store.put(key, value)  # type: ignore[arg-type]  # deliberately bad types: checks the store's checks
    assert store.revision == 1
    assert [kv.key for kv in store.range("")] == ["keep"]


def test_key_of_exactly_the_limit_is_fine(store: MVCCStore) -> None:
    store.put("k" * 1024, b"x" * (1024 * 1024))
    kv = store.get("k" * 1024)
    assert kv is not None and len(kv.value) == 1024 * 1024


def test_configurable_value_limit(tmp_path: Path) -> None:
    with MVCCStore(tmp_path / "small.db", limits=Limits(value_bytes_max=10)) as s:
        s.put("k", b"x" * 10)
        with pytest.raises(InvalidArgument, match="limit is 10 B"):
            s.put("k", b"x" * 11)


def test_compaction(store: MVCCStore) -> None:
    store.put("a", b"1")  # 1
    store.put("a", b"2")  # 2
    store.put("b", b"1")  # 3
    store.delete("b")  # 4
    store.put("a", b"3")  # 5
    store.compact(4)
    assert store.compact_revision == 4
    with pytest.raises(Compacted, match="oldest readable revision is 4") as info:
        store.get("a", revision=3)
    assert info.value.compact_revision == 4
    with pytest.raises(Compacted):
        store.range("", revision=1)
    a4 = store.get("a", revision=4)
    assert a4 is not None and a4.value == b"2"
    assert store.get("b", revision=4) is None
    assert [e.kv.mod_revision for e in store.changes(4)] == [4, 5]
    with pytest.raises(Compacted, match="start at 4"):
        store.changes(3)
    with pytest.raises(Compacted):
        store.compact(2)
    with pytest.raises(InvalidArgument, match="cannot compact at revision 9"):
        store.compact(9)
    # Only history is dropped: the live state is untouched.
    rows = store._db.execute("SELECT count(*) FROM kv_log").fetchone()[0]
    assert rows == 3  # a@2 (visible at 4), b's tombstone at 4, a@5
    # Compacting past the tombstone drops it, and a@2 is superseded: only a@5 is left.
    store.compact(5)
    assert store._db.execute("SELECT mod_revision, key FROM kv_log").fetchall() == [(5, b"a")]
    assert [kv.key for kv in store.range("")] == ["a"] and store.get("b") is None


def test_changes_carry_previous_values(store: MVCCStore) -> None:
    store.put("/w/a", b"1")
    store.put("/x", b"skip")
    store.put("/w/a", b"2")
    store.delete("/w/a")
    events = store.changes(1, prefix="/w/")
    assert [(e.kind, e.kv.mod_revision) for e in events] == [
        (EventKind.PUT, 1),
        (EventKind.PUT, 3),
        (EventKind.DELETE, 4),
    ]
    assert events[0].prev_kv is None
    assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
    assert events[2].prev_kv is not None and events[2].prev_kv.value == b"2"


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with MVCCStore(path) as s:
        s.put("a", b"1")
        s.txn([Put("b", b"2"), Put("c", b"3")])
        s.delete("a")
        s.compact(2)
        digest = s.digest()
    with MVCCStore(path) as s:
        assert (s.revision, s.compact_revision, s.digest()) == (3, 2, digest)
        assert s.get("a") is None
        b = s.get("b", revision=2)
        assert b is not None and b.value == b"2"


def test_a_file_from_the_key_ordered_layout_is_migrated(tmp_path: Path) -> None:
    """Files written before rows were ordered by revision held them in table `kv`, keyed by key."""
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE kv (key BLOB NOT NULL, mod_revision INTEGER NOT NULL, create_revision INTEGER NOT NULL,
            version INTEGER NOT NULL, value BLOB NOT NULL, lease INTEGER NOT NULL,
            PRIMARY KEY (key, mod_revision)) WITHOUT ROWID;
        CREATE INDEX kv_by_revision ON kv (mod_revision);
        CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('revision', 3), ('compact_revision', 0);
        INSERT INTO kv VALUES (x'61', 1, 1, 1, x'31', 0), (x'61', 3, 0, 0, x'', 0), (x'62', 2, 2, 1, x'32', 5);
        """
    )
    db.close()
    with MVCCStore(path) as s:
        assert s.revision == 3
        assert s.get("a") is None and s.get("a", revision=2) is not None
        assert [(kv.key, kv.value, kv.lease) for kv in s.range("")] == [("b", b"2", 5)]
        assert s.keys_with_lease(5) == ["b"]
        assert s.put("c", b"3") == 4
        tables = {name for (name,) in s._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "kv" not in tables
    with MVCCStore(path) as s:
        assert [kv.key for kv in s.range("")] == ["b", "c"]


def test_second_process_cannot_open_the_same_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "locked.db"
    with MVCCStore(path) as s:
        s.put("a", b"1")
        code = (
            "import sys\nfrom corral import MVCCStore, FailedPrecondition\n"
            "try:\n    MVCCStore(sys.argv[1])\nexcept FailedPrecondition as e:\n"
            "    print(e.message); sys.exit(3)\n"
        )
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 3, out.stderr
        assert "in use by another process" in out.stdout
    assert FailedPrecondition.http_status == 409


def test_digest_depends_on_state_only(tmp_path: Path) -> None:
    with MVCCStore(tmp_path / "1.db") as one, MVCCStore(tmp_path / "2.db") as two:
        one.put("a", b"1")
        one.put("b", b"2")
        two.txn([Put("a", b"1")])
        two.put("b", b"2")
        assert one.digest() == two.digest()
        two.put("b", b"3")
        assert one.digest() != two.digest()
