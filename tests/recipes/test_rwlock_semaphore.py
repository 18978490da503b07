"""ReadWriteLock (readers share, writers exclude everyone, a waiting writer is not starved by later
readers) and Semaphore (at most n holders, first come first served)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from corral.client import connect_async
from corral.recipes import BlockingSemaphore, ReadWriteLock, Semaphore
from tests.integration.harness import LocalCluster
from tests.recipes.conftest import ClientProcesses, read_records
from tests.recipes.test_lock import run
from tests.waiting import until


def test_a_waiting_writer_is_not_starved_by_later_readers(shared_cluster: LocalCluster) -> None:
    """A reader holds; a writer asks and waits; a reader that asks after the writer waits behind it
    although the lock is only read-held; then the writer, then the late reader."""

    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        first = ReadWriteLock(client, "starve", ttl=5)
        await first.reader.acquire()
        also = ReadWriteLock(client, "starve", ttl=5)
        await also.reader.acquire(timeout=5)  # readers share
        writer = ReadWriteLock(client, "starve", ttl=5).writer
        writing = asyncio.create_task(writer.acquire(timeout=20))
        await until(lambda: writer.waiting_for == also.reader.key)  # a writer waits for its predecessor
        late = ReadWriteLock(client, "starve", ttl=5).reader
        reading = asyncio.create_task(late.acquire(timeout=20))
        await until(lambda: late.waiting_for == writer.key)  # a reader waits for the earlier writer
        await first.reader.release()
        await also.reader.release()
        await writing
        assert not reading.done(), "a reader that came after a waiting writer went first"
        await writer.release()
        await reading
        assert late.wakeups == 1 and writer.wakeups == 1  # the writer watched only the reader just ahead
        await late.release()
        await client.close()

    run(scenario())


async def _until_waiting(sem: Semaphore, n: int) -> None:
    for _ in range(400):
        if len(await sem.waiting()) == n:
            return
        await asyncio.sleep(0.01)  # polling a condition with a deadline
    raise AssertionError(f"never {n} waiters")


def check_read_write(records: list[dict[str, Any]]) -> tuple[int, int]:
    """Readers never overlap a writer, writers never overlap anyone, and a reader that queued after a
    writer (its token is larger) enters only after that writer left. Returns (most readers at once,
    writer holdings)."""
    readers: set[tuple[str, int]] = set()
    writer: tuple[str, int] | None = None
    most = 0
    writes: dict[int, tuple[int, int]] = {}  # writer token -> (enter index, leave index)
    reads: dict[int, int] = {}  # reader token -> enter index
    for i, r in enumerate(records):
        who = (r["worker"], r.get("token", 0))
        if r["ev"] == "enter" and r["mode"] == "read":
            assert writer is None, f"reader {who} entered while writer {writer} held"
            readers.add(who)
            most = max(most, len(readers))
            reads[r["token"]] = i
        elif r["ev"] == "enter":
            assert writer is None and not readers, f"writer {who} entered while {writer or readers} held"
            writer = who
            writes[r["token"]] = (i, -1)
        elif r["ev"] == "leave" and r["mode"] == "read":
            readers.remove(who)
        elif r["ev"] == "leave":
            assert writer == who
            writer = None
            writes[r["token"]] = (writes[r["token"]][0], i)
    for w_token, (_, w_left) in writes.items():
        for r_token, r_entered in reads.items():
            if r_token > w_token:
                assert r_entered > w_left, f"reader {r_token} went ahead of the earlier writer {w_token}"
    return most, len(writes)


def test_readers_overlap_writers_exclude_across_processes(clients: ClientProcesses, tmp_path: Path) -> None:
    """3 reader processes keep the lock read-held almost all the time; 2 writer processes still get
    it, exclusively, and readers share it."""
    shared = tmp_path / "resource.jsonl"
    readers = [clients.start("rw", "procs", "read", 25, shared, f"r{i}", 40) for i in range(3)]
    writers = [clients.start("rw", "procs", "write", 6, shared, f"w{i}", 20) for i in range(2)]
    clients.wait_all(readers + writers, 120)
    most, writes = check_read_write(read_records(shared))
    assert writes == 12
    assert most >= 2, "readers never overlapped"


def test_semaphore_admits_n_in_arrival_order(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        session = await client.session(5)
        sems = [Semaphore(client, "pool", 2, session=session, value=f"s{i}") for i in range(4)]
        await sems[0].acquire()
        await sems[1].acquire()
        third = asyncio.create_task(sems[2].acquire(timeout=20))
        await _until_waiting(sems[0], 1)  # queue them in a known order
        fourth = asyncio.create_task(sems[3].acquire(timeout=20))
        await _until_waiting(sems[0], 2)
        assert [h.value for h in await sems[0].holders()] == [b"s0", b"s1"]
        await sems[1].release()
        await third
        assert not fourth.done()
        assert [h.value for h in await sems[0].holders()] == [b"s0", b"s2"]
        await sems[0].release()
        await fourth
        assert sems[2].held and sems[3].held and not sems[0].held
        # No herd: the first waiter woke at most once, for the one release it needed (not at all if it
        # looked after that release); the second when the first moved up, and for its release.
        assert sems[2].wakeups <= 1
        assert sems[3].wakeups <= 2
        for s in sems[2:]:
            await s.release()
        assert await sems[0].holders() == []
        await session.close()
        await client.close()

    run(scenario())


def test_blocking_semaphore(shared_cluster: LocalCluster) -> None:
    with shared_cluster.client(timeout=10) as client:
        one = BlockingSemaphore(client, "blocking-pool", 1, ttl=2)
        with one as token:
            assert token and one.held and len(one.holders()) == 1
        assert (one.held, one.holders()) == (False, [])
