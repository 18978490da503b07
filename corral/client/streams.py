"""Multiplexed call streams: one stream to a server for every call of one kind a client makes.

Writes go to the coordinator as `TxnCall(id, request, timeout)` on `Client.Txns`, reads to a replica
as `RangeCall` on `Client.Ranges`; the server handles each call on its own and answers by id as soon
as it can. A unary gRPC call costs far more than a message on an open stream (on the coordinator, the
unary call's own handling was most of its CPU at 64 clients), so concurrent calls share one stream,
and calls waiting together share one message (`corral.rpc.bundles`), as do answers. The stream runs
over the wire (`wire_call.py`: the same messages, cheaper) when the client knows the node's wire
address, else over gRPC.

When the stream breaks, every call still waiting fails with `StreamBroken`, which says whether the
request was written to the wire (for a write: then it may have been applied); the caller retries, a
write with the same (client_id, seq), which the coordinator answers from memory if it committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Protocol, TypeVar, cast

import grpc

from corral.rpc.bundles import drain, split

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Resp_co = TypeVar("_Resp_co", covariant=True)


class StreamBroken(Exception):
    """The call did not get an answer: its stream failed or timed out."""

    def __init__(self, code: grpc.StatusCode, details: str, *, sent: bool) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.sent = sent  # the request reached the wire: it may have been applied


class _CallMsg(Protocol):
    id: int

    def ByteSize(self) -> int: ...


class _ReturnMsg(Protocol[_Resp_co]):
    @property
    def id(self) -> int: ...

    @property
    def response(self) -> _Resp_co: ...


class _Stream(Protocol):
    """What a call stream needs of its transport: a gRPC stream call, or `wire_call.WireCall`."""

    async def write(self, message: Any) -> None: ...

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> Any: ...


class _DirectStream(_Stream, Protocol):
    """A stream that writes synchronously and hands answers over as they are read (`WireCall`)."""

    def write_now(self, message: Any) -> bool: ...

    def on_answer(self, handler: Callable[[Any], None]) -> None: ...


class CallStream(Generic[_Req, _Resp]):
    """One multiplexed stream (see the module docstring). `open_stream` opens the gRPC call;
    `wrap(id, request, timeout_ms)` builds a call, `bundle(calls)` the message that carries several;
    each message read back carries answers in `returns`."""

    def __init__(
        self,
        open_stream: Callable[[], _Stream],
        wrap: Callable[[int, _Req, int], _CallMsg],
        bundle: Callable[[list[Any]], Any],
    ) -> None:
        self._open = open_stream
        self._wrap = wrap
        self._bundle = bundle
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future[_Resp]] = {}
        self._written: set[int] = set()
        self._outbox: asyncio.Queue[_CallMsg | None] = asyncio.Queue()
        self._session: asyncio.Task[None] | None = None
        # A stream that can write synchronously (the wire) gets the calls of a loop iteration written
        # by one callback at its end, instead of by the writer task one iteration later; a call made
        # while no other waits for an answer is written at once (there is nothing to share it with).
        self._direct: _DirectStream | None = None
        self._soon: list[_CallMsg] = []

    async def call(self, request: _Req, timeout_s: float) -> _Resp:
        """Send one call and wait for its answer.

        Raises:
            StreamBroken: no answer (stream failure or `timeout_s`); `sent` says if it may have applied.
        """
        return await self.start(request, timeout_s)

    def start(self, request: _Req, timeout_s: float) -> asyncio.Future[_Resp]:
        """Send one call (written now, or with the others of this loop iteration): the future gets its
        answer, or StreamBroken as `call` says. Cancelling the future abandons the call. No task: a
        read hedged across replicas (aio.py) waits on several of these at once."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.done():
            self._session = loop.create_task(self._run(), name="corral-writes")
        call_id = next(self._ids)
        fut: asyncio.Future[_Resp] = loop.create_future()
        self._futures[call_id] = fut
        call = self._wrap(call_id, request, max(1, int(timeout_s * 1000)))
        if self._direct is not None and self._outbox.empty():
            if not self._soon and len(self._futures) == 1:
                self._write_now([call])
            else:
                if not self._soon:
                    loop.call_soon(self._write_soon)
                self._soon.append(call)
        else:
            self._outbox.put_nowait(call)
        # A timer that fails the future, not wait_for (which wraps every call in more futures and
        # callbacks: measurable at thousands of calls per second).
        timer = loop.call_later(timeout_s, self._expire, call_id, fut)
        fut.add_done_callback(functools.partial(self._settled, call_id, timer))
        return fut

    def _expire(self, call_id: int, fut: asyncio.Future[_Resp]) -> None:
        if not fut.done():
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            fut.set_exception(StreamBroken(code, "no answer before the deadline", sent=call_id in self._written))

    def _settled(self, call_id: int, timer: asyncio.TimerHandle, _: asyncio.Future[_Resp]) -> None:
        timer.cancel()
        self._futures.pop(call_id, None)
        self._written.discard(call_id)

    def _write_soon(self) -> None:
        calls, self._soon = self._soon, []
        self._write_now(calls)

    def _write_now(self, calls: list[_CallMsg]) -> None:
        live = [call for call in calls if call.id in self._futures]
        stream = self._direct
        for bundle in split(live):
            if stream is not None and self._outbox.empty() and stream.write_now(self._bundle(bundle)):
                self._written.update(call.id for call in bundle)
            else:  # not connected yet, backed up, or broken: the writer task waits for it
                for call in bundle:
                    self._outbox.put_nowait(call)

    def _answer(self, message: Any) -> None:
        answer: _ReturnMsg[_Resp]
        for answer in message.returns:
            fut = self._futures.get(answer.id)
            if fut is not None and not fut.done():
                fut.set_result(answer.response)

    async def _write(self, stream: _Stream) -> None:
        while True:
            first = await self._outbox.get()
            if first is None:
                continue
            calls, _ = drain(first, self._outbox)
            # Not those already failed (and retried) by their callers.
            live = [call for call in calls if call.id in self._futures]
            if live:
                self._written.update(call.id for call in live)
                await stream.write(self._bundle(live))

    async def _run(self) -> None:
        stream = self._open()
        if hasattr(stream, "write_now"):
            self._direct = cast(_DirectStream, stream)
            self._direct.on_answer(self._answer)
        writer = asyncio.get_running_loop().create_task(self._write(stream), name="corral-writes-out")
        failure = StreamBroken(grpc.StatusCode.UNAVAILABLE, "the server closed the stream", sent=True)
        try:
            async for message in stream:
                self._answer(message)
        except grpc.aio.AioRpcError as err:
            failure = StreamBroken(err.code(), err.details() or "", sent=True)
        except StreamBroken as err:
            failure = err
        finally:
            self._direct = None
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, grpc.aio.UsageError, StreamBroken):
                await writer
            stream.cancel()
        for call_id, fut in list(self._futures.items()):
            if not fut.done():
                sent = call_id in self._written and failure.sent and not _refused(failure)
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
