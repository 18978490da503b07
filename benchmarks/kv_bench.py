"""Key/value benchmark: a 3-replica Corral cluster against a 3-member etcd, same workload, same run.

For each concurrency level (default 1, 16 and 64 clients) it measures durable puts/s and
linearizable gets/s with p50/p99 latency. The load comes from worker processes (so the client's own
CPU is spread like the servers'), each running async clients: Corral's own client (its call streams
over each node's wire), and for etcd a Python gRPC client of the same shape; both on uvloop, as
Corral's nodes are (etcd's client did no better on asyncio's loop: 3 interleaved runs each, within
noise). When the `etcd` binary is installed (Debian package etcd-server) it starts a 3-member etcd
on loopback next to Corral; the two take turns phase by phase, alternating which goes first, and it
prints Corral/etcd ratios.

Run: `python benchmarks/kv_bench.py` (options: --duration, --clients, --procs, --no-etcd).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from corral import eventloop

if TYPE_CHECKING:
    from collections.abc import Callable

    from corral.config import ClusterConfig

    Launch = Callable[[ClusterConfig, str], subprocess.Popen[bytes]]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VALUE = b"v" * 256
KEYS_PER_CLIENT = 50  # each client cycles over its own keys: no conflicts, realistic spread
LATENCY_SAMPLE_MAX = 20_000  # per worker: bounds the JSON a worker sends back
WARMUP_OPS = 200  # a turn-taking client's puts before it starts (connections, caches)
BURST = 25  # puts in a row on one side when taking turns


# -- workers (run in subprocesses) ---------------------------------------------------------------


Ops = tuple[Any, Any, Any]  # put(i, n), get(i, n), close(): one system's client operations


async def _corral_ops(spec: dict[str, object]) -> Ops:
    from corral.client.aio import AsyncClient, Endpoints

    wires = tuple(tuple(w) for w in spec["wires"])  # type: ignore[attr-defined]
    endpoints = Endpoints(str(spec["coordinator"]), tuple(spec["replicas"]), (), wires=wires)  # type: ignore[arg-type]
    client = AsyncClient(endpoints, timeout=30)
    prefix = f"bench/{spec['worker']}"

    async def put(i: int, n: int) -> None:
        await client.put(f"{prefix}/{i}/{n % KEYS_PER_CLIENT}", VALUE)

    async def get(i: int, n: int) -> None:
        await client.get(f"{prefix}/{i}/{n % KEYS_PER_CLIENT}")

    return put, get, client.close


async def _etcd_ops(spec: dict[str, object]) -> Ops:
    import grpc

    etcd_pb2, etcd_grpc = _etcd_modules(Path(str(spec["gen_dir"])))
    channels = [grpc.aio.insecure_channel(a) for a in spec["members"]]  # type: ignore[attr-defined]
    stubs = [etcd_grpc.KVStub(c) for c in channels]
    rng = random.Random()
    prefix = f"bench/{spec['worker']}"

    async def put(i: int, n: int) -> None:
        key = f"{prefix}/{i}/{n % KEYS_PER_CLIENT}".encode()
        await rng.choice(stubs).Put(etcd_pb2.PutRequest(key=key, value=VALUE), timeout=30)

    async def get(i: int, n: int) -> None:
        key = f"{prefix}/{i}/{n % KEYS_PER_CLIENT}".encode()
        await rng.choice(stubs).Range(etcd_pb2.RangeRequest(key=key), timeout=30)

    async def close() -> None:
        for c in channels:
            await c.close(None)

    return put, get, close


async def _worker(spec: dict[str, object]) -> dict[str, object]:
    put, get, close = await (_corral_ops if spec["system"] == "corral" else _etcd_ops)(spec)
    try:
        return await _drive(spec, put, get)
    finally:
        await close()


async def _burst_worker(spec: dict[str, object]) -> None:
    """One client taking turns (`take_turns`): per line "N" on stdin do N puts back to back, then
    answer b"d"; on "q" print the latencies as JSON. It answers b"r" once warmed up."""
    put, _, close = await (_corral_ops if spec["system"] == "corral" else _etcd_ops)(spec)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    out = sys.stdout.fileno()
    for n in range(WARMUP_OPS):
        await put(0, n)
    write_all(out, b"r")
    latencies: list[float] = []
    n = 0
    while (line := await commands.readline()).strip().isdigit():
        for _ in range(int(line)):
            started = time.perf_counter()
            await put(0, n)
            latencies.append(time.perf_counter() - started)
            n += 1
        write_all(out, b"d")
    await close()
    write_all(out, b"\n" + json.dumps(latencies).encode() + b"\n")


def expect(stream: IO[bytes], want: bytes, who: str) -> None:
    """Read one byte of a turn-taking client's answer; it must be `want`."""
    got = stream.read(1)
    if got != want:
        raise SystemExit(f"the {who} client stopped (read {got!r}); see its cluster's logs")


