"""Shared timing and reporting for the benchmarks: throughput, p50/p99 latency, ratio to a baseline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Result:
    name: str
    ops: int
    seconds: float
    latencies_s: list[float]
    baseline: str = ""  # name of the row this one is compared with

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else float("inf")

    def percentile_us(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        idx = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
        return ordered[idx] * 1e6


def measure(name: str, op: Callable[[int], object], count: int, *, per_call: int = 1, baseline: str = "") -> Result:
    """Call `op(i)` for i in range(count); each call does `per_call` operations."""
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        op(i)
        latencies.append((time.perf_counter() - t0) / per_call)
    elapsed = time.perf_counter() - start
    return Result(name, count * per_call, elapsed, latencies, baseline)


def report(title: str, results: list[Result], console: Console | None = None) -> None:
    console = console or Console(width=160)
    by_name = {r.name: r for r in results}
    table = Table(title=title)
    for col in ("benchmark", "ops", "ops/s", "p50 µs", "p99 µs", "ratio", "baseline"):
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for r in results:
        ratio = ""
        if r.baseline and r.baseline in by_name:
            ratio = f"{r.ops_per_s / by_name[r.baseline].ops_per_s:.2f}x"
        table.add_row(
            r.name,
            f"{r.ops:,}",
            f"{r.ops_per_s:,.0f}",
            f"{r.percentile_us(0.50):,.1f}",
            f"{r.percentile_us(0.99):,.1f}",
            ratio,
            r.baseline,
        )
    console.print(table)
