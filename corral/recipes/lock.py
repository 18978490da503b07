"""Lock and ReadWriteLock: waiters queue as sequential keys and each watches one key only.

Keys:
    /corral/locks/<name>/<seq>                       Lock
    /corral/rwlocks/<name>/read-<seq>                ReadWriteLock, a reader
    /corral/rwlocks/<name>/write-<seq>               ReadWriteLock, a writer
`<seq>` is the key's commit revision, zero-padded (`put_sequential`), so key order is arrival order.
Each key carries the acquirer's session lease and, as its value, whatever the acquirer chose to say
about itself (`corral range /corral/locks/` shows who holds and who waits).

Guarantees:
- Mutual exclusion: the holder of a Lock (a writer of a ReadWriteLock) is the one whose key is the
  first still present. A key is deleted by release, or by the coordinator when its session's lease
  ends; a holder whose session is lost is told (`lost`, `on_lost`, `check()`), and the session notices
  no later than the coordinator expires the lease, so by the time another can hold, the old holder
  has been told.
- Fencing: `acquire()` returns the holder key's revision. Holders of a Lock (writers of a
  ReadWriteLock) get strictly increasing tokens: a later holder's key was created after every key
  still present when it saw itself first, including its predecessor's. Pass the token to the
  resource you protect and have it refuse a smaller one: that covers a holder paused past its TTL.
- No herd effect: a waiter watches only the key it waits behind (its predecessor for a Lock or a
  writer; the last earlier writer for a reader), so a release wakes exactly the waiters it lets go
  on: one for a Lock, all the readers queued directly behind a writer for a ReadWriteLock (the
  seed's "the herd effect is put to use" for readers). After waking, a waiter re-reads the queue, so
  a waiter that gave up in the middle wakes only the one behind it, which then watches the next.
- No writer starvation: a reader waits for *every* earlier writer, including a writer that is still
  waiting, so readers that arrive after a waiting writer queue behind it.

Blocking twins (`BlockingLock`, `BlockingReadWriteLock`) run this implementation on a blocking
`Client`'s event-loop thread.
"""

from __future__ import annotations

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.client.sync import Client
from corral.recipes._base import (
    DEFAULT_TTL_S,
    ROOT,
    check_async_client,
    check_name,
)
from corral.recipes._blocking import run
from corral.recipes._queued import READ, WRITE, BlockingQueuedLock, Entry, QueuedLock, last_earlier_writer, predecessor

LOCKS = f"{ROOT}/locks"
RWLOCKS = f"{ROOT}/rwlocks"


class Lock(QueuedLock):
    """A mutual-exclusion lock with fencing tokens and no herd effect (see the module docstring).

    `Lock(client, "build")` opens its own session (lease `ttl` seconds) for each acquisition and revokes
    it on release; pass `session=` to share one session among many recipes instead.
    """

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        session: Session | None = None,
        ttl: float = DEFAULT_TTL_S,
        value: bytes | str = b"",
    ) -> None:
        check_async_client(client, "BlockingLock")
        base = f"{LOCKS}/{check_name(name)}/"
        super().__init__(
            client, base, "", ("",), predecessor, session=session, ttl=ttl, value=value, what=f"lock {name!r}"
        )

    async def holder(self) -> Entry | None:
        """The current holder's entry (its key, token and value), or None if the lock is free."""
        queue = await self.queue()
        return queue[0] if queue else None


class ReadWriteLock:
    """Shared readers, exclusive writers, no writer starvation (see the module docstring).

    `rw.reader` and `rw.writer` are locks of their own (acquire, release, token, lost, `async with`);
    each opens its own session unless `session=` is given.
    """

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        session: Session | None = None,
        ttl: float = DEFAULT_TTL_S,
        value: bytes | str = b"",
    ) -> None:
        check_async_client(client, "BlockingReadWriteLock")
        base = f"{RWLOCKS}/{check_name(name)}/"
        kinds = (READ, WRITE)
        self.reader = QueuedLock(
            client,
            base,
            READ,
            kinds,
            last_earlier_writer,
            session=session,
            ttl=ttl,
            value=value,
            what=f"read lock {name!r}",
        )
        self.writer = QueuedLock(
            client,
            base,
            WRITE,
            kinds,
            predecessor,
            session=session,
            ttl=ttl,
            value=value,
            what=f"write lock {name!r}",
        )


# -- blocking twins ------------------------------------------------------------------------------------


class BlockingLock(BlockingQueuedLock):
    """`Lock` for the blocking `Client`."""

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        session: Session | None = None,
        ttl: float = DEFAULT_TTL_S,
        value: bytes | str = b"",
    ) -> None:
        self._lock = Lock(client.aio, name, session=session, ttl=ttl, value=value)
        super().__init__(client, self._lock)

    def holder(self) -> Entry | None:
        """See Lock.holder."""
        return run(self._client, self._lock.holder())


class BlockingReadWriteLock:
    """`ReadWriteLock` for the blocking `Client`: `rw.reader` and `rw.writer` are blocking locks."""

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        session: Session | None = None,
        ttl: float = DEFAULT_TTL_S,
        value: bytes | str = b"",
    ) -> None:
        impl = ReadWriteLock(client.aio, name, session=session, ttl=ttl, value=value)
        self.reader = BlockingQueuedLock(client, impl.reader)
        self.writer = BlockingQueuedLock(client, impl.writer)
