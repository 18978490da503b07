"""Issue 5's primitives against real processes: leases, sequential keys, watches, compaction.

(The recipes built on them have their own tests in tests/recipes/.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import Compacted, Event, EventKind, InvalidArgument, LeaseExpired, NotFound, eventloop
from corral.client import AsyncClient, connect_async
from tests.integration.harness import LocalCluster, local_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path) as c:
        c.start()
        yield c


def test_keys_of_an_ended_lease_are_deleted_together(cluster: LocalCluster) -> None:
    """Keys attached to a lease are deleted together, in one transaction (one revision), on revoke."""
    with cluster.client(timeout=10) as c:
        lease = c._run(c.aio.lease_grant(30))
        for i in range(5):
            c.put(f"/eph/{i}", "x", lease=lease.id)
        c.put("/eph/keep", "no lease")
        before = c.get("/eph/keep")
        assert before is not None
        c._run(c.aio.lease_revoke(lease.id))
        assert [kv.key for kv in c.range("/eph/")] == ["/eph/keep"]
        revision = c.range("/eph/keep")[0].mod_revision
        deletes = c._run(_collect(cluster, "/eph/", before.mod_revision + 1, 5))
        assert {e.kind for e in deletes} == {EventKind.DELETE}
        assert len({e.kv.mod_revision for e in deletes}) == 1  # one transaction
        assert revision == before.mod_revision
        with pytest.raises(NotFound):
            c._run(c.aio.lease_time_to_live(lease.id))
        with pytest.raises(LeaseExpired):
            c.put("/eph/late", "x", lease=lease.id)


async def _collect(cluster: LocalCluster, prefix: str, start: int, count: int) -> list[Event]:
    client = await connect_async(cluster.path, timeout=10)
    events: list[Event] = []
    try:
        async with asyncio.timeout(20):
            async for event in client.watch(prefix, prefix=True, start_revision=start):
                events.append(event)
                if len(events) == count:
                    break
    finally:
        await client.close()
    return events


def test_sessions_survive_a_coordinator_restart(cluster: LocalCluster) -> None:
    """A coordinator restart gives live leases a fresh TTL: sessions that keep alive keep their keys."""

    async def scenario() -> None:
        client = await connect_async(cluster.path, timeout=10)
        session = await client.session(ttl=2.0)
        await client.put("/s/me", "here", lease=session.lease_id)
        cluster.kill("coordinator")
        cluster.start("coordinator")
        # Well past the TTL since the last renewal before the crash, the key is still there.
        await asyncio.sleep(3.0)  # the scenario's duration, not a synchronisation
        assert (await client.get("/s/me")) is not None
        assert session.alive
        await session.close()
        assert (await client.get("/s/me")) is None
        await client.close()

    eventloop.run(scenario())


def test_a_lost_session_is_reported_and_its_keys_vanish(cluster: LocalCluster) -> None:
    """When renewals stop reaching the coordinator for longer than the TTL, the session is lost, the
    holder is told, and its keys are gone."""

    async def scenario() -> None:
        client = await connect_async(cluster.path, timeout=10)
        session = await client.session(ttl=1.0)
        told = asyncio.Event()
        session.on_lost(lambda s: told.set())
        await client.put("/lost/k", "v", lease=session.lease_id)
        cluster.pause("coordinator")
        await asyncio.wait_for(told.wait(), 10)
        cluster.resume("coordinator")
        with pytest.raises(LeaseExpired):
            session.check()
        await asyncio.wait_for(_until_gone(client, "/lost/k"), 10)
        await session.close()
        await client.close()

    eventloop.run(scenario())


async def _until_gone(client: AsyncClient, key: str) -> None:
    """Return once `key` is deleted (watching from just after its last write, so a deletion that
    already happened is seen too)."""
    kv = await client.get(key)
    if kv is None:
        return
    async for event in client.watch(key, start_revision=kv.mod_revision + 1):
        if event.kind is EventKind.DELETE:
            return


def test_sequential_keys_are_unique_and_ordered_under_concurrency(cluster: LocalCluster) -> None:
    created: list[tuple[str, int]] = []
    lock = threading.Lock()

    def creator(i: int) -> None:
        with cluster.client(timeout=10) as c:
            for n in range(15):
                key, revision = c._run(c.aio.put_sequential("/queue/item-", f"{i}-{n}"))
                with lock:
                    created.append((key, revision))

    threads = [threading.Thread(target=creator, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(created) == 60 and len({k for k, _ in created}) == 60
    with cluster.client() as c:
        listed = c.range("/queue/")
    assert [kv.key for kv in listed] == sorted(k for k, _ in created)
    assert [kv.create_revision for kv in listed] == sorted(r for _, r in created)  # name order = commit order


def test_watch_is_ordered_gapless_and_resumes_on_another_replica(cluster: LocalCluster) -> None:
    """Events arrive in revision order with no gaps or duplicates; when the replica serving the watch
    dies (twice), the watch resumes elsewhere by itself."""

    async def scenario() -> None:
        client = await connect_async(cluster.path, timeout=10)
        writer = await connect_async(cluster.path, timeout=20)
        start = (await writer.put("/w/start", "0")) + 1
        seen: list[int] = []
        total = 150

        async def watch() -> None:
            async for event in client.watch("/w/n", prefix=True, start_revision=start):
                seen.append(int(event.kv.value))
                if len(seen) == total:
                    return

        async def serving() -> str:
            """The one replica serving the watch (a killed one cannot answer, so after a kill this is
            a new stream)."""
            deadline = asyncio.get_running_loop().time() + 30
            while asyncio.get_running_loop().time() < deadline:
                open_on = [s.name for s in await writer.status() if s.up and s.watches_open > 0]
                if len(open_on) == 1:
                    return open_on[0]
                await asyncio.sleep(0.05)  # polling the status, with a deadline
            raise AssertionError("no single replica reported serving the watch within 30 s")

        task = asyncio.create_task(watch())
        served_by = [await serving()]
        for i in range(total):
            await writer.put(f"/w/n{i % 7}", str(i))
            if i in (40, 100):
                victim = served_by[-1]
                cluster.kill(victim)
                served_by.append(await serving())  # the watch resumed: another stream is open
                cluster.start(victim, wait=False)
        await asyncio.wait_for(task, 60)
        assert seen == list(range(total))
        assert len(served_by) == 3 and served_by[0] != served_by[1] and served_by[1] != served_by[2]
        await client.close()
        await writer.close()

    eventloop.run(scenario())


def test_watch_from_a_compacted_revision_says_where_to_start(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(cluster.path, timeout=10)
        for i in range(5):
            await client.put("/c/k", str(i))
        await client.compact(4)
        with pytest.raises(Compacted) as info:
            async for _ in client.watch("/c/k", start_revision=2):
                break
        assert info.value.compact_revision == 4
        events = []
        async for event in client.watch("/c/k", start_revision=4):
            events.append(event.kv.mod_revision)
            if len(events) == 2:
                break
        assert events == [4, 5]
        await client.close()

    eventloop.run(scenario())


def test_watch_sees_puts_and_deletes_with_previous_values(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(cluster.path, timeout=10)
        start = (await client.put("/p/a", "1")) + 1
        await client.put("/p/a", "2")
        await client.delete("/p/a")
        out = []
        async for event in client.watch("/p/a", start_revision=start, prev_kv=True):
            out.append((event.kind, event.kv.value, event.prev_kv.value if event.prev_kv else None))
            if len(out) == 2:
                break
        assert out == [(EventKind.PUT, b"2", b"1"), (EventKind.DELETE, b"", b"2")]
        await client.close()

    eventloop.run(scenario())


def test_compact_at_the_newest_revision_waits_for_a_replica_still_applying_it(cluster: LocalCluster) -> None:
    """A put is acknowledged once every replica has prepared it; one replica may apply its COMMIT a
    moment later. Compacting at the revision just written must wait for that apply, not refuse it
    with "the store is at r-1"."""
    with cluster.client(timeout=10) as c:
        c.put("/cmp/k", "0")
        slow = cluster.replicas[-1]
        cluster.failpoint(slow, "replica.recv", "delay(400)")  # its COMMITs arrive 0.4 s late
        try:
            revision = c.put("/cmp/k", "1")
            c.compact(revision)
        finally:
            cluster.failpoint(slow, "replica.recv", "off")
        statuses = cluster.status()
        assert statuses[slow].revision >= revision
        with pytest.raises(InvalidArgument, match="cannot compact at revision"):
            c.compact(revision + 1000)  # no replica reaches it: refused after a bounded wait
    for name in cluster.replicas:  # compacted on each replica
        with cluster.pinned_client(name, timeout=10) as pinned, pytest.raises(Compacted):
            pinned.get("/cmp/k", revision=revision - 1)
