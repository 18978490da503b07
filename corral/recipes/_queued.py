"""A place in a lock queue: the machinery shared by Lock, ReadWriteLock, Semaphore and LeaderElection.

An acquirer creates a sequential key (named by its commit revision, so key order is arrival order)
with its session's lease, then waits for its turn: it reads the queue, asks a *blocker* rule which
key it waits behind (None: its turn), and watches only that key, from just after the revision the
read showed for it, until it is deleted; then it reads the queue again. Each recipe is a choice of
key prefix and blocker rule; see lock.py's docstring for what that guarantees.

One case is not cleaned up by itself: if creating the key fails with an unknown outcome
(`Unavailable(outcome_unknown=True)`, after the SDK's own retries up to its deadline), the key may
exist without our knowing its name. With a session of the recipe's own, giving up revokes that
session and the key goes with it; with a shared session, the key stays (and will hold or block the
lock) until that session ends, so close the session after such an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.client.sync import Client
from corral.errors import FailedPrecondition, LeaseExpired
from corral.model import Event, EventKind, KeyValue
from corral.recipes._base import (
    WAIT_TIMEOUT_S,
    Deadline,
    Rewatcher,
    as_bytes,
    retry_conflicts,
    sequence_of,
)
from corral.recipes._blocking import run
from corral.recipes._holding import Held, HeldAsync, LossGuard, SessionSlot

READ = "read-"
WRITE = "write-"


@dataclass(frozen=True, slots=True)
class Entry:
    """One key of a lock's queue: who (value), of which kind ("", "read-" or "write-"), since when."""

    key: str
    kind: str
    revision: int
    mod_revision: int
    value: bytes
    lease: int


def queue_of(kvs: list[KeyValue], base: str, kinds: tuple[str, ...]) -> list[Entry]:
    """The queue under `base` in arrival order; keys that are not `base + kind + <seq>` are ignored."""
    out = []
    for kv in kvs:
        for kind in kinds:
            seq = sequence_of(kv.key, base + kind)
            if seq is not None:
                out.append(Entry(kv.key, kind, seq, kv.mod_revision, kv.value, kv.lease))
                break
    out.sort(key=lambda e: e.revision)
    return out


Blocker = Callable[[list[Entry], int], Entry | None]


def predecessor(queue: list[Entry], index: int) -> Entry | None:
    """Exclusive holders wait for the key just before theirs, whatever its kind."""
    return queue[index - 1] if index > 0 else None


def last_earlier_writer(queue: list[Entry], index: int) -> Entry | None:
    """Readers wait only for writers that arrived before them: the latest such writer is released
    last (it waits for the others), so it is the only one worth watching."""
    for entry in reversed(queue[:index]):
        if entry.kind == WRITE:
            return entry
    return None


