"""Paired A/B latency at one client: two checkouts of Corral side by side, taking turns in short bursts.

On a shared 2-core machine, runs made minutes apart differ by ±20% (other tenants, CPU frequency),
more than most changes are worth; two clusters loaded at once compete for the cores instead, which is
not the one-client case. Here both clusters are up, each driven by a client process of its own
checkout, and this process alternates them in short bursts of back-to-back operations (A then B, then
B then A; `--burst`, default 25, about 50 ms): only one cluster works at any instant, both see the
same machine within milliseconds of each other, and within a burst each operation overlaps what the
previous one left running (a COMMIT being applied, a deferred fsync), as at one client. Every round
starts a fresh pair of clusters (in alternating order): a pair carries a bias of its own, which
only more pairs average out. It prints each side's p50 and p99 per round, the B/A ratios and their
median. The same checkout against itself scattered 0.955-1.052 per round (median of 4: 0.994), so
trust a median over 6 or more rounds, not one round.

Run: `python benchmarks/ab_latency.py BASELINE [CANDIDATE]`, each a checkout (a directory holding
`corral/`; CANDIDATE defaults to this one), for example after `git worktree add /tmp/base main`.
Options: --op put|get, --duration (seconds per round), --rounds, --burst.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]

VALUE = b"v" * 256
KEYS = 1000
WARMUP_OPS = 200

Rounds = list[tuple[list[float], list[float]]]  # per round: A's latencies, B's (seconds)


# -- a client process (runs the checkout's own client) ----------------------------------------------


async def _client(endpoints: dict[str, Any], op: str) -> None:
    """Per line "N" read on stdin do N operations back to back, then answer b"d"; on "q" print the
    latencies as JSON."""
    from corral.client.aio import AsyncClient, Endpoints

    wires = tuple(tuple(w) for w in endpoints["wires"])
    client = AsyncClient(Endpoints(endpoints["coordinator"], tuple(endpoints["replicas"]), (), wires=wires), timeout=30)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    out = sys.stdout.buffer
    for i in range(WARMUP_OPS):  # connects, and the keys exist before they are read
        await client.put(f"ab/{i % KEYS}", VALUE)
    latencies: list[float] = []
    out.write(b"r")
    out.flush()
    n = 0
    while (line := await commands.readline()).strip().isdigit():
        for _ in range(int(line)):
            key = f"ab/{n % KEYS}"
            started = time.perf_counter()
            if op == "put":
                await client.put(key, VALUE)
            else:
                await client.get(key)
            latencies.append(time.perf_counter() - started)
            n += 1
        out.write(b"d")
        out.flush()
    await client.close()
    result = memoryview(b"\n" + json.dumps(latencies).encode() + b"\n")
    while result:  # a pipe write can return short on uvloop (see kv_bench.write_all, not importable here)
        result = result[os.write(out.fileno(), result) :]


# -- the run ---------------------------------------------------------------------------------------


def _tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}


def _launcher(tree: Path) -> Any:
    """Start a node of `tree`'s Corral (as `corral cluster up` does, from that checkout)."""

    def launch(config: Any, name: str) -> subprocess.Popen[bytes]:
        logs = config.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "corral", "node", "--config", str(config.path), "--name", name],
                cwd=tree,
                env=_tree_env(tree),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    return launch


def _percentile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    if sys.argv[1:2] == ["--client"]:  # a client process: --client ENDPOINTS OP
        try:  # the checkout's own loop; one from before corral/eventloop.py ran on asyncio's
            from corral.eventloop import run
        except ImportError:
            run = asyncio.run  # type: ignore[assignment]
        run(_client(json.loads(sys.argv[2]), sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path, help="checkout A (a directory holding corral/)")
    parser.add_argument("candidate", type=Path, nargs="?", default=ROOT, help="checkout B (default: this one)")
    parser.add_argument("--op", choices=("put", "get"), default="put")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=6, help="fresh pairs of clusters (default 6)")
    parser.add_argument("--burst", type=int, default=25, help="operations in a row on one side (default 25)")
    args = parser.parse_args()
    trees = [args.baseline.resolve(), args.candidate.resolve()]
    for tree in trees:
        if not (tree / "corral" / "__init__.py").is_file():
            raise SystemExit(f"{tree} is not a Corral checkout (no corral/__init__.py)")

    sys.path.insert(0, str(ROOT))  # here, not above: a client process imports its own checkout's corral
    from benchmarks import kv_bench

    console = Console(width=120)
    rounds: Rounds = []
    for r in range(args.rounds):
        # Fresh clusters every round, started in alternating order: a pair of clusters carries a bias
        # of its own (measured: the same checkout against itself read 0.96 and 0.94 in one pair's
        # rounds, 1.00 and 0.99 in another's), which only more pairs average out.
        with tempfile.TemporaryDirectory(prefix="corral-ab-") as tmp:
            if r % 2 == 0:
                rounds.append(_round(kv_bench, trees, Path(tmp), args))
            else:
                b, a = _round(kv_bench, trees[::-1], Path(tmp), args)
                rounds.append((a, b))
    _report(rounds, args, trees, console)


def _round(kv_bench: Any, trees: list[Path], tmp: Path, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """One round: a cluster and a client per checkout, started in this order; their latencies."""
    procs: list[subprocess.Popen[bytes]] = []
    clients: list[subprocess.Popen[bytes]] = []
    try:
        for side, tree in enumerate(trees):
            endpoints, nodes = kv_bench.start_corral(tmp / str(side), launch=_launcher(tree))
            procs += nodes
            clients.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--client", json.dumps(endpoints), args.op],
                    cwd=tree,
                    env=_tree_env(tree),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        for tree, client in zip(trees, clients, strict=True):
            kv_bench.expect(client.stdout, b"r", str(tree))
        turns: tuple[list[float], list[float]] = kv_bench.take_turns(clients, args.duration, args.burst)
        return turns
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
        kv_bench.stop(procs)


def _report(rounds: Rounds, args: argparse.Namespace, trees: list[Path], console: Console) -> None:
    table = Table(title=f"Paired {args.op}s at one client: A = {trees[0]}, B = {trees[1]}")
    for column in ("round", f"{args.op}s each", "A p50 ms", "B p50 ms", "B/A p50", "A p99 ms", "B p99 ms", "B/A p99"):
        table.add_column(column, justify="right")
    ratios = []
    for i, (a, b) in enumerate(rounds, 1):
        a50, b50, a99, b99 = _percentile(a, 0.5), _percentile(b, 0.5), _percentile(a, 0.99), _percentile(b, 0.99)
        ratios.append(b50 / a50)
        cells = (f"{a50:.3f}", f"{b50:.3f}", f"{b50 / a50:.3f}", f"{a99:.2f}", f"{b99:.2f}", f"{b99 / a99:.3f}")
        table.add_row(str(i), f"{len(a):,}", *cells)
    console.print(table)
    console.print(f"B/A p50: median over rounds {statistics.median(ratios):.3f} (below 1: B is faster)")


if __name__ == "__main__":
    main()
