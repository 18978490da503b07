"""Length-prefixed protobuf frames over one plain TCP connection: the wire.

Two kinds of conversation use it, told apart by the greeting the dialer sends first:
- `PEER_GREETING`: node to node, `Batch` both ways (services/wire.py, services/links.py);
- `TXNS_GREETING` / `RANGES_GREETING`: a client's call stream, `TxnCalls` to the coordinator and
  `TxnReturns` back, or `RangeCalls` to a replica and `RangeReturns` back (client/wire_call.py): the
  same messages as the gRPC streams `Client.Txns` and `Client.Ranges`, handled by the same code.

Why not gRPC for these: measured on the 2-core machine, one write+read round trip of a small message
on a gRPC aio stream costs ~250-290 µs of CPU (both ends) and two thread hand-offs per end; the same
bytes over an asyncio socket ~55-70 µs. etcd makes the same split for its raft peers.

After the greeting, each frame is a 4-byte big-endian length and that many bytes of one serialized
message. Anything else (an unknown greeting, a frame over `FRAME_BYTES_MAX`, bytes that do not parse)
closes the connection: the dialer sees a lost connection, and the listener loses nothing.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Collection
from typing import Any, cast

from google.protobuf.message import DecodeError

PEER_GREETING = b"corral-peer/1\n"
TXNS_GREETING = b"corral-txns/1\n"
RANGES_GREETING = b"corral-ranges/1\n"
GREETING_BYTES_MAX = 32
FRAME_BYTES_MAX = 256 * 1024 * 1024
HEADER = struct.Struct(">I")


class WireError(Exception):
    """The other end broke the wire's rules (or went away); the connection is closed."""


def frame(body: bytes) -> bytes:
    """One frame holding `body` (a serialized message)."""
    return HEADER.pack(len(body)) + body


class Framed(asyncio.Protocol):
    """Splits the byte stream into messages, after a greeting when `greetings` are expected.

    `decode` turns a frame's bytes into a message (a protobuf class's `FromString`); `on_greeting`
    may change it. A subclass handles `on_message` and `closed`."""

    def __init__(self, decode: Callable[[bytes], Any], greetings: Collection[bytes] = ()) -> None:
        self.transport: asyncio.Transport | None = None
        self.error: Exception | None = None  # why the connection ended, once it has
        self.decode = decode
        self._buffer = bytearray()
        self._greetings = greetings

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not a subclass of asyncio.Transport, so no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        if self._greetings:
            end = buf.find(b"\n", 0, GREETING_BYTES_MAX)
            if end < 0:
                if len(buf) >= GREETING_BYTES_MAX or not any(g.startswith(buf) for g in self._greetings):
                    self.fail(WireError("not a corral connection (bad greeting)"))
                return
            greeting = bytes(buf[: end + 1])
            if greeting not in self._greetings:
                self.fail(WireError(f"not a corral connection (greeting {greeting[:GREETING_BYTES_MAX]!r})"))
                return
            del buf[: end + 1]
            self._greetings = ()
            self.on_greeting(greeting)
            if self.error is not None:
                return
        offset = 0
        while len(buf) - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, offset)
            if size > FRAME_BYTES_MAX:
                self.fail(WireError(f"a frame of {size} bytes is over the {FRAME_BYTES_MAX}-byte limit"))
                return
            end = offset + HEADER.size + size
            if len(buf) < end:
                break
            try:
                message = self.decode(bytes(buf[offset + HEADER.size : end]))
            except DecodeError as err:
                self.fail(WireError(f"a frame does not parse: {err}"))
                return
            offset = end
            self.on_message(message)
            if self.error is not None:
                return
        del buf[:offset]

    def on_greeting(self, greeting: bytes) -> None:
        """The dialer said which conversation this is (one of `greetings`)."""

    def on_message(self, message: Any) -> None:
        raise NotImplementedError

    def fail(self, err: Exception) -> None:
        """End the connection because of `err` (the first reason given is kept)."""
        if self.error is None:
            self.error = err
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = WireError(f"connection lost: {exc}" if exc else "the other end closed the connection")
        self.closed()

    def closed(self) -> None:
        """Called once, when the connection is gone."""
