"""Counter (no lost or doubled increment under contention) and Queue (every item acked exactly once,
even when a consumer dies holding one)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from corral.client import connect_async
from corral.errors import InvalidArgument, LeaseExpired
from corral.model import KeyValue
from corral.recipes import BlockingCounter, BlockingQueue, Counter, Queue, WaitTimeout
from tests.integration.harness import LocalCluster, local_cluster, wait_until
from tests.recipes.conftest import ClientProcesses, crash_servers_under, read_records
from tests.recipes.test_lock import run


def test_counter_adds_and_reads(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        counter = Counter(client, "unit")
        assert await counter.value() == 0
        assert await counter.add(5) == 5
        assert await counter.add(-2) == 3
        assert await counter.value() == 3
        with pytest.raises(InvalidArgument):
            await counter.add(1.5)  # type: ignore[arg-type]  # deliberately not an int: checks the runtime check
        await client.put(counter.key, "not a number")
        with pytest.raises(InvalidArgument, match="not a counter"):
            await counter.value()
        await client.close()

    run(scenario())
    with shared_cluster.client(timeout=10) as client:
        assert BlockingCounter(client, "blocking").add(2) == 2


def test_eight_processes_add_1600(clients: ClientProcesses, tmp_path: Path) -> None:
    """8 processes x 200 increments of one counter: the total is 1,600, and every add returned a
    different value (none was lost or applied twice)."""
    out = tmp_path / "counter.jsonl"
    procs = [clients.start("counter", "shared", 200, out) for _ in range(8)]
    clients.wait_all(procs, 120)
    values = [v for r in read_records(out) for v in r["values"]]
    assert sorted(values) == list(range(1, 1601))
    with clients.cluster.client(timeout=10) as client:
        assert BlockingCounter(client, "shared").value() == 1600


def test_take_sees_an_item_put_just_after_it_found_the_queue_empty(shared_cluster: LocalCluster) -> None:
    """An item put between a take's empty read and the start of its watch wakes the take. (With the
    fence taken after the read, the watch started past the put, and the take slept to its deadline.)"""

    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        producer_client = await connect_async(shared_cluster.path, timeout=10)
        consumer = Queue(client, "gap", ttl=5, consumer="c")
        read = client.range
        put_once: list[str] = []

        async def range_then_put(prefix: str, **kwargs: Any) -> list[KeyValue]:
            kvs = await read(prefix, **kwargs)
            if prefix == consumer._items and not kvs and not put_once:
                put_once.append(await Queue(producer_client, "gap").put("late"))  # after the empty read
            return kvs

        client.range = range_then_put  # type: ignore[method-assign]
        item = await consumer.take(timeout=5)
        assert put_once and item.key == put_once[0] and item.value == b"late"
        await consumer.ack(item)
        await client.close()
        await producer_client.close()

    run(scenario())


def test_queue_claims_acks_and_returns(shared_cluster: LocalCluster) -> None:
    """Items come out in order; a released item comes back; a claim lost with its session returns the
    item to the queue, and the late ack is refused."""

    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        producer = Queue(client, "unit")
        for i in range(3):
            await producer.put(f"item-{i}")
        a = Queue(client, "unit", ttl=5, consumer="a")
        b = Queue(client, "unit", ttl=5, consumer="b")
        first = await a.take(timeout=5)
        second = await b.take(timeout=5)
        assert (first.value, second.value) == (b"item-0", b"item-1")
        await a.release(first)
        again = await b.take(timeout=5)
        assert again.value == b"item-0" and again.claim_revision > first.claim_revision
        await b.ack(again)
        # a's session ends (as if a died): its claim goes, and another consumer gets the item.
        third = await a.take(timeout=5)
        assert third.value == b"item-2"
        session = a.session
        assert session is not None
        await client.lease_revoke(session.lease_id)
        retaken = await b.take(timeout=10)
        assert retaken.value == b"item-2"
        with pytest.raises(LeaseExpired):
            await a.ack(third)
        await b.ack(second)
        await b.ack(retaken)
        assert await producer.size() == 0
        with pytest.raises(WaitTimeout):
            await b.take(timeout=0.2)
        waiting = asyncio.create_task(b.take(timeout=10))
        await producer.put("late")
        late = await waiting
        assert late.value == b"late"
        await b.ack(late)
        await b.close()
        await a.close()
        await client.close()

    run(scenario())
    with shared_cluster.client(timeout=10) as client:
        queue = BlockingQueue(client, "blocking", ttl=5)
        queue.put("x")
        item = queue.take(timeout=5)
        queue.ack(item)
        assert queue.size() == 0
        queue.close()


def test_three_producers_three_consumers_one_killed_mid_item(clients: ClientProcesses, tmp_path: Path) -> None:
    """3 producer and 3 consumer processes; one consumer is killed -9 while holding an item: every item
    is acked exactly once, the dead consumer's item included."""
    per_producer = 40
    out = tmp_path / "queue.jsonl"
    victim = clients.start("consume", "work", out, "victim", 2.0, 1)  # acks one item, then holds the next
    wait_until(lambda: any(r["ev"] == "ready" for r in read_records(out)), 30, "the victim to be taking")
    consumers = [clients.start("consume", "work", out, f"c{i}", 2.0, -1) for i in range(2)]
    producers = [clients.start("produce", "work", per_producer, out, f"p{i}") for i in range(3)]
    took = wait_until(lambda: [r for r in read_records(out) if r["ev"] == "took"], 60, "the victim to hold an item")
    clients.kill(victim)
    clients.wait_all(producers, 60)
    expected = {f"p{p}-{i}" for p in range(3) for i in range(per_producer)}
    wait_until(
        lambda: len([r for r in read_records(out) if r["ev"] == "acked"]) >= len(expected), 60, "every item acked"
    )
    acked = [r["value"] for r in read_records(out) if r["ev"] == "acked"]
    assert sorted(acked) == sorted(expected), "an item was lost or acked twice"
    stolen = took[0]["value"]
    ackers = [r["consumer"] for r in read_records(out) if r["ev"] == "acked" and r["value"] == stolen]
    assert len(ackers) == 1 and ackers[0] != "victim", "the dead consumer's item was not taken over"
    for proc in consumers:
        assert proc.poll() is None, "a consumer died"


