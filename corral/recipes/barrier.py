"""Barrier and DoubleBarrier: wait for a condition that other processes create.

Keys:
    /corral/barriers/<name>                              Barrier: present = closed
    /corral/double-barriers/<name>/members/<seq>         DoubleBarrier: one per participant (its lease)
    /corral/double-barriers/<name>/ready                 DoubleBarrier: all `n` have arrived

Barrier (ZooKeeper's "wait until a node is removed"): `set()` closes it, `remove()` opens it, `wait()`
returns once the key is gone. A barrier set with a session opens by itself if its setter dies.

DoubleBarrier(n) synchronises the beginning and the end of a computation:
- `enter()` creates our member key, then: if the ready key exists, or `n` members are present (then
  we create ready), we are in; otherwise we watch the ready key from just after our own member key
  was created, so its creation is seen even if it has happened, or even been undone, since. Ready is
  created only by a participant that saw `n` member keys, so nobody enters before all `n` arrived.
- `leave()` is ZooKeeper's algorithm: with members sorted by arrival, the first one waits for the last
  to go; every other deletes its key and waits for the first to go; the first deletes its key (and
  ready, in the same transaction) once it is alone. So `leave()` returns for everyone only after every
  member key is gone: nobody leaves before all have left. Each waiter watches one key.
- Ready carries the lease of the participant that created it, so a round in which every participant
  died leaves nothing behind. A name serves one round at a time: start the next round after `leave()`
  has returned everywhere (or use a new name per round).
"""

from __future__ import annotations

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.client.sync import Client
from corral.errors import Compacted, FailedPrecondition, InvalidArgument
from corral.model import Delete, Event, EventKind
from corral.recipes._base import (
    DEFAULT_TTL_S,
    ROOT,
    WAIT_TIMEOUT_S,
    Deadline,
    Rewatcher,
    as_bytes,
    check_async_client,
    check_name,
    retry_conflicts,
    wait_event,
)
from corral.recipes._blocking import run
from corral.recipes._holding import SessionSlot
from corral.recipes._queued import Entry, queue_of

BARRIERS = f"{ROOT}/barriers"
DOUBLE_BARRIERS = f"{ROOT}/double-barriers"


def _is_delete(event: Event) -> bool:
    return event.kind is EventKind.DELETE


