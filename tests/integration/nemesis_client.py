"""One client process of the nemesis test: random put/get/delete/cas on a few keys, recording a history.

Each operation is one JSON line: client, kind, key, value/expected, output, call and return times
(`time.monotonic_ns`, one clock for every process on the machine), the revision a write got, and its
status: `ok`, `failed` (known not applied: the server said so) or `unknown` (timed out, or the
coordinator could not say; it may have applied). Values are unique per client and operation, so a
read identifies the write it saw.

Run: python -m tests.integration.nemesis_client CONFIG CLIENT_ID SECONDS SEED OUT_FILE
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from corral import Compare, CompareOp, CompareTarget, Conflict, CorralError, Put, Unavailable
from corral.client import connect

KEYS = ("a", "b", "c", "d", "e")
# Per-operation deadline: long enough to ride out a view change (the SDK retries inside it), short
# enough that a stuck operation does not eat the run.
OP_TIMEOUT_S = 4.0


def run(config: str, client_id: int, seconds: float, seed: int, out_path: Path) -> None:
    rng = random.Random(seed * 1000 + client_id)
    deadline = time.monotonic() + seconds
    last_seen: dict[str, bytes | None] = {}
    n = 0
    with connect(config, timeout=OP_TIMEOUT_S, client_id=f"nemesis-{seed}-{client_id}") as c, out_path.open("w") as out:
        while time.monotonic() < deadline:
            n += 1
            key = rng.choice(KEYS)
            kind = rng.choices(["put", "get", "delete", "cas"], weights=[3, 4, 1, 2])[0]
            value = f"{client_id}-{n}".encode()
            expected = last_seen.get(key) if rng.random() < 0.8 else rng.choice([None, b"0-0"])
            record: dict[str, object] = {"client": client_id, "kind": kind, "key": key}
            call = time.monotonic_ns()
            output: str | bool | None
            status, output, revision = "ok", None, 0
            try:
                if kind == "put":
                    revision = c.put(key, value)
                elif kind == "delete":
                    revision = c.delete(key)
                elif kind == "get":
                    kv = c.get(key)
                    output = None if kv is None else kv.value.decode()
                    last_seen[key] = None if kv is None else kv.value
                else:
                    compare = (
                        Compare(key, CompareTarget.VERSION, CompareOp.EQUAL, 0)
                        if expected is None
                        else Compare(key, CompareTarget.VALUE, CompareOp.EQUAL, expected)
                    )
                    result = c.txn([compare], [Put(key, value)])
                    output, revision = result.succeeded, result.revision
            except Conflict:
                status = "failed"
            except Unavailable as err:
                status = "unknown" if (err.outcome_unknown and kind != "get") else "failed"
            except CorralError:
                status = "failed"
            ret = time.monotonic_ns()
            if kind in ("put", "cas"):
                record["value"] = value.decode()
            if kind == "cas":
                record["expected"] = None if expected is None else expected.decode()
            record.update(
                status=status, output=output, call=call, ret=ret if status == "ok" else None, revision=revision
            )
            out.write(json.dumps(record) + "\n")
            out.flush()


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
