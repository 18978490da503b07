"""The store's in-memory key index: each key's row revisions, the keys in order, live keys by lease.

Why in memory: the rows on disk are ordered by revision, so a batch of writes to random keys appends
to one end of one B-tree instead of dirtying one leaf per key (etcd's design: bbolt keyed by revision,
plus its in-memory `treeIndex`). What a key-ordered table gave for free, finding a key's row at a
revision and listing keys in order, is what this index answers. It is rebuilt from the rows when the
store opens.

Rows are named by a *row id*, `revision << SUB_BITS | sub`, where `sub` is the row's rank by key
among its revision's rows (etcd's main/sub revision). A key's rows are kept as one sorted list of
ints, `2 * row_id + 1` for a tombstone and `2 * row_id` for a put, so one bisection finds the row at a
revision and whether it is a tombstone.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from corral.limits import TXN_OPS_CEILING

SUB_BITS = 16
ROWS_PER_REVISION_MAX = 1 << SUB_BITS  # a revision's rows; bounds a transaction's writes
assert ROWS_PER_REVISION_MAX == TXN_OPS_CEILING


def row_id(revision: int, sub: int) -> int:
    return revision << SUB_BITS | sub


def revision_of(row: int) -> int:
    return row >> SUB_BITS


def _last_row_bound(revision: int) -> int:
    """An entry bound above every entry of a row at or below `revision`."""
    return 2 * row_id(revision, ROWS_PER_REVISION_MAX - 1) + 1


class KeyIndex:
    """See the module docstring. Keys are the UTF-8 bytes of the store's keys."""

    def __init__(self) -> None:
        self._revisions: dict[bytes, list[int]] = {}
        self._keys = SortedList()  # every key with at least one row
        self._lease_of: dict[bytes, int] = {}  # live keys attached to a lease, at the newest revision
        self._by_lease: dict[int, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._revisions)

    @classmethod
    def of_rows(cls, rows: Iterable[tuple[bytes, int, int, int]]) -> KeyIndex:
        """The index of (key, row id, version, lease) rows given in row id order."""
        index = cls()
        for key, row, version, lease in rows:
            index.add(key, row, tombstone=version == 0, lease=lease)
        return index

    def add(self, key: bytes, row: int, *, tombstone: bool, lease: int) -> None:
        """Record a row of `key`, newer than every row of it recorded so far."""
        revisions = self._revisions.get(key)
        if revisions is None:
            self._revisions[key] = [2 * row + tombstone]
            self._keys.add(key)
        else:
            revisions.append(2 * row + tombstone)
        old = self._lease_of.pop(key, 0)
        if old:
            holders = self._by_lease[old]
            holders.discard(key)
            if not holders:
                del self._by_lease[old]
        if lease and not tombstone:
            self._lease_of[key] = lease
            self._by_lease.setdefault(lease, set()).add(key)

    def at(self, key: bytes, revision: int) -> int | None:
        """The row id of `key`'s live row at `revision`, or None (no row, or a tombstone)."""
        revisions = self._revisions.get(key)
        if revisions is None:
            return None
        i = bisect_right(revisions, _last_row_bound(revision)) - 1
        if i < 0 or revisions[i] & 1:
            return None
        return revisions[i] >> 1

    def keys(self, start: bytes, end: bytes | None, *, after: bool = False) -> Iterator[bytes]:
        """Keys from `start` (excluded if `after`) up to `end` (excluded; None: no bound), in order."""
        return self._keys.irange(start, end, inclusive=(not after, False))  # type: ignore[no-any-return]

    def keys_with_lease(self, lease: int) -> list[bytes]:
        """Live keys attached to `lease` at the newest revision, in key order."""
        return sorted(self._by_lease.get(lease, ()))

    def compact(self, revision: int) -> list[tuple[int]]:
        """Drop the rows no read at `revision` or later can see; return their row ids.

        Those are the rows superseded by a newer row at or below `revision`, and a tombstone below
        `revision` that is the key's newest row there. Rows at `revision` itself are kept.
        """
        gone: list[tuple[int]] = []
        emptied: list[bytes] = []
        bound = _last_row_bound(revision)
        for key, revisions in self._revisions.items():
            i = bisect_right(revisions, bound) - 1  # the key's newest row at or below `revision`
            if i < 0:
                continue
            if revisions[i] & 1 and revision_of(revisions[i] >> 1) < revision:
                i += 1  # that row is a tombstone below `revision`: it goes too
            if i == 0:
                continue
            gone.extend((r >> 1,) for r in revisions[:i])
            del revisions[:i]
            if not revisions:
                emptied.append(key)
        for key in emptied:
            del self._revisions[key]
            self._keys.remove(key)
        return gone