class Barrier:
    """A gate that is closed while its key exists (see the module docstring)."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = check_async_client(client, "BlockingBarrier")
        self.key = f"{BARRIERS}/{check_name(name)}"
        self._what = f"barrier {name!r} to open"

    async def set(self, value: bytes | str = b"", *, session: Session | None = None) -> int:
        """Close the barrier; with `session`, it opens by itself when the session ends. Returns the revision."""
        lease = session.lease_id if session is not None else 0
        return await retry_conflicts(
            self._client, lambda: self._client.put(self.key, value, lease=lease), what=f"setting {self.key}"
        )

    async def remove(self) -> int:
        """Open the barrier (a no-op write if it is open). Returns the revision."""
        return await retry_conflicts(self._client, lambda: self._client.delete(self.key), what=f"removing {self.key}")

    async def is_set(self) -> bool:
        return await self._client.get(self.key) is not None

    async def wait(self, timeout: float | None = WAIT_TIMEOUT_S) -> None:
        """Return once the barrier is open (at once if it is).

        Raises:
            WaitTimeout: still closed at the deadline.
        """
        deadline = Deadline(timeout, self._what)
        rewatch = Rewatcher(self._client)
        while True:
            kv = await self._client.get(self.key)
            if kv is None:
                return
            deadline.check()
            if await rewatch.wait(self.key, after=kv.mod_revision, deadline=deadline, stop=_is_delete) is not None:
                return


class DoubleBarrier:
    """Enter together, leave together: `n` participants (see the module docstring)."""

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
        self._client = check_async_client(client, "BlockingDoubleBarrier")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgument(f"n must be a positive int (participants), got {n!r}", field="n")
        self.n = n
        base = f"{DOUBLE_BARRIERS}/{check_name(name)}/"
        self._members = base + "members/"
        self.ready_key = base + "ready"
        self._slot = SessionSlot(client, session, ttl)
        self._value = as_bytes(value)
        self._name = name
        self.key: str | None = None  # our member key between enter and leave
        self._revision = 0

    async def members(self) -> list[Entry]:
        """The participants present now, in arrival order."""
        return queue_of(await self._client.range(self._members), self._members, ("",))

    async def enter(self, timeout: float | None = WAIT_TIMEOUT_S) -> None:
        """Arrive, and return once all `n` have arrived.

        Raises:
            WaitTimeout: fewer than `n` arrived by the deadline (our member key is removed again).
            LeaseExpired: the session was lost while waiting.
            FailedPrecondition: this object has entered and not left.
        """
        if self.key is not None:
            raise FailedPrecondition(f"double barrier {self._name!r}: already entered; leave first")
        deadline = Deadline(timeout, f"{self.n} participants to enter double barrier {self._name!r}")
        session = await self._slot.get()
        try:
            self.key, self._revision = await self._client.put_sequential(
                self._members, self._value, lease=session.lease_id
            )
            await self._wait_ready(session, deadline)
        except BaseException:
            key, self.key = self.key, None
            if not await self._slot.done() and key is not None and session.alive:
                await retry_conflicts(self._client, lambda: self._client.delete(key), what=f"withdrawing {key}")
            raise

    async def _wait_ready(self, session: Session, deadline: Deadline) -> None:
        if await self._client.get(self.ready_key) is not None:
            return
        members = await self.members()
        if len(members) >= self.n:
            await retry_conflicts(
                self._client,
                lambda: self._client.put(self.ready_key, b"", lease=session.lease_id),
                what=f"creating {self.ready_key}",
            )
            return
        deadline.check()
        try:
            await wait_event(
                self._client,
                self.ready_key,
                after=self._revision,
                deadline=deadline,
                session=session,
                stop=lambda event: event.kind is EventKind.PUT,
            )
        except Compacted:
            # History since we arrived is gone; ready can only be created after all arrived, and
            # we cannot tell any more, so say so rather than guess.
            raise FailedPrecondition(
                f"double barrier {self._name!r}: history was compacted while waiting to enter; enter again"
            ) from None

    async def leave(self, timeout: float | None = WAIT_TIMEOUT_S) -> None:
        """Depart, and return once every participant has departed.

        Raises:
            WaitTimeout: some participant is still present at the deadline (our key is gone anyway,
                except for the first-arrived participant, who keeps it until it is alone).
            LeaseExpired: the session was lost while waiting (its keys are gone).
            FailedPrecondition: not entered.
        """
        if self.key is None:
            raise FailedPrecondition(f"double barrier {self._name!r}: not entered")
        session = await self._slot.get()
        deadline = Deadline(timeout, f"every participant to leave double barrier {self._name!r}")
        key = self.key
        try:
            await self._leave(session, deadline)
        except BaseException:
            # Give up our place anyway: the others then wait for whoever is still present.
            if not await self._slot.done() and session.alive:
                await retry_conflicts(self._client, lambda: self._client.delete(key), what=f"leaving {key}")
            raise
        finally:
            self.key = None
        await self._slot.done()

    async def _leave(self, session: Session, deadline: Deadline) -> None:
        mine = self.key
        assert mine is not None
        rewatch = Rewatcher(self._client)
        while True:
            members = await self.members()
            if not members:
                return
            keys = [m.key for m in members]
            if keys == [mine]:
                # Alone (everyone else has gone): remove ourselves and ready together, so the name
                # is clean for the next round the moment the last participant is out.
                await retry_conflicts(
                    self._client,
                    lambda: self._client.txn(on_success=[Delete(mine), Delete(self.ready_key)]),
                    what=f"leaving {mine}",
                )
                return
            if mine == keys[0]:
                target = members[-1]  # the first waits for the last; it leaves last
            else:
                if mine in keys:
                    await retry_conflicts(self._client, lambda: self._client.delete(mine), what=f"leaving {mine}")
                target = members[0]  # everyone else waits for the first
            session.check()
            deadline.check()
            await rewatch.wait(
                target.key,
                after=target.mod_revision,
                deadline=deadline,
                session=session if mine == keys[0] else None,
                stop=_is_delete,
            )


class BlockingBarrier:
    """`Barrier` for the blocking `Client`."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self._impl = Barrier(client.aio, name)
        self.key = self._impl.key

    def set(self, value: bytes | str = b"", *, session: Session | None = None) -> int:
        return run(self._client, self._impl.set(value, session=session))

    def remove(self) -> int:
        return run(self._client, self._impl.remove())

    def is_set(self) -> bool:
        return run(self._client, self._impl.is_set())

    def wait(self, timeout: float | None = WAIT_TIMEOUT_S) -> None:
        """See Barrier.wait."""
        run(self._client, self._impl.wait(timeout))


class BlockingDoubleBarrier:
    """`DoubleBarrier` for the blocking `Client`."""

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
        self._impl = DoubleBarrier(client.aio, name, n, session=session, ttl=ttl, value=value)

    def enter(self, timeout: float | None = WAIT_TIMEOUT_S) -> None:
        """See DoubleBarrier.enter."""
        run(self._client, self._impl.enter(timeout))

    def leave(self, timeout: float | None = WAIT_TIMEOUT_S) -> None:
        """See DoubleBarrier.leave."""
        run(self._client, self._impl.leave(timeout))

    def members(self) -> list[Entry]:
        return run(self._client, self._impl.members())
