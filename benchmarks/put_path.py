"""Where a put's latency goes at one client: the critical path of a write, phase by phase.

`kv_bench.py` says how fast a put is; this says why. It starts a 3-replica cluster whose nodes (and
this client) stamp, with the shared monotonic clock, every socket write and read and every fsync;
then one client puts in a loop. Each put is cut into the phases of the 2PC path, from the request's
write to its answer's read:

    request -> coordinator -> PREPARE -> replica -> fsync -> vote -> coordinator -> fsync -> answer

The replica shown is the put's slowest voter (the one the coordinator waited for); the table gives
each phase's median and mean over all puts, and the CPU each process spent per put (from /proc).
A phase that is mostly waiting for a core (the slowest voter's "PREPARE written -> read") shows
that the machine's cores, not the protocol, bound the figure.

Run: `python benchmarks/put_path.py` (options: --duration). The stamps cost a few µs each, so the
total runs a little above `kv_bench.py`'s p50. The hooks wrap private asyncio transport methods
(CPython 3.11-3.13), so every process here runs asyncio's own loop, not uvloop as Corral does by
default (see corral/eventloop.py): this is a diagnostic of where the time goes, not of how much.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import bisect
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from corral import eventloop

if TYPE_CHECKING:
    from corral.config import ClusterConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAMPS_ENV = "CORRAL_PUT_PATH_DIR"
WARMUP_PUTS = 200
VALUE = b"v" * 256

Stamp = tuple[int, str]  # (monotonic ns, kind): W socket write, R socket read, FS/FE fsync start/end


# -- stamping (in every process) --------------------------------------------------------------------


def install_stamps(directory: Path, who: str) -> Callable[[], None]:
    """Stamp socket writes and reads and fsyncs in this process; the function returned writes them
    to `directory`."""
    from asyncio import selector_events

    stamps: list[Stamp] = []
    clock = time.monotonic_ns
    transport: Any = getattr(selector_events, "_SelectorSocketTransport")  # noqa: B009 - private, on purpose
    read_ready, write, fsync = transport._read_ready, transport.write, os.fsync

    def stamped_read_ready(self: Any) -> None:
        stamps.append((clock(), "R"))
        read_ready(self)

    def stamped_write(self: Any, data: bytes) -> None:
        stamps.append((clock(), "W"))
        write(self, data)

    def stamped_fsync(fd: Any) -> None:
        stamps.append((clock(), "FS"))
        fsync(fd)
        stamps.append((clock(), "FE"))

    transport._read_ready = stamped_read_ready
    transport.write = stamped_write
    os.fsync = stamped_fsync

    def dump() -> None:
        with open(directory / f"{who}.stamps", "w") as f:
            f.writelines(f"{t} {kind}\n" for t, kind in stamps)

    return dump


def _node_main(config: str, name: str) -> int:
    atexit.register(install_stamps(Path(os.environ[STAMPS_ENV]), name))  # a node exits normally on SIGTERM
    from corral.cli.main import main

    return main(["node", "--config", config, "--name", name])


# -- the run -------------------------------------------------------------------------------------------


def _launch(directory: Path) -> Callable[[ClusterConfig, str], subprocess.Popen[bytes]]:
    def launch(config: ClusterConfig, name: str) -> subprocess.Popen[bytes]:
        logs = config.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, __file__, "--node", str(config.path), name],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, STAMPS_ENV: str(directory), "PYTHONUNBUFFERED": "1", eventloop.LOOP_ENV: "asyncio"},
            )

    return launch


def _node_name(pid: int) -> str:
    """The node a process started by `_launch` runs (the last word of its command line)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")[-1].decode()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def _put_loop(endpoints: dict[str, object], duration_s: float) -> int:
    from corral.client.aio import AsyncClient, Endpoints

    wires = tuple(tuple(w) for w in endpoints["wires"])  # type: ignore[attr-defined]
    ep = Endpoints(str(endpoints["coordinator"]), tuple(endpoints["replicas"]), (), wires=wires)  # type: ignore[arg-type]
    client = AsyncClient(ep, timeout=30)
    try:
        for i in range(WARMUP_PUTS):
            await client.put(f"warm/{i}", VALUE)
        n = 0
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            await client.put(f"path/{n % 1000}", VALUE)
            n += 1
        return n
    finally:
        await client.close()


# -- the analysis --------------------------------------------------------------------------------------


def _load(directory: Path) -> dict[str, list[Stamp]]:
    out = {}
    for f in directory.glob("*.stamps"):
        stamps = []
        for line in f.read_text().splitlines():
            t, kind = line.split()
            stamps.append((int(t), kind))
        out[f.stem] = sorted(stamps)
    return out


class _Timeline:
    """One process's stamps, searchable by time."""

    def __init__(self, stamps: list[Stamp]) -> None:
        self.by_kind: dict[str, list[int]] = defaultdict(list)
        for t, kind in stamps:
            self.by_kind[kind].append(t)

    def first(self, kind: str, after: int, before: int) -> int | None:
        times = self.by_kind[kind]
        i = bisect.bisect_left(times, after)
        return times[i] if i < len(times) and times[i] < before else None

    def last(self, kind: str, after: int, before: int) -> int | None:
        times = self.by_kind[kind]
        i = bisect.bisect_left(times, before) - 1
        return times[i] if i >= 0 and times[i] >= after else None


