"""The benchmarks still run (tiny sizes; no timing is asserted here, that is what benchmarks/ is for)."""

from __future__ import annotations

import re
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


def test_kv_benchmark_runs_a_cluster_and_prints_its_table() -> None:
    """The cluster benchmark (etcd left out: it may not be installed here) starts its cluster and drives
    both phases without errors."""
    argv = ["benchmarks/kv_bench.py", "--duration", "0.5", "--clients", "2", "--procs", "1", "--no-etcd"]
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for op in ("put", "get"):
        line = next(x for x in out.stdout.splitlines() if x.startswith(f"corral {op} clients=  2"))
        assert "errors=0" in line and "p99=" in line, line
        ops = float(line.split(":")[1].split("ops/s")[0].replace(",", ""))
        assert ops > 0, line


def test_two_clusters_clients_take_turns_in_bursts(tmp_path: Path) -> None:
    """kv_bench's paired 1-client puts (Corral against etcd when etcd is installed), here two clients
    of one Corral cluster: both warm up, then do the same bursts in turn."""
    from benchmarks import kv_bench

    endpoints, procs = kv_bench.start_corral(tmp_path)
    try:
        a, b = kv_bench.paired_puts([("corral", endpoints), ("corral", endpoints)], 0.5)
    finally:
        kv_bench.stop(procs)
    assert len(a) == len(b) > 0 and len(a) % kv_bench.BURST == 0
    assert all(0 < x < 30 for x in a + b)


def test_a_cluster_that_does_not_come_up_is_stopped_and_its_nodes_named(tmp_path: Path) -> None:
    """A failed start must not leave nodes running (three clusters of a failed A/B run once did)."""
    from benchmarks import kv_bench

    started: list[subprocess.Popen[bytes]] = []

    def never_ready(config: object, name: str) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        return started[-1]

    with pytest.raises(SystemExit, match=r"did not start: \['coordinator', 'replica-1'"):
        kv_bench.start_corral(tmp_path, never_ready, ready_s=0.5)
    assert len(started) == 4 and all(p.poll() is not None for p in started)


def test_put_path_traces_puts_and_prints_its_phases() -> None:
    """The critical-path breakdown starts its stamped cluster, traces puts and prints every phase."""
    argv = ["benchmarks/put_path.py", "--duration", "0.5"]
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "puts traced" in out.stdout, out.stdout
    for phase in ("slowest voter: fsync", "coordinator: fsync of the decision", "request written -> answer read"):
        assert phase in out.stdout, out.stdout
    assert "CPU per put" in out.stdout, out.stdout


def test_ab_latency_drives_two_checkouts_in_turn_and_prints_their_ratio() -> None:
    """The paired A/B benchmark, this checkout against itself: both clusters start, both clients take
    their turns, and every round is reported with its ratio."""
    argv = ["benchmarks/ab_latency.py", str(ROOT), "--duration", "0.5", "--rounds", "2"]
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    rounds = [m.group(1) for m in re.finditer(r"^│\s*(\d+) │", out.stdout, re.MULTILINE)]
    assert rounds == ["1", "2"], out.stdout
    assert "B/A p50: median over rounds" in out.stdout, out.stdout
