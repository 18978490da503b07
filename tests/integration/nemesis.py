"""The nemesis: real client processes hammer a real cluster while processes are killed, stopped and
restarted; afterwards the history is checked for linearizability and every acknowledged write is
looked for where it must be. Jepsen's approach on one machine.

`run_nemesis` is used by tests/integration/test_nemesis.py (about a minute) and by `make soak`
(`CORRAL_SOAK_SECONDS`, as long as asked).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from corral.client.aio import AsyncClient, Endpoints
from corral.limits import Timeouts
from corral.model import KeyValue
from corral.sim.linearizability import CheckResult, Operation, OpKind, check
from tests.integration.harness import TEST_TIMEOUTS, LocalCluster
from tests.integration.nemesis_client import KEYS

ROOT = Path(__file__).resolve().parents[2]
# Short leases, so a stopped replica loses its lease (and the view moves on) within the run.
NEMESIS_TIMEOUTS: Timeouts = replace(TEST_TIMEOUTS, read_lease_ms=800, join_timeout_ms=1500)
# Between two faults the cluster gets this long to recover and serve (seconds, drawn uniformly).
QUIET_S = (1.0, 3.0)
FAULT_KINDS = ("kill-coordinator", "kill-replica", "stop-replica")
LOST_WRITE_READS = 64  # reads in flight at once when looking for every acknowledged write


def check_budget_s(seconds: float) -> float:
    """The linearizability check's time budget for a run of `seconds`: its history grows with the run."""
    return max(120.0, seconds / 4)


def timeout_s(seconds: float) -> float:
    """A whole run of `seconds`: start-up, the run, healing, the check and the lost-write reads."""
    return seconds + check_budget_s(seconds) + 180 + seconds / 4


@dataclass
class NemesisResult:
    operations: list[dict[str, object]]
    faults: list[str]
    check: CheckResult
    lost_writes: list[str] = field(default_factory=list)
    digests: set[tuple[int, str]] = field(default_factory=set)
    check_s: float = 0.0  # how long the linearizability check took
    lost_writes_s: float = 0.0  # and the search for every acknowledged write

    def summary(self) -> str:
        ok = sum(1 for o in self.operations if o["status"] == "ok")
        unknown = sum(1 for o in self.operations if o["status"] == "unknown")
        return (
            f"{len(self.operations)} operations ({ok} ok, {unknown} unknown), {len(self.faults)} faults "
            f"(checked in {self.check_s:.1f} s, writes found in {self.lost_writes_s:.1f} s): "
            f"{', '.join(self.faults[:12])}{' ...' if len(self.faults) > 12 else ''}"
        )


def _int(value: object) -> int:
    """A number of a history line (client ids, times and revisions are all ints)."""
    assert isinstance(value, int), f"not an int: {value!r}"
    return value


def to_operation(rec: dict[str, object], index: int) -> Operation | None:
    """A history line as a checker Operation; None for operations known not to have happened."""
    if rec["status"] == "failed":
        return None
    kind = OpKind(str(rec["kind"]))
    ret = rec["ret"] if rec["status"] == "ok" else None
    value = rec.get("value")
    expected = rec.get("expected")
    output: bytes | bool | None = None
    if kind is OpKind.GET:
        output = None if rec["output"] is None else str(rec["output"]).encode()
    elif kind is OpKind.CAS:
        output = bool(rec["output"])
    return Operation(
        client=_int(rec["client"]),
        kind=kind,
        key=str(rec["key"]),
        value=None if value is None else str(value).encode(),
        expected=None if expected is None else str(expected).encode(),
        output=output,
        call=_int(rec["call"]),
        ret=None if ret is None else _int(ret),
    )


class Nemesis(threading.Thread):
    """Injects one fault at a time, then lets the cluster recover."""

    def __init__(self, cluster: LocalCluster, seed: int, stop: threading.Event) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.faults: list[str] = []
        self.error: BaseException | None = None

    def _quiet(self, low: float = QUIET_S[0], high: float = QUIET_S[1]) -> None:
        # The pause between faults is the nemesis' schedule, not a synchronisation.
        self.stop_event.wait(self.rng.uniform(low, high))

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # handed to the test, which fails with it
            self.error = err

    def _run(self) -> None:
        c = self.cluster
        lease_s = NEMESIS_TIMEOUTS.read_lease_ms / 1000
        deck: list[str] = []
        while not self.stop_event.is_set():
            self._quiet()
            if self.stop_event.is_set():
                break
            if not deck:  # every kind once per round, in a random order: each run has all three
                deck = list(FAULT_KINDS)
                self.rng.shuffle(deck)
            action = deck.pop()
            if action == "kill-coordinator":
                c.kill("coordinator")
                self._quiet(0.2, 1.5)
                c.start("coordinator", wait=False)
            elif action == "kill-replica":
                victim = self.rng.choice(c.replicas)
                c.kill(victim)
                self._quiet(0.2, lease_s * 3)
                c.start(victim, wait=False)
            else:
                victim = self.rng.choice(c.replicas)
                c.pause(victim)
                self._quiet(lease_s * 1.5, lease_s * 3)  # long enough to lose its lease
                c.resume(victim)
            self.faults.append(action if action == "kill-coordinator" else f"{action}:{victim}")


