"""A replica catching up past a member's compaction takes the member's whole state, page by page."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import Compacted
from corral.model import Delete, Put
from corral.records import SnapshotPageRecord
from corral.store.replica_log import ReplicaStorage


def _member(path: Path) -> ReplicaStorage:
    member = ReplicaStorage(path)
    for i in range(25):
        member.store.put(f"k/{i:02d}", f"v{i}".encode(), lease=7 if i % 5 == 0 else 0)
    for i in range(0, 25, 3):
        member.store.put(f"k/{i:02d}", b"again")  # versions above 1
    for i in range(1, 25, 4):
        member.store.delete(f"k/{i:02d}")  # tombstones: absent from the state
    member.store.compact(member.revision)
    return member


def test_pages_of_the_state_installed_elsewhere_give_the_same_store(tmp_path: Path) -> None:
    member = _member(tmp_path / "member.db")
    joiner = ReplicaStorage(tmp_path / "joiner.db")
    joiner.store.put("stale/only-here", b"x")  # the snapshot replaces everything
    revision, after, pages, more = 0, "", [], True
    while more:
        revision, kvs, more = member.store.snapshot_page(revision, after, keys_max=4, bytes_max=1 << 20)
        pages.append(kvs)
        after = kvs[-1].key if kvs else after
    assert len(pages) == 5 and all(len(p) == 4 for p in pages[:-1])  # 19 live keys, 4 a page
    keys = [kv.key for page in pages for kv in page]
    assert keys == sorted(keys) and len(set(keys)) == 19
    for i, kvs in enumerate(pages):
        with joiner.batch() as batch:
            batch.write([SnapshotPageRecord(revision, tuple(kvs), i == 0, i == len(pages) - 1)])
    assert joiner.revision == member.revision == revision
    assert joiner.store.digest() == member.store.digest()
    assert joiner.store.compact_revision == revision
    with pytest.raises(Compacted):
        joiner.store.get("k/00", revision=revision - 1)
    joiner.close()
    reopened = ReplicaStorage(tmp_path / "joiner.db")  # revision and compaction point are durable
    assert (reopened.revision, reopened.store.compact_revision) == (revision, revision)
    assert reopened.store.digest() == member.store.digest()
    kv = reopened.store.get("k/03")
    assert kv is not None and kv.version == 2
    assert reopened.store.get("k/01") is None and reopened.store.get("stale/only-here") is None


def test_an_abandoned_snapshot_leaves_nothing_behind(tmp_path: Path) -> None:
    """Pages staged from a snapshot given up are cleared by the next one's first page."""
    member = _member(tmp_path / "member.db")
    joiner = ReplicaStorage(tmp_path / "joiner.db")
    revision, kvs, _ = member.store.snapshot_page(0, "", keys_max=3, bytes_max=1 << 20)
    with joiner.batch() as batch:
        batch.write([SnapshotPageRecord(revision, tuple(kvs), True, False)])
    member.store.put("k/new", b"after")
    revision, kvs, more = member.store.snapshot_page(0, "", keys_max=100, bytes_max=1 << 20)
    assert not more
    with joiner.batch() as batch:
        batch.write([SnapshotPageRecord(revision, tuple(kvs), True, True)])
    assert joiner.store.digest() == member.store.digest()


def test_a_page_is_bounded_in_bytes(tmp_path: Path) -> None:
    store = ReplicaStorage(tmp_path / "s.db").store
    for i in range(10):
        store.put(f"big/{i}", b"x" * 1000)
    _, kvs, more = store.snapshot_page(0, "", keys_max=100, bytes_max=2500)
    assert more and 2 <= len(kvs) <= 4


def test_history_served_from_a_snapshot_starts_after_its_revision(tmp_path: Path) -> None:
    """A snapshot holds the state at its revision, not that revision's changes: a key deleted there has
    no row. So a replica that installed one serves history (catch-up fetches, watches) only from the
    next revision. Fetched from the snapshot's own revision, it answered "no changes", and the replica
    fetching skipped the delete and kept a key its peers had not (seed 7122095)."""
    member = ReplicaStorage(tmp_path / "member.db")
    member.store.put("gone", b"1")
    member.store.put("kept", b"2")
    deleted_at = member.store.delete("gone")  # the snapshot is taken at this revision
    assert member.fetch(deleted_at, revisions_max=10, bytes_max=1 << 20)[0] == ((deleted_at, (Delete("gone"),)),)
    revision, kvs, more = member.store.snapshot_page(0, "", keys_max=100, bytes_max=1 << 20)
    assert (revision, more, [kv.key for kv in kvs]) == (deleted_at, False, ["kept"])
    joiner = ReplicaStorage(tmp_path / "joiner.db")
    with joiner.batch() as batch:
        batch.write([SnapshotPageRecord(revision, tuple(kvs), True, True)])
    with pytest.raises(Compacted) as refused:
        joiner.fetch(revision, revisions_max=10, bytes_max=1 << 20)
    assert refused.value.compact_revision == revision + 1  # where to start instead
    with pytest.raises(Compacted):
        joiner.store.changes(revision)
    assert joiner.store.get("kept", revision=revision) is not None  # reads at the revision itself are whole
    later = joiner.store.put("new", b"3")
    assert joiner.fetch(later, revisions_max=10, bytes_max=1 << 20)[0] == ((later, (Put("new", b"3"),)),)
    joiner.close()
    reopened = ReplicaStorage(tmp_path / "joiner.db")
    assert reopened.store.history_from == revision + 1  # durable
    reopened.store.compact(later)
    assert reopened.store.history_from == later
