"""The benchmarks still run (tiny sizes; no timing is asserted here, that is what benchmarks/ is for)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["benchmarks/store_bench.py", "--n", "50", "--batch", "5", "--keys", "10"],
        ["benchmarks/snapshot_bench.py", "--nodes", "10", "--ops", "200"],
    ],
)
def test_benchmark_runs_and_prints_its_table(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ops/s" in out.stdout and "p99" in out.stdout
