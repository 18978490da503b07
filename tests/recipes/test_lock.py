"""Lock: mutual exclusion across processes, fencing tokens, no herd effect, and what a holder is told
when its session is lost (issue 5's acceptance, against real processes)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from corral import eventloop
from corral.client import connect_async
from corral.errors import FailedPrecondition, LeaseExpired
from corral.recipes import BlockingLock, Lock, WaitTimeout
from tests.integration.harness import LocalCluster, local_cluster, wait_until
from tests.recipes.conftest import ClientProcesses, append_record, crash_servers_under, read_records
from tests.waiting import until

SCENARIO_TIMEOUT_S = 60.0


def run(scenario: Coroutine[Any, Any, None]) -> None:
    eventloop.run(asyncio.wait_for(scenario, SCENARIO_TIMEOUT_S))


def check_mutual_exclusion(records: list[dict[str, Any]]) -> list[int]:
    """Walk the shared file in write order: an enter only when nobody holds, a leave only by the
    holder, a "killed" record (written by the test once the process was dead) ends its holding.
    Returns the tokens in order; asserts they strictly increase."""
    holder: tuple[str, int] | None = None
    tokens: list[int] = []
    for r in records:
        if r["ev"] == "enter":
            assert holder is None, f"{r['worker']} entered while {holder} held the lock: {r}"
            assert not tokens or r["token"] > tokens[-1], f"token {r['token']} after {tokens[-1]}"
            holder = (r["worker"], r["token"])
            tokens.append(r["token"])
        elif r["ev"] == "leave":
            assert holder == (r["worker"], r["token"]), f"{r} left, but the holder was {holder}"
            holder = None
        elif r["ev"] == "killed" and holder is not None and holder[0] == r["worker"]:
            holder = None
    return tokens


def test_fencing_tokens_increase_and_the_holder_is_first(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        tokens = []
        for _ in range(3):
            async with Lock(client, "fencing", ttl=2, value="me") as token:
                holder = await Lock(client, "fencing").holder()
                assert holder is not None and holder.revision == token and holder.value == b"me"
                tokens.append(token)
        assert tokens == sorted(set(tokens))
        assert await Lock(client, "fencing").holder() is None  # released: its session was revoked
        await client.close()

    run(scenario())


def test_acquire_times_out_and_leaves_the_queue(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        holder = Lock(client, "timeout", ttl=2)
        await holder.acquire()
        late = Lock(client, "timeout", ttl=2)
        with pytest.raises(WaitTimeout, match="lock 'timeout'"):
            await late.acquire(timeout=0.3)
        assert [e.key for e in await holder.queue()] == [holder.key]  # the waiter's key is gone
        with pytest.raises(FailedPrecondition):
            await holder.acquire()  # not re-entrant
        await holder.release()
        await client.close()

    run(scenario())


def test_a_holder_is_told_when_its_session_is_lost(shared_cluster: LocalCluster) -> None:
    """The lease is revoked behind the holder's back (as an operator would): its key is gone, the
    next waiter gets the lock with a larger token, and the old holder is told: `lost`, its callback,
    and LeaseExpired from check()."""

    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        holder = Lock(client, "lost", ttl=2)
        token = await holder.acquire()
        told: list[str] = []
        holder.on_lost(lambda: told.append("lost"))
        waiter = Lock(client, "lost", ttl=2)
        waiting = asyncio.create_task(waiter.acquire(timeout=20))
        assert holder.session is not None
        await client.lease_revoke(holder.session.lease_id)
        assert await waiting > token
        await asyncio.wait_for(holder.lost.wait(), 10)
        assert told == ["lost"] and not holder.held
        with pytest.raises(LeaseExpired):
            holder.check()
        await holder.release()  # harmless after the loss
        await waiter.release()
        await client.close()

    run(scenario())


def test_no_herd_one_release_wakes_exactly_one_waiter(shared_cluster: LocalCluster) -> None:
    """20 waiters queue behind a holder; each release wakes only the next waiter: every waiter gets
    exactly one watch event (its predecessor's deletion), none of the others any."""
    waiters_n = 20

    async def scenario() -> None:
        clients = [await connect_async(shared_cluster.path, timeout=10) for _ in range(waiters_n + 1)]
        holder = Lock(clients[0], "herd", ttl=5)
        await holder.acquire()
        waiters = []
        tasks = []
        for c in clients[1:]:
            waiter = Lock(c, "herd", ttl=5)
            tasks.append(asyncio.create_task(waiter.acquire(timeout=30)))
            waiters.append(waiter)
            await until(lambda w=waiter: w.key is not None)  # queue them in a known order
        queue = await holder.queue()
        assert len(queue) == waiters_n + 1
        for waiter, ahead in zip(waiters, queue, strict=False):
            await until(lambda w=waiter, k=ahead.key: w.waiting_for == k)  # each watches its predecessor
        await holder.release()
        for i, (waiter, task) in enumerate(zip(waiters, tasks, strict=True)):
            await task
            assert [w.wakeups for w in waiters[i + 1 :]] == [0] * (waiters_n - i - 1), "a later waiter woke"
            await waiter.release()
        assert [w.wakeups for w in waiters] == [1] * waiters_n
        for c in clients:
            await c.close()

    run(scenario())


def test_blocking_lock(shared_cluster: LocalCluster) -> None:
    with shared_cluster.client(timeout=10) as client:
        first = BlockingLock(client, "blocking", ttl=2)
        with first as token:
            assert first.held and first.token == token
            assert first.holder() is not None
            with pytest.raises(WaitTimeout):
                BlockingLock(client, "blocking", ttl=2).acquire(timeout=0.2)
        assert (first.held, first.holder()) == (False, None)


LOCK_TTL_S = 2.0


def test_eight_processes_never_hold_at_once(clients: ClientProcesses, tmp_path: Path) -> None:
    """8 processes x 50 acquisitions, each recording enter and leave with its token in one shared
    file while holding: no overlap, tokens strictly increase."""
    shared = tmp_path / "resource.jsonl"
    procs = [clients.start("lock", "eight", 50, LOCK_TTL_S, shared, f"w{i}", 0) for i in range(8)]
    clients.wait_all(procs, 120)
    records = read_records(shared)
    tokens = check_mutual_exclusion(records)
    assert len(tokens) == 400
    assert sum(1 for r in records if r["ev"] == "done") == 8


@pytest.mark.timeout(400)  # above the sum of its own waits, so their diagnostics fire first
def test_killed_holders_never_overlap_and_the_lock_frees_within_ttl(clients: ClientProcesses, tmp_path: Path) -> None:
    """The same with kill -9 of holders: still no overlap, and after each death the next holder
    enters within TTL + 1 s. (25 acquisitions per process here, to keep the suite short.)"""
    shared = tmp_path / "resource.jsonl"
    procs = {f"w{i}": clients.start("lock", "killed", 25, LOCK_TTL_S, shared, f"w{i}", 30) for i in range(8)}
    handoffs = [_kill_a_holder(clients, procs, shared, busy=30 * (n + 1)) for n in range(3)]
    survivors = [p for p in procs.values() if p.poll() is None or p.returncode == 0]
    clients.wait_all(survivors, 120)
    check_mutual_exclusion(read_records(shared))
    hits = [h for h in handoffs if h is not None]
    print(f"lock free again {', '.join(f'{h:.2f}' for h in hits)} s after its holder was killed")
    assert hits, "no kill hit a holder"
    assert max(hits) <= LOCK_TTL_S + 1, f"the lock stayed held {max(hits):.2f} s after its holder died"


def _kill_a_holder(
    clients: ClientProcesses, procs: dict[str, subprocess.Popen[bytes]], shared: Path, busy: int
) -> float | None:
    """Once the file has `busy` records, kill -9 the process that holds the lock; return how long
    until the next holder entered (None if the victim had just left: it died waiting)."""
    wait_until(lambda: len(read_records(shared)) > busy, 60, "the lock to be busy")
    last = wait_until(lambda: _holder_now(read_records(shared), procs), 30, "a live holder")
    killed_at = clients.kill(procs[last["worker"]])
    append_record(shared, "killed", worker=last["worker"])
    if [r for r in read_records(shared) if r["pid"] == last["pid"]][-1]["ev"] != "enter":
        return None
    entered = wait_until(lambda: _enters_after(read_records(shared), killed_at), LOCK_TTL_S + 10, "a new holder")
    return float(entered[0]["t"]) - killed_at


def _enters_after(records: list[dict[str, Any]], t: float) -> list[dict[str, Any]]:
    return [r for r in records if r["ev"] == "enter" and r["t"] > t]


def _holder_now(records: list[dict[str, Any]], procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
    """The record of the current holder's enter, if the last record is an enter by a live process
    (else an empty dict, so that wait_until keeps waiting)."""
    if records and records[-1]["ev"] == "enter" and procs[records[-1]["worker"]].poll() is None:
        return records[-1]
    return {}


# Longer than any outage below: no holder's session may lapse, so no overlap is excused by one.
FAULT_TTL_S = 10.0
FAULT_ROUNDS = 60  # acquisitions per process: enough to outlast the faults


@pytest.mark.timeout(400)
def test_holders_never_overlap_while_servers_crash(tmp_path: Path) -> None:
    """6 processes take the lock in turn while the servers fail under them (`crash_servers_under`):
    still no overlap, tokens strictly increase, every acquisition completes, and the lock changes
    hands during and after each fault."""
    with local_cluster(tmp_path / "cluster") as cluster:
        cluster.start()
        procs = ClientProcesses(cluster, tmp_path)
        try:
            shared = tmp_path / "resource.jsonl"
            workers = [procs.start("lock", "faults", FAULT_ROUNDS, FAULT_TTL_S, shared, f"w{i}", 50) for i in range(6)]
            crash_servers_under(cluster, lambda: _enters(shared), "the lock changing hands")
            procs.wait_all(workers, 180)
            records = read_records(shared)
            tokens = check_mutual_exclusion(records)
            assert len(tokens) == 6 * FAULT_ROUNDS
            assert sum(1 for r in records if r["ev"] == "done") == 6
            cluster.wait_converged()
        finally:
            procs.close()


def _enters(shared: Path) -> int:
    return sum(1 for r in read_records(shared) if r["ev"] == "enter")
