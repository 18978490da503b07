"""`corral init | up | down | status | node`: start, stop and inspect a local cluster.

`up` starts every node as a background process of its own (`python -m corral node ...`), with its
log in DIR/logs/NAME.log and its pid in DIR/run/NAME.pid, and waits until every node answers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from corral.cli import render
from corral.client.aio import NodeStatus
from corral.client.sync import Client
from corral.config import CONFIG_NAME, DEFAULT_DIR, ClusterConfig, find_config, init_cluster

# How long `up` waits for every node to answer, and `down` for a node to exit after SIGTERM.
UP_TIMEOUT_S = 30.0
DOWN_TIMEOUT_S = 10.0


def _config_path(args: argparse.Namespace) -> Path:
    if getattr(args, "dir", None):
        return find_config(Path(args.dir) / CONFIG_NAME)
    return find_config(getattr(args, "cluster", None))


def _pid_file(config: ClusterConfig, name: str) -> Path:
    return config.directory / "run" / f"{name}.pid"


def _running_pid(config: ClusterConfig, name: str) -> int | None:
    """The pid of this node's process if it is alive and really a corral node, else None."""
    try:
        pid = int(_pid_file(config, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return None
    return pid if b"corral" in cmdline and name.encode() in cmdline else None


def start_node(config: ClusterConfig, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start one node in the background (its own session: a terminal's Ctrl-C does not reach it)."""
    logs = config.directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _pid_file(config, name).parent.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "node", "--config", str(config.path), "--name", name],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
    _pid_file(config, name).write_text(f"{proc.pid}\n")
    return proc


def healthy(st: NodeStatus) -> bool:
    """Up, and for a replica: a member of the view holding a read lease (it serves reads)."""
    return st.up and (st.role != "replica" or st.lease_valid)


def wait_healthy(client: Client, names: set[str], timeout_s: float) -> list[str]:
    """Wait until every node in `names` is healthy; return those that never were."""
    deadline = time.monotonic() + timeout_s
    down = set(names)
    while down and time.monotonic() < deadline:
        for st in client.status(timeout=1.0):
            if healthy(st):
                down.discard(st.name)
        if down:
            time.sleep(0.1)  # polling a condition with a deadline, not synchronising on time
    return sorted(down)


def cmd_init(args: argparse.Namespace) -> int:
    config = init_cluster(args.dir or DEFAULT_DIR, replicas=args.replicas)
    print(f"wrote {config.path}: coordinator + {len(config.replicas)} replicas")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    console = render.console()
    directory = Path(args.dir or DEFAULT_DIR)
    path = directory / CONFIG_NAME
    config = ClusterConfig.load(path) if path.exists() else init_cluster(directory, replicas=args.replicas)
    started = []
    for name in config.nodes:
        if _running_pid(config, name) is None:
            start_node(config, name)
            started.append(name)
    with console.status(f"starting {', '.join(started) or 'nothing (all running)'} ..."), Client(config.path) as client:
        down = wait_healthy(client, set(config.nodes), UP_TIMEOUT_S)
        statuses = client.status()
    _print_status(console, config, statuses)
    if down:
        logs = config.directory / "logs"
        console.print(f"[red]not answering after {UP_TIMEOUT_S:.0f}s:[/] {', '.join(down)}; see {logs}/NAME.log")
        return 1
    hint = "" if directory.resolve() == Path(DEFAULT_DIR).resolve() else f"  (export CORRAL_CLUSTER={config.path})"
    console.print(f"cluster is up; config at {config.path}{hint}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    config = ClusterConfig.load(_config_path(args))
    stopping = {}
    for name in config.nodes:
        pid = _running_pid(config, name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            stopping[name] = pid
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while stopping and time.monotonic() < deadline:
        for name, pid in list(stopping.items()):
            if _running_pid(config, name) is None or _zombie(pid):
                del stopping[name]
        time.sleep(0.05)  # polling process exit with a deadline
    for name, pid in stopping.items():
        os.kill(pid, signal.SIGKILL)
        print(f"{name} did not stop within {DOWN_TIMEOUT_S:.0f}s; killed it")
    for name in config.nodes:
        _pid_file(config, name).unlink(missing_ok=True)
    print(f"cluster at {config.directory} is down")
    return 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def cmd_status(args: argparse.Namespace) -> int:
    config = ClusterConfig.load(_config_path(args))
    with Client(config.path, timeout=args.timeout) as client:
        statuses = client.status()
    if args.json:
        print(json.dumps([asdict(s) for s in statuses], indent=2))
    else:
        _print_status(render.console(), config, statuses)
    return 0 if all(s.up for s in statuses) else 1


def _print_status(console: Console, config: ClusterConfig, statuses: list[NodeStatus]) -> None:
    table = Table(title=f"corral cluster {config.name!r} ({config.path})")
    for col in ("node", "role", "address", "state", "revision", "digest", "in flight", "pid"):
        table.add_column(col, overflow="fold")
    for s in statuses:
        state = render.node_state(s)
        flight = str(s.prepared) + (f" ({s.locked_keys} keys locked)" if s.locked_keys else "")
        table.add_row(
            s.name,
            s.role,
            s.address,
            state,
            str(s.revision) if s.up else "",
            s.digest,
            flight if s.up else "",
            str(s.pid or ""),
        )
    console.print(table)


def cmd_node(args: argparse.Namespace) -> int:
    from corral.services.node import run_node

    run_node(args.config, args.name)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help="write DIR/corral.toml for a local cluster")
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"cluster directory (default ./{DEFAULT_DIR})")
    p.add_argument("--replicas", type=int, default=3, help="number of replicas (default 3)")
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("up", help="start a local cluster in the background (init it first if needed)")
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"cluster directory (default ./{DEFAULT_DIR})")
    p.add_argument("--replicas", type=int, default=3, help="replicas, when the cluster is new (default 3)")
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("down", help="stop every node of a local cluster")
    p.add_argument("--dir", help="cluster directory (default: the cluster lookup)")
    p.set_defaults(handler=cmd_down)

    p = sub.add_parser("status", help="a table of the cluster's nodes")
    p.add_argument("--dir", help="cluster directory (default: the cluster lookup)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("node", help="run one node in the foreground")
    p.add_argument("--config", required=True, help="path to corral.toml")
    p.add_argument("--name", required=True, help="node name, e.g. coordinator or replica-1")
    p.set_defaults(handler=cmd_node)
