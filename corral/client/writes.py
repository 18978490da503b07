"""One stream to the coordinator for every write of a client (`Client.Txns`), instead of a unary call each.

Each write goes out as `TxnCall(id, request, timeout)`; the coordinator decides each on its own and
answers by id as soon as it is decided. A unary gRPC call costs far more than a message on an open
stream (on the coordinator, the unary call's own handling was most of its CPU at 64 clients), so
concurrent writes of one client share one stream.

When the stream breaks, every write still waiting fails with `StreamBroken`, which says whether the
request was written to the wire (then it may have been applied); the caller retries with the same
(client_id, seq), which the coordinator answers from memory if the first attempt committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable

import grpc

from corral.rpc import corral_pb2 as pb
from corral.rpc import corral_pb2_grpc as pb_grpc


class StreamBroken(Exception):
    """The write did not get an answer: the stream to the coordinator failed or timed out."""

    def __init__(self, code: grpc.StatusCode, details: str, *, sent: bool) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.sent = sent  # the request reached the wire: it may have been applied


class WriteStream:
    """The write stream of one client (see the module docstring)."""

    def __init__(self, channel: Callable[[], grpc.aio.Channel]) -> None:
        self._channel = channel
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future[pb.TxnResponse]] = {}
        self._written: set[int] = set()
        self._outbox: asyncio.Queue[pb.TxnCall] = asyncio.Queue()
        self._session: asyncio.Task[None] | None = None

    async def call(self, request: pb.TxnRequest, timeout_s: float) -> pb.TxnResponse:
        """Send one write and wait for its answer.

        Raises:
            StreamBroken: no answer (stream failure or `timeout_s`); `sent` says if it may have applied.
        """
        if self._session is None or self._session.done():
            self._session = asyncio.get_running_loop().create_task(self._run(), name="corral-writes")
        call_id = next(self._ids)
        fut: asyncio.Future[pb.TxnResponse] = asyncio.get_running_loop().create_future()
        self._futures[call_id] = fut
        self._outbox.put_nowait(pb.TxnCall(id=call_id, request=request, timeout_ms=max(1, int(timeout_s * 1000))))
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise StreamBroken(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no answer before the deadline", sent=call_id in self._written
            ) from None
        finally:
            self._futures.pop(call_id, None)
            self._written.discard(call_id)

    async def _write(self, stream: grpc.aio.StreamStreamCall[pb.TxnCall, pb.TxnReturn]) -> None:
        while True:
            call = await self._outbox.get()
            if call.id in self._futures:  # not already failed (and retried) by its caller
                self._written.add(call.id)
                await stream.write(call)

    async def _run(self) -> None:
        stub = pb_grpc.ClientStub(self._channel())
        stream = stub.Txns()  # type: ignore[call-arg]  # aio: requests are written on the call
        writer = asyncio.get_running_loop().create_task(self._write(stream), name="corral-writes-out")
        failure = StreamBroken(grpc.StatusCode.UNAVAILABLE, "the coordinator closed the write stream", sent=True)
        try:
            async for answer in stream:
                fut = self._futures.get(answer.id)
                if fut is not None and not fut.done():
                    fut.set_result(answer.response)
        except grpc.aio.AioRpcError as err:
            failure = StreamBroken(err.code(), err.details() or "", sent=True)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.UsageError):
                await writer
            stream.cancel()
        for call_id, fut in list(self._futures.items()):
            if not fut.done():
                sent = call_id in self._written and not _refused(failure)
                fut.set_exception(StreamBroken(failure.code, failure.details, sent=sent))
        self._written.clear()

    async def close(self) -> None:
        if self._session is not None:
            self._session.cancel()
            try:
                await self._session
            except (asyncio.CancelledError, StreamBroken):
                pass


def _refused(err: StreamBroken) -> bool:
    """The connection was never made, so nothing reached the coordinator."""
    details = err.details.lower()
    return err.code == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "connection refused" in details
    )