PHASES = (
    ("client: request written -> read by the coordinator", "wire"),
    ("coordinator: request read -> first PREPARE written", "cpu"),
    ("slowest voter: PREPARE written -> read (waits for a core)", "wire"),
    ("slowest voter: PREPARE read -> fsync starts", "cpu"),
    ("slowest voter: fsync (3 replicas fsync at once)", "disk"),
    ("slowest voter: fsync done -> vote written", "cpu"),
    ("vote written -> read by the coordinator", "wire"),
    ("coordinator: last vote read -> fsync starts", "cpu"),
    ("coordinator: fsync of the decision", "disk"),
    ("coordinator: fsync done -> answer written", "cpu"),
    ("answer written -> read by the client", "wire"),
)


def analyse(stamps: dict[str, list[Stamp]]) -> tuple[list[list[int]], list[int]]:
    """Per phase, its duration (ns) in each put whose path could be traced; and the totals."""
    client = _Timeline(stamps["client"])
    coord = _Timeline(stamps["coordinator"])
    replicas = [_Timeline(s) for name, s in sorted(stamps.items()) if name.startswith("replica")]
    requests = client.by_kind["W"][WARMUP_PUTS:]
    phases: list[list[int]] = [[] for _ in PHASES]
    totals = []
    for start, end in itertools.pairwise(requests):
        answered = client.first("R", start, end)
        c_read = coord.first("R", start, end)
        prepare = coord.first("W", c_read, end) if c_read else None
        c_fsync = coord.first("FS", prepare, end) if prepare else None
        if None in (answered, c_read, prepare, c_fsync):
            continue
        assert answered and c_read and prepare and c_fsync
        c_synced = coord.first("FE", c_fsync, end)
        answer = coord.first("W", c_synced, end) if c_synced else None
        voters = []
        for r in replicas:
            read = r.first("R", prepare, c_fsync)
            synced_at = r.first("FS", read, c_fsync) if read else None
            synced = r.first("FE", synced_at, c_fsync) if synced_at else None
            vote = r.first("W", synced, c_fsync) if synced else None
            if read and synced_at and synced and vote:
                voters.append((vote, read, synced_at, synced))
        last_vote = coord.last("R", prepare, c_fsync)
        if len(voters) != len(replicas) or not (c_synced and answer and last_vote):
            continue
        vote, read, synced_at, synced = max(voters)
        points = [start, c_read, prepare, read, synced_at, synced, vote, last_vote, c_fsync, c_synced, answer, answered]
        for i, (a, b) in enumerate(itertools.pairwise(points)):
            phases[i].append(b - a)
        totals.append(answered - start)
    return phases, totals


def report(phases: list[list[int]], totals: list[int], cpu_us: dict[str, float], puts: int, console: Console) -> None:
    table = Table(title=f"The put path at one client: {len(totals):,} of {puts:,} puts traced")
    for col in ("phase", "kind", "p50 µs", "mean µs", "share of mean"):
        table.add_column(col, justify="left" if col in ("phase", "kind") else "right")
    total_mean = statistics.mean(totals)
    for (name, kind), values in zip(PHASES, phases, strict=True):
        mean = statistics.mean(values)
        table.add_row(
            name, kind, f"{statistics.median(values) / 1e3:,.0f}", f"{mean / 1e3:,.0f}", f"{mean / total_mean:.0%}"
        )
    table.add_row(
        "request written -> answer read",
        "total",
        f"{statistics.median(totals) / 1e3:,.0f}",
        f"{total_mean / 1e3:,.0f}",
        "100%",
    )
    console.print(table)
    by_kind: dict[str, float] = defaultdict(float)
    for (_, kind), values in zip(PHASES, phases, strict=True):
        by_kind[kind] += statistics.mean(values)
    console.print("mean by kind: " + ", ".join(f"{k} {v / 1e3:,.0f} µs" for k, v in by_kind.items()))
    console.print(
        "CPU per put (user+sys): "
        + ", ".join(f"{who} {us:,.0f} µs" for who, us in cpu_us.items())
        + f"; all {sum(cpu_us.values()):,.0f} µs on {os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of puts (default 5)")
    parser.add_argument("--node", nargs=2, metavar=("CONFIG", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        sys.exit(_node_main(*args.node))

    from benchmarks import kv_bench

    with tempfile.TemporaryDirectory(prefix="corral-put-path-") as tmp:
        directory = Path(tmp) / "stamps"
        directory.mkdir()
        dump = install_stamps(directory, "client")
        endpoints, procs = kv_bench.start_corral(Path(tmp), launch=_launch(directory))
        try:
            pids = {_node_name(p.pid): p.pid for p in procs} | {"client": os.getpid()}
            ticks = {who: _cpu_ticks(pid) for who, pid in pids.items()}
            puts = asyncio.run(_put_loop(endpoints, args.duration))  # the stdlib loop, whose transports are hooked
            per_put_us = 1e6 / os.sysconf("SC_CLK_TCK") / (puts + WARMUP_PUTS)
            cpu_us = {who: (_cpu_ticks(pid) - ticks[who]) * per_put_us for who, pid in pids.items()}
        finally:
            kv_bench.stop(procs)
        dump()
        phases, totals = analyse(_load(directory))
    if not totals:
        raise SystemExit("no put could be traced (did the nodes write their stamps?)")
    report(phases, totals, cpu_us, puts, Console(width=120))


if __name__ == "__main__":
    main()
