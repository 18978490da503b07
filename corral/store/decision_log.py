"""The coordinator's decision log: epochs, commit decisions, and which of them every replica applied.

Presumed abort: only commits are logged (forced before anyone hears of them); an abort leaves no
trace, and "no record" means aborted. END marks are written lazily (`end`) and ride on the next
forced write or `flush`. Ended decisions beyond the client-retry window are trimmed; the last
assigned revision is written to `meta` before a trim, so revisions never go back (until then the
newest decision tells it).

`decisions` has no index but its txid key: a commit then dirties one leaf, where a unique revision
and an (ended, revision) index dirtied three, plus `meta` (5.6 WAL frames per commit of 4, 18 µs of
CPU per decision). The queries that sort by revision run at open, or scan at a trim, every
`remembered_max / 10` writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from corral.errors import Internal
from corral.limits import CLIENT_OUTCOMES_MAX
from corral.records import (
    CommitRecord,
    CoordinatorDisk,
    EndRecord,
    EpochRecord,
    LeaseEndRecord,
    LeaseRecord,
    Record,
    ViewRecord,
)
from corral.store.mvcc import migrate_table, open_connection

_DECISIONS_TABLE = """
CREATE TABLE IF NOT EXISTS decisions (
    txid INTEGER PRIMARY KEY,
    revision INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    succeeded INTEGER NOT NULL,
    ended INTEGER NOT NULL DEFAULT 0
)"""
_SCHEMA = f"""{_DECISIONS_TABLE};
DROP INDEX IF EXISTS decisions_unended;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('epoch', 0), ('last_revision', 0);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,      -- a live lease (granted, not ended)
    ttl_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS view (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    number INTEGER NOT NULL,
    members TEXT NOT NULL        -- replica names, comma-separated, in configuration order
);
"""

_COLUMNS = "txid, revision, client_id, seq, succeeded"


def _record(row: tuple[int, int, str, int, int]) -> CommitRecord:
    txid, revision, client_id, seq, succeeded = row
    return CommitRecord(txid, revision, client_id, seq, bool(succeeded))


class DecisionLog:
    """See the module docstring."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", remembered_max: int = CLIENT_OUTCOMES_MAX):
        self.path = Path(path)
        self._db: sqlite3.Connection = open_connection(self.path, synchronous=synchronous)
        # The earlier layout: a unique revision column. Rebuilt without that index.
        migrate_table(
            self._db,
            "decisions",
            when=lambda sql: "UNIQUE" in sql,
            steps=[
                "DROP INDEX IF EXISTS decisions_unended",
                "ALTER TABLE decisions RENAME TO decisions_unique",
                _DECISIONS_TABLE,
                f"INSERT INTO decisions ({_COLUMNS}, ended) SELECT {_COLUMNS}, ended FROM decisions_unique",
                "DROP TABLE decisions_unique",
            ],
        )
        self._db.executescript(_SCHEMA)
        self._remembered_max = remembered_max
        self._lazy: list[EndRecord] = []
        self._writes_since_trim = 0

    def close(self, *, flush: bool = True) -> None:
        """Close the file; `flush=False` drops pending END marks, as a crash would (simulator)."""
        if flush:
            self.flush()
        self._lazy.clear()
        self._db.close()

    def load(self) -> CoordinatorDisk:
        meta = dict(self._db.execute("SELECT name, value FROM meta"))
        (newest,) = self._db.execute("SELECT max(revision) FROM decisions").fetchone()
        unended = tuple(
            _record(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM decisions WHERE ended = 0 ORDER BY revision")
        )
        remembered = tuple(
            _record(r)
            for r in self._db.execute(
                f"SELECT {_COLUMNS} FROM decisions ORDER BY revision DESC LIMIT ?", (self._remembered_max,)
            )
        )[::-1]
        row = self._db.execute("SELECT number, members FROM view WHERE id = 1").fetchone()
        view, members = (int(row[0]), tuple(m for m in row[1].split(",") if m)) if row else (0, ())
        leases = tuple((int(i), int(t)) for i, t in self._db.execute("SELECT id, ttl_ms FROM leases ORDER BY id"))
        return CoordinatorDisk(
            int(meta["epoch"]),
            max(int(meta["last_revision"]), int(newest or 0)),
            unended,
            remembered,
            view,
            members,
            leases,
        )

    def write(self, forced: Sequence[Record], lazy: Sequence[Record] = ()) -> None:
        """Make `forced` durable now (with any lazy records pending); keep `lazy` for later."""
        for rec in lazy:
            if not isinstance(rec, EndRecord):
                raise Internal(f"only END records may be written lazily, not {type(rec).__name__}")
            self._lazy.append(rec)
        if not forced:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            commits = [
                (rec.txid, rec.revision, rec.client_id, rec.seq, int(rec.succeeded))
                for rec in forced
                if isinstance(rec, CommitRecord)
            ]
            if commits:
                db.executemany(f"INSERT INTO decisions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)", commits)
            for rec in forced:
                if isinstance(rec, CommitRecord):
                    continue  # written above, together
                if isinstance(rec, EpochRecord):
                    db.execute("UPDATE meta SET value = ? WHERE name = 'epoch'", (rec.epoch,))
                elif isinstance(rec, LeaseRecord):
                    db.execute("INSERT OR REPLACE INTO leases (id, ttl_ms) VALUES (?, ?)", (rec.lease_id, rec.ttl_ms))
                elif isinstance(rec, LeaseEndRecord):
                    db.execute("DELETE FROM leases WHERE id = ?", (rec.lease_id,))
                elif isinstance(rec, ViewRecord):
                    db.execute(
                        "INSERT OR REPLACE INTO view (id, number, members) VALUES (1, ?, ?)",
                        (rec.view, ",".join(rec.members)),
                    )
                elif isinstance(rec, EndRecord):
                    self._lazy.append(rec)
                else:
                    raise Internal(f"the coordinator cannot persist {type(rec).__name__}")
            self._write_ends()
            self._writes_since_trim += len(forced)
            if self._writes_since_trim > self._remembered_max // 10:
                self._trim()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def flush(self) -> None:
        """Write pending END marks (one fsync); the service calls this when it is idle."""
        if not self._lazy:
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._write_ends()
        self._db.execute("COMMIT")

    @property
    def pending_ends(self) -> int:
        return len(self._lazy)

    def _write_ends(self) -> None:
        if self._lazy:
            self._db.executemany("UPDATE decisions SET ended = 1 WHERE txid = ?", [(r.txid,) for r in self._lazy])
            self._lazy.clear()

    def _trim(self) -> None:
        self._writes_since_trim = 0
        self._db.execute(
            "UPDATE meta SET value = max(value, (SELECT ifnull(max(revision), 0) FROM decisions)) "
            "WHERE name = 'last_revision'"
        )
        self._db.execute(
            "DELETE FROM decisions WHERE ended = 1 AND revision <= "
            "(SELECT value FROM meta WHERE name = 'last_revision') - ?",
            (self._remembered_max,),
        )
