"""A real local cluster for tests: OS processes on loopback ports, SQLite files in a temp dir.

Every wait is on a condition with a deadline; every process is killed at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TypedDict, TypeVar, Unpack

from corral.cli.cluster import healthy, start_node
from corral.client import Client, NodeStatus
from corral.config import ClusterConfig, new_cluster
from corral.limits import Timeouts

# Short protocol timers so failure tests finish quickly; still far above loopback latencies.
TEST_TIMEOUTS = Timeouts(
    prepare_timeout_ms=1500,
    commit_retry_ms=100,
    resolve_after_ms=200,
    resolve_interval_ms=200,
    request_timeout_ms=5000,
)
START_TIMEOUT_S = 30.0

_T = TypeVar("_T")


class ClientOptions(TypedDict, total=False):
    """Keyword arguments of `Client` (its defaults apply to those left out)."""

    timeout: float
    client_id: str | None


class ClusterOptions(TypedDict, total=False):
    """Keyword arguments of `LocalCluster` (its defaults apply to those left out)."""

    replicas: int
    timeouts: Timeouts


def wait_until(check: Callable[[], _T | None], timeout_s: float, what: str, interval_s: float = 0.05) -> _T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: _T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)  # polling a condition with a deadline
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


class LocalCluster:
    def __init__(self, root: Path, *, replicas: int = 3, timeouts: Timeouts = TEST_TIMEOUTS) -> None:
        self.config: ClusterConfig = new_cluster(root, replicas=replicas, timeouts=timeouts)
        self.config.save()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._clients: list[Client] = []

    @property
    def path(self) -> Path:
        return self.config.path

    @property
    def replicas(self) -> list[str]:
        return [r.name for r in self.config.replicas]

    def set_failpoints(self, name: str, failpoints: dict[str, str]) -> None:
        """Failpoints armed in the config, in force from the node's next start."""
        node = replace(self.config.nodes[name], failpoints=failpoints)
        self.config = replace(self.config, nodes={**self.config.nodes, name: node})
        self.config.save()

    # -- processes ----------------------------------------------------------------------------

    def start(self, *names: str, wait: bool = True) -> None:
        names = names or tuple(self.config.nodes)
        for name in names:
            proc = self.procs.get(name)
            assert proc is None or proc.poll() is not None, f"{name} is already running"
            self.procs[name] = start_node(self.config, name)
        if wait:
            self.wait_up(*names)

    def wait_up(self, *names: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the nodes answer and (replicas) serve reads: members of the view with a lease."""
        with self.client(timeout=2) as c:
            wait_until(
                lambda: all(healthy(s) for s in c.status(timeout=1.0) if s.name in names),
                timeout_s,
                f"{names} to be healthy",
            )

    def kill(self, *names: str) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        for name in names or tuple(self.procs):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)

    def stop(self, *names: str) -> None:
        """SIGTERM: a clean shutdown."""
        for name in names or tuple(self.procs):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)

    def pause(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGCONT)

    def wait_exited(self, name: str, timeout_s: float = 15.0) -> int:
        proc = self.procs[name]
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not exit within {timeout_s}s") from None

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def log(self, name: str) -> str:
        return (self.config.directory / "logs" / f"{name}.log").read_text(errors="replace")

    # -- clients ------------------------------------------------------------------------------

    def client(self, **kwargs: Unpack[ClientOptions]) -> Client:
        c = Client(self.path, **kwargs)
        self._clients.append(c)
        return c

    def pinned_client(self, replica: str, timeout: float) -> Client:
        """A client whose reads all go to one replica."""
        c = self.client(timeout=timeout)
        c.aio.endpoints = replace(c.aio.endpoints, replicas=(self.config.node(replica).address,))
        return c

    def status(self) -> dict[str, NodeStatus]:
        with self.client(timeout=2) as c:
            return {s.name: s for s in c.status(timeout=1.0)}

    def failpoint(self, node: str, name: str, action: str) -> None:
        with self.client(timeout=5) as c:
            c.set_failpoint(node, name, action)

    def converged(self) -> tuple[int, str] | None:
        """(revision, digest) if every replica is up, idle, and agrees; else None."""
        st = self.status()
        reps = [st[n] for n in self.replicas]
        if not all(s.up and s.prepared == 0 for s in reps):
            return None
        if len({(s.revision, s.digest) for s in reps}) != 1:
            return None
        return reps[0].revision, reps[0].digest

    def wait_converged(self, timeout_s: float = 20.0) -> tuple[int, str]:
        return wait_until(self.converged, timeout_s, "replicas to agree on revision and digest")

    def close(self) -> None:
        for c in self._clients:
            with suppress(Exception):
                c.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def local_cluster(root: Path, **kwargs: Unpack[ClusterOptions]) -> Iterator[LocalCluster]:
    cluster = LocalCluster(root, **kwargs)
    try:
        yield cluster
    finally:
        cluster.close()
