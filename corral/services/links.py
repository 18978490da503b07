"""Peer links: one ordered connection per destination, one batch in flight, the next one forming.

Messages queued for a peer go out as `Batch`es on one peer-wire connection (`wire.py`). The receiver
processes batches in arrival order and answers each, in order, once what it persisted is durable;
answers are matched to batches by position. So a link is FIFO (a COMMIT reaches a replica before a
later PREPARE on the same key), the connection stays open between batches, and whatever is queued
while a batch is being answered rides in the next, larger batch (group commit).

A broken or stalled connection (no answer within `rpc_timeout_s`) is closed: every message of the
unanswered batches goes to `on_unreachable` (the core decides what that means: abort, or retry
later), and the link connects again after a short backoff. A peer that cannot be reached at all
gets the same treatment for the batch that would have gone first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from corral.core.messages import Abort, Commit, Message, Prepare
from corral.errors import CorralError
from corral.limits import PEER_BATCH_MAX
from corral.rpc import corral_pb2 as pb
from corral.rpc.convert import batch_from_pb
from corral.services.failpoints import Failpoints
from corral.services.wire import Dialed, WireError, batch_frame, dial, message_bytes

log = logging.getLogger(__name__)

# After a broken connection, wait this long before opening the next one to the same peer.
FAILURE_BACKOFF_S = 0.05
# Unanswered batches per link that carry a PREPARE. One: while the receiver works on a batch (and
# fsyncs it), everything queued meanwhile leaves as the next, larger batch. Measured at 64 clients: 32
# in flight sent one message per batch (one fsync per commit, ~1,050 puts/s); 2 in flight ~1,400/s; 1
# ~1,500/s with a lower p50 at 1 client too.
IN_FLIGHT_MAX = 1
# Unanswered batches per link in all. Batches of commits and aborts only do not hold the next batch
# back: a client's next write would otherwise wait for the receiver to fsync the previous commit and
# answer it. Measured: p50 put at 1 client 3.6 -> 3.15 ms; 64 clients unchanged.
IN_FLIGHT_ALL_MAX = 4
# Encoded messages kept for reuse: enough for every message of a few batches to every peer.
ENCODED_CACHE_MAX = 4 * 3 * 512

OnMessages = Callable[[str, list[Message]], None]


@dataclass(slots=True)
class _InFlight:
    """A batch sent and not answered yet."""

    sent: float  # loop time
    msgs: list[Message]
    prepares: bool


class _Stalled(Exception):
    """The peer left a batch unanswered for longer than the link's timeout."""


_KINDS: dict[type, str] = {Prepare: "prepare", Commit: "commit", Abort: "abort"}


def _kind(msg: Message) -> str:
    return _KINDS.get(type(msg), "other")


