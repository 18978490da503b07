"""A durable multi-version key/value store on one SQLite file.

Every committed write transaction gets the next *revision*; each of its writes is a row holding the
key's value as of that revision, so any past state can be read back until it is compacted. A delete
is a *tombstone* row (version 0). A key's newest row at or below revision r is its state at r.

Rows are ordered on disk by revision (a rowid table keyed by `revision << 16 | rank by key`), so a
batch of writes appends to one end of one B-tree, and an in-memory `KeyIndex` (rebuilt when the store
opens) finds a key's row at a revision and lists keys in order: etcd's layout. Ordered by key, every
write of a batch dirtied its own leaf; a WITHOUT ROWID table, even appended in order, split its leaves
half-full (measured: 3.9 WAL frames per commit of 4 puts, against 1.7 for the rowid table).

The `meta` revision is written only when the newest row does not tell it (a transaction that wrote
no row): at open the revision is the larger of the two, which spares a page per commit.

Durability: WAL journal with `synchronous=FULL`, so a transaction is on disk (fsynced) before
`apply` returns. One `transaction()` may hold several applies and other tables' rows (the replica's
2PC log lives in the same file), and all of them share one fsync: the basis of group commit.

Compaction at r removes history that no read at a revision >= r can see: superseded rows below r
and tombstones below r. Rows *at* r are all kept, so changes can still be replayed from r.

The store is used from one thread. It holds an exclusive lock on its file: a second process opening
the same file gets a clear error instead of two writers corrupting each other's view.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from corral.errors import Compacted, FailedPrecondition, Internal, InvalidArgument
from corral.frozen import frozen
from corral.limits import DEFAULT_LIMITS, Limits
from corral.model import (
    Delete,
    Event,
    EventKind,
    KeyValue,
    PreparedWrite,
    Put,
    PutSequential,
    Write,
    check_value_size,
    prefix_end,
    validate_key,
    validate_prefix,
    validate_revision,
)
from corral.store.key_index import ROWS_PER_REVISION_MAX, SUB_BITS, KeyIndex, revision_of, row_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv_log (
    id INTEGER PRIMARY KEY,            -- mod_revision << 16 | the row's rank by key in its revision
    key BLOB NOT NULL,
    mod_revision INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,          -- 0 marks a tombstone (the key was deleted at mod_revision)
    value BLOB NOT NULL,
    lease INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compact_revision', 0), ('history_from', 0);
"""

_COLUMNS = "key, mod_revision, create_revision, version, value, lease"
# The kv table's shape, for tables that stage rows for it (a snapshot being received).
KV_COLUMNS_SQL = """
    key BLOB NOT NULL,
    mod_revision INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    value BLOB NOT NULL,
    lease INTEGER NOT NULL"""
_Row = tuple[bytes, int, int, int, bytes, int]
# Rows fetched by id in one statement, at most this many (SQLite bounds the bound parameters).
_FETCH_CHUNK = 500
# A table with the store's columns, ranked into row ids (a snapshot's rows, an old layout's rows).
_ROWS_WITH_IDS = (
    f"SELECT (mod_revision << {SUB_BITS}) | (row_number() OVER (PARTITION BY mod_revision ORDER BY key) - 1), "
    f"{_COLUMNS} FROM {{}}"
)


@frozen
class Applied:
    """What one applied transaction did: its revision and each write's previous state."""

    revision: int
    prev: tuple[KeyValue | None, ...]


# The newest state of recently written keys, kept by the store so an apply need not look each key
# up (a SELECT per write was ~6% of a replica's CPU). Bounded: cleared when full; large values are
# not kept (their keys are looked up again).
HEAD_CACHE_MAX = 16_384
HEAD_CACHE_VALUE_MAX = 1024


def _kv(row: _Row) -> KeyValue:
    key, mod_revision, create_revision, version, value, lease = row
    return KeyValue(key.decode("utf-8"), value, create_revision, mod_revision, version, lease)


