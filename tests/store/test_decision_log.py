"""The coordinator's decision log: what a restart finds (unended and remembered commits in revision
order, the last revision even past a trim), and files of the earlier layout migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from corral.records import CommitRecord, EndRecord, EpochRecord
from corral.store.decision_log import DecisionLog


def _commit(txid: int, revision: int) -> CommitRecord:
    return CommitRecord(txid, revision, "client", txid, True)


def test_a_restart_finds_unended_and_remembered_commits_in_revision_order(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    log = DecisionLog(path)
    # txids are given at a transaction's start, revisions at its commit: the orders differ.
    log.write([EpochRecord(1), _commit(2, 11), _commit(1, 12)])
    log.write([_commit(3, 13)], [EndRecord(2)])
    log.write([_commit(4, 14)])  # carries the lazy END of txid 2
    log.write([], [EndRecord(4)])  # pending: lost unless flushed
    log.close(flush=False)
    disk = DecisionLog(path).load()
    assert (disk.epoch, disk.last_revision) == (1, 14)
    assert [(c.txid, c.revision) for c in disk.unended] == [(1, 12), (3, 13), (4, 14)]
    assert [c.revision for c in disk.remembered] == [11, 12, 13, 14]


def test_the_last_revision_survives_trimming_every_decision_it_could_be_read_from(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    log = DecisionLog(path, remembered_max=10)
    for i in range(1, 41):
        log.write([_commit(i, i)], [EndRecord(i)])
    log.close()
    log = DecisionLog(path, remembered_max=10)
    disk = log.load()
    assert disk.last_revision == 40 and disk.unended == ()
    assert [c.revision for c in disk.remembered] == list(range(31, 41))
    (rows,) = log._db.execute("SELECT count(*) FROM decisions").fetchone()
    assert rows < 40  # trimmed
    # Were every decision trimmed, the revision would still come from meta.
    log._db.execute("DELETE FROM decisions")
    assert log.load().last_revision >= 30
    log.close()


def test_a_decisions_table_with_unique_revisions_is_rebuilt_without_the_index(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    DecisionLog(path).close()
    db = sqlite3.connect(path)
    db.executescript(
        """
        DROP TABLE decisions;
        CREATE TABLE decisions (txid INTEGER PRIMARY KEY, revision INTEGER NOT NULL UNIQUE,
            client_id TEXT NOT NULL, seq INTEGER NOT NULL, succeeded INTEGER NOT NULL,
            ended INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX decisions_unended ON decisions (ended, revision);
        INSERT INTO decisions VALUES (1, 5, 'c', 1, 1, 1), (2, 6, 'c', 2, 0, 0);
        """
    )
    db.close()
    log = DecisionLog(path)
    disk = log.load()
    assert disk.last_revision == 6
    assert [(c.txid, c.succeeded) for c in disk.unended] == [(2, False)]
    indexes = log._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    assert not any("decisions" in name for (name,) in indexes)
    log.close()
