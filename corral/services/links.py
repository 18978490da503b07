"""Peer links: one FIFO link per destination, sending queued messages as `Peer.Step` batches.

At most one batch is in flight per destination; everything queued meanwhile rides in the next batch.
That gives FIFO order per link (a COMMIT reaches a replica before a later PREPARE touching the same
key) and natural group commit (the receiver fsyncs once per batch). Replies to a batch come back in
its response and are handed to `on_messages`; a batch that cannot be delivered goes to
`on_unreachable`, and the link backs off before the next attempt so a dead peer is not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence

import grpc

from corral.core.messages import Abort, Commit, Message, Prepare
from corral.limits import PEER_BATCH_MAX
from corral.rpc import corral_pb2_grpc as pb_grpc
from corral.rpc.convert import batch_from_pb, batch_to_pb
from corral.services.failpoints import Failpoints

log = logging.getLogger(__name__)

# gRPC's default reconnect backoff grows to 120 s; a restarted peer should be found within ~1 s.
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)
# After a failed batch, wait this long before the next one to the same peer.
FAILURE_BACKOFF_S = 0.05

OnMessages = Callable[[str, list[Message]], None]


def _kind(msg: Message) -> str:
    return {Prepare: "prepare", Commit: "commit", Abort: "abort"}.get(type(msg), "other")


class Link:
    def __init__(self, owner: PeerLinks, dst: str, address: str) -> None:
        self.owner = owner
        self.dst = dst
        self.address = address
        self.queue: deque[Message] = deque()
        self.wakeup = asyncio.Event()
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.PeerStub(self.channel)
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"link-{dst}")

    def _filter(self, msgs: list[Message]) -> list[Message]:
        """Apply `<node>.send_<kind>[.<dst>]` failpoints: drop messages or crash before sending."""
        faults = self.owner.faults
        kept = []
        for msg in msgs:
            kind = _kind(msg)
            action = faults.hit(f"{faults.node_role}.send_{kind}.{self.dst}", f"{faults.node_role}.send_{kind}")
            if action is not None and action.kind == "drop":
                continue
            kept.append(msg)
        return kept

    async def _run(self) -> None:
        owner = self.owner
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.queue:
                n = min(len(self.queue), PEER_BATCH_MAX)
                msgs = self._filter([self.queue.popleft() for _ in range(n)])
                if not msgs:
                    continue
                try:
                    reply = await self.stub.Step(batch_to_pb(owner.me, msgs), timeout=owner.rpc_timeout_s)
                except (TimeoutError, grpc.aio.AioRpcError) as exc:
                    detail = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "timeout"
                    log.debug("node=%s link=%s batch of %d failed: %s", owner.me, self.dst, len(msgs), detail)
                    owner.on_unreachable(self.dst, msgs)
                    await asyncio.sleep(FAILURE_BACKOFF_S)
                    continue
                replies = batch_from_pb(reply)
                if replies:
                    owner.on_messages(self.dst, replies)


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

    def send(self, dst: str, msg: Message) -> None:
        link = self._links.get(dst)
        if link is None:
            link = self._links[dst] = Link(self, dst, self.addresses[dst])
        link.queue.append(msg)
        link.wakeup.set()

    def queued(self) -> int:
        return sum(len(link.queue) for link in self._links.values())

    async def close(self) -> None:
        for link in self._links.values():
            link.task.cancel()
        for link in self._links.values():
            with contextlib.suppress(asyncio.CancelledError):
                await link.task
            await link.channel.close(grace=None)
