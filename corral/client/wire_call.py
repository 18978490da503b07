"""A call stream over the wire (corral.rpc.framing) instead of gRPC: same messages, fewer hops.

`WireCall` has the part of `grpc.aio.StreamStreamCall` that `CallStream` uses (`write`, iterate the
answers, `cancel`), so the multiplexing, deadlines and retries of `streams.py` serve both. It connects
on first use; failures surface as `StreamBroken` with gRPC's status codes, so callers tell "never
reached the server" (UNAVAILABLE, "connection refused" / "failed to connect") from "may have applied".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from corral.client.streams import StreamBroken
from corral.rpc.framing import Framed, frame

# The connection stops taking writes while this many bytes wait to be sent.
WRITE_BUFFER_HIGH = 4 * 1024 * 1024


class _Conn(Framed):
    def __init__(
        self, decode: Callable[[bytes], Any], deliver: Callable[[Any], None], replies: asyncio.Queue[Any]
    ) -> None:
        super().__init__(decode)
        self._deliver = deliver
        self._replies = replies
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def on_message(self, message: Any) -> None:
        self._deliver(message)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def closed(self) -> None:
        self.writable.set()
        err = self.error
        self._replies.put_nowait(StreamBroken(grpc.StatusCode.UNAVAILABLE, f"connection lost: {err}", sent=True))


class WireCall:
    """One call stream to `address`, opened with `greeting`; answers parsed with `decode`."""

    def __init__(self, address: str, greeting: bytes, decode: Callable[[bytes], Any], connect_timeout_s: float) -> None:
        self._replies: asyncio.Queue[Any] = asyncio.Queue()
        self._on_answer: Callable[[Any], None] | None = None
        self._conn: _Conn | None = None
        self._connecting = asyncio.get_running_loop().create_task(
            self._connect(address, greeting, decode, connect_timeout_s), name="corral-wire-connect"
        )
        self._connecting.add_done_callback(_retrieve)  # its failure is raised to the reader and writer

    async def _connect(self, address: str, greeting: bytes, decode: Callable[[bytes], Any], timeout_s: float) -> _Conn:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(decode, self._deliver, self._replies), host, int(port)), timeout_s
            )
        except ConnectionRefusedError:
            raise StreamBroken(grpc.StatusCode.UNAVAILABLE, f"connection refused by {address}", sent=False) from None
        except (OSError, TimeoutError) as err:
            detail = str(err) or type(err).__name__
            raise StreamBroken(
                grpc.StatusCode.UNAVAILABLE, f"failed to connect to {address}: {detail}", sent=False
            ) from None
        assert conn.transport is not None
        conn.transport.write(greeting)
        self._conn = conn
        return conn

    def on_answer(self, handler: Callable[[Any], None]) -> None:
        """Hand each answer to `handler` as it is read, instead of to the iterator (which then only
        raises the stream's failure): a task switch less per answer."""
        self._on_answer = handler

    def _deliver(self, message: Any) -> None:
        if self._on_answer is not None:
            self._on_answer(message)
        else:
            self._replies.put_nowait(message)

    def write_now(self, message: Any) -> bool:
        """Write `message` at once if the connection is up and not backed up; False: use `write`."""
        conn = self._conn
        if conn is None or conn.error is not None or conn.transport is None or not conn.writable.is_set():
            return False
        conn.transport.write(frame(message.SerializeToString()))
        return True

    async def write(self, message: Any) -> None:
        conn = await self._connecting
        if conn.error is not None or conn.transport is None:
            raise StreamBroken(grpc.StatusCode.UNAVAILABLE, f"connection lost: {conn.error}", sent=True)
        conn.transport.write(frame(message.SerializeToString()))
        if not conn.writable.is_set():
            await conn.writable.wait()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._answers()

    async def _answers(self) -> AsyncIterator[Any]:
        await self._connecting
        while True:
            reply = await self._replies.get()
            if isinstance(reply, StreamBroken):
                raise reply
            yield reply

    def cancel(self) -> None:
        self._connecting.cancel()
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.abort()


def _retrieve(task: asyncio.Task[_Conn]) -> None:
    if not task.cancelled():
        task.exception()
