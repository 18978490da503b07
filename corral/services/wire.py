"""The peer wire: `Batch` messages between nodes over one plain TCP connection, length-prefixed.

Clients speak gRPC; nodes speak this to each other (etcd does the same: gRPC for clients, its own
streams for raft peers). Why: measured on the 2-core machine, one write+read round trip of a small
`Batch` on a gRPC aio stream costs ~250 µs of CPU (both sides); the same bytes over an asyncio
socket ~55 µs. A write crosses a peer link four times (PREPARE, vote, COMMIT, ack), to every
replica, so at one client the coordinator spent most of its CPU inside gRPC.

A connection starts with `MAGIC` from the dialer. Then each frame is a 4-byte big-endian length and
that many bytes of a serialized `pb.Batch`, in both directions. The dialer sends batches; the
listener answers each, in order (see `links.py` for what the two ends promise each other). Anything
else (a wrong magic, a frame over `FRAME_BYTES_MAX`, bytes that do not parse) closes the
connection: the dialer treats it like a lost peer, and the listener loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

from google.protobuf.message import DecodeError

from corral.core.messages import Message
from corral.errors import CorralError, FailedPrecondition
from corral.rpc import corral_pb2 as pb
from corral.rpc.convert import message_to_pb

log = logging.getLogger(__name__)

MAGIC = b"corral-peer/1\n"
FRAME_BYTES_MAX = 256 * 1024 * 1024
# A listener stops reading a connection while this many batches wait to be stepped.
PENDING_BATCHES_MAX = 64
_HEADER = struct.Struct(">I")

# Steps a batch at once (after any awaits of its own) and returns the future of its answer.
Inbound = Callable[[pb.Batch], Awaitable[asyncio.Future[list[Message]]]]


class WireError(Exception):
    """The other end broke the wire's rules (or went away); the connection is closed."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def message_bytes(msg: Message) -> bytes:
    """A message serialized as a `pb.PeerMessage`, ready for `batch_frame`."""
    return message_to_pb(msg).SerializeToString()


def batch_frame(src: str, messages: list[bytes]) -> bytes:
    """One frame: a `pb.Batch` from `src` holding these serialized PeerMessages. Built by hand from
    the protobuf wire format (field 1 src, field 2 each message) so that a PREPARE sent to every
    replica is serialized once, not copied into and serialized with each replica's batch."""
    name = src.encode()
    parts = [b"\x0a", _varint(len(name)), name]
    for m in messages:
        parts += (b"\x12", _varint(len(m)), m)
    body = b"".join(parts)
    return _HEADER.pack(len(body)) + body


class _Framed(asyncio.Protocol):
    """Splits the byte stream into `pb.Batch`es, after `MAGIC` when `expect_magic`."""

    def __init__(self, expect_magic: bool) -> None:
        self.transport: asyncio.Transport | None = None
        self.error: WireError | CorralError | None = None  # why the connection ended, once it has
        self._buffer = bytearray()
        self._need_magic = expect_magic

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not a subclass of asyncio.Transport, so no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        if self._need_magic:
            if buf[: len(MAGIC)] != MAGIC[: len(buf)]:
                self.fail(WireError("not a corral peer (bad greeting)"))
                return
            if len(buf) < len(MAGIC):
                return
            del buf[: len(MAGIC)]
            self._need_magic = False
        offset = 0
        while len(buf) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf, offset)
            if size > FRAME_BYTES_MAX:
                self.fail(WireError(f"a frame of {size} bytes is over the {FRAME_BYTES_MAX}-byte limit"))
                return
            end = offset + _HEADER.size + size
            if len(buf) < end:
                break
            try:
                batch = pb.Batch.FromString(bytes(buf[offset + _HEADER.size : end]))
            except DecodeError as err:
                self.fail(WireError(f"a frame is not a Batch: {err}"))
                return
            offset = end
            self.on_batch(batch)
            if self.error is not None:
                return
        del buf[:offset]

    def on_batch(self, batch: pb.Batch) -> None:
        raise NotImplementedError

    def fail(self, err: WireError | CorralError) -> None:
        """End the connection because of `err` (the first reason given is kept)."""
        if self.error is None:
            self.error = err
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = WireError(f"connection lost: {exc}" if exc else "the peer closed the connection")
        self.closed()

    def closed(self) -> None:
        """Called once, when the connection is gone."""