class Link:
    def __init__(self, owner: PeerLinks, dst: str, address: str) -> None:
        self.owner = owner
        self.dst = dst
        self.address = address
        self.queue: deque[Message] = deque()
        self.poke = asyncio.Event()
        # The open connection and its unanswered batches, while a session runs. Sends happen in
        # `send_ready`, from whoever has something to send (the owner's step, an answer arriving);
        # the task itself only connects, watches for stalls and reports failures.
        self._conn: Dialed | None = None
        self._in_flight: deque[_InFlight] = deque()
        self._stall_check: asyncio.TimerHandle | None = None
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"link-{dst}")

    def _take(self) -> list[Message]:
        """The next batch, after `<role>.send_<kind>[.<dst>]` failpoints dropped what they drop."""
        faults = self.owner.faults
        count = min(len(self.queue), PEER_BATCH_MAX)
        if not faults.any_armed:
            popleft = self.queue.popleft
            return [popleft() for _ in range(count)]
        role = faults.node_role
        kept = []
        for _ in range(count):
            msg = self.queue.popleft()
            kind = _kind(msg)
            action = faults.hit(f"{role}.send_{kind}.{self.dst}", f"{role}.send_{kind}")
            if action is None or action.kind != "drop":
                kept.append(msg)
        return kept

    def send_ready(self) -> None:
        """Send now what the in-flight limits let go; the rest waits for an answer to free a slot.
        Called in the caller's own loop iteration: waking the link's task to do it would cost a loop
        iteration per link (measured: the third replica's PREPARE left ~80 us after the first)."""
        conn = self._conn
        if conn is None or conn.error is not None:
            self.poke.set()  # the task connects (or reports the failure)
            return
        in_flight = self._in_flight
        now = asyncio.get_running_loop().time()
        while self._may_send(in_flight):
            msgs = self._take()
            if msgs:
                in_flight.append(_InFlight(now, msgs, any(isinstance(m, Prepare) for m in msgs)))
                conn.send(batch_frame(self.owner.me, [self.owner.encode(m) for m in msgs]))
        self._arm_stall_check()

    def _arm_stall_check(self) -> None:
        """Wake the task when the oldest unanswered batch would be overdue (it checks, and re-arms)."""
        if self._in_flight and self._stall_check is None:
            loop = asyncio.get_running_loop()
            due = self._in_flight[0].sent + self.owner.rpc_timeout_s - loop.time()
            self._stall_check = loop.call_later(max(0.0, due), self._stall_due)

    def _stall_due(self) -> None:
        self._stall_check = None
        self.poke.set()

    async def _run(self) -> None:
        while True:
            while not self.queue:
                self.poke.clear()
                await self.poke.wait()
            self._in_flight = in_flight = deque[_InFlight]()
            try:
                await self._session(in_flight)
            except (OSError, TimeoutError, WireError, CorralError, _Stalled) as exc:
                log.debug("node=%s link=%s connection ended: %s", self.owner.me, self.dst, exc or type(exc).__name__)
            failed = [m for batch in in_flight for m in batch.msgs]
            if failed:
                self.owner.on_unreachable(self.dst, failed)
            await asyncio.sleep(FAILURE_BACKOFF_S)

    def _may_send(self, in_flight: deque[_InFlight]) -> bool:
        if not self.queue or len(in_flight) >= IN_FLIGHT_ALL_MAX:
            return False
        return sum(batch.prepares for batch in in_flight) < IN_FLIGHT_MAX

    async def _session(self, in_flight: deque[_InFlight]) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.owner.rpc_timeout_s

        def on_reply(reply: pb.Batch) -> None:
            if not in_flight:
                conn.fail(WireError("an answer to no batch"))
                return
            in_flight.popleft()
            msgs = batch_from_pb(reply)
            if msgs:
                self.owner.on_messages(self.dst, msgs)
            self.send_ready()  # what waited for this slot goes now

        try:
            conn: Dialed = await dial(self.address, on_reply, self.poke.set, timeout)
        except (OSError, TimeoutError):
            # Nobody to send to: what would have gone first is unreachable (the core decides).
            msgs = self._take()
            in_flight.append(_InFlight(loop.time(), msgs, False))
            raise
        self._conn = conn
        try:
            while conn.error is None:
                self.send_ready()
                if in_flight and loop.time() - in_flight[0].sent > timeout:
                    raise _Stalled(f"no answer from {self.dst} within {timeout:.1f} s")
                self.poke.clear()
                await self.poke.wait()
            raise conn.error
        finally:
            self._conn = None
            if self._stall_check is not None:
                self._stall_check.cancel()
                self._stall_check = None
            if conn.transport is not None:
                conn.transport.abort()


class PeerLinks:
    """The links of one node to its peers (see the module docstring)."""

    def __init__(
        self,
        me: str,
        addresses: dict[str, str],
        *,
        on_messages: OnMessages,
        on_unreachable: OnMessages,
        faults: Failpoints,
        rpc_timeout_s: float,
    ) -> None:
        self.me = me
        self.addresses = addresses
        self.on_messages = on_messages
        self.on_unreachable = on_unreachable
        self.faults = faults
        self.rpc_timeout_s = rpc_timeout_s
        self._links: dict[str, Link] = {}
        self._dirty: dict[str, Link] = {}  # links with messages queued since the last flush
        # The same message object goes to every participant (a PREPARE, a COMMIT): encode it once.
        # Keyed by id() while the entry holds the object, so an id cannot be reused meanwhile.
        self._encoded: OrderedDict[int, tuple[Message, bytes]] = OrderedDict()

    def encode(self, msg: Message) -> bytes:
        hit = self._encoded.get(id(msg))
        if hit is not None and hit[0] is msg:
            return hit[1]
        encoded = message_bytes(msg)
        self._encoded[id(msg)] = (msg, encoded)
        if len(self._encoded) > ENCODED_CACHE_MAX:
            self._encoded.popitem(last=False)
        return encoded

    def send(self, dst: str, msg: Message) -> None:
        """Queue `msg` for `dst`. It leaves at the next `flush`, which the caller makes once it has
        queued everything of its step (so they share batches); at the latest in the next iteration."""
        link = self._links.get(dst)
        if link is None:
            link = self._links[dst] = Link(self, dst, self.addresses[dst])
        link.queue.append(msg)
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self.flush)
        self._dirty[dst] = link

    def flush(self) -> None:
        """Send what was queued since the last flush, as far as each link's in-flight limit allows."""
        dirty, self._dirty = self._dirty, {}
        for link in dirty.values():
            link.send_ready()

    def queued(self) -> int:
        return sum(len(link.queue) for link in self._links.values())

    async def close(self) -> None:
        for link in self._links.values():
            link.task.cancel()
        for link in self._links.values():
            try:
                await link.task
            except asyncio.CancelledError:
                pass
