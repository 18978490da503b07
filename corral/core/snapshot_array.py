"""Seed 0's progress snapshots: `set_state(idx, state)`, `snapshot() -> id`, `fetch_state(idx, id)`.

Model: n nodes, each with a state (subtasks executed), all 0 at the start. `snapshot()` freezes every
node's current state under the id `k` = the number of snapshots taken before it (0, 1, 2, ...).

Representation: per node, a list of (snapshot id at which a value was set, value), strictly
increasing in id. A write while snapshot id `k` is open overwrites the last entry if it is also
for `k`, else appends. So:
- `set_state` and `snapshot` are O(1) (amortised);
- `fetch_state(idx, s)` is a binary search, O(log c) for c changes to that node;
- memory grows with the number of changes, not with n x snapshots.

This module does no I/O; the durable, replicated version stores the same thing as store revisions.
"""

from __future__ import annotations

from bisect import bisect_right

from corral.errors import InvalidArgument, NotFound


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass; set_state(0, True) is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, got {type(value).__name__} {value!r}", field=name)
    return value


class SnapshotArray:
    """Versioned per-node state with cheap snapshots (see module docstring)."""

    __slots__ = ("_ids", "_n", "_next_snapshot", "_values")

    def __init__(self, n: int) -> None:
        n = _check_int("n", n)
        if n < 0:
            raise InvalidArgument(f"n is {n}; the number of nodes cannot be negative", field="n")
        self._n = n
        # Parallel lists per node keep bisect on plain ints (no tuple compares).
        self._ids: list[list[int]] = [[0] for _ in range(n)]
        self._values: list[list[int]] = [[0] for _ in range(n)]
        self._next_snapshot = 0

    def __len__(self) -> int:
        return self._n

    @property
    def snapshots_taken(self) -> int:
        return self._next_snapshot

    def _check_idx(self, idx: object) -> int:
        idx = _check_int("idx", idx)
        if not 0 <= idx < self._n:
            upper = f"0..{self._n - 1}" if self._n else "none (there are no nodes)"
            raise InvalidArgument(f"idx is {idx}; valid node indexes are {upper}", field="idx")
        return idx

    def set_state(self, idx: int, state: int) -> None:
        """Set node `idx`'s current state.

        Raises:
            InvalidArgument: idx out of range, or state not a non-negative int.
        """
        idx = self._check_idx(idx)
        state = _check_int("state", state)
        if state < 0:
            raise InvalidArgument(
                f"state is {state}; a state counts executed subtasks and cannot be negative", field="state"
            )
        ids, values = self._ids[idx], self._values[idx]
        if ids[-1] == self._next_snapshot:
            values[-1] = state
        else:
            ids.append(self._next_snapshot)
            values.append(state)

    def snapshot(self) -> int:
        """Freeze every node's current state; return this snapshot's id (0 for the first)."""
        snapshot_id = self._next_snapshot
        self._next_snapshot += 1
        return snapshot_id

    def fetch_state(self, idx: int, snapshot_id: int) -> int:
        """Node `idx`'s state as of snapshot `snapshot_id`.

        Raises:
            InvalidArgument: idx out of range or snapshot_id not an int.
            NotFound: no snapshot with that id was taken.
        """
        idx = self._check_idx(idx)
        snapshot_id = _check_int("snapshot_id", snapshot_id)
        if not 0 <= snapshot_id < self._next_snapshot:
            taken = f"ids 0..{self._next_snapshot - 1} exist" if self._next_snapshot else "none has been taken yet"
            raise NotFound(f"snapshot {snapshot_id} was never taken; {taken}", snapshot_id=snapshot_id)
        ids = self._ids[idx]
        return self._values[idx][bisect_right(ids, snapshot_id) - 1]

    def current_state(self, idx: int) -> int:
        """Node `idx`'s state now (including changes since the last snapshot)."""
        return self._values[self._check_idx(idx)][-1]