# -- the dialing end ---------------------------------------------------------------------------


class Dialed(_Framed):
    """A connection to a peer's listener: `send` batches; `on_reply` gets each answer, in order, and
    `on_closed` runs once the connection is gone (`error` says why)."""

    def __init__(self, on_reply: Callable[[pb.Batch], None], on_closed: Callable[[], None]) -> None:
        super().__init__(expect_magic=False)
        self._on_reply = on_reply
        self._on_closed = on_closed

    def on_batch(self, batch: pb.Batch) -> None:
        self._on_reply(batch)

    def send(self, framed: bytes) -> None:
        """Send one frame (`batch_frame`)."""
        if self.error is not None or self.transport is None:
            raise self.error or WireError("not connected")
        self.transport.write(framed)

    def closed(self) -> None:
        self._on_closed()


async def dial(
    address: str, on_reply: Callable[[pb.Batch], None], on_closed: Callable[[], None], timeout_s: float
) -> Dialed:
    """Connect to a peer listener at `address` (host:port) and greet it. Raises OSError or TimeoutError."""
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: Dialed(on_reply, on_closed), host, int(port)), timeout_s
    )
    assert conn.transport is not None
    conn.transport.write(MAGIC)
    return conn


# -- the listening end ---------------------------------------------------------------------------


class _Answering(_Framed):
    """One dialer's connection: step each batch in arrival order, answer each in order once ready."""

    def __init__(self, inbound: Inbound, me: str) -> None:
        super().__init__(expect_magic=True)
        self._inbound = inbound
        self._me = me
        self._pending: asyncio.Queue[pb.Batch] = asyncio.Queue()
        self._answers: deque[asyncio.Future[list[Message]]] = deque()
        self._paused = False
        self._pump = asyncio.get_running_loop().create_task(self._run(), name="peer-answer")

    def on_batch(self, batch: pb.Batch) -> None:
        self._pending.put_nowait(batch)
        if not self._paused and self._pending.qsize() >= PENDING_BATCHES_MAX and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    async def _run(self) -> None:
        while True:
            batch = await self._pending.get()
            if self._paused and self._pending.qsize() < PENDING_BATCHES_MAX // 2 and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            try:
                answer = await self._inbound(batch)
            except CorralError as err:
                # A failpoint refusing the batch, or a batch that is not valid: the dialer sees a
                # lost connection and reports what it had in flight as unreachable.
                self.fail(err)
                return
            self._answers.append(answer)
            answer.add_done_callback(self._answered)

    def _answered(self, _: asyncio.Future[list[Message]]) -> None:
        # Every answer ready now leaves in one write: one wake-up of the dialer, not one per answer
        # (a replica's deferred COMMIT acks come due with the next PREPARE's votes).
        frames = []
        while self._answers and self._answers[0].done():
            answer = self._answers.popleft()
            if answer.cancelled() or answer.exception() is not None:
                self.fail(WireError("an answer failed"))
                return
            frames.append(batch_frame(self._me, [message_bytes(m) for m in answer.result()]))
        if frames and self.error is None and self.transport is not None:
            self.transport.write(b"".join(frames) if len(frames) > 1 else frames[0])

    def fail(self, err: WireError | CorralError) -> None:
        if self.error is None:
            level = logging.WARNING if isinstance(err, WireError) else logging.DEBUG
            log.log(level, "node=%s closing a peer connection: %s", self._me, err)
        super().fail(err)

    def closed(self) -> None:
        self._pump.cancel()


async def listen(host: str, port: int, inbound: Inbound, me: str) -> asyncio.Server:
    """Serve the peer wire on host:port; `inbound` steps a batch and returns its answer's future."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(lambda: _Answering(inbound, me), host, port, reuse_address=True)
    except OSError as err:
        raise FailedPrecondition(f"cannot listen for peers on {host}:{port}: {err.strerror}") from err
