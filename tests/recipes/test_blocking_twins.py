"""The blocking twins BlockingReadWriteLock and BlockingDoubleBarrier, from several threads at once.

Each participant is a thread with a blocking `Client` of its own (its own connections and event-loop
thread). Threads append records to one in-process log under a lock, right after a blocking recipe call
returns and right before the next one starts, so the log's order is the order in which the recipe let
them through; the checks walk that log. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from corral import eventloop
from corral.client import Client, connect_async
from corral.recipes import (
    BlockingDoubleBarrier,
    BlockingLock,
    BlockingReadWriteLock,
    BlockingSemaphore,
    Semaphore,
    close_session_sync,
    open_session,
)
from tests.integration.harness import LocalCluster, wait_until

WAIT_S = 10.0  # every blocking wait in these tests (acquire, enter, leave, a rendezvous of threads)
QUIET_S = 0.5  # how long a forbidden event (an early entry or leave) is watched for, and must not happen

Record = tuple[str, str, dict[str, Any]]  # (event, who, fields)


class Threads:
    """Participant threads sharing one ordered log; an error raised in a thread fails the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self.gates: list[threading.Event] = []  # opened at the end whatever happens, so nobody hangs

    def record(self, event: str, who: str, **fields: Any) -> None:
        with self._lock:
            self._records.append((event, who, fields))

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def indexes(self, event: str) -> list[int]:
        return [i for i, (ev, _, _) in enumerate(self.records()) if ev == event]

    def gate(self) -> threading.Event:
        event = threading.Event()
        self.gates.append(event)
        return event

    def start(self, name: str, target: Callable[[], None]) -> None:
        def body() -> None:
            try:
                target()
            except BaseException as err:
                self.errors.append(err)

        thread = threading.Thread(target=body, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def until(self, check: Callable[[], bool], what: str) -> None:
        """Wait (WAIT_S at most) for `check`; a thread's error ends the wait and is raised."""
        wait_until(lambda: check() or bool(self.errors), WAIT_S, what)
        self.raise_errors()

    def raise_errors(self) -> None:
        if self.errors:
            raise self.errors[0]

    def join(self) -> None:
        for gate in self.gates:
            gate.set()
        for thread in self._threads:
            thread.join(3 * WAIT_S)
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"threads still running: {stuck}"


@contextmanager
def participants() -> Iterator[Threads]:
    group = Threads()
    try:
        yield group
    finally:
        group.join()
    group.raise_errors()


def check_rw(records: list[Record]) -> tuple[int, list[int]]:
    """Walk the log: a writer enters only when nobody holds, a reader only when no writer holds.
    Returns (most readers holding at once, writer tokens in the order the writers entered)."""
    readers: set[str] = set()
    writer: str | None = None
    most = 0
    write_tokens: list[int] = []
    for event, who, fields in records:
        if event == "enter-read":
            assert writer is None, f"reader {who} entered while writer {writer} held"
            readers.add(who)
            most = max(most, len(readers))
        elif event == "enter-write":
            assert writer is None and not readers, f"writer {who} entered while {writer or readers} held"
            writer = who
            write_tokens.append(fields["token"])
        elif event == "leave-read":
            readers.remove(who)
        elif event == "leave-write":
            assert writer == who, f"{who} left, but the writer was {writer}"
            writer = None
    return most, write_tokens


def test_blocking_rw_lock_readers_share_writers_exclude(shared_cluster: LocalCluster) -> None:
    """Two reader threads must hold at once: each waits inside for the other, so a lock that made
    readers exclusive fails the rendezvous. Two writer threads queue while the readers hold and must
    not enter until both readers left. Then all four go round the lock a few more times. Over the
    whole log no writer holds alongside anyone, and writer tokens strictly increase."""
    name, rounds = "twin-rw", 4
    both_readers_in = threading.Barrier(2, timeout=WAIT_S)

    def reader(who: str) -> None:
        with Client(shared_cluster.path, timeout=WAIT_S) as client:
            session = open_session(client, 5.0)
            side = BlockingReadWriteLock(client, name, session=session, value=who).reader
            token = side.acquire(timeout=WAIT_S)
            group.record("enter-read", who, token=token)
            both_readers_in.wait()  # BrokenBarrierError if the other reader cannot get in meanwhile
            assert writers_queued.wait(WAIT_S), "the writers never queued"
            group.record("leave-read", who)
            side.release()
            for _ in range(rounds):
                token = side.acquire(timeout=WAIT_S)
                group.record("enter-read", who, token=token)
                group.record("leave-read", who)
                side.release()
            close_session_sync(client, session)

    def writer(who: str) -> None:
        with Client(shared_cluster.path, timeout=WAIT_S) as client:
            session = open_session(client, 5.0)
            side = BlockingReadWriteLock(client, name, session=session, value=who).writer
            for _ in range(1 + rounds):
                token = side.acquire(timeout=WAIT_S)
                group.record("enter-write", who, token=token)
                group.record("leave-write", who)
                side.release()
            close_session_sync(client, session)

    with Client(shared_cluster.path, timeout=WAIT_S) as observer, participants() as group:
        writers_queued = group.gate()
        queue = BlockingReadWriteLock(observer, name).reader.queue  # reads the lock's queue, never takes it
        for who in ("r0", "r1"):
            group.start(who, partial(reader, who))
        group.until(lambda: len(group.indexes("enter-read")) == 2, "both readers to hold at once (readers share)")
        for who in ("w0", "w1"):
            group.start(who, partial(writer, who))
        group.until(
            lambda: (
                [e.kind for e in queue()] == ["read-", "read-", "write-", "write-"]
                or bool(group.indexes("enter-write"))
            ),
            "both writers to queue behind the readers",
        )
        assert not group.indexes("enter-write"), "a writer entered while two readers held"
        writers_queued.set()
    records = group.records()
    most, write_tokens = check_rw(records)
    assert most == 2, "the two readers never held at once"
    assert len(write_tokens) == 2 * (1 + rounds)
    assert write_tokens == sorted(set(write_tokens)), f"writer tokens did not strictly increase: {write_tokens}"
    before_first_write = [ev for ev, _, _ in records[: group.indexes("enter-write")[0]]]
    assert before_first_write.count("leave-read") == 2, "a queued writer went before both readers left"
    with Client(shared_cluster.path, timeout=WAIT_S) as client:
        assert client.range(f"/corral/rwlocks/{name}/") == [], "keys left behind"


def test_blocking_double_barrier_enters_and_leaves_together(shared_cluster: LocalCluster) -> None:
    """DoubleBarrier(4) over four threads. Three arrive and must not get in while the fourth is held
    back; three call leave() and none may return while the fourth is held back inside. In the log,
    every "entered" follows every "arrive" and every "left" follows every "leaving"."""
    name, n = "twin-round", 4

    def participant(who: str, *, last: bool) -> None:
        with Client(shared_cluster.path, timeout=WAIT_S) as client:
            if last:
                assert arrive_last.wait(WAIT_S), "never told to arrive"
            barrier = BlockingDoubleBarrier(client, name, n, ttl=5.0, value=who)
            group.record("arrive", who)
            barrier.enter(timeout=WAIT_S)
            group.record("entered", who)
            someone_entered.set()
            if last:
                assert leave_last.wait(WAIT_S), "never told to leave"
            group.record("leaving", who)
            barrier.leave(timeout=WAIT_S)
            group.record("left", who)
            someone_left.set()

    with Client(shared_cluster.path, timeout=WAIT_S) as observer, participants() as group:
        arrive_last, leave_last = group.gate(), group.gate()
        someone_entered, someone_left = threading.Event(), threading.Event()
        members = BlockingDoubleBarrier(observer, name, n).members  # reads the members, never enters
        for i in range(n - 1):
            group.start(f"p{i}", partial(participant, f"p{i}", last=False))
        group.start("last", partial(participant, "last", last=True))
        group.until(lambda: len(members()) == n - 1 or someone_entered.is_set(), f"{n - 1} members")
        assert not someone_entered.wait(QUIET_S), f"entered with only {n - 1} of {n} arrived"
        arrive_last.set()
        group.until(lambda: len(group.indexes("leaving")) == n - 1, f"{n - 1} to begin leaving")
        # The early leavers delete their keys, except the first arrival, which waits for the last
        # member key to go; the held-back participant's key keeps both present.
        group.until(lambda: len(members()) == 2 or someone_left.is_set(), "the early leavers to give up their places")
        assert not someone_left.wait(QUIET_S), f"left with only {n - 1} of {n} leaving"
        leave_last.set()
    arrive, inside, leaving, left = (group.indexes(ev) for ev in ("arrive", "entered", "leaving", "left"))
    assert len(arrive) == len(inside) == len(leaving) == len(left) == n
    assert min(inside) > max(arrive), "someone entered before all arrived"
    assert min(left) > max(leaving), "someone left before all were leaving"
    with Client(shared_cluster.path, timeout=WAIT_S) as client:
        assert client.range(f"/corral/double-barriers/{name}/") == [], "members or ready left behind"


def test_with_statements_acquire_and_release_every_holder(shared_cluster: LocalCluster) -> None:
    """`with` (blocking) and `async with` acquire, give the fencing token, and release on the way out,
    also when the body raises."""
    with Client(shared_cluster.path, timeout=10) as client:
        with BlockingLock(client, "with-lock", ttl=2) as token:
            holder = BlockingLock(client, "with-lock").holder()
            assert holder is not None and holder.revision == token
        assert BlockingLock(client, "with-lock").holder() is None
        sem = BlockingSemaphore(client, "with-sem", 2, ttl=2)
        try:
            with sem as token:
                assert sem.held and [e.revision for e in sem.holders()] == [token]
                raise KeyError("the body fails")
        except KeyError:
            pass
        assert not sem.held and sem.holders() == []

    async def scenario() -> None:
        aclient = await connect_async(shared_cluster.path, timeout=10)
        sem = Semaphore(aclient, "with-asem", 1, ttl=2)
        async with sem as token:
            assert sem.held and [e.revision for e in await sem.holders()] == [token]
        assert (sem.held, await sem.holders()) == (False, [])
        await aclient.close()

    eventloop.run(asyncio.wait_for(scenario(), 30))
