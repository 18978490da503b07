"""Issue 4's nemesis: 8 client processes, kill -9 and SIGSTOP of servers, then a linearizability check.

`make soak MINUTES=30` runs the same test for as long as asked (CORRAL_SOAK_SECONDS).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.nemesis import FAULT_KINDS, run_nemesis, timeout_s

SECONDS = float(os.environ.get("CORRAL_SOAK_SECONDS", "40"))


@pytest.mark.timeout(timeout_s(SECONDS))
def test_history_under_faults_is_linearizable_and_loses_nothing(tmp_path: Path) -> None:
    result = run_nemesis(tmp_path, seconds=SECONDS, clients=8, seed=int(os.environ.get("CORRAL_SEED", "7")))
    print(result.summary())
    kinds = {fault.split(":")[0] for fault in result.faults}
    assert kinds == set(FAULT_KINDS), f"the nemesis injected only {sorted(kinds)}"
    assert sum(1 for o in result.operations if o["status"] == "ok") > 200, "too little work got through"
    assert result.check.ok, f"not linearizable (or timed out): {result.check.explanation}"
    assert not result.lost_writes, f"acknowledged writes missing: {result.lost_writes[:5]}"
    assert len(result.digests) == 1, f"replicas disagree: {result.digests}"


@pytest.mark.timeout(300)
def test_checker_catches_reads_that_ignore_prepared_keys(tmp_path: Path) -> None:
    """A deliberately broken read (it does not wait for prepared keys) must be caught: the checker bites."""
    broken = {r: {"replica.read.skip_lock_wait": "drop"} for r in ("replica-1", "replica-2", "replica-3")}
    result = run_nemesis(tmp_path, seconds=15, clients=8, seed=3, faults=False, failpoints=broken)
    print(result.summary())
    assert not result.check.ok and not result.check.timed_out, "stale reads went unnoticed"
    assert "get" in result.check.explanation
