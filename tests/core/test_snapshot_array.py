"""SnapshotArray: behaviour, errors, and a model check against copying every snapshot (DESIGN "Jobs")."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import InvalidArgument, NotFound, SnapshotArray


def test_overwrites_within_one_snapshot_keep_only_the_last() -> None:
    a = SnapshotArray(2)
    a.set_state(0, 1)
    a.set_state(0, 2)
    a.set_state(0, 3)
    s = a.snapshot()
    a.set_state(0, 9)
    assert a.fetch_state(0, s) == 3
    assert a.current_state(0) == 9


def test_snapshots_without_changes_share_state() -> None:
    a = SnapshotArray(1)
    a.set_state(0, 5)
    ids = [a.snapshot() for _ in range(100)]
    assert ids == list(range(100))
    assert {a.fetch_state(0, i) for i in ids} == {5}
    # Memory grows with changes, not with snapshots: the write before snapshot 0 replaced the
    # initial 0 in place, and one more write after 100 snapshots adds exactly one entry.
    assert len(a._ids[0]) == 1
    a.set_state(0, 6)
    assert len(a._ids[0]) == 2
    assert a.fetch_state(0, 99) == 5


@pytest.mark.parametrize("idx", [-1, 3, 100])
def test_idx_out_of_range(idx: int) -> None:
    a = SnapshotArray(3)
    with pytest.raises(InvalidArgument, match=r"idx is .*valid node indexes are 0\.\.2"):
        a.set_state(idx, 1)
    a.snapshot()
    with pytest.raises(InvalidArgument, match="idx is"):
        a.fetch_state(idx, 0)


@pytest.mark.parametrize("state", [-1, 1.5, "3", None, True])
def test_bad_state_is_rejected_and_nothing_changes(state: object) -> None:
    a = SnapshotArray(2)
    a.set_state(1, 4)
    with pytest.raises(InvalidArgument, match="state"):
        a.set_state(1, state)  # type: ignore[arg-type]  # deliberately not an int: checks the runtime check
    assert a.current_state(1) == 4


def test_snapshot_never_taken() -> None:
    a = SnapshotArray(2)
    with pytest.raises(NotFound, match="none has been taken yet"):
        a.fetch_state(0, 0)
    a.snapshot()
    with pytest.raises(NotFound, match=r"snapshot 1 was never taken; ids 0\.\.0 exist"):
        a.fetch_state(0, 1)
    with pytest.raises(NotFound):
        a.fetch_state(0, -1)
    with pytest.raises(InvalidArgument, match="snapshot_id must be an int"):
        a.fetch_state(0, "0")  # type: ignore[arg-type]  # deliberately a str: checks the runtime check


def test_bad_n() -> None:
    with pytest.raises(InvalidArgument):
        SnapshotArray(-1)
    with pytest.raises(InvalidArgument):
        SnapshotArray(2.0)  # type: ignore[arg-type]  # deliberately a float: checks the runtime check
    empty = SnapshotArray(0)
    with pytest.raises(InvalidArgument, match="no nodes"):
        empty.set_state(0, 1)


# A naive model: copy every node's state at each snapshot.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 4), st.integers(0, 1000)),
        st.tuples(st.just("snap"), st.just(0), st.just(0)),
        st.tuples(st.just("fetch"), st.integers(0, 4), st.integers(0, 60)),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 5), program=ops)
def test_matches_copy_everything_model(n: int, program: list[tuple[str, int, int]]) -> None:
    real = SnapshotArray(n)
    current = [0] * n
    copies: list[list[int]] = []
    for op, a, b in program:
        idx = a % n
        if op == "set":
            real.set_state(idx, b)
            current[idx] = b
        elif op == "snap":
            assert real.snapshot() == len(copies)
            copies.append(list(current))
        elif b < len(copies):
            assert real.fetch_state(idx, b) == copies[b][idx]
        else:
            with pytest.raises(NotFound):
                real.fetch_state(idx, b)
    for sid, copy in enumerate(copies):
        assert [real.fetch_state(i, sid) for i in range(n)] == copy
