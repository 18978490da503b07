"""The store's in-memory key index: each key's row revisions, the keys in order, live keys by lease.

Why in memory: the rows on disk are ordered by revision, so a batch of writes to random keys appends
to one end of one B-tree instead of dirtying one leaf per key (etcd's design: bbolt keyed by revision,
plus its in-memory `treeIndex`). What a key-ordered table gave for free, finding a key's row at a
revision and listing keys in order, is what this index answers. It is rebuilt from the rows when the
store opens.

A key's revisions are kept as one sorted list of ints, `2 * revision + 1` for a tombstone and
`2 * revision` for a put, so one bisection finds the row at a revision and whether it is a tombstone.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator

from sortedcontainers import SortedList  # type: ignore[import-untyped]


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
        """The index of (key, mod_revision, version, lease) rows given in revision order."""
        index = cls()
        for key, revision, version, lease in rows:
            index.add(key, revision, tombstone=version == 0, lease=lease)
        return index

    def add(self, key: bytes, revision: int, *, tombstone: bool, lease: int) -> None:
        """Record a row of `key` at `revision`, newer than every row of it recorded so far."""
        revisions = self._revisions.get(key)
        if revisions is None:
            self._revisions[key] = [2 * revision + tombstone]
            self._keys.add(key)
        else:
            revisions.append(2 * revision + tombstone)
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
        """The mod_revision of `key`'s live row at `revision`, or None (no row, or a tombstone)."""
        revisions = self._revisions.get(key)
        if revisions is None:
            return None
        i = bisect_right(revisions, 2 * revision + 1) - 1
        if i < 0 or revisions[i] & 1:
            return None
        return revisions[i] >> 1

    def keys(self, start: bytes, end: bytes | None, *, after: bool = False) -> Iterator[bytes]:
        """Keys from `start` (excluded if `after`) up to `end` (excluded; None: no bound), in order."""
        return self._keys.irange(start, end, inclusive=(not after, False))  # type: ignore[no-any-return]

    def keys_with_lease(self, lease: int) -> list[bytes]:
        """Live keys attached to `lease` at the newest revision, in key order."""
        return sorted(self._by_lease.get(lease, ()))

    def compact(self, revision: int) -> list[tuple[int, bytes]]:
        """Drop the rows no read at `revision` or later can see; return them as (revision, key).

        Those are the rows superseded by a newer row at or below `revision`, and a tombstone below
        `revision` that is the key's newest row there. Rows at `revision` itself are kept.
        """
        gone: list[tuple[int, bytes]] = []
        emptied: list[bytes] = []
        bound = 2 * revision + 1
        for key, revisions in self._revisions.items():
            i = bisect_right(revisions, bound) - 1  # the key's newest row at or below `revision`
            if i < 0:
                continue
            if revisions[i] & 1 and revisions[i] >> 1 < revision:
                i += 1  # that row is a tombstone below `revision`: it goes too
            if i == 0:
                continue
            gone.extend((r >> 1, key) for r in revisions[:i])
            del revisions[:i]
            if not revisions:
                emptied.append(key)
        for key in emptied:
            del self._revisions[key]
            self._keys.remove(key)
        return gone
