"""Queue: a FIFO work queue where each item is taken to completion exactly once, even when a consumer
dies holding one.

Keys:
    /corral/queues/<name>/items/<seq>      an item, until it is acked (value = the payload)
    /corral/queues/<name>/claims/<seq>     a consumer's claim on the item with the same <seq>
                                           (value = the consumer's id, lease = its session)

The protocol:
- `put` creates an item with a sequential key, so items are taken in the order they were put.
- `take` claims the oldest unclaimed item with one transaction: "if the item still exists (same
  create revision) and has no claim, create the claim under my session's lease". Two consumers can
  never both claim an item (the compare on the claim, and the first-wins rule on its key); a
  consumer that loses the race tries the next item.
- `ack` finishes the item: "if the claim is still mine, delete the item and the claim", in one
  transaction. So an item is acked at most once, and only by the consumer that holds its claim.
- A consumer that dies (or loses its session) before `ack` loses its claim with its lease; the item
  has no claim any more, so it is visible again and another consumer takes it. The item itself is
  never deleted until an ack: nothing is lost.
- `release` gives an item back without finishing it (deletes the claim only).

So every item is acked exactly once. The work done for it may start more than once (the consumer
that died may have done part of it); `ack` raising LeaseExpired tells a slow consumer its claim was
lost before it committed. Make the work idempotent, or fence it with `item.claim_revision`, which
grows with every claim of the item.

Waiting for work watches the whole queue prefix (new items, claims released): every idle consumer
wakes for each new item, as with etcd's queue recipe. That is the price of letting any consumer take
any item; the claim transaction keeps it correct.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.client.sync import Client
from corral.errors import Conflict, LeaseExpired
from corral.limits import RANGE_LIMIT_MAX
from corral.model import Compare, CompareOp, CompareTarget, Delete, Event, EventKind, Put, TxnWrite, sequential_key
from corral.recipes._base import (
    DEFAULT_TTL_S,
    ROOT,
    WAIT_TIMEOUT_S,
    Deadline,
    Rewatcher,
    as_bytes,
    backoff,
    check_async_client,
    check_name,
    fence_revision,
    floor_of,
    retry_conflicts,
    sequence_of,
)
from corral.recipes._blocking import run
from corral.recipes._holding import LossGuard, SessionSlot

QUEUES = f"{ROOT}/queues"

# Unclaimed items a consumer reads per look at the queue, beyond those already claimed: enough to
# get past the ones other consumers are claiming at the same moment (one each), few enough that a
# look stays cheap when payloads are large.
TAKE_BATCH = 32
# Claims (items being worked on) read per look; more claims than this means more consumers at once
# than a look can see past, and the oldest unclaimed items may be skipped until claims drop.
CLAIMS_MAX = RANGE_LIMIT_MAX - TAKE_BATCH


@dataclass(frozen=True, slots=True)
class Item:
    """An item taken from a queue: its payload, its key, and the claim that makes it ours."""

    key: str
    value: bytes
    revision: int  # the item's sequence: when it was put
    claim_key: str
    claim_revision: int  # grows with every claim of this item: a fencing token for its work


class Queue:
    """A work queue with exactly-once acks (see the module docstring). A consumer opens its own
    session (lease `ttl`) on its first `take()` unless `session=` is given; `close()` ends it."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        session: Session | None = None,
        ttl: float = DEFAULT_TTL_S,
        consumer: str = "",
    ) -> None:
        self._client = check_async_client(client, "BlockingQueue")
        self.name = check_name(name)
        base = f"{QUEUES}/{name}/"
        self._base = base
        self._items = base + "items/"
        self._claims = base + "claims/"
        self._slot = SessionSlot(client, session, ttl)
        self._guard = LossGuard(f"claims on queue {name!r}")
        self.lost = self._guard.lost
        self.consumer = (consumer or client.client_id).encode()
        self._floor = 0  # the newest revision this consumer knows the queue reflects
        # Times an idle take() was woken by a change to the queue (new items, returned items).
        self.wakeups = 0

    @property
    def session(self) -> Session | None:
        """The session our claims are attached to (None before the first take of an own session)."""
        return self._slot.current

    async def put(self, value: bytes | str) -> str:
        """Append an item; return its key."""
        key, revision = await self._client.put_sequential(self._items, as_bytes(value))
        self._floor = max(self._floor, revision)
        return key

    async def take(self, timeout: float | None = WAIT_TIMEOUT_S) -> Item:
        """Claim the oldest item nobody holds; wait for one if there is none.

        Raises:
            WaitTimeout: no item could be claimed by the deadline.
            LeaseExpired: the session was lost.
        """
        deadline = Deadline(timeout, f"an item in queue {self.name!r}")
        session = await self._slot.get()
        if self._guard.watching is not session:
            self._guard.start(session)
        rewatch = Rewatcher(self._client)
        contended = 0  # looks in a row in which a claim lost a race (Conflict)
        while True:
            # Claims first: the watch below starts from what this read reflects, and the items read
            # after it reflect at least as much (see _base's docstring on floors).
            claims = await self._client.range(self._claims, limit=CLAIMS_MAX)
            floor = max(self._floor, floor_of(claims))
            if floor == 0:  # nothing to start a watch from: a fence, fixed before the items are read
                floor = self._floor = await fence_revision(self._client)
            items = await self._client.range(self._items, limit=len(claims) + TAKE_BATCH)
            claimed = {sequence_of(kv.key, self._claims) for kv in claims}
            raced = False
            for kv in items:
                seq = sequence_of(kv.key, self._items)
                if seq is None or seq in claimed:
                    continue
                try:
                    item = await self._claim(kv.key, kv.create_revision, seq, kv.value, session)
                except Conflict:
                    raced = True  # another transaction on it was in flight: try the next item
                    continue
                if item is not None:
                    return item
            session.check()
            deadline.check()
            if raced:
                # The transaction we lost to may yet abort and leave its item unclaimed, with no event
                # to wake us: look again shortly instead of waiting for a change.
                await asyncio.sleep(backoff(contended))  # backoff before retrying a lost race
                contended += 1
                continue
            contended = 0
            woken = await rewatch.wait(
                self._base,
                prefix=True,
                after=floor,
                deadline=deadline,
                session=session,
                stop=self._work_appeared,
                on_event=self._seen,
            )
            if woken is not None:
                self.wakeups += 1

    def _work_appeared(self, event: Event) -> bool:
        """A new item, or a claim gone (an item given back, or its consumer's lease ended)."""
        if event.kind is EventKind.PUT:
            return event.kv.key.startswith(self._items)
        return event.kv.key.startswith(self._claims)

    def _seen(self, event: Event) -> None:
        self._floor = max(self._floor, event.kv.mod_revision)

    async def _claim(self, key: str, created: int, seq: int, value: bytes, session: Session) -> Item | None:
        claim = sequential_key(self._claims, seq)
        free = [
            Compare(key, CompareTarget.CREATE_REVISION, CompareOp.EQUAL, created),
            Compare(claim, CompareTarget.VERSION, CompareOp.EQUAL, 0),
        ]
        result = await self._client.txn(free, [Put(claim, self.consumer, session.lease_id)])
        self._floor = max(self._floor, result.revision)
        if not result.succeeded:
            return None
        return Item(key, value, seq, claim, result.revision)

    async def ack(self, item: Item) -> None:
        """Finish `item`: it is removed from the queue for good.

        Raises:
            LeaseExpired: our claim is gone (the session was lost, or the claim released): the item
                is back in the queue for someone else, and this ack did nothing.
        """
        await self._finish(item, [Delete(item.key), Delete(item.claim_key)], "ack")

    async def release(self, item: Item) -> None:
        """Give `item` back unfinished: the next take() gets it again.

        Raises:
            LeaseExpired: our claim was already gone.
        """
        await self._finish(item, [Delete(item.claim_key)], "release")

    async def _finish(self, item: Item, writes: list[TxnWrite], what: str) -> None:
        session = self._slot.current
        lease = session.lease_id if session is not None else 0
        ours = [
            Compare(item.claim_key, CompareTarget.CREATE_REVISION, CompareOp.EQUAL, item.claim_revision),
            Compare(item.claim_key, CompareTarget.LEASE, CompareOp.EQUAL, lease),
        ]
        result = await retry_conflicts(
            self._client, lambda: self._client.txn(ours, writes), what=f"{what} of {item.key}"
        )
        self._floor = max(self._floor, result.revision)
        if not result.succeeded:
            raise LeaseExpired(
                f"queue {self.name!r}: our claim on {item.key} is gone (session lost?); the item is back in "
                f"the queue and this {what} did nothing"
            )

    async def size(self) -> int:
        """Items in the queue now, claimed or not (counted up to the server's range limit)."""
        return len(await self._client.range(self._items))

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback()` (on the event loop) if the session is lost: every claim is gone."""
        self._guard.on_lost(callback)

    async def close(self) -> None:
        """End the consumer's own session (its claims go back to the queue). Shared sessions stay."""
        self._guard.stop()
        await self._slot.done()


class BlockingQueue:
    """`Queue` for the blocking `Client`."""

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        session: Session | None = None,
        ttl: float = DEFAULT_TTL_S,
        consumer: str = "",
    ) -> None:
        self._client = client
        self._impl = Queue(client.aio, name, session=session, ttl=ttl, consumer=consumer)

    def put(self, value: bytes | str) -> str:
        return run(self._client, self._impl.put(value))

    def take(self, timeout: float | None = WAIT_TIMEOUT_S) -> Item:
        """See Queue.take."""
        return run(self._client, self._impl.take(timeout))

    def ack(self, item: Item) -> None:
        """See Queue.ack."""
        run(self._client, self._impl.ack(item))

    def release(self, item: Item) -> None:
        run(self._client, self._impl.release(item))

    def size(self) -> int:
        return run(self._client, self._impl.size())

    def on_lost(self, callback: Callable[[], object]) -> None:
        """`callback` runs on the client's loop thread: keep it short and thread-safe."""
        self._impl.on_lost(callback)

    def close(self) -> None:
        run(self._client, self._impl.close())
