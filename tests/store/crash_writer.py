"""Child process of test_crash: writes a deterministic plan forever, printing each acknowledged revision.

The write at revision R is `plan(R)`, so the parent can recompute what every revision must contain.
"""

from __future__ import annotations

import sys

from corral import Delete, MVCCStore, Put
from corral.model import Write


def plan(revision: int) -> list[Write]:
    """Single puts, and multi-key transactions mixing puts and deletes with larger values."""
    if revision % 3 == 0:
        group = revision % 5
        writes: list[Write] = []
        for j in range(12):
            key = f"/multi/{group}/{j}"
            if (revision + j) % 4 == 0:
                writes.append(Delete(key))
            else:
                writes.append(Put(key, f"{revision}:{j}:".encode() + b"x" * 4096))
        return writes
    return [Put(f"/single/{revision % 11}", str(revision).encode())]


def main() -> None:
    store = MVCCStore(sys.argv[1])
    while True:
        applied = store.txn(plan(store.revision + 1))
        sys.stdout.write(f"{applied.revision}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