def take_turns(
    clients: list[subprocess.Popen[bytes]], duration_s: float, burst: int
) -> tuple[list[float], list[float]]:
    """Alternate two turn-taking clients a burst at a time (A then B, then B then A) for
    `duration_s`: only one works at any instant, and both see the same machine within milliseconds.
    Each one's latencies (seconds)."""
    deadline = time.monotonic() + duration_s
    n = 0
    while time.monotonic() < deadline:
        for side in (0, 1) if n % 2 == 0 else (1, 0):
            client = clients[side]
            client.stdin.write(b"%d\n" % burst)  # type: ignore[union-attr]
            client.stdin.flush()  # type: ignore[union-attr]
            expect(client.stdout, b"d", "AB"[side])  # type: ignore[arg-type]
        n += 1
    latencies = []
    for client in clients:
        out, _ = client.communicate(b"q\n", timeout=60)
        latencies.append(json.loads(out.rsplit(b"\n", 2)[-2]))
    return latencies[0], latencies[1]


async def _drive(spec: dict[str, object], put, get) -> dict[str, object]:  # type: ignore[no-untyped-def]
    clients = int(spec["clients"])  # type: ignore[call-overload]
    duration = float(spec["duration"])  # type: ignore[arg-type]
    op = put if spec["phase"] == "put" else get
    if spec["phase"] == "get":  # the keys exist before they are read
        await asyncio.gather(*(put(i, n) for i in range(clients) for n in range(KEYS_PER_CLIENT)))
    latencies: list[float] = []
    count = 0
    errors = 0
    deadline = time.monotonic() + duration

    async def loop(i: int) -> None:
        nonlocal count, errors
        n = 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                await op(i, n)
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            count += 1
            n += 1

    start = time.monotonic()
    await asyncio.gather(*(loop(i) for i in range(clients)))
    elapsed = time.monotonic() - start
    if len(latencies) > LATENCY_SAMPLE_MAX:
        latencies = random.Random(0).sample(latencies, LATENCY_SAMPLE_MAX)
    return {"count": count, "errors": errors, "elapsed": elapsed, "latencies": latencies}


