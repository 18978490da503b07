"""A replica's 2PC tables: outcomes remembered in the order written, trimmed past the bound, and
files of the earlier outcomes layout migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from corral.model import Put
from corral.records import AbortedRecord, CommittedRecord, PreparedRecord
from corral.store.replica_log import ReplicaStorage


def _prepare_and_commit(storage: ReplicaStorage, txid: int) -> None:
    put = Put(f"k{txid}", b"v")
    with storage.batch() as batch:
        batch.write([PreparedRecord(txid, (put,), True, frozenset({put.key}), ("r1", "r2"))])
    with storage.batch() as batch:
        batch.write([CommittedRecord(txid, storage.revision + 1, (put,))])


def test_outcomes_are_loaded_in_the_order_written_and_trimmed_past_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    storage = ReplicaStorage(path, outcomes_max=10)
    # Written out of txid order: a refusal for an old txid comes after newer commits.
    for txid in (5, 6, 7):
        _prepare_and_commit(storage, txid)
    with storage.batch() as batch:
        batch.write([AbortedRecord(2)])
    disk = storage.load()
    assert disk.outcomes == ((5, 1), (6, 2), (7, 3), (2, None))
    assert disk.prepared == () and disk.forgotten_max_txid == 0
    for txid in range(8, 30):
        _prepare_and_commit(storage, txid)
    storage.close()
    storage = ReplicaStorage(path, outcomes_max=10)  # reopened: seqs go on from the newest
    _prepare_and_commit(storage, 30)
    disk = storage.load()
    assert [txid for txid, _ in disk.outcomes] == list(range(21, 31))
    # The oldest written were trimmed or not loaded; the largest of them bounds what is forgotten.
    assert disk.forgotten_max_txid == 20
    storage.close()


def test_an_outcomes_table_of_the_earlier_layout_is_rekeyed(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    storage = ReplicaStorage(path)
    storage.close()
    db = sqlite3.connect(path)
    db.executescript(
        """
        DROP TABLE outcomes;
        CREATE TABLE outcomes (seq INTEGER PRIMARY KEY AUTOINCREMENT, txid INTEGER NOT NULL UNIQUE,
            revision INTEGER);
        INSERT INTO outcomes (txid, revision) VALUES (9, 1), (4, NULL), (10, 2);
        """
    )
    db.close()
    storage = ReplicaStorage(path)
    assert storage.load().outcomes == ((9, 1), (4, None), (10, 2))
    _prepare_and_commit(storage, 11)  # (revision 1: the store itself is empty)
    assert storage.load().outcomes == ((9, 1), (4, None), (10, 2), (11, 1))
    (sql,) = storage.store.connection.execute("SELECT sql FROM sqlite_master WHERE name = 'outcomes'").fetchone()
    assert "AUTOINCREMENT" not in sql
    storage.close()
