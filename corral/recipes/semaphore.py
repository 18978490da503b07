"""Semaphore: at most `n` holders at once, first come first served, without herd effect.

Keys:
    /corral/semaphores/<name>/queue/<seq>      a waiter (the first one is next to take a permit)
    /corral/semaphores/<name>/holders/<seq>    a permit in use (at most n)
Both carry the acquirer's session lease and its chosen value.

How it works: an acquirer queues like a Lock waiter (it watches only its predecessor in the queue).
The first in the queue, and only it, takes a permit when fewer than `n` exist: one transaction
creates its holder key and deletes its queue key, on condition that its queue key still exists. Only
the first in the queue creates holder keys, so the count it read cannot grow before its write; if
its session ended meanwhile (so another became first), its queue key is gone and the transaction
does nothing. While all permits are taken, only the first in the queue watches the holders, so a
release wakes one process, and that one's move wakes the next in the queue: no herd.

Every user of one semaphore name must pass the same `n`: it is not stored. A permit held by a process
that dies is freed when its session's lease ends; a holder whose session is lost is told (`lost`,
`on_lost`, `check()`), as for a Lock.
"""

from __future__ import annotations

from collections.abc import Callable

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.client.sync import Client
from corral.errors import FailedPrecondition, InvalidArgument, LeaseExpired
from corral.model import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Event,
    EventKind,
    PutSequential,
    TxnWrite,
    sequential_key,
)
from corral.recipes._base import (
    DEFAULT_TTL_S,
    ROOT,
    WAIT_TIMEOUT_S,
    Deadline,
    Rewatcher,
    as_bytes,
    check_async_client,
    check_name,
    floor_of,
    retry_conflicts,
)
from corral.recipes._blocking import run
from corral.recipes._holding import Held, HeldAsync, LossGuard, SessionSlot
from corral.recipes._queued import Entry, QueuedLock, predecessor, queue_of

SEMAPHORES = f"{ROOT}/semaphores"


