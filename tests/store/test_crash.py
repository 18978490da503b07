"""Durability under kill -9: every acknowledged write survives, and no transaction is half-applied.

A child process writes single and multi-key transactions and prints each revision once `txn`
returned. The parent kills it with SIGKILL at random moments, reopens the store, and checks every
revision against the plan the child followed. Repeated over many kills in one run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from corral import MVCCStore, Put
from tests.store.crash_writer import plan

KILLS = 24
WRITER = Path(__file__).with_name("crash_writer.py")


def _expected_rows(revision_count: int) -> dict[int, set[tuple[str, bytes | None]]]:
    """Replay the plan on a dict: revision -> the rows (key, value or None for delete) it must hold."""
    state: dict[str, bytes] = {}
    rows: dict[int, set[tuple[str, bytes | None]]] = {}
    for rev in range(1, revision_count + 1):
        changed: set[tuple[str, bytes | None]] = set()
        for w in plan(rev):
            if isinstance(w, Put):
                state[w.key] = w.value
                changed.add((w.key, w.value))
            elif state.pop(w.key, None) is not None:
                changed.add((w.key, None))
        rows[rev] = changed
    return rows


def _run_and_kill(path: Path, rng: random.Random) -> int:
    """Start a writer, let it acknowledge a random number of writes, SIGKILL it; return the max ack."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    child = subprocess.Popen([sys.executable, str(WRITER), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    acked = 0
    target = rng.randint(0, 150)
    deadline = time.monotonic() + 30
    try:
        while acked < target or (target == 0 and acked == 0):
            line = child.stdout.readline()
            assert line, "writer exited on its own"
            acked = int(line)
            assert time.monotonic() < deadline, "writer too slow"
            if target == 0:
                break
        # Land the kill at a random point inside the next writes, not right after an ack. This
        # sleep picks the fault's moment; it synchronises nothing.
        time.sleep(rng.uniform(0, 0.004))
    finally:
        child.send_signal(signal.SIGKILL)
        # Lines already in the pipe were acknowledged before the kill: they count too.
        for line in child.stdout:
            acked = max(acked, int(line))
        child.wait(timeout=30)
    return acked


def test_acknowledged_writes_survive_kill9(tmp_path: Path) -> None:
    rng = random.Random(20261121)
    path = tmp_path / "crash.db"
    max_acked = 0
    for kill in range(KILLS):
        max_acked = max(max_acked, _run_and_kill(path, rng))
        with MVCCStore(path) as store:
            assert store.revision >= max_acked, f"kill {kill}: acknowledged {max_acked}, store at {store.revision}"
            expected = _expected_rows(store.revision)
            found: dict[int, set[tuple[str, bytes | None]]] = {r: set() for r in expected}
            for event in store.changes(1):
                value = event.kv.value if event.kind == "put" else None
                found[event.kv.mod_revision].add((event.kv.key, value))
            for rev in expected:
                assert found[rev] == expected[rev], f"kill {kill}: revision {rev} is partial or wrong"
    assert max_acked > KILLS  # the children really wrote between kills
