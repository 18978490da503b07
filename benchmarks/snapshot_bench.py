"""SnapshotArray benchmark: set/snapshot/fetch ops/s against the naive copy-every-snapshot baseline.

Run: `python benchmarks/snapshot_bench.py`.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Result, measure, report
from corral import SnapshotArray


class CopyEverything:
    """The baseline: a full copy of every node's state at each snapshot (O(n) per snapshot)."""

    def __init__(self, n: int) -> None:
        self.current = [0] * n
        self.copies: list[list[int]] = []

    def set_state(self, idx: int, state: int) -> None:
        self.current[idx] = state

    def snapshot(self) -> int:
        self.copies.append(list(self.current))
        return len(self.copies) - 1

    def fetch_state(self, idx: int, snapshot_id: int) -> int:
        return self.copies[snapshot_id][idx]


def bench_one(label: str, arr: SnapshotArray | CopyEverything, n: int, ops: int, base: str) -> list[Result]:
    rng = random.Random(7)

    def against(name: str) -> str:
        return f"{base}: {name}" if base else ""

    def mixed(i: int) -> None:
        arr.set_state(rng.randrange(n), i)
        if i % 10 == 0:
            arr.snapshot()

    results = [
        measure(
            f"{label}: set_state", lambda i: arr.set_state(rng.randrange(n), i), ops, baseline=against("set_state")
        ),
        measure(f"{label}: snapshot", lambda i: arr.snapshot(), ops // 10, baseline=against("snapshot")),
        measure(f"{label}: set x10 + snapshot", mixed, ops, baseline=against("set x10 + snapshot")),
    ]
    taken = ops // 10 + (ops + 9) // 10
    results.append(
        measure(
            f"{label}: fetch_state",
            lambda i: arr.fetch_state(rng.randrange(n), rng.randrange(taken)),
            ops,
            baseline=against("fetch_state"),
        )
    )
    return results


def bench(n: int, ops: int) -> list[Result]:
    return bench_one("naive copy", CopyEverything(n), n, ops, "") + bench_one(
        "SnapshotArray", SnapshotArray(n), n, ops, "naive copy"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--ops", type=int, default=100_000)
    args = parser.parse_args()
    report(f"SnapshotArray vs copying everything ({args.nodes:,} nodes)", bench(args.nodes, args.ops))


if __name__ == "__main__":
    main()