def run_nemesis(
    root: Path,
    *,
    seconds: float,
    clients: int = 8,
    seed: int = 1,
    faults: bool = True,
    failpoints: dict[str, dict[str, str]] | None = None,
) -> NemesisResult:
    cluster = LocalCluster(root, timeouts=NEMESIS_TIMEOUTS)
    try:
        for node, fps in (failpoints or {}).items():
            cluster.set_failpoints(node, fps)
        cluster.start()
        out_dir = root / "histories"
        out_dir.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.nemesis_client",
                    str(cluster.path),
                    str(i),
                    str(seconds),
                    str(seed),
                    str(out_dir / f"client-{i}.jsonl"),
                ],
                env=env,
            )
            for i in range(clients)
        ]
        stop = threading.Event()
        nemesis = Nemesis(cluster, seed, stop)
        if faults:
            nemesis.start()
        for p in procs:
            p.wait(timeout=seconds + 120)
        stop.set()
        if faults:
            nemesis.join(timeout=60)
            if nemesis.error is not None:
                raise nemesis.error
        assert all(p.returncode == 0 for p in procs), "a client process failed"
        _heal(cluster)
        operations = [json.loads(line) for f in sorted(out_dir.glob("*.jsonl")) for line in f.read_text().splitlines()]
        operations += _final_reads(cluster)
        history = [op for i, rec in enumerate(operations) if (op := to_operation(rec, i)) is not None]
        started = time.monotonic()
        result = NemesisResult(operations, nemesis.faults, check(history, time_budget_s=check_budget_s(seconds)))
        result.check_s = time.monotonic() - started
        started = time.monotonic()
        result.lost_writes = _lost_writes(cluster, operations)
        result.lost_writes_s = time.monotonic() - started
        st = cluster.status()
        result.digests = {(st[r].revision, st[r].digest) for r in cluster.replicas}
        return result
    finally:
        cluster.close()


def _heal(cluster: LocalCluster) -> None:
    for name in cluster.config.nodes:
        proc = cluster.procs.get(name)
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        else:
            cluster.start(name, wait=False)
    cluster.wait_up(*cluster.config.nodes, timeout_s=60)
    cluster.wait_converged(timeout_s=60)


def _final_reads(cluster: LocalCluster) -> list[dict[str, object]]:
    """One linearizable read of every key after healing: a lost write shows as a stale final read."""
    out: list[dict[str, object]] = []
    with cluster.client(timeout=10) as c:
        for key in KEYS:
            call = time.monotonic_ns()
            kv = c.get(key)
            out.append(
                {
                    "client": -1,
                    "kind": "get",
                    "key": key,
                    "status": "ok",
                    "call": call,
                    "ret": time.monotonic_ns(),
                    "output": None if kv is None else kv.value.decode(),
                    "revision": 0,
                }
            )
    return out


def _lost_writes(cluster: LocalCluster, operations: list[dict[str, object]]) -> list[str]:
    """Every acknowledged put (and successful cas) must be in every replica's history, at its revision.

    The reads go LOST_WRITE_READS at a time: one after another, the reads for a 30-minute soak's hundreds
    of thousands of acknowledged writes outlasted its test's timeout (with 64 in flight: 40 s)."""
    acked = [
        o for o in operations if o["status"] == "ok" and (o["kind"] == "put" or (o["kind"] == "cas" and o["output"]))
    ]

    async def read_all(aio: AsyncClient) -> list[KeyValue | None]:
        window = asyncio.Semaphore(LOST_WRITE_READS)

        async def one(o: dict[str, object]) -> KeyValue | None:
            async with window:
                return await aio.get(str(o["key"]), revision=_int(o["revision"]), serializable=True)

        return await asyncio.gather(*(one(o) for o in acked))

    lost = []
    for node in cluster.config.replicas:
        with cluster.client(timeout=10) as c:
            c.aio.endpoints = Endpoints(cluster.config.coordinator.address, (node.address,), ())
            for o, kv in zip(acked, c.run(read_all(c.aio)), strict=True):
                if kv is None or kv.value.decode() != o["value"] or kv.mod_revision != o["revision"]:
                    lost.append(f"{node.name}: {o['key']}={o['value']} at revision {o['revision']} (found {kv})")
    return lost
