"""A replica that freezes or is cut off from the coordinator must not hold clients up: reads go to
another replica, and a watch it serves moves to one that has the writes (against real processes).

A frozen process (SIGSTOP, a stalled VM) keeps its TCP connections open, so nothing fails on the
client's side; a cut-off replica is alive and answers, but no commit reaches it any more."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from corral import eventloop
from corral.client import AsyncClient, connect_async
from corral.limits import WATCH_SILENT_S
from corral.model import Event
from tests.integration.harness import TEST_TIMEOUTS, LocalCluster, local_cluster
from tests.waiting import until

TIMEOUTS = replace(TEST_TIMEOUTS, read_lease_ms=1500)
SCENARIO_TIMEOUT_S = 90.0
# The client's deadline for reads: a read held by a frozen replica to this deadline fails.
READ_TIMEOUT_S = 5.0
# How long the scenario waits for a watch to deliver a write (bounds the test, not the feature).
EVENT_WAIT_S = 20.0


async def _watching(c: AsyncClient) -> tuple[list[Event], asyncio.Task[None], str]:
    """A watch on "k" that has delivered one event, the task filling its list, and the replica
    serving it."""
    revision = await c.put("k", "0")
    events: list[Event] = []

    async def follow() -> None:
        async for event in c.watch("k", start_revision=revision + 1):
            events.append(event)

    task = asyncio.get_running_loop().create_task(follow())
    await c.put("k", "1")
    await until(lambda: len(events) == 1, EVENT_WAIT_S)
    serving = [s.name for s in await c.status() if s.role == "replica" and s.watches_open == 1]
    assert len(serving) == 1, f"expected one replica serving the watch, got {serving}"
    return events, task, serving[0]


Scenario = Callable[[AsyncClient, LocalCluster, list[Event], str], Awaitable[None]]


def _run_with_a_watch(tmp_path: Path, body: Scenario) -> None:
    """Start a cluster, open a watch on "k" that has delivered one event, then run `body` with the
    client, the cluster, the watch's events (filled as they come) and the replica serving it."""

    async def scenario(cluster: LocalCluster) -> None:
        c = await connect_async(cluster.path, timeout=READ_TIMEOUT_S)
        try:
            events, task, serving = await _watching(c)
            try:
                await body(c, cluster, events, serving)
            finally:
                task.cancel()
        finally:
            await c.close()

    with local_cluster(tmp_path, timeouts=TIMEOUTS) as cluster:
        cluster.start()
        eventloop.run(asyncio.wait_for(scenario(cluster), SCENARIO_TIMEOUT_S))


def test_reads_and_watches_go_on_while_a_replica_is_frozen(tmp_path: Path) -> None:
    """The replica serving a watch is SIGSTOPped: every read is still answered (a read it holds is
    also sent to another replica), and the watch resumes elsewhere once the frozen one is silent
    past its progress interval, with the write made meanwhile, and nothing twice."""

    async def body(c: AsyncClient, cluster: LocalCluster, events: list[Event], frozen: str) -> None:
        cluster.pause(frozen)
        try:
            for _ in range(12):
                kv = await c.get("k")
                assert kv is not None and kv.value == b"1"
            await c.put("k", "2", timeout=15)  # once the view has dropped the frozen replica
            await until(lambda: len(events) == 2, EVENT_WAIT_S)
            assert [e.kv.value for e in events] == [b"1", b"2"]
        finally:
            cluster.resume(frozen)

    _run_with_a_watch(tmp_path, body)


def test_a_watch_on_a_cut_off_replica_moves_to_one_that_has_the_writes(tmp_path: Path) -> None:
    """The replica serving a watch is cut off from the coordinator (failpoints drop every message
    between them): it is alive and answers, but no commit reaches it. Without its read lease it ends
    the stream, and the watch resumes on a member, which delivers the write made without it."""

    async def body(c: AsyncClient, cluster: LocalCluster, events: list[Event], cut_off: str) -> None:
        await c.set_failpoint(cut_off, "replica.recv.coordinator", "drop")
        await c.set_failpoint(cut_off, "replica.send_other.coordinator", "drop")
        await c.put("k", "2", timeout=15)  # once the view has dropped the cut-off replica
        await until(lambda: len(events) == 2, EVENT_WAIT_S)
        assert [e.kv.value for e in events] == [b"1", b"2"]

    _run_with_a_watch(tmp_path, body)


def test_an_idle_watch_stays_on_its_replica(tmp_path: Path) -> None:
    """Nothing is written for several times WATCH_SILENT_S, while the replicas renew their read leases:
    the stream's progress reports keep the client from taking it for dead, so it stays where it is
    (a watch that moved every few seconds would cost a reconnect and a catch-up read each time)."""

    async def body(c: AsyncClient, cluster: LocalCluster, events: list[Event], serving: str) -> None:
        loop = asyncio.get_running_loop()
        until_s = loop.time() + 2.5 * WATCH_SILENT_S  # the scenario's length, not a synchronisation
        while loop.time() < until_s:
            open_now = {s.name: s.watches_open for s in await c.status() if s.role == "replica"}
            assert open_now[serving] == 1 and sum(open_now.values()) == 1, open_now
            await asyncio.sleep(0.25)

    _run_with_a_watch(tmp_path, body)
