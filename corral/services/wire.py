"""The peer wire (corral.rpc.framing): `Batch` messages between nodes, and clients' call streams.

Clients may speak gRPC; nodes speak this to each other (etcd does the same: gRPC for clients, its own
streams for raft peers), and the Python client sends its call streams here too. A write crosses a
peer link four times (PREPARE, vote, COMMIT, ack), to every replica, so at one client the coordinator
spent most of its CPU inside gRPC before the peer links moved here.

A peer connection starts with `PEER_GREETING` from the dialer; then the dialer sends batches and the
listener answers each, in order (see `links.py` for what the two ends promise each other). A call
stream starts with its own greeting and is served by the same handler as its gRPC stream, or by a
`DirectStream`: a plain callback per message read, whose answers (given now or later) leave together
at the end of the loop iteration. That saves the two task switches per message of an async
generator, on the path every write takes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from corral.core.messages import Message
from corral.errors import CorralError, FailedPrecondition
from corral.frozen import frozen
from corral.rpc import corral_pb2 as pb
from corral.rpc.bundles import split
from corral.rpc.convert import message_to_pb
from corral.rpc.framing import FRAME_BYTES_MAX, HEADER, PEER_GREETING, Framed, WireError, frame

__all__ = [
    "FRAME_BYTES_MAX",
    "MAGIC",
    "DirectStream",
    "StreamHandler",
    "WireError",
    "batch_frame",
    "dial",
    "listen",
    "message_bytes",
]

log = logging.getLogger(__name__)

MAGIC = PEER_GREETING
# A listener stops reading a connection while this many batches (or call messages) wait to be handled.
PENDING_BATCHES_MAX = 64

# Steps a batch at once (after any awaits of its own) and returns the future of its answer.
Inbound = Callable[[pb.Batch], Awaitable[asyncio.Future[list[Message]]]]
# Steps a batch in the caller's loop iteration and returns the future of its answer, calling back as
# soon as it is set; or None: this batch must take the `Inbound` path.
StepNow = Callable[[pb.Batch, Callable[[], None]], "asyncio.Future[list[Message]] | None"]
# A call stream's handler, as for gRPC: the messages read, the messages to send (no context).
StreamHandler = Callable[[AsyncIterator[Any], Any], AsyncIterator[Any]]


@frozen
class DirectStream:
    """A call stream served by callbacks: `on_message(message, answer)` runs as each message is read
    and calls `answer(item)` for each of its calls, then or later; `bundle(items)` makes the message
    that carries answers ready together. A CorralError raised by `on_message` ends the stream.

    For streams with small answers (the coordinator's writes): flow control stops reading once the
    dialer leaves answers unread, but every call already read (one read buffer, at most 256 KiB of
    calls) is handled and answered without waiting, where a generator stream would stop between
    messages. Big answers (reads) belong on a generator stream."""

    request_type: type[Any]
    on_message: Callable[[Any, Callable[[Any], None]], None]
    bundle: Callable[[list[Any]], Any]


Streams = Mapping[bytes, "tuple[type[Any], StreamHandler] | DirectStream"]


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
    return HEADER.pack(len(body)) + body


# -- the dialing end ---------------------------------------------------------------------------


class Dialed(Framed):
    """A connection to a peer's listener: `send` batches; `on_reply` gets each answer, in order, and
    `on_closed` runs once the connection is gone (`error` says why)."""

    def __init__(self, on_reply: Callable[[pb.Batch], None], on_closed: Callable[[], None]) -> None:
        super().__init__(pb.Batch.FromString)
        self._on_reply = on_reply
        self._on_closed = on_closed

    def on_message(self, message: pb.Batch) -> None:
        self._on_reply(message)

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


class _Accepted(Framed):
    """One dialer's connection. A peer: step each batch in arrival order, answer each in order once
    ready. A call stream: feed its messages to the stream's handler, send what the handler yields."""

    def __init__(self, inbound: Inbound, me: str, streams: Streams, step_now: StepNow | None) -> None:
        super().__init__(pb.Batch.FromString, greetings=(MAGIC, *streams))
        self._inbound = inbound
        self._step_now = step_now
        self._peer = False  # greeted as a peer
        self._stepping = False  # the pump awaits `_inbound` for a batch: later ones queue behind it
        self._me = me
        self._streams = streams
        self._pending: asyncio.Queue[Any] = asyncio.Queue()
        self._answers: deque[asyncio.Future[list[Message]]] = deque()
        # Reading stops while too much waits: messages not yet handled (`_backlog`), or answers the
        # dialer is not reading (`_blocked`: the transport's buffer is over its high-water mark;
        # then no more messages are handled either, so answers cannot pile up in memory).
        self._backlog = False
        self._blocked = False
        self._reading = True
        self._writable = asyncio.Event()
        self._writable.set()
        self._pump: asyncio.Task[None] | None = None
        self._direct: DirectStream | None = None
        self._ready: list[Any] = []  # a direct stream's answers not written yet
        self._write_soon = False  # `_write_answers` is scheduled

    def on_greeting(self, greeting: bytes) -> None:
        loop = asyncio.get_running_loop()
        if greeting == MAGIC:
            self._peer = True
            self._pump = loop.create_task(self._answer_peer(), name="peer-answer")
            return
        spec = self._streams[greeting]
        if isinstance(spec, DirectStream):
            self.decode = spec.request_type.FromString
            self._direct = spec
            return
        request_type, handler = spec
        self.decode = request_type.FromString
        self._pump = loop.create_task(self._serve_stream(handler), name="call-stream")

    def on_message(self, message: Any) -> None:
        if self._direct is not None:
            try:
                self._direct.on_message(message, self._answer_direct)
            except CorralError as err:
                self.fail(err)
            except Exception as err:  # a bug in a handler: this stream ends, the node keeps serving
                log.exception("node=%s a call stream failed", self._me)
                self.fail(WireError(f"the stream failed: {type(err).__name__}"))
            return
        if self._peer and self._step_now is not None and self._idle():
            # Stepped in this loop iteration, answered as soon as ready: no task switch either side.
            try:
                answer = self._step_now(message, self._answered)
            except CorralError as err:
                self.fail(err)
                return
            if answer is not None:
                self._answers.append(answer)
                if answer.done():  # ready at once (nothing to make durable): its callback came early
                    self._answered()
                return
        self._pending.put_nowait(message)
        if not self._backlog and self._pending.qsize() >= PENDING_BATCHES_MAX:
            self._backlog = True
            self._read_or_not()

    def _idle(self) -> bool:
        """Nothing read earlier waits to be stepped, and answers are being read."""
        return not self._stepping and not self._blocked and self._pending.empty()

    async def _next(self) -> Any:
        if self._blocked:  # take no more work while the answers already made wait to be sent
            await self._writable.wait()
        message = await self._pending.get()
        if self._backlog and self._pending.qsize() < PENDING_BATCHES_MAX // 2:
            self._backlog = False
            self._read_or_not()
        return message

    def pause_writing(self) -> None:
        self._blocked = True
        self._writable.clear()
        self._read_or_not()

    def resume_writing(self) -> None:
        self._blocked = False
        self._writable.set()
        self._read_or_not()

    def _read_or_not(self) -> None:
        reading = not (self._backlog or self._blocked)
        if reading != self._reading and self.transport is not None and self.error is None:
            self._reading = reading
            if reading:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    # -- a peer

    async def _answer_peer(self) -> None:
        while True:
            batch = await self._next()
            self._stepping = True
            try:
                answer = await self._inbound(batch)
            except CorralError as err:
                # A failpoint refusing the batch, or a batch that is not valid: the dialer sees a
                # lost connection and reports what it had in flight as unreachable.
                self.fail(err)
                return
            finally:
                self._stepping = False
            self._answers.append(answer)
            answer.add_done_callback(self._answered)

    def _answered(self, _: object = None) -> None:
        # Every answer ready now leaves in one write: one wake-up of the dialer, not one per answer
        # (a replica's deferred COMMIT acks come due with the next PREPARE's votes). While a later
        # answer is still pending, what is ready waits for it, at most until the next iteration: one
        # fsync usually releases both (a COMMIT's ack, then the vote on the PREPARE read with it), and
        # they leave together, not as two writes that wake the coordinator twice, ack first.
        if self._answers and not self._answers[-1].done():
            if not self._write_soon:
                self._write_soon = True
                asyncio.get_running_loop().call_soon(self._write_answers)
            return
        self._write_answers()

    def _write_answers(self) -> None:
        self._write_soon = False
        frames = []
        while self._answers and self._answers[0].done():
            answer = self._answers.popleft()
            if answer.cancelled() or answer.exception() is not None:
                self.fail(WireError("an answer failed"))
                return
            frames.append(batch_frame(self._me, [message_bytes(m) for m in answer.result()]))
        if frames and self.error is None and self.transport is not None:
            self.transport.write(b"".join(frames) if len(frames) > 1 else frames[0])

    # -- a call stream

    def _answer_direct(self, item: Any) -> None:
        if not self._ready:
            asyncio.get_running_loop().call_soon(self._write_ready)
        self._ready.append(item)

    def _write_ready(self) -> None:
        ready, self._ready = self._ready, []
        if self._direct is None or self.error is not None or self.transport is None:
            return
        bundle = self._direct.bundle
        self.transport.write(b"".join(frame(bundle(items).SerializeToString()) for items in split(ready)))

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            yield await self._next()

    async def _serve_stream(self, handler: StreamHandler) -> None:
        try:
            async for reply in handler(self._requests(), None):
                if self.error is not None or self.transport is None:
                    return
                self.transport.write(frame(reply.SerializeToString()))
        except CorralError as err:
            self.fail(err)
        except Exception as err:  # a bug in a handler: this stream ends, the node keeps serving
            log.exception("node=%s a call stream failed", self._me)
            self.fail(WireError(f"the stream failed: {type(err).__name__}"))

    def fail(self, err: Exception) -> None:
        if self.error is None:
            level = logging.WARNING if isinstance(err, WireError) else logging.DEBUG
            log.log(level, "node=%s closing a wire connection: %s", self._me, err)
        super().fail(err)

    def closed(self) -> None:
        if self._pump is not None:
            self._pump.cancel()


async def listen(
    host: str,
    port: int,
    inbound: Inbound,
    me: str,
    streams: Streams | None = None,
    *,
    step_now: StepNow | None = None,
) -> asyncio.Server:
    """Serve the wire on host:port: peers (`inbound` steps a batch and returns its answer's future;
    `step_now`, when given, does it without a task switch whenever it can), and the call streams in
    `streams` (greeting -> the request message type and its handler)."""
    loop = asyncio.get_running_loop()
    streams = dict(streams or {})
    try:
        return await loop.create_server(
            lambda: _Accepted(inbound, me, streams, step_now), host, port, reuse_address=True
        )
    except OSError as err:
        raise FailedPrecondition(f"cannot listen for peers on {host}:{port}: {err.strerror}") from err
