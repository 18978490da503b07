"""A replica's disk: the MVCC store and the 2PC participant's tables, in one SQLite file.

One file, so that applying a commit and forgetting its PREPARED record are one SQLite transaction:
a crash between the two cannot leave a transaction both applied and in doubt. A whole batch of
records (many prepares and commits) is one transaction and one fsync: group commit.

Tables besides the store's: `prepared` (voted yes, no decision yet) and `outcomes` (recent decisions,
txid -> revision or NULL for aborted/refused, so peers' termination queries can be answered). Old
outcomes are trimmed; the largest trimmed txid is kept as `forgotten_max_txid`. "Old" is by `seq`, the
order outcomes were written in, numbered here; `outcomes` is keyed by txid alone, so a batch of
outcomes dirties one B-tree leaf (an AUTOINCREMENT key with a unique txid index dirtied three pages:
3.3 WAL frames per commit of 4, against 1.0).

`snapshot_staging` holds the pages of a member's state while a replica that missed compacted history
receives them; the last page replaces the store with them in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from corral.errors import Internal
from corral.limits import DEFAULT_LIMITS, OUTCOMES_REMEMBERED_MAX, Limits
from corral.model import Delete, EventKind, KeyValue, Put, Write
from corral.records import (
    AbortedRecord,
    CaughtUpRecord,
    CommittedRecord,
    DiscardedRecord,
    ForgottenRecord,
    ParticipantDisk,
    PreparedRecord,
    Record,
    SnapshotPageRecord,
)
from corral.store.codec import decode_keys, decode_writes, encode_keys, encode_writes
from corral.store.mvcc import KV_COLUMNS_SQL, MVCCStore, StoreTxn, migrate_table

_OUTCOMES_TABLE = """
CREATE TABLE IF NOT EXISTS outcomes (
    txid INTEGER PRIMARY KEY,
    revision INTEGER,             -- NULL: aborted, or refused before any prepare arrived
    seq INTEGER NOT NULL          -- the order outcomes were written in
)"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS prepared (
    txid INTEGER PRIMARY KEY,
    succeeded INTEGER NOT NULL,
    keys BLOB NOT NULL,
    writes BLOB NOT NULL,
    participants BLOB NOT NULL DEFAULT x''
);
{_OUTCOMES_TABLE};
INSERT OR IGNORE INTO meta (name, value) VALUES ('forgotten_max_txid', 0);
CREATE TABLE IF NOT EXISTS snapshot_staging ({KV_COLUMNS_SQL}, PRIMARY KEY (key)) WITHOUT ROWID;
"""


class ReplicaBatch:
    """Records written inside `ReplicaStorage.batch()`; durable together when the batch ends.

    Applies go to the store at once (later reads in the batch must see them); rows of the 2PC tables,
    which nothing reads during a batch, are gathered and written with one statement per table."""

    def __init__(self, storage: ReplicaStorage, tx: StoreTxn) -> None:
        self._storage = storage
        self._tx = tx
        self._prepared: list[tuple[int, int, bytes, bytes, bytes]] = []
        self._settled: list[tuple[int]] = []  # txids whose prepared rows go
        self._outcomes: list[tuple[int, int | None, int]] = []

    def read(self, keys: Sequence[str]) -> dict[str, KeyValue | None]:
        """Current state of `keys`, including commits applied earlier in this batch."""
        return {key: self._tx.get(key) for key in keys}

    def lease_keys(self, leases: Sequence[int]) -> dict[int, list[str]]:
        """The live keys attached to each lease, including commits applied earlier in this batch."""
        return {lease: self._tx.keys_with_lease(lease) for lease in leases}

    def write(self, records: Sequence[Record]) -> None:
        for rec in records:
            if isinstance(rec, PreparedRecord):
                self._prepared.append(
                    (
                        rec.txid,
                        int(rec.succeeded),
                        encode_keys(rec.keys),
                        encode_writes(rec.writes),
                        encode_keys(rec.participants),
                    )
                )
            elif isinstance(rec, CommittedRecord):
                if rec.revision != self._tx.revision + 1:
                    raise Internal(f"commit at revision {rec.revision}, but the replica is at {self._tx.revision}")
                self._tx.apply(rec.writes, revision=rec.revision)
                self._settled.append((rec.txid,))
                self._outcomes.append((rec.txid, rec.revision, self._storage.next_seq()))
            elif isinstance(rec, AbortedRecord):
                self._settled.append((rec.txid,))
                self._outcomes.append((rec.txid, None, self._storage.next_seq()))
            elif isinstance(rec, DiscardedRecord):
                self._settled.append((rec.txid,))
            elif isinstance(rec, CaughtUpRecord):
                for revision, writes in rec.revisions:
                    if revision > self._tx.revision:
                        self._tx.apply(writes, revision=revision)
                if rec.through_revision > self._tx.revision:
                    self._tx.advance_to(rec.through_revision)
            elif isinstance(rec, SnapshotPageRecord):
                db = self._tx.connection
                if rec.first:
                    db.execute("DELETE FROM snapshot_staging")
                db.executemany(
                    "INSERT OR REPLACE INTO snapshot_staging (key, mod_revision, create_revision, version, value, "
                    "lease) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (kv.key.encode("utf-8"), kv.mod_revision, kv.create_revision, kv.version, kv.value, kv.lease)
                        for kv in rec.kvs
                    ],
                )
                if rec.last:
                    self._tx.replace_with("snapshot_staging", rec.revision)
                    db.execute("DELETE FROM snapshot_staging")
            elif isinstance(rec, ForgottenRecord):
                self.flush()  # its deletes must follow the outcomes written before it
                db = self._tx.connection
                db.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'forgotten_max_txid'", (rec.txid,))
                if rec.drop_outcomes:
                    db.execute("DELETE FROM outcomes WHERE txid <= ?", (rec.txid,))
            else:
                raise Internal(f"a replica cannot persist {type(rec).__name__}")
            self._storage._writes_since_trim += 1

    def flush(self) -> None:
        """Write the gathered 2PC rows, in the order they can depend on: prepare, settle, outcome."""
        db = self._tx.connection
        if self._prepared:
            db.executemany(
                "INSERT INTO prepared (txid, succeeded, keys, writes, participants) VALUES (?, ?, ?, ?, ?)",
                self._prepared,
            )
            self._prepared.clear()
        if self._settled:
            db.executemany("DELETE FROM prepared WHERE txid = ?", self._settled)
            self._settled.clear()
        if self._outcomes:
            db.executemany("INSERT OR REPLACE INTO outcomes (txid, revision, seq) VALUES (?, ?, ?)", self._outcomes)
            self._outcomes.clear()


class ReplicaStorage:
    """See the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        limits: Limits = DEFAULT_LIMITS,
        synchronous: str = "FULL",
        outcomes_max: int = OUTCOMES_REMEMBERED_MAX,
    ) -> None:
        self.store = MVCCStore(path, limits=limits, synchronous=synchronous)
        db = self.store.connection
        # The earlier layout: an AUTOINCREMENT seq key and a unique txid. Rekeyed by txid, seqs kept.
        migrate_table(
            db,
            "outcomes",
            when=lambda sql: "AUTOINCREMENT" in sql,
            steps=[
                "ALTER TABLE outcomes RENAME TO outcomes_by_seq",
                _OUTCOMES_TABLE,
                "INSERT INTO outcomes (txid, revision, seq) SELECT txid, revision, seq FROM outcomes_by_seq",
                "DROP TABLE outcomes_by_seq",
            ],
        )
        db.executescript(_SCHEMA)
        self._outcomes_max = outcomes_max
        self._writes_since_trim = 0
        (newest,) = db.execute("SELECT max(seq) FROM outcomes").fetchone()
        self._seq = int(newest or 0)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def close(self) -> None:
        self.store.close()

    @property
    def revision(self) -> int:
        return self.store.revision

    def fetch(
        self, from_revision: int, *, revisions_max: int, bytes_max: int
    ) -> tuple[tuple[tuple[int, tuple[Write, ...]], ...], int, bool]:
        """Committed history for a replica catching up: (revisions with their writes, the revision the
        answer is complete through, whether that is this store's newest). Bounded in count and bytes;
        cut only at a revision boundary.

        Raises:
            Compacted: the history from `from_revision` is gone.
        """
        store = self.store
        start = max(1, from_revision)
        end = min(store.revision, start + revisions_max - 1)
        if start > end:
            return (), store.revision, True
        out: list[tuple[int, list[Write]]] = []
        size = 0
        for event in store.changes(start, end_revision=end):
            rev = event.kv.mod_revision
            if not out or out[-1][0] != rev:
                if size > bytes_max:
                    end = out[-1][0]
                    break
                out.append((rev, []))
            kv = event.kv
            out[-1][1].append(Put(kv.key, kv.value, kv.lease) if event.kind is EventKind.PUT else Delete(kv.key))
            size += len(kv.key) + len(kv.value)
        return tuple((r, tuple(ws)) for r, ws in out), end, end == store.revision

    def load(self) -> ParticipantDisk:
        """The participant's start state: applied revision, prepared transactions, recent outcomes."""
        db = self.store.connection
        prepared = tuple(
            PreparedRecord(
                txid, decode_writes(writes), bool(succeeded), decode_keys(keys), tuple(sorted(decode_keys(parts)))
            )
            for txid, succeeded, keys, writes, parts in db.execute(
                "SELECT txid, succeeded, keys, writes, participants FROM prepared ORDER BY txid"
            )
        )
        outcomes = tuple(
            (int(txid), None if revision is None else int(revision))
            for txid, revision in db.execute(
                "SELECT txid, revision FROM outcomes ORDER BY seq DESC LIMIT ?", (self._outcomes_max,)
            )
        )[::-1]
        (forgotten,) = db.execute("SELECT value FROM meta WHERE name = 'forgotten_max_txid'").fetchone()
        # Outcomes written since the last trim may exceed the bound; those not loaded are forgotten too.
        # Without this the core would take a txid it applied for one it never saw, and refuse it to a peer
        # still in doubt about it: two outcomes for one transaction.
        (dropped,) = db.execute(
            "SELECT max(txid) FROM (SELECT txid FROM outcomes ORDER BY seq DESC LIMIT -1 OFFSET ?)",
            (self._outcomes_max,),
        ).fetchone()
        return ParticipantDisk(self.store.revision, prepared, outcomes, max(int(forgotten), int(dropped or 0)))

    @contextmanager
    def batch(self) -> Iterator[ReplicaBatch]:
        """One durable group of records: everything written inside is fsynced once, at the end."""
        with self.store.transaction() as tx:
            batch = ReplicaBatch(self, tx)
            yield batch
            batch.flush()
            if self._writes_since_trim >= self._outcomes_max // 10 + 1:
                self._trim(tx)

    def _trim(self, tx: StoreTxn) -> None:
        """Forget the oldest outcomes beyond the bound, remembering the largest forgotten txid."""
        db = tx.connection
        self._writes_since_trim = 0
        cutoff = self._seq - self._outcomes_max  # the newest seq given out (a rolled-back one too)
        if cutoff <= 0:
            return
        (oldest_max,) = db.execute("SELECT max(txid) FROM outcomes WHERE seq <= ?", (cutoff,)).fetchone()
        if oldest_max is None:
            return
        db.execute(
            "UPDATE meta SET value = max(value, ?) WHERE name = 'forgotten_max_txid'",
            (int(oldest_max),),
        )
        db.execute("DELETE FROM outcomes WHERE seq <= ?", (cutoff,))
