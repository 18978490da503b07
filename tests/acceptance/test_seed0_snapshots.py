"""Seed 0 (000_*.txt), exactly as written there: three nodes, setState(1, 4), snapshot, setState(1, 7)."""

from corral import SnapshotArray


def test_seed0_worked_example() -> None:
    nodes = SnapshotArray(3)
    assert [nodes.current_state(i) for i in range(3)] == [0, 0, 0]  # "Initially ... all the nodes will be 0"
    nodes.set_state(1, 4)
    assert nodes.snapshot() == 0  # "saved against the snapshot id 0"
    nodes.set_state(1, 7)
    assert nodes.current_state(1) == 7
    assert nodes.fetch_state(1, 0) == 4  # "fetchState(1, 0) ... we will get ... 4"
    assert nodes.snapshot() == 1
    assert nodes.fetch_state(1, 1) == 7
    assert nodes.fetch_state(0, 0) == 0 and nodes.fetch_state(2, 1) == 0
