"""Fixtures for the recipe tests: real clusters (OS processes on loopback) and client processes.

Tests that only use clients share one cluster per session (each test uses its own recipe names);
tests that kill a server start their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import LocalCluster, local_cluster, wait_until

ROOT = Path(__file__).parents[2]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a client process (or several, sharing the file) wrote so far."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def append_record(path: Path, event: str, **fields: Any) -> float:
    """Append one record as the test process (e.g. "killed"), in the clients' format; return its time."""
    now = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({"ev": event, "t": now, "pid": os.getpid(), **fields}) + "\n").encode())
    finally:
        os.close(fd)
    return now


def crash_servers_under(cluster: LocalCluster, done: Callable[[], int], what: str) -> None:
    """Fail the servers one way after another while clients work: the coordinator killed -9 and
    restarted, a replica killed -9 (then restarted), another paused until the view drops it (then
    resumed), the coordinator killed again. Before the first fault and after each step, `done()` (the
    clients' finished operations so far) must grow by 3: `what` goes on during and after each fault."""

    def goes_on(after: str) -> None:
        seen = done()
        wait_until(lambda: done() >= seen + 3, 60, f"{what} to go on after {after}")

    def view() -> tuple[str, ...]:
        return cluster.status()["coordinator"].view_members

    first, second, _ = cluster.replicas
    goes_on("the start")
    cluster.kill("coordinator")
    cluster.start("coordinator")
    goes_on("a coordinator crash")
    cluster.kill(first)
    goes_on(f"{first} was killed")
    cluster.start(first)
    goes_on(f"{first} restarted")
    cluster.pause(second)
    wait_until(lambda: second not in view(), 30, f"the view to drop the paused {second}")
    goes_on(f"{second} left the view")
    cluster.resume(second)
    cluster.wait_up(second)
    goes_on(f"{second} rejoined")
    cluster.kill("coordinator")
    cluster.start("coordinator")
    goes_on("the second coordinator crash")


class ClientProcesses:
    """Client processes (tests/recipes/client.py) started by one test, all killed at its end."""

    def __init__(self, cluster: LocalCluster, logs: Path) -> None:
        self.cluster = cluster
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: dict[subprocess.Popen[bytes], Path] = {}  # each process's log file

    def start(self, role: str, *args: object) -> subprocess.Popen[bytes]:
        log = self.logs / f"client-{len(self.procs)}-{role}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.recipes.client", role, str(self.cluster.path), *map(str, args)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        self._logs[proc] = log
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> float:
        """kill -9 and reap; return the time the process was certainly dead."""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return time.monotonic()

    def wait_all(self, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
        """Wait for every process to exit; fail (showing its log) if one fails or is late."""
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(self._stuck_report(procs, timeout_s)) from None
            log = self._logs[proc].read_text(errors="replace")
            assert code == 0, f"client {proc.args!r} exited {code}:\n{log[-3000:]}"

    def _stuck_report(self, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> str:
        """Every client still running after the deadline, with its log and a dump of its stacks."""
        stuck = [p for p in procs if p.poll() is None]
        for proc in stuck:
            proc.send_signal(signal.SIGUSR1)  # faulthandler in the client dumps every thread's stack
        try:
            stuck[0].wait(timeout=2)  # give the dumps a moment to reach the logs (they keep running)
        except subprocess.TimeoutExpired:
            pass
        parts = [f"{len(stuck)} client(s) still running after {timeout_s}s:"]
        for proc in stuck:
            log = self._logs[proc].read_text(errors="replace")
            parts.append(f"--- {proc.args!r}\n{log[-4000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("shared-cluster")) as cluster:
        cluster.start()
        yield cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path / "cluster") as cluster:
        cluster.start()
        yield cluster


@pytest.fixture
def clients(shared_cluster: LocalCluster, tmp_path: Path) -> Iterator[ClientProcesses]:
    procs = ClientProcesses(shared_cluster, tmp_path)
    try:
        yield procs
    finally:
        procs.close()
