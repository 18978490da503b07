"""Store benchmark: durable puts/s (one write per transaction, and batched), gets/s, range, compaction.

Baselines: a bare SQLite insert+commit with the same durability settings (the floor any store on
this disk pays), and for reads a bare primary-key SELECT. Run: `python benchmarks/store_bench.py`.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Result, measure, report
from corral import MVCCStore, Put


def bench(n: int, batch: int, keys: int) -> list[Result]:
    value = b"v" * 100
    rng = random.Random(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=FULL")
        raw.execute("CREATE TABLE t (k BLOB, r INTEGER, v BLOB, PRIMARY KEY (k, r)) WITHOUT ROWID")

        def raw_put(i: int) -> None:
            raw.execute("BEGIN")
            raw.execute("INSERT INTO t VALUES (?, ?, ?)", (f"k{i % keys}".encode(), i, value))
            raw.execute("COMMIT")

        results.append(measure("sqlite insert+fsync (baseline)", raw_put, n))

        store = MVCCStore(Path(tmp) / "store.db")
        results.append(
            measure(
                "put, 1 write/txn (durable)",
                lambda i: store.put(f"k{i % keys}", value),
                n,
                baseline="sqlite insert+fsync (baseline)",
            )
        )

        def batched(i: int) -> None:
            store.txn([Put(f"b{(i * batch + j) % keys}", value) for j in range(batch)])

        results.append(
            measure(
                f"put, {batch} writes/txn (durable)",
                batched,
                max(1, n // batch),
                per_call=batch,
                baseline="put, 1 write/txn (durable)",
            )
        )

        def batched_txns(i: int) -> None:
            with store.transaction() as tx:
                for j in range(batch):
                    tx.apply([Put(f"g{(i * batch + j) % keys}", value)])

        results.append(
            measure(
                f"put, {batch} txns/fsync (group commit)",
                batched_txns,
                max(1, n // batch),
                per_call=batch,
                baseline="put, 1 write/txn (durable)",
            )
        )

        raw_get = raw.cursor()
        results.append(
            measure(
                "sqlite pk select (baseline)",
                lambda i: raw_get.execute(
                    "SELECT v FROM t WHERE k = ? ORDER BY r DESC LIMIT 1", (f"k{rng.randrange(keys)}".encode(),)
                ).fetchone(),
                n * 2,
            )
        )
        results.append(
            measure(
                "get (current)",
                lambda i: store.get(f"k{rng.randrange(keys)}"),
                n * 2,
                baseline="sqlite pk select (baseline)",
            )
        )
        mid = store.revision // 2
        results.append(
            measure(
                "get (at a past revision)",
                lambda i: store.get(f"k{rng.randrange(keys)}", revision=mid),
                n * 2,
                baseline="get (current)",
            )
        )
        for i in range(100):
            store.put(f"/range/{i:03d}", value)
        results.append(measure("range 100 keys", lambda i: store.range("/range/"), 200, per_call=1))
        store.close()
        raw.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000, help="durable single puts to time")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args()
    report("corral.store (MVCCStore on SQLite, WAL, synchronous=FULL)", bench(args.n, args.batch, args.keys))


if __name__ == "__main__":
    main()
