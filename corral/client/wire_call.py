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
    def __init__(self, decode: Callable[[bytes], Any], replies: asyncio.Queue[Any]) -> None:
        super().__init__(decode)
        self._replies = replies
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def on_message(self, message: Any) -> None:
        self._replies.put_nowait(message)

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
                loop.create_connection(lambda: _Conn(decode, self._replies), host, int(port)), timeout_s
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
