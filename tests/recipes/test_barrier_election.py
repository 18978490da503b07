"""Barrier, DoubleBarrier and LeaderElection, in process and across processes."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from corral.client import connect_async
from corral.errors import FailedPrecondition, LeaseExpired
from corral.recipes import Barrier, BlockingBarrier, DoubleBarrier, LeaderElection, WaitTimeout
from tests.integration.harness import LocalCluster, wait_until
from tests.recipes.conftest import ClientProcesses, append_record, read_records
from tests.recipes.test_lock import run


def test_barrier_waits_until_removed(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        barrier = Barrier(client, "gate")
        await barrier.wait(timeout=1)  # open: returns at once
        await barrier.set()
        assert await barrier.is_set()
        with pytest.raises(WaitTimeout):
            await barrier.wait(timeout=0.2)
        waiting = asyncio.create_task(Barrier(client, "gate").wait(timeout=20))
        await barrier.remove()
        await waiting
        # Set with a session: the barrier opens by itself when the session ends.
        session = await client.session(2)
        await barrier.set(session=session)
        waiting = asyncio.create_task(barrier.wait(timeout=20))
        await session.close()
        await waiting
        await client.close()

    run(scenario())


def test_blocking_barrier(shared_cluster: LocalCluster) -> None:
    with shared_cluster.client(timeout=10) as client:
        barrier = BlockingBarrier(client, "blocking-gate")
        barrier.set("closed")
        with pytest.raises(WaitTimeout):
            barrier.wait(timeout=0.1)
        barrier.remove()
        barrier.wait(timeout=1)
        assert not barrier.is_set()


def test_double_barrier_in_process(shared_cluster: LocalCluster) -> None:
    """Three enter only together, leave only together; a late fourth (same round) finds it ready."""

    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        barriers = [DoubleBarrier(client, "round", 3, ttl=5) for _ in range(3)]
        entering = [asyncio.create_task(b.enter(timeout=20)) for b in barriers[:2]]
        done, _ = await asyncio.wait(entering, timeout=0.3)  # long enough for a wrong early entry to show
        assert not done, "entered before all 3 arrived"
        await barriers[2].enter(timeout=20)
        await asyncio.gather(*entering)
        with pytest.raises(FailedPrecondition):
            await barriers[0].enter()
        leaving = [asyncio.create_task(b.leave(timeout=20)) for b in barriers[1:]]
        done, _ = await asyncio.wait(leaving, timeout=0.3)  # long enough for a wrong early leave to show
        assert not done, "left before everyone had left"
        await barriers[0].leave(timeout=20)
        await asyncio.gather(*leaving)
        assert await barriers[0].members() == []
        assert await client.get(barriers[0].ready_key) is None  # clean for the next round
        await client.close()

    run(scenario())


def test_double_barrier_of_five_processes(clients: ClientProcesses, tmp_path: Path) -> None:
    """DoubleBarrier(5) across 5 processes: nobody enters before the 5th arrived; nobody leaves before
    all 5 began to leave (each works a different time in between)."""
    shared = tmp_path / "barrier.jsonl"
    first = [clients.start("dbarrier", "five", 5, shared, f"p{i}", 100 * i) for i in range(4)]
    wait_until(lambda: sum(r["ev"] == "arrive" for r in read_records(shared)) == 4, 30, "4 arrivals")
    last = clients.start("dbarrier", "five", 5, shared, "p4", 0)
    clients.wait_all([*first, last], 60)
    records = read_records(shared)
    times = {ev: [r["t"] for r in records if r["ev"] == ev] for ev in ("arrive", "entered", "leaving", "left")}
    assert all(len(t) == 5 for t in times.values()), times
    assert min(times["entered"]) >= max(times["arrive"]), "someone entered before all 5 arrived"
    assert min(times["left"]) >= max(times["leaving"]), "someone left before all 5 were leaving"


def test_election_campaign_proclaim_observe_resign(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        a = LeaderElection(client, "observe", ttl=5)
        b = LeaderElection(client, "observe", ttl=5)
        seen: list[bytes | None] = []
        observed = asyncio.Event()

        async def observe() -> None:
            async for leader in LeaderElection(client, "observe").observe():
                seen.append(None if leader is None else leader.value)
                observed.set()

        watcher = asyncio.create_task(observe())
        await _next(observed)
        term_a = await a.campaign("a")
        await _next(observed)
        waiting_b = asyncio.create_task(b.campaign("b", timeout=20))
        await a.proclaim("a2")
        await _next(observed)
        leader = await b.leader()
        assert leader is not None and leader.value == b"a2" and leader.term == term_a
        assert a.is_leader and not b.is_leader
        await a.resign()
        term_b = await waiting_b
        assert term_b > term_a
        with pytest.raises(FailedPrecondition):
            await a.proclaim("not leader")
        await _next(observed)
        await b.resign()
        await _next(observed)
        watcher.cancel()
        assert seen == [None, b"a", b"a2", b"b", None]
        await client.close()

    run(scenario())


def test_observe_sees_a_leader_elected_while_the_caller_held_the_first_answer(shared_cluster: LocalCluster) -> None:
    """The first answer (no leader) came from an empty read; a campaign made before the caller asks
    for the next answer must still be seen. (A fence taken after the empty read, when the generator
    resumed, started the watch past the campaign: the observer waited for ever.)"""

    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        observing = LeaderElection(client, "held").observe()
        assert await asyncio.wait_for(anext(observing), 10) is None
        candidate = LeaderElection(client, "held", ttl=5)
        await candidate.campaign("a")  # while the generator is suspended at its yield
        leader = await asyncio.wait_for(anext(observing), 10)
        assert leader is not None and leader.value == b"a"
        await observing.aclose()
        await candidate.resign()
        await client.close()

    run(scenario())


async def _next(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), 10)
    event.clear()


def test_a_leader_is_told_when_its_session_is_lost(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        leader = LeaderElection(client, "lost", ttl=5)
        await leader.campaign("x")
        told = asyncio.Event()
        leader.on_lost(told.set)
        session = (await leader.candidates())[0]
        await client.lease_revoke(session.lease)
        await asyncio.wait_for(told.wait(), 10)
        assert leader.lost.is_set() and not leader.is_leader
        with pytest.raises(LeaseExpired):
            leader.check()
        await leader.resign()
        await client.close()

    run(scenario())


ELECTION_TTL_S = 2.0


def test_one_leader_at_a_time_and_a_dead_leader_is_replaced(clients: ClientProcesses, tmp_path: Path) -> None:
    """3 processes campaign: exactly one leads at any time; kill -9 the leader and another is elected
    within TTL + 1 s; SIGTERM the next and it resigns, handing over at once."""
    shared = tmp_path / "election.jsonl"
    procs = {f"e{i}": clients.start("elect", "three", ELECTION_TTL_S, shared, f"e{i}") for i in range(3)}

    def elected() -> list[dict[str, Any]]:
        return [r for r in read_records(shared) if r["ev"] == "elected"]

    wait_until(lambda: sum(r["ev"] == "campaign" for r in read_records(shared)) == 3, 30, "3 candidates")
    first = wait_until(elected, 30, "a leader")[0]
    killed_at = clients.kill(procs[first["worker"]])
    append_record(shared, "killed", worker=first["worker"])
    second = wait_until(lambda: elected()[1:], ELECTION_TTL_S + 10, "a second leader")[0]
    assert second["t"] - killed_at <= ELECTION_TTL_S + 1, "no new leader within TTL + 1 s"
    procs[second["worker"]].send_signal(signal.SIGTERM)
    third = wait_until(lambda: elected()[2:], 10, "a third leader")[0]
    assert len({first["worker"], second["worker"], third["worker"]}) == 3
    leader = None
    for r in read_records(shared):
        if r["ev"] == "elected":
            assert leader is None, f"{r['worker']} elected while {leader} led"
            leader = r["worker"]
        elif r["ev"] in ("killed", "resigning") and r["worker"] == leader:
            leader = None
    terms = [r["term"] for r in elected()]
    assert terms == sorted(terms) and len(set(terms)) == 3