class Semaphore(HeldAsync):
    """At most `n` concurrent holders (see the module docstring). `acquire()` returns the permit's
    revision; `release()` gives it back; `async with` does both."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        n: int,
        *,
        session: Session | None = None,
        ttl: float = DEFAULT_TTL_S,
        value: bytes | str = b"",
    ) -> None:
        check_async_client(client, "BlockingSemaphore")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgument(f"n must be a positive int (permits), got {n!r}", field="n")
        self.n = n
        self._client = client
        self._base = f"{SEMAPHORES}/{check_name(name)}/"
        self._holders = self._base + "holders/"
        self._slot = SessionSlot(client, session, ttl)
        self._value = as_bytes(value)
        self._what = f"semaphore {name!r}"
        self._guard = LossGuard(self._what)
        self._queue: QueuedLock | None = None
        self.lost = self._guard.lost
        self.key: str | None = None  # our holder key while we hold a permit
        self.token: int | None = None
        # Watch events received while first in the queue, waiting for a permit (see Lock.wakeups).
        self.wakeups = 0

    @property
    def held(self) -> bool:
        return self.key is not None and not self.lost.is_set()

    async def acquire(self, timeout: float | None = WAIT_TIMEOUT_S) -> int:
        """Wait for a permit; return its revision.

        Raises:
            WaitTimeout: no permit before the deadline (we leave the queue again).
            LeaseExpired: the session was lost while waiting.
            FailedPrecondition: this object already holds or waits for a permit.
        """
        if self.key is not None or self._queue is not None:
            self._guard.check()  # lost with its session since: say that first
            raise FailedPrecondition(f"{self._what}: this object already holds or waits for a permit; release it")
        deadline = Deadline(timeout, self._what)
        session = await self._slot.get()
        queue = self._queue = QueuedLock(
            self._client,
            self._base + "queue/",
            "",
            ("",),
            predecessor,
            session=session,
            ttl=session.ttl_s,
            value=self._value,
            what=f"{self._what} queue",
        )
        try:
            await queue.acquire(deadline.remaining())
            self.key, self.token = await self._take_permit(queue, session, deadline)
            queue.forget()  # the transaction that made us a holder deleted our queue key
        except BaseException:
            await queue.release()
            self._queue = None
            await self._slot.done()
            raise
        finally:
            self.wakeups += queue.wakeups
        self._queue = None
        self._guard.start(session)
        return self.token

    async def _take_permit(self, queue: QueuedLock, session: Session, deadline: Deadline) -> tuple[str, int]:
        queue_key, queue_revision = queue.key, queue.token
        assert queue_key is not None and queue_revision is not None
        # Become a holder and leave the queue at once, if our queue key is still ours.
        take = [Compare(queue_key, CompareTarget.CREATE_REVISION, CompareOp.EQUAL, queue_revision)]
        moves: list[TxnWrite] = [PutSequential(self._holders, self._value, session.lease_id), Delete(queue_key)]
        rewatch = Rewatcher(self._client)
        while True:
            holders = await self._client.range(self._holders)
            if len(holders) < self.n:
                result = await retry_conflicts(
                    self._client, lambda: self._client.txn(take, moves), what=f"{self._what} taking a permit"
                )
                if not result.succeeded:
                    session.check()
                    raise LeaseExpired(f"{self._what}: our queue key vanished: its lease ended or it was deleted")
                return sequential_key(self._holders, result.revision), result.revision
            deadline.check()
            await rewatch.wait(
                self._holders,
                prefix=True,
                after=floor_of(holders, queue_revision),
                deadline=deadline,
                session=session,
                stop=lambda event: event.kind is EventKind.DELETE,
                on_event=self._woken,
            )

    def _woken(self, event: Event) -> None:
        if event.kind is EventKind.DELETE:
            self.wakeups += 1

    async def release(self) -> None:
        """Give the permit back (a no-op if none is held)."""
        self._guard.stop()
        key, self.key, self.token = self.key, None, None
        if await self._slot.done():
            return  # our own session: revoking it deleted the permit
        session = self._slot.current
        if key is not None and session is not None and session.alive:
            await retry_conflicts(self._client, lambda: self._client.delete(key), what=f"{self._what} release")

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback()` (on the event loop) if the session is lost while holding a permit."""
        self._guard.on_lost(callback)

    def check(self) -> None:
        """Raises LeaseExpired if the permit was lost with the session."""
        self._guard.check()

    async def holders(self) -> list[Entry]:
        """The permits in use now, oldest first."""
        return queue_of(await self._client.range(self._holders), self._holders, ("",))

    async def waiting(self) -> list[Entry]:
        """The acquirers waiting for a permit now, next first."""
        queue = self._base + "queue/"
        return queue_of(await self._client.range(queue), queue, ("",))


class BlockingSemaphore(Held):
    """`Semaphore` for the blocking `Client`."""

    def __init__(
        self,
        client: Client,
        name: str,
        n: int,
        *,
        session: Session | None = None,
        ttl: float = DEFAULT_TTL_S,
        value: bytes | str = b"",
    ) -> None:
        self._client = client
        self._impl = Semaphore(client.aio, name, n, session=session, ttl=ttl, value=value)

    @property
    def held(self) -> bool:
        return self._impl.held

    @property
    def is_lost(self) -> bool:
        return self._impl.lost.is_set()

    @property
    def token(self) -> int | None:
        return self._impl.token

    def acquire(self, timeout: float | None = WAIT_TIMEOUT_S) -> int:
        """See Semaphore.acquire."""
        return run(self._client, self._impl.acquire(timeout))

    def release(self) -> None:
        run(self._client, self._impl.release())

    def on_lost(self, callback: Callable[[], object]) -> None:
        """`callback` runs on the client's loop thread: keep it short and thread-safe."""
        self._impl.on_lost(callback)

    def check(self) -> None:
        self._impl.check()

    def holders(self) -> list[Entry]:
        return run(self._client, self._impl.holders())

    def waiting(self) -> list[Entry]:
        return run(self._client, self._impl.waiting())
