"""Client processes for the recipe tests: each role uses one recipe and records what it saw.

Every record is one JSON line appended with a single `write` to a file opened O_APPEND, so lines from
many processes never interleave and their order in a shared file is the order of the writes: for a
lock, the shared file *is* the resource the lock protects. Each record carries `time.monotonic()`,
one clock for every process on the machine, and the writer's pid.

Run: python -m tests.recipes.client ROLE CONFIG [ARGS...]   (see `main` for each role's arguments)
Roles use the blocking twins or the async classes, so both faces of the recipes run in real processes.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from corral import eventloop
from corral.client import AsyncClient, Client, connect_async
from corral.recipes import (
    BlockingLeaderElection,
    BlockingLock,
    Counter,
    DoubleBarrier,
    GroupMembership,
    Queue,
    ReadWriteLock,
    close_session_sync,
    open_session,
)

# Per-request deadline of the client processes: rides out a view change or coordinator restart.
REQUEST_TIMEOUT_S = 20.0
# How long a role waits for its turn (a lock, a barrier, an item) before failing the run.
WAIT_S = 60.0


class Recorder:
    def __init__(self, path: str, **fields: Any) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fields = {"pid": os.getpid(), **fields}

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"ev": event, "t": time.monotonic(), **self._fields, **fields}
        os.write(self._fd, (json.dumps(record) + "\n").encode())


def _block_until_terminated(on_term: Callable[[], None] | None = None) -> None:
    """Park the main thread until SIGTERM (then run `on_term`); SIGKILL needs no handling."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    if on_term is not None:
        on_term()


def lock(config: str, name: str, *, count: int, ttl: float, out: str, worker: str, hold_ms: int) -> None:
    record = Recorder(out, worker=worker)
    with Client(config, timeout=REQUEST_TIMEOUT_S) as client:
        session = open_session(client, ttl)
        mutex = BlockingLock(client, name, session=session, value=worker)
        for _ in range(count):
            token = mutex.acquire(timeout=WAIT_S)
            record("enter", token=token)
            time.sleep(hold_ms / 1000)  # the work done while holding
            mutex.check()
            record("leave", token=token)
            mutex.release()
        record("done", wakeups=mutex.wakeups)
        close_session_sync(client, session)


async def rw(config: str, name: str, *, mode: str, count: int, out: str, worker: str, hold_ms: int) -> None:
    record = Recorder(out, worker=worker, mode=mode)
    client = await connect_async(config, timeout=REQUEST_TIMEOUT_S)
    session = await client.session(5.0)
    rwlock = ReadWriteLock(client, name, session=session, value=f"{mode} {worker}")
    side = rwlock.reader if mode == "read" else rwlock.writer
    for _ in range(count):
        record("asking")
        token = await side.acquire(WAIT_S)
        record("enter", token=token)
        await asyncio.sleep(hold_ms / 1000)  # the work done while holding
        record("leave", token=token)
        await side.release()
    record("done")
    await session.close()
    await client.close()


async def counter(config: str, name: str, count: int, out: str) -> None:
    record = Recorder(out)
    client = await connect_async(config, timeout=REQUEST_TIMEOUT_S)
    shared = Counter(client, name)
    values = [await shared.add(1) for _ in range(count)]
    record("done", values=values)
    await client.close()


async def double_barrier(config: str, name: str, *, n: int, out: str, worker: str, work_ms: int) -> None:
    record = Recorder(out, worker=worker)
    client = await connect_async(config, timeout=REQUEST_TIMEOUT_S)
    barrier = DoubleBarrier(client, name, n, ttl=5.0, value=worker)
    record("arrive")
    await barrier.enter(WAIT_S)
    record("entered")
    await asyncio.sleep(work_ms / 1000)  # the computation between the barriers
    record("leaving")
    await barrier.leave(WAIT_S)
    record("left")
    await client.close()


def elect(config: str, name: str, ttl: float, out: str, worker: str) -> None:
    record = Recorder(out, worker=worker)
    with Client(config, timeout=REQUEST_TIMEOUT_S) as client:
        election = BlockingLeaderElection(client, name, ttl=ttl)
        record("campaign")
        term = election.campaign(worker, timeout=WAIT_S)
        record("elected", term=term)
        election.on_lost(lambda: record("lost"))

        def resign() -> None:
            record("resigning", term=term)
            election.resign()

        _block_until_terminated(resign)