def open_connection(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """One SQLite connection configured the Corral way (WAL, fsync on commit, exclusive).

    Raises:
        FailedPrecondition: another process holds the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        # Take the exclusive lock now, so a second opener fails here and not on its first write.
        db.execute("BEGIN IMMEDIATE")
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        db.close()
        if "locked" in str(exc):
            raise FailedPrecondition(
                f"store file {path} is in use by another process; stop it or use another data dir",
                path=str(path),
            ) from None
        raise
    return db


class StoreTxn:
    """Writes made inside `MVCCStore.transaction()`; committed together with one fsync."""

    def __init__(self, store: MVCCStore) -> None:
        self._store = store
        self.revision = store.revision
        self.connection = store._db
        self.compact_revision = store.compact_revision
        self.history_from = store.history_from
        self.rows_revision = 0  # the newest revision this transaction wrote rows at

    def apply(self, writes: Sequence[PreparedWrite], *, revision: int | None = None) -> Applied:
        """Apply `writes` atomically at `revision` (default: the next one).

        Revisions may skip (a replica catching up skips ones that wrote nothing) but never go back.

        Raises:
            InvalidArgument: a bad write, an oversized value, or the same key twice.
        """
        store = self._store
        if revision is None:
            revision = self.revision + 1
        elif revision <= self.revision:
            raise Internal(f"apply at revision {revision}, but the store is already at {self.revision}")
        if len(writes) > store.limits.txn_ops_max:
            raise InvalidArgument(
                f"transaction has {len(writes)} writes; the limit is {store.limits.txn_ops_max} "
                "(config: limits.txn_ops_max)",
                field="writes",
            )
        final: list[Write] = [w.materialize(revision) if isinstance(w, PutSequential) else w for w in writes]
        seen: set[str] = set()
        for w in final:
            if not isinstance(w, (Put, Delete)):
                raise InvalidArgument(f"a write must be Put, Delete or PutSequential, got {type(w).__name__}")
            if w.key in seen:
                raise InvalidArgument(f"key {w.key!r} appears twice in one transaction", field="key")
            seen.add(w.key)
            if isinstance(w, Put):
                check_value_size(w.value, store.limits)
        if len(final) > ROWS_PER_REVISION_MAX:
            raise InvalidArgument(f"a transaction writes at most {ROWS_PER_REVISION_MAX} keys", field="writes")
        db = self.connection
        prev: list[KeyValue | None] = []
        rows: list[_Row] = []
        heads: dict[bytes, KeyValue | None] = {}
        for w in final:
            key = w.key.encode("utf-8")
            old = self._head(key)
            prev.append(old)
            if isinstance(w, Put):
                if old is None:
                    row: _Row = (key, revision, revision, 1, w.value, w.lease)
                else:
                    row = (key, revision, old.create_revision, old.version + 1, w.value, w.lease)
                rows.append(row)
                heads[key] = _kv(row)
            else:
                if old is not None:
                    rows.append((key, revision, 0, 0, b"", 0))
                heads[key] = None
        rows.sort()  # by key: a row's rank in its revision is its sub, so row id order is key order
        ids = [row_id(revision, sub) for sub in range(len(rows))]
        db.executemany(
            f"INSERT INTO kv_log (id, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(i, *row) for i, row in zip(ids, rows, strict=True)],
        )
        index = store._index
        for i, row in zip(ids, rows, strict=True):
            index.add(row[0], i, tombstone=row[3] == 0, lease=row[5])
        if rows:
            self.rows_revision = revision
        self.revision = revision  # written to `meta` once, when the transaction commits
        cache = store._heads
        if len(cache) + len(heads) > HEAD_CACHE_MAX:
            cache.clear()
        for key, kv in heads.items():
            if kv is not None and len(kv.value) > HEAD_CACHE_VALUE_MAX:
                cache.pop(key, None)
            else:
                cache[key] = kv
        return Applied(revision, tuple(prev))

    def replace_with(self, table: str, revision: int) -> None:
        """Make the rows of `table` (a table of this file with the store's columns, holding live keys)
        the whole store, as the state at `revision`, with no history below it: a replica catching up
        from a member's snapshot.

        Raises:
            Internal: `revision` is not ahead of this store.
        """
        if revision <= self.revision:
            raise Internal(f"snapshot at revision {revision}, but the store is already at {self.revision}")
        db = self.connection
        self._store._heads.clear()
        db.execute("DELETE FROM kv_log")
        db.execute(f"INSERT INTO kv_log (id, {_COLUMNS}) " + _ROWS_WITH_IDS.format(table))
        self._store._load_index()
        self.revision = self.compact_revision = revision
        # The state at `revision` is whole, but not its changes: a key deleted at `revision` has no
        # row. Changes are served from the next revision on (seed 7122095).
        self.history_from = revision + 1

    def get(self, key: str) -> KeyValue | None:
        """The key's state as of this transaction (including its own earlier applies)."""
        return self._head(key.encode("utf-8"))

    def _head(self, key: bytes) -> KeyValue | None:
        """The key's newest state (this transaction is at the store's newest revision)."""
        cache = self._store._heads
        if key in cache:
            return cache[key]
        return self._store._latest(key, self.revision)

    def keys_with_lease(self, lease: int) -> list[str]:
        """Live keys attached to `lease` as of this transaction."""
        return self._store.keys_with_lease(lease)

    def advance_to(self, revision: int) -> None:
        """Move the revision forward with no writes (catch-up over revisions that changed nothing)."""
        if revision < self.revision:
            raise Internal(f"advance_to({revision}) below the store's revision {self.revision}")
        self.revision = revision


class MVCCStore:
    """The versioned store (see module docstring)."""

    def __init__(self, path: str | Path, *, limits: Limits = DEFAULT_LIMITS, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.limits = limits
        self._db = open_connection(self.path, synchronous=synchronous)
        self._db.executescript(_SCHEMA)
        # Files written before rows were ordered by revision held them in `kv`, keyed by key.
        migrate_table(
            self._db,
            "kv",
            when=lambda sql: True,
            steps=[f"INSERT INTO kv_log (id, {_COLUMNS}) " + _ROWS_WITH_IDS.format("kv"), "DROP TABLE kv"],
        )
        self._in_txn = False
        self._heads: dict[bytes, KeyValue | None] = {}  # see HEAD_CACHE_MAX
        meta = dict(self._db.execute("SELECT name, value FROM meta"))
        (newest_row,) = self._db.execute("SELECT max(id) FROM kv_log").fetchone()
        self._revision: int = max(meta["revision"], revision_of(newest_row or 0))
        self._compact_revision: int = meta["compact_revision"]
        self._history_from: int = max(meta.get("history_from", 0), self._compact_revision)
        self._index = KeyIndex()
        self._load_index()

    def _load_index(self) -> None:
        """(Re)build the key index from the rows: at open, and after rows changed under it."""
        self._index = KeyIndex.of_rows(self._db.execute("SELECT key, id, version, lease FROM kv_log ORDER BY id"))

    # -- state ---------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The revision of the last committed transaction (0 for an empty store)."""
        return self._revision

    @property
    def connection(self) -> sqlite3.Connection:
        """The file's connection, for sibling tables in the same file (the store package only)."""
        return self._db

    @property
    def history_from(self) -> int:
        """The oldest revision whose changes are whole: the compaction point, or the revision after an
        installed snapshot (which holds the state at its revision, not that revision's deletes)."""
        return self._history_from

    @property
    def compact_revision(self) -> int:
        """Reads below this revision raise Compacted (0: nothing compacted)."""
        return self._compact_revision

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> MVCCStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[StoreTxn]:
        """Group applies (and rows of other tables in this file) into one durable commit."""
        if self._in_txn:
            raise Internal("nested store transaction")
        self._db.execute("BEGIN IMMEDIATE")
        self._in_txn = True
        tx = StoreTxn(self)
        try:
            yield tx
        except BaseException:
            self._heads.clear()  # it and the index may hold what the rollback undoes
            self._db.execute("ROLLBACK")
            self._load_index()
            raise
        else:
            if tx.revision not in (self._revision, tx.rows_revision):  # see the module docstring
                self._db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (tx.revision,))
            if tx.compact_revision != self._compact_revision:
                self._db.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (tx.compact_revision,))
            if tx.history_from != self._history_from:
                self._db.execute("UPDATE meta SET value = ? WHERE name = 'history_from'", (tx.history_from,))
            self._db.execute("COMMIT")
            self._revision = tx.revision
            self._compact_revision = tx.compact_revision
            self._history_from = tx.history_from
        finally:
            self._in_txn = False

    def txn(self, writes: Sequence[PreparedWrite]) -> Applied:
        """Apply several writes atomically at one new revision."""
        with self.transaction() as tx:
            return tx.apply(writes)

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Store `value` under `key`; return the new revision."""
        return self.txn([Put(key, value, lease)]).revision

    def delete(self, key: str) -> int:
        """Delete `key` (a no-op write if it is missing); return the new revision."""
        return self.txn([Delete(key)]).revision

    def compact(self, revision: int) -> None:
        """Forget history that no read at `revision` or later can see.

        Raises:
            InvalidArgument: revision in the future.
            Compacted: revision below an earlier compaction.
        """
        revision = validate_revision(revision)
        if revision > self._revision:
            raise InvalidArgument(
                f"cannot compact at revision {revision}; the store is at {self._revision}", field="revision"
            )
        if revision < self._compact_revision:
            raise Compacted(
                f"revision {revision} is already compacted; the oldest readable is {self._compact_revision}",
                compact_revision=self._compact_revision,
            )
        with self.transaction():
            self._db.executemany("DELETE FROM kv_log WHERE id = ?", self._index.compact(revision))
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (revision,))
            history_from = max(self._history_from, revision)
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'history_from'", (history_from,))
        self._compact_revision = revision
        self._history_from = history_from

    # -- reads ---------------------------------------------------------------------------------

    def _read_revision(self, revision: int) -> int:
        revision = validate_revision(revision)
        if revision == 0:
            return self._revision
        if revision > self._revision:
            raise InvalidArgument(
                f"revision {revision} is in the future; the store is at {self._revision}", field="revision"
            )
        if revision < self._compact_revision:
            raise Compacted(
                f"revision {revision} was compacted; the oldest readable revision is {self._compact_revision}",
                compact_revision=self._compact_revision,
            )
        return revision

    def _latest(self, key: bytes, revision: int) -> KeyValue | None:
        at = self._index.at(key, revision)
        if at is None:
            return None
        row = self._db.execute(f"SELECT {_COLUMNS} FROM kv_log WHERE id = ?", (at,)).fetchone()
        if row is None:
            raise Internal(f"the key index points at a missing row: {key!r}, row {at}")
        return _kv(row)

    def _live(self, keys: Iterator[bytes], revision: int, count: int) -> list[KeyValue]:
        """The live rows at `revision` of the first `count` (0: all) of `keys` that have one, in order."""
        index = self._index
        want: list[int] = []
        for key in keys:
            at = index.at(key, revision)
            if at is not None:
                want.append(at)
                if len(want) == count:
                    break
        rows: dict[int, _Row] = {}
        for i in range(0, len(want), _FETCH_CHUNK):
            chunk = want[i : i + _FETCH_CHUNK]
            sql = f"SELECT id, {_COLUMNS} FROM kv_log WHERE id IN ({', '.join('?' * len(chunk))})"
            for row in self._db.execute(sql, chunk):
                rows[row[0]] = row[1:]
        if len(rows) != len(want):
            raise Internal(f"the key index points at {len(want) - len(rows)} missing rows")
        return [_kv(rows[i]) for i in want]

    def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        """The key at `revision` (0: now), or None if it did not exist then.

        Raises:
            InvalidArgument: bad key, or a revision in the future.
            Compacted: revision below the compaction point.
        """
        key = validate_key(key)
        return self._latest(key.encode("utf-8"), self._read_revision(revision))

    def range(self, prefix: str, *, revision: int = 0, limit: int = 0) -> list[KeyValue]:
        """Every live key starting with `prefix` at `revision` (0: now), in key order.

        Raises:
            InvalidArgument: bad prefix or limit, or a revision in the future.
            Compacted: revision below the compaction point.
        """
        prefix = validate_prefix(prefix)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidArgument(f"limit must be a non-negative int, got {limit!r}", field="limit")
        at = self._read_revision(revision)
        start = prefix.encode("utf-8")
        return self._live(self._index.keys(start, prefix_end(start)), at, limit)

    def snapshot_page(
        self, revision: int, after_key: str, *, keys_max: int, bytes_max: int
    ) -> tuple[int, list[KeyValue], bool]:
        """One page of the whole live state at `revision` (0: now): (the revision, the live keys after
        `after_key` in key order, whether more follow). At most `keys_max` keys, and about `bytes_max`.

        Raises:
            InvalidArgument: a revision in the future.
            Compacted: a revision below the compaction point.
        """
        at = self._read_revision(revision)
        kvs = self._live(self._index.keys(after_key.encode("utf-8"), None, after=True), at, keys_max + 1)
        page: list[KeyValue] = []
        size = 0
        for kv in kvs:
            if len(page) == keys_max or (page and size > bytes_max):
                return at, page, True
            page.append(kv)
            size += len(kv.key.encode("utf-8")) + len(kv.value)
        return at, page, False

    def changes(self, start_revision: int, *, prefix: str = "", end_revision: int = 0) -> list[Event]:
        """Every change with start_revision <= revision <= end_revision (0: now), in revision order.

        Each event carries the key's previous state, which is what watches and replica catch-up need.

        Raises:
            Compacted: start_revision below `history_from` (history is gone).
        """
        prefix = validate_prefix(prefix)
        start_revision = validate_revision(start_revision, name="start_revision")
        if start_revision < self._history_from:
            raise Compacted(
                f"changes from revision {start_revision} were compacted; start at {self._history_from} or later",
                compact_revision=self._history_from,
            )
        end = end_revision or self._revision
        start_key = prefix.encode("utf-8")
        key_end = prefix_end(start_key)
        where = "id >= :s AND id <= :e AND key >= :k" + (" AND key < :ke" if key_end is not None else "")
        bounds = {"s": row_id(start_revision, 0), "e": row_id(end, ROWS_PER_REVISION_MAX - 1)}
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM kv_log WHERE {where} ORDER BY id", {**bounds, "k": start_key, "ke": key_end}
        ).fetchall()
        events = []
        for row in rows:
            prev = self._latest(row[0], row[1] - 1)
            if row[3] == 0:
                kv = KeyValue(row[0].decode("utf-8"), b"", 0, row[1], 0, 0)
                events.append(Event(EventKind.DELETE, kv, prev))
            else:
                events.append(Event(EventKind.PUT, _kv(row), prev))
        return events

    def keys_with_lease(self, lease: int) -> list[str]:
        """Live keys attached to `lease` at the newest revision (in a transaction: including its
        applies so far), in key order."""
        return [key.decode("utf-8") for key in self._index.keys_with_lease(lease)]

    def digest(self) -> str:
        """A hash of the whole live key/value state at the current revision (equal on equal replicas)."""
        h = hashlib.sha256()
        for kv in self.range(""):
            key = kv.key.encode("utf-8")
            h.update(struct.pack(">I", len(key)) + key)
            h.update(struct.pack(">I", len(kv.value)) + kv.value)
            h.update(struct.pack(">qqqq", kv.create_revision, kv.mod_revision, kv.version, kv.lease))
        return h.hexdigest()[:16]


def migrate_table(db: sqlite3.Connection, table: str, *, when: Callable[[str], bool], steps: Sequence[str]) -> None:
    """Bring a table of an earlier layout up to date: run `steps` in one transaction if `table`
    exists and its CREATE statement satisfies `when`."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if row is None or not when(row[0]):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for sql in steps:
            db.execute(sql)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