def _etcd_modules(gen_dir: Path):  # type: ignore[no-untyped-def]
    """Generate (once) and import the etcd KV stubs from benchmarks/etcd/etcd_kv.proto."""
    if not (gen_dir / "etcd_kv_pb2_grpc.py").exists():
        from grpc_tools import protoc  # type: ignore[import-untyped]

        gen_dir.mkdir(parents=True, exist_ok=True)
        proto_dir = ROOT / "benchmarks" / "etcd"
        code = protoc.main(
            [
                "protoc",
                f"-I{proto_dir}",
                f"--python_out={gen_dir}",
                f"--grpc_python_out={gen_dir}",
                str(proto_dir / "etcd_kv.proto"),
            ]
        )
        if code != 0:
            raise SystemExit("could not generate the etcd stubs")
    sys.path.insert(0, str(gen_dir))
    import etcd_kv_pb2  # type: ignore[import-not-found]
    import etcd_kv_pb2_grpc  # type: ignore[import-not-found]

    return etcd_kv_pb2, etcd_kv_pb2_grpc


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    if spec["phase"] == "turns":
        eventloop.run(_burst_worker(spec))
        return
    write_all(sys.stdout.fileno(), json.dumps(eventloop.run(_worker(spec))).encode() + b"\n")


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to a pipe. After a uvloop loop closes, a blocking write to a pipe can
    return short (libuv's io_uring leaves work that counts as a pending signal), and `print` then
    drops the rest: seen here as a worker's 100 kB of JSON cut at 64 KiB."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- clusters -------------------------------------------------------------------------------------


@dataclass
class Phase:
    system: str
    phase: str
    clients: int
    ops: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def start_corral(
    tmp: Path, launch: Launch | None = None, *, ready_s: float = 30
) -> tuple[dict[str, object], list[subprocess.Popen[bytes]]]:
    """A 3-replica cluster in `tmp`, its nodes started by `launch` (default: as `corral cluster up` does).
    If it is not healthy within `ready_s`, its nodes are stopped and SystemExit says which were down."""
    from corral.cli.cluster import start_node, wait_healthy
    from corral.client import Client
    from corral.config import new_cluster

    config = new_cluster(tmp / "corral", replicas=3)
    config.save()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs += [(launch or start_node)(config, name) for name in config.nodes]
        with Client(config.path) as c:
            down = wait_healthy(c, set(config.nodes), ready_s)
        if down:
            logs = config.directory / "logs"
            tails = "".join(f"\n  {name}: {_last_line(logs / f'{name}.log')}" for name in sorted(down))
            raise SystemExit(f"corral nodes did not start: {sorted(down)}; the last line each logged:{tails}")
    except BaseException:
        stop(procs)  # the caller never gets them, so nothing may outlive a failed start
        raise
    endpoints: dict[str, object] = {
        "coordinator": config.coordinator.address,
        "replicas": [r.address for r in config.replicas],
        "wires": [(n.address, n.peer_address) for n in config.nodes.values()],
    }
    return endpoints, procs


def _last_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"(no log: {err.strerror})"
    return lines[-1] if lines else "(empty log)"


def start_etcd(tmp: Path, binary: str) -> tuple[dict[str, object], list[subprocess.Popen[bytes]]]:
    from corral.config import free_port

    names = ["m1", "m2", "m3"]
    client_ports = {n: free_port() for n in names}
    peer_ports = {n: free_port() for n in names}
    cluster = ",".join(f"{n}=http://127.0.0.1:{peer_ports[n]}" for n in names)
    procs = []
    for n in names:
        log = open(tmp / f"etcd-{n}.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    "--name",
                    n,
                    "--data-dir",
                    str(tmp / f"etcd-{n}"),
                    "--listen-client-urls",
                    f"http://127.0.0.1:{client_ports[n]}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{client_ports[n]}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{peer_ports[n]}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{peer_ports[n]}",
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "corral-bench",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    members = [f"127.0.0.1:{client_ports[n]}" for n in names]
    gen_dir = tmp / "etcd-gen"
    try:
        _wait_etcd(members, gen_dir)
    except BaseException:
        stop(procs)
        raise
    return {"members": members, "gen_dir": str(gen_dir)}, procs


def _wait_etcd(members: list[str], gen_dir: Path) -> None:
    import grpc

    etcd_pb2, etcd_grpc = _etcd_modules(gen_dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(members[0]) as ch:
                etcd_grpc.KVStub(ch).Put(etcd_pb2.PutRequest(key=b"ready", value=b"1"), timeout=2)
            return
        except grpc.RpcError:
            time.sleep(0.2)  # polling for the cluster to elect a leader, with a deadline
    raise SystemExit("etcd did not become ready in 30 s")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def run_phase(system: str, endpoints: dict[str, object], phase: str, clients: int, args: argparse.Namespace) -> Phase:
    procs = max(1, min(args.procs, clients))
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = []
    for w, share in enumerate(shares):
        spec = {
            **endpoints,
            "system": system,
            "phase": phase,
            "clients": share,
            "duration": args.duration,
            "worker": f"{phase}{clients}-{w}",
        }
        workers.append(
            subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE)
        )
    results: list[dict[str, Any]] = []
    for p in workers:
        out, _ = p.communicate(timeout=args.duration * 10 + 120)
        if p.returncode != 0:
            raise SystemExit(f"a {system} {phase} worker failed")
        results.append(json.loads(out))
    latencies = sorted(x for r in results for x in r["latencies"])

    def pct(q: float) -> float:
        return float(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else 0.0

    return Phase(
        system,
        phase,
        clients,
        sum(r["count"] for r in results),
        sum(r["errors"] for r in results),
        max(r["elapsed"] for r in results),
        pct(0.50),
        pct(0.99),
    )


def report(phases: list[Phase]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Corral vs etcd: 3 replicas/members on loopback, 256-byte values")
    for col in ("system", "clients", "op", "ops/s", "p50 ms", "p99 ms", "errors", "corral/etcd ops/s", "p50 ratio"):
        table.add_column(col, justify="left" if col in ("system", "op") else "right")
    by_key = {(p.system, p.phase, p.clients): p for p in phases}
    for p in phases:
        ratio = p50 = ""
        other = by_key.get(("etcd", p.phase, p.clients))
        if p.system == "corral" and other and other.ops_per_s:
            ratio = f"{p.ops_per_s / other.ops_per_s:.2f}x"
            p50 = f"{p.p50_ms / other.p50_ms:.2f}x" if other.p50_ms else ""
        table.add_row(
            p.system,
            str(p.clients),
            p.phase,
            f"{p.ops_per_s:,.0f}",
            f"{p.p50_ms:.2f}",
            f"{p.p99_ms:.2f}",
            str(p.errors),
            ratio,
            p50,
        )
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase (default 5)")
    parser.add_argument("--clients", default="1,16,64", help="concurrency levels (default 1,16,64)")
    parser.add_argument("--procs", type=int, default=2, help="client worker processes (default 2)")
    parser.add_argument("--no-etcd", action="store_true", help="skip etcd even if it is installed")
    parser.add_argument("--only-etcd", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--paired",
        type=float,
        default=10.0,
        help="seconds of 1-client puts taking turns with etcd (default 10; 0: none)",
    )
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return
    levels = [int(x) for x in args.clients.split(",")]
    etcd = None if args.no_etcd else shutil.which("etcd")
    systems = ([] if args.only_etcd else ["corral"]) + (["etcd"] if etcd else [])
    if not etcd and not args.no_etcd:
        print("etcd is not installed (Debian package etcd-server); measuring Corral alone")
    phases: list[Phase] = []
    # Both systems run side by side and take turns phase by phase, first one then the other, then
    # the other way round: a machine that changes speed during the run (this one does, by ±15% within
    # minutes) then moves both figures of a ratio, not one.
    with contextlib.ExitStack() as stack:
        running: dict[str, dict[str, object]] = {}
        for system in systems:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{system}-")))
            endpoints, procs = start_corral(tmp) if system == "corral" else start_etcd(tmp, etcd or "")
            stack.callback(stop, procs)
            running[system] = endpoints
        turn = 0
        for clients in levels:
            for phase in ("put", "get"):
                order = systems if turn % 2 == 0 else systems[::-1]
                turn += 1
                for system in order:
                    result = run_phase(system, running[system], phase, clients, args)
                    print(
                        f"{system:6} {phase} clients={clients:3}: {result.ops_per_s:8,.0f} ops/s "
                        f"p50={result.p50_ms:.2f} ms p99={result.p99_ms:.2f} ms errors={result.errors}",
                        flush=True,
                    )
                    phases.append(result)
        paired = None
        if len(running) == 2 and args.paired > 0:
            paired = paired_puts([(system, running[system]) for system in ("corral", "etcd")], args.paired)
    phases.sort(key=lambda p: (systems.index(p.system), levels.index(p.clients), p.phase != "put"))
    report(phases)
    if paired is not None:
        corral_p50, etcd_p50 = (statistics.median(x) * 1000 for x in paired)
        print(
            f"1 client, taking turns with etcd in bursts of {BURST} puts for {args.paired:g} s: put p50 corral "
            f"{corral_p50:.2f} ms, etcd {etcd_p50:.2f} ms, ratio {corral_p50 / etcd_p50:.2f}x "
            f"({len(paired[0]):,} and {len(paired[1]):,} puts)"
        )


def paired_puts(sides: list[tuple[str, dict[str, object]]], duration_s: float) -> tuple[list[float], list[float]]:
    """1-client put latencies of two clusters (system name, endpoints), their clients taking turns in
    bursts: a phase of 5 s each, minutes apart, sees a machine that changes speed by ±20%; bursts of
    ~50 ms see the same one. (The phases' 1-client p50 ratio ranged 0.99-1.69 over 9 runs in one
    evening; taking turns, 1.22-1.29 over 4.)"""
    clients = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                json.dumps({**endpoints, "system": system, "phase": "turns", "worker": f"turns-{side}"}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for side, (system, endpoints) in enumerate(sides)
    ]
    try:
        for (system, _), client in zip(sides, clients, strict=True):
            expect(client.stdout, b"r", system)  # type: ignore[arg-type]
        return take_turns(clients, duration_s, BURST)
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
