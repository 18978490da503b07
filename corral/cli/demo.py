"""`corral demo`: a guided tour of what exists, runnable on a fresh machine in a second or two."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from corral.cli import render
from corral.cli.cluster import start_node, wait_healthy
from corral.client import Client
from corral.config import new_cluster
from corral.core.snapshot_array import SnapshotArray
from corral.errors import Compacted, CorralError, NotFound
from corral.limits import DEFAULT_TIMEOUTS
from corral.model import Compare, CompareOp, CompareTarget, Delete, Put
from corral.store.mvcc import MVCCStore


def _tour_snapshots(console: Console) -> None:
    console.rule("[bold]1. Worker progress snapshots (seed 0)")
    console.print("Three worker nodes, each counting the subtasks it has executed; all start at 0.\n")
    nodes = SnapshotArray(3)
    nodes.set_state(1, 4)
    console.print("  set_state(1, 4)")
    first = nodes.snapshot()
    console.print(f"  snapshot()        -> {first}")
    nodes.set_state(1, 7)
    console.print("  set_state(1, 7)")
    second = nodes.snapshot()
    console.print(f"  snapshot()        -> {second}")
    console.print(f"  fetch_state(1, 0) -> [bold green]{nodes.fetch_state(1, first)}[/]   (node 1 as of snapshot 0)")
    console.print(f"  fetch_state(1, 1) -> [bold green]{nodes.fetch_state(1, second)}[/]")
    try:
        nodes.fetch_state(1, 5)
    except NotFound as err:
        console.print(f"  fetch_state(1, 5) -> [yellow]NotFound[/]: {err.message}")
    console.print()


def _tour_store(console: Console, data_dir: Path) -> None:
    console.rule("[bold]2. The versioned key/value store (every replica's storage)")
    path = data_dir / "store.db"
    with MVCCStore(path) as store:
        r1 = store.put("/config/db/url", b"postgres://db-1")
        r2 = store.put("/config/db/pool", b"10")
        r3 = store.put("/config/db/url", b"postgres://db-2")
        r4 = store.txn([Put("/config/cache", b"redis://c-1"), Delete("/config/db/pool")]).revision
        console.print(
            f"Four committed writes got revisions {r1}, {r2}, {r3} and {r4} (the last a two-key transaction).\n"
        )

        table = Table(title="range('/config/') at each revision", show_lines=False)
        table.add_column("revision", justify="right")
        table.add_column("keys -> values")
        for rev in (r1, r2, r3, r4):
            items = ", ".join(f"{kv.key}={kv.value.decode()}" for kv in store.range("/config/", revision=rev))
            table.add_row(str(rev), items)
        console.print(table)

        kv = store.get("/config/db/url")
        assert kv is not None
        console.print(
            f"\nget('/config/db/url') -> {kv.value.decode()!r}  "
            f"(created at {kv.create_revision}, modified at {kv.mod_revision}, version {kv.version})"
        )
        store.compact(r3)
        try:
            store.get("/config/db/url", revision=r1)
        except Compacted as err:
            console.print(f"after compact({r3}): get at revision {r1} -> [yellow]Compacted[/]: {err.message}")
        digest = store.digest()
    with MVCCStore(path) as reopened:
        console.print(
            f"reopened from disk: revision {reopened.revision}, digest {reopened.digest()} "
            f"({'same' if reopened.digest() == digest else 'DIFFERENT'} as before closing)\n"
        )


def _tour_errors(console: Console, data_dir: Path) -> None:
    console.rule("[bold]3. Bad input gets a clear error, and nothing is written")
    with MVCCStore(data_dir / "errors.db") as store:
        attempts: list[tuple[str, Callable[[], object]]] = [
            ("put('', b'x')", lambda: store.put("", b"x")),
            ("put('a\\x00b', b'x')", lambda: store.put("a\x00b", b"x")),
            ("put('k', 'text')", lambda: store.put("k", "text")),  # type: ignore[arg-type]
            ("put('k', 2 MiB)", lambda: store.put("k", b"x" * (2 * 1024 * 1024))),
        ]
        for label, attempt in attempts:
            try:
                attempt()
            except CorralError as err:
                console.print(f"  {label:<22} -> [yellow]{type(err).__name__}[/]: {err.message}")
        console.print(f"  store revision afterwards: {store.revision} (nothing was written)\n")


def _status_table(client: Client, title: str) -> Table:
    table = Table(title=title)
    for col in ("node", "state", "revision", "digest"):
        table.add_column(col)
    for st in client.status(timeout=1.0):
        table.add_row(st.name, render.node_state(st), str(st.revision) if st.up else "", st.digest)
    return table


def _tour_cluster(console: Console, data_dir: Path) -> None:
    console.rule("[bold]4. A replicated cluster: kill -9 a replica, keep writing, watch it rejoin")
    config = new_cluster(data_dir / "cluster", replicas=3, timeouts=replace(DEFAULT_TIMEOUTS, read_lease_ms=1000))
    config.save()
    procs = {}
    try:
        with console.status("starting a coordinator and 3 replicas (separate processes, loopback gRPC) ..."):
            procs = {name: start_node(config, name) for name in config.nodes}
            with Client(config.path, timeout=10) as client:
                down = wait_healthy(client, set(config.nodes), 30)
        if down:
            console.print(f"[red]nodes did not start: {down}[/]")
            return
        with Client(config.path, timeout=10) as client:
            for i in range(5):
                client.put(f"/jobs/{i}", f"queued-{i}")
            cas = client.txn(
                [Compare("/jobs/0", CompareTarget.VALUE, CompareOp.EQUAL, b"queued-0")], [Put("/jobs/0", b"running")]
            )
            console.print(f"5 writes, each prepared and committed on every replica; a compare-and-set -> {cas}")
            console.print(_status_table(client, "every replica: same revision, same digest"))
            procs["replica-2"].send_signal(signal.SIGKILL)
            procs["replica-2"].wait(timeout=10)
            start = time.monotonic()
            rev = client.put("/jobs/5", "queued-5")  # retried by the SDK until the view drops replica-2
            console.print(
                f"\nkill -9 replica-2: the next write committed at revision {rev} after "
                f"{time.monotonic() - start:.1f} s (once replica-2's read lease expired, the view moved on)"
            )
            procs["replica-2"] = start_node(config, "replica-2")
            with console.status("restarting replica-2: it catches up from a member and rejoins the view ..."):
                wait_healthy(client, {"replica-2"}, 30)
            console.print(_status_table(client, "replica-2 is back, caught up: digests agree again"))
            value = client.get("/jobs/0")
            console.print(f"linearizable read of /jobs/0 -> {value.value.decode() if value else None!r}\n")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_demo(console: Console) -> None:
    console.print(
        Panel.fit(
            "[bold]Corral[/] — a distributed process coordinator\n"
            "replicated durable key/value store · coordination recipes · durable jobs",
            border_style="cyan",
        )
    )
    with tempfile.TemporaryDirectory(prefix="corral-demo-") as tmp:
        data_dir = Path(tmp)
        _tour_snapshots(console)
        _tour_store(console, data_dir)
        _tour_errors(console, data_dir)
        _tour_cluster(console, data_dir)
    console.print(
        "Next: [bold]corral up[/] starts a local cluster in ./corral-data; [bold]corral status[/], "
        "[bold]corral put/get/txn[/] use it; [bold]make test[/] runs the whole suite."
    )