async def produce(config: str, name: str, count: int, out: str, producer: str, *, pause_ms: int = 0) -> None:
    """Put `count` items (`<producer>-<i>`), `pause_ms` apart, fewer if SIGTERM comes first (it ends
    the loop between two puts); then record how many."""
    record = Recorder(out, producer=producer)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    client = await connect_async(config, timeout=REQUEST_TIMEOUT_S)
    queue = Queue(client, name)
    put = 0
    while put < count and not stopping.is_set():
        await queue.put(f"{producer}-{put}")
        put += 1
        await asyncio.sleep(pause_ms / 1000)
    record("produced", count=put)
    await client.close()


async def consume(config: str, name: str, *, out: str, consumer: str, ttl: float, stall_after: int) -> None:
    """Take and ack items until terminated; with stall_after >= 0, after that many acks take one more
    item and stop there, holding it (the test then kills this process mid-item)."""
    record = Recorder(out, consumer=consumer)
    client = await connect_async(config, timeout=REQUEST_TIMEOUT_S)
    queue = Queue(client, name, ttl=ttl, consumer=consumer)
    record("ready")
    acked = 0
    while True:
        item = await queue.take(timeout=None)
        if acked == stall_after:
            record("took", value=item.value.decode(), claim=item.claim_revision)
            await asyncio.Event().wait()  # hold the item until killed
        await asyncio.sleep(random.uniform(0, 0.01))  # the work on the item
        await queue.ack(item)
        acked += 1
        record("acked", value=item.value.decode(), claim=item.claim_revision)


async def ephemeral(config: str, ttl: float, out: str, member: str) -> None:
    """Hold a lease with ephemeral keys and a group membership until killed."""
    record = Recorder(out, member=member)
    client = await connect_async(config, timeout=REQUEST_TIMEOUT_S)
    session = await client.session(ttl)
    for i in range(5):
        await client.put(f"/eph/{member}/{i}", "x", lease=session.lease_id)
    group = GroupMembership(client, "workers", session=session)
    await group.join(member, f"pid {os.getpid()}")
    record("ready", lease=session.lease_id)
    await asyncio.Event().wait()


async def group_watch(config: str, start: int, count: int, out: str) -> None:
    record = Recorder(out)
    client = await connect_async(config, timeout=REQUEST_TIMEOUT_S)
    seen = 0
    async for event in GroupMembership(client, "workers").watch(start_revision=start):
        record(event.change.value, member=event.member, revision=event.revision)
        seen += 1
        if seen == count:
            break
    await client.close()


class _InOrder(random.Random):
    """The SDK shuffles replicas before each watch attempt; keeping their order pins the watch to the
    first live replica in config order, so the test knows which replica serves it."""

    def shuffle(self, x: Any) -> None:
        return None


async def watch(config: str, prefix: str, start: int, count: int, out: str) -> None:
    record = Recorder(out)
    client: AsyncClient = await connect_async(config, timeout=REQUEST_TIMEOUT_S)
    client._rng = _InOrder()
    record("watching")
    seen = 0
    async for event in client.watch(prefix, prefix=True, start_revision=start):
        record("event", revision=event.kv.mod_revision, key=event.kv.key)
        seen += 1
        if seen == count:
            break
    await client.close()


def main(argv: list[str]) -> None:
    # A test that finds this process stuck sends SIGUSR1 and shows the stacks in its failure message.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    role, config, *args = argv
    if role == "lock":
        lock(
            config,
            args[0],
            count=int(args[1]),
            ttl=float(args[2]),
            out=args[3],
            worker=args[4],
            hold_ms=int(args[5]),
        )
    elif role == "rw":
        eventloop.run(
            rw(config, args[0], mode=args[1], count=int(args[2]), out=args[3], worker=args[4], hold_ms=int(args[5]))
        )
    elif role == "counter":
        eventloop.run(counter(config, args[0], int(args[1]), args[2]))
    elif role == "dbarrier":
        eventloop.run(
            double_barrier(config, args[0], n=int(args[1]), out=args[2], worker=args[3], work_ms=int(args[4]))
        )
    elif role == "elect":
        elect(config, args[0], float(args[1]), args[2], args[3])
    elif role == "produce":
        pause_ms = int(args[4]) if len(args) > 4 else 0
        eventloop.run(produce(config, args[0], int(args[1]), args[2], args[3], pause_ms=pause_ms))
    elif role == "consume":
        eventloop.run(
            consume(config, args[0], out=args[1], consumer=args[2], ttl=float(args[3]), stall_after=int(args[4]))
        )
    elif role == "ephemeral":
        eventloop.run(ephemeral(config, float(args[0]), args[1], args[2]))
    elif role == "group-watch":
        eventloop.run(group_watch(config, int(args[0]), int(args[1]), args[2]))
    elif role == "watch":
        eventloop.run(watch(config, args[0], int(args[1]), int(args[2]), args[3]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