# Longer than any outage of `crash_servers_under`: no consumer's session may lapse.
FAULT_TTL_S = 10.0


@pytest.mark.timeout(400)
def test_every_item_is_acked_once_while_servers_crash(tmp_path: Path) -> None:
    """2 producers (an item every 20 ms) and 3 consumers work while the servers fail under them
    (`crash_servers_under`): puts and acks that time out are retried by the SDK with the same request
    id, so every item put is acked exactly once, and acks go on during and after each fault."""
    with local_cluster(tmp_path / "cluster") as cluster:
        cluster.start()
        procs = ClientProcesses(cluster, tmp_path)
        try:
            out = tmp_path / "queue.jsonl"
            consumers = [procs.start("consume", "faults", out, f"c{i}", FAULT_TTL_S, -1) for i in range(3)]
            producers = [procs.start("produce", "faults", 100_000, out, f"p{i}", 20) for i in range(2)]

            def acked() -> list[str]:
                return [r["value"] for r in read_records(out) if r["ev"] == "acked"]

            crash_servers_under(cluster, lambda: len(acked()), "acks")
            for proc in producers:
                proc.send_signal(signal.SIGTERM)  # stop putting (between two puts)
            procs.wait_all(producers, 60)
            counts = {r["producer"]: r["count"] for r in read_records(out) if r["ev"] == "produced"}
            expected = sorted(f"{p}-{i}" for p, n in counts.items() for i in range(n))
            wait_until(lambda: len(acked()) >= len(expected), 60, f"{len(expected)} items acked")
            assert sorted(acked()) == expected, "an item was lost or acked twice"
            assert all(proc.poll() is None for proc in consumers), "a consumer died"
        finally:
            procs.close()