class QueuedLock(HeldAsync):
    """A place in a lock queue: the shared machinery of Lock, the sides of a ReadWriteLock, and
    LeaderElection. `acquire` queues and waits for the turn; `release` leaves the queue."""

    def __init__(
        self,
        client: AsyncClient,
        base: str,
        kind: str,
        kinds: tuple[str, ...],
        blocker: Blocker,
        *,
        session: Session | None,
        ttl: float,
        value: bytes | str,
        what: str,
    ) -> None:
        self._client = client
        self._base = base
        self._kind = kind
        self._kinds = kinds
        self._blocker = blocker
        self._slot = SessionSlot(client, session, ttl)
        self._value = as_bytes(value)
        self._what = what
        self._guard = LossGuard(what)
        self.key: str | None = None
        self.token: int | None = None
        self._held = False
        # Set when the session was lost while this held the lock.
        self.lost = self._guard.lost
        # Watch events this waiter received while waiting: a release wakes exactly the waiters it
        # lets go on, which tests and operators can check with this count.
        self.wakeups = 0
        # The key this waiter is watching now (None when not waiting): who it waits behind.
        self.waiting_for: str | None = None

    @property
    def session(self) -> Session | None:
        return self._slot.current

    @property
    def held(self) -> bool:
        """Acquired, not released, and the session not lost."""
        return self._held and not self.lost.is_set()

    async def acquire(self, timeout: float | None = WAIT_TIMEOUT_S) -> int:
        """Queue, wait for the turn, and hold; return the fencing token (the key's revision).

        Raises:
            WaitTimeout: not our turn before the deadline (our key is removed again).
            LeaseExpired: the session was lost while waiting (its keys are gone).
            FailedPrecondition: this object already holds or waits.
            Unavailable: the cluster did not answer in time.
        """
        if self.key is not None:
            self._guard.check()  # lost with its session since: say that first
            raise FailedPrecondition(f"{self._what} is already held or being acquired by this object; release it")
        deadline = Deadline(timeout, self._what)
        session = await self._slot.get()
        try:
            self.key, self.token = await self._client.put_sequential(
                self._base + self._kind, self._value, lease=session.lease_id
            )
            await self._wait_turn(session, deadline)
        except BaseException:
            await self._leave()
            raise
        self._held = True
        self._guard.start(session)
        return self.token

    async def _wait_turn(self, session: Session, deadline: Deadline) -> None:
        rewatch = Rewatcher(self._client)
        while True:
            queue = queue_of(await self._client.range(self._base), self._base, self._kinds)
            index = next((i for i, e in enumerate(queue) if e.key == self.key), None)
            if index is None:
                session.check()
                raise LeaseExpired(
                    f"{self._what}: our key {self.key} vanished while waiting: its session's lease ended or "
                    "someone deleted it",
                    lease=session.lease_id,
                )
            blocker = self._blocker(queue, index)
            if blocker is None:
                return
            deadline.check()
            self.waiting_for = blocker.key
            try:
                await rewatch.wait(
                    blocker.key,
                    after=blocker.mod_revision,
                    deadline=deadline,
                    session=session,
                    stop=lambda event: event.kind is EventKind.DELETE,
                    on_event=self._woken,
                )
            finally:
                self.waiting_for = None

    def _woken(self, event: Event) -> None:
        self.wakeups += 1

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback()` (on the event loop) if the session is lost while this holds the lock."""
        self._guard.on_lost(callback)

    def check(self) -> None:
        """Raises LeaseExpired if the lock was lost with its session (call it before acting as holder)."""
        self._guard.check()

    async def release(self) -> None:
        """Leave the queue (let the next waiter go on). A no-op if not held or waiting."""
        await self._leave()

    def forget(self) -> None:
        """Our key was deleted by a transaction of our own (a semaphore moving from its queue to a
        permit): stop guarding it, delete nothing."""
        self._guard.stop()
        self.key, self.token, self._held = None, None, False

    async def _leave(self) -> None:
        self._guard.stop()
        key, self.key, self.token, self._held = self.key, None, None, False
        if await self._slot.done():
            return  # our own session: revoking it deleted the key, in the same transaction
        session = self._slot.current
        if key is not None and session is not None and session.alive:
            await retry_conflicts(self._client, lambda: self._client.delete(key), what=f"releasing {key}")

    async def queue(self) -> list[Entry]:
        """Everyone in this lock's queue now, first (the holder) first."""
        return queue_of(await self._client.range(self._base), self._base, self._kinds)


class BlockingQueuedLock(Held):
    """The blocking face of a QueuedLock: every call runs the async one on the client's loop."""

    def __init__(self, client: Client, impl: QueuedLock) -> None:
        self._client = client
        self._impl = impl

    @property
    def token(self) -> int | None:
        return self._impl.token

    @property
    def held(self) -> bool:
        return self._impl.held

    @property
    def is_lost(self) -> bool:
        return self._impl.lost.is_set()

    @property
    def wakeups(self) -> int:
        return self._impl.wakeups

    @property
    def key(self) -> str | None:
        return self._impl.key

    @property
    def waiting_for(self) -> str | None:
        return self._impl.waiting_for

    def acquire(self, timeout: float | None = WAIT_TIMEOUT_S) -> int:
        """See QueuedLock.acquire."""
        return run(self._client, self._impl.acquire(timeout))

    def release(self) -> None:
        run(self._client, self._impl.release())

    def check(self) -> None:
        """Raises LeaseExpired if the lock was lost with its session."""
        self._impl.check()

    def on_lost(self, callback: Callable[[], object]) -> None:
        """`callback` runs on the client's loop thread: keep it short and thread-safe."""
        self._impl.on_lost(callback)

    def queue(self) -> list[Entry]:
        return run(self._client, self._impl.queue())
