"""The wire over real loopback TCP: peer frames, order of answers, call streams, and what closes a connection."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable

import grpc
import pytest

from corral import eventloop
from corral.client.streams import CallStream, StreamBroken
from corral.client.wire_call import WireCall
from corral.core.messages import Abort, Ack, Commit, Message, Prepare, TxnSpec, Vote
from corral.errors import FailedPrecondition, Unavailable
from corral.model import Put
from corral.rpc import corral_pb2 as pb
from corral.rpc.bundles import BUNDLE_ITEMS_MAX
from corral.rpc.convert import batch_from_pb, batch_to_pb
from corral.rpc.framing import RANGES_GREETING, TXNS_GREETING
from corral.services import wire
from corral.services.wire import FRAME_BYTES_MAX, MAGIC, DirectStream, batch_frame, dial, listen, message_bytes
from tests.waiting import until

TIMEOUT_S = 10


def _prepare(txid: int, value_bytes: int) -> Prepare:
    return Prepare(txid, TxnSpec((), (Put(f"k/{txid}", b"v" * value_bytes, 0),), ()), ("replica-1", "replica-2"))


def _txid(msg: Message) -> int:
    """The transaction a message is about (every message this test exchanges is about one)."""
    assert isinstance(msg, (Prepare, Commit, Abort, Vote, Ack)), f"{msg!r} names no transaction"
    return msg.txid


def _txids(msgs: Iterable[Message]) -> list[int]:
    return [_txid(m) for m in msgs]


@pytest.mark.parametrize("value_bytes", [0, 100, 200, 20_000, 3_000_000])
def test_a_hand_built_frame_is_the_batch_protobuf_would_build(value_bytes: int) -> None:
    msgs: list[Message] = [*(_prepare(i, value_bytes) for i in range(3)), Commit(7, 9), Ack(7, 9)]
    framed = batch_frame("coordinator", [message_bytes(m) for m in msgs])
    (size,) = struct.unpack(">I", framed[:4])
    assert size == len(framed) - 4
    parsed = pb.Batch.FromString(framed[4:])
    assert parsed == batch_to_pb("coordinator", msgs)
    assert batch_from_pb(parsed) == msgs


class _Echo:
    """A listener's inbound: answers each batch with an Ack naming its first txid, after `delays`."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.delays: dict[int, float] = {}
        self.refuse: set[int] = set()

    async def inbound(self, batch: pb.Batch) -> asyncio.Future[list[Message]]:
        txid = _txid(batch_from_pb(batch)[0])
        if txid in self.refuse:
            raise Unavailable("refused by the test")
        self.seen.append(txid)
        answer: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        reply: list[Message] = [Ack(txid, txid)]
        asyncio.get_running_loop().call_later(self.delays.get(txid, 0), answer.set_result, reply)
        return answer


def _collect(count: int) -> tuple[list[int], asyncio.Event, Callable[[pb.Batch], None]]:
    """A dialer's `on_reply` that keeps the txids answered, and an event set once `count` came."""
    replies: list[int] = []
    done = asyncio.Event()

    def on_reply(batch: pb.Batch) -> None:
        replies.extend(_txids(batch_from_pb(batch)))
        if len(replies) == count:
            done.set()

    return replies, done, on_reply


async def _serve(echo: _Echo) -> tuple[asyncio.Server, str]:
    server = await listen("127.0.0.1", 0, echo.inbound, "listener")
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


def test_answers_come_back_in_order_even_when_ready_out_of_order() -> None:
    async def main() -> list[int]:
        echo = _Echo()
        echo.delays = {1: 0.2, 2: 0.0, 3: 0.1}
        server, address = await _serve(echo)
        replies, done, on_reply = _collect(3)

        conn = await dial(address, on_reply, lambda: None, TIMEOUT_S)
        for txid in (1, 2, 3):
            conn.send(batch_frame("dialer", [message_bytes(Commit(txid, txid))]))
        await asyncio.wait_for(done.wait(), TIMEOUT_S)
        assert echo.seen == [1, 2, 3]
        assert conn.transport is not None
        conn.transport.abort()
        server.close()
        return replies

    assert eventloop.run(main()) == [1, 2, 3]


class _StepNowEcho(_Echo):
    """An `_Echo` that also steps batches in the reading loop iteration (`listen(step_now=...)`),
    except those in `via_inbound`; a delay of None answers at once, inside `step_now`."""

    def __init__(self) -> None:
        super().__init__()
        self.via_inbound: set[int] = set()
        self.stepped_now: list[int] = []
        self.arrived: list[int] = []  # batches the async way has begun with (it then waits a while)
        self.hold: set[int] = set()  # answered only when the test calls `held[txid]`
        self.held: dict[int, Callable[[], None]] = {}

    async def inbound(self, batch: pb.Batch) -> asyncio.Future[list[Message]]:
        self.arrived.append(_txid(batch_from_pb(batch)[0]))
        await asyncio.sleep(0.1)  # as a delay failpoint does
        return await super().inbound(batch)

    def step_now(self, batch: pb.Batch, on_ready: Callable[[], None]) -> asyncio.Future[list[Message]] | None:
        txid = _txid(batch_from_pb(batch)[0])
        if txid in self.via_inbound:
            return None
        self.seen.append(txid)
        self.stepped_now.append(txid)
        answer: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()

        def ready() -> None:
            answer.set_result([Ack(txid, txid)])
            on_ready()

        delay = self.delays.get(txid)
        if txid in self.hold:
            self.held[txid] = ready
        elif delay is None:
            ready()
        else:
            asyncio.get_running_loop().call_later(delay, ready)
        return answer


def test_batches_stepped_without_a_task_switch_are_answered_in_order_with_the_others() -> None:
    async def main() -> tuple[list[int], _StepNowEcho]:
        echo = _StepNowEcho()
        # 1 and 5 answer inside step_now; 2 goes the async way, which takes a while, so 3 (read
        # meanwhile) must queue behind it; 4 and 6 are stepped at once and answered out of order.
        echo.via_inbound = {2}
        echo.delays = {2: 0.2, 3: 0.0, 4: 0.15, 6: 0.05}
        server = await listen("127.0.0.1", 0, echo.inbound, "listener", step_now=echo.step_now)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        replies, done, on_reply = _collect(6)

        conn = await dial(address, on_reply, lambda: None, TIMEOUT_S)
        conn.send(batch_frame("dialer", [message_bytes(Commit(1, 1))]))
        await asyncio.wait_for(until(lambda: replies == [1]), TIMEOUT_S)  # answered at once, alone
        conn.send(batch_frame("dialer", [message_bytes(Commit(2, 2))]))
        await asyncio.wait_for(until(lambda: echo.arrived == [2]), TIMEOUT_S)
        conn.send(batch_frame("dialer", [message_bytes(Commit(3, 3))]))
        await asyncio.wait_for(until(lambda: echo.seen == [1, 2, 3]), TIMEOUT_S)
        for txid in (4, 5, 6):
            conn.send(batch_frame("dialer", [message_bytes(Commit(txid, txid))]))
        await asyncio.wait_for(done.wait(), TIMEOUT_S)
        assert conn.transport is not None
        conn.transport.abort()
        server.close()
        return replies, echo

    replies, echo = eventloop.run(main())
    assert replies == [1, 2, 3, 4, 5, 6]
    assert echo.seen == [1, 2, 3, 4, 5, 6]
    assert 3 not in echo.stepped_now, "a batch read while an earlier one was being stepped overtook it"
    assert {1, 4, 5, 6} <= set(echo.stepped_now)


class _CountedWrites:
    """A listener-side transport that records each write (the rest passes through)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def test_answers_released_together_leave_in_one_write_and_a_ready_one_does_not_wait_for_a_held_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on a replica, where one fsync releases a COMMIT's ack and then the vote on the PREPARE read
    with it: both go in one write (one wake-up of the coordinator, not two, the ack first). An answer
    ready while a later one is still held goes out anyway, one loop iteration later."""
    counted: list[_CountedWrites] = []
    made = wire._Accepted.connection_made

    def connection_made(self: wire._Accepted, transport: asyncio.BaseTransport) -> None:
        made(self, transport)
        assert self.transport is not None
        counted.append(_CountedWrites(self.transport))
        self.transport = counted[-1]  # type: ignore[assignment]

    monkeypatch.setattr(wire._Accepted, "connection_made", connection_made)

    async def main() -> list[int]:
        echo = _StepNowEcho()
        echo.hold = {1, 2, 4}
        echo.delays = {3: 0.0}
        server = await listen("127.0.0.1", 0, echo.inbound, "listener", step_now=echo.step_now)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        replies, done, on_reply = _collect(4)
        conn = await dial(address, on_reply, lambda: None, TIMEOUT_S)
        frames = [batch_frame("dialer", [message_bytes(Commit(t, t))]) for t in (1, 2, 3, 4)]

        conn.send(frames[0] + frames[1])  # read together, stepped now, both held
        await asyncio.wait_for(until(lambda: sorted(echo.held) == [1, 2]), TIMEOUT_S)
        asyncio.get_running_loop().call_soon(lambda: (echo.held[1](), echo.held[2]()))  # one "fsync"
        await asyncio.wait_for(until(lambda: replies == [1, 2]), TIMEOUT_S)
        assert len(counted[0].writes) == 1, "two answers released together left in two writes"

        conn.send(frames[2] + frames[3])  # 3 is ready in the next iteration, 4 stays held
        await asyncio.wait_for(until(lambda: replies == [1, 2, 3]), TIMEOUT_S)
        assert 4 not in replies
        echo.held[4]()
        await asyncio.wait_for(done.wait(), TIMEOUT_S)
        assert conn.transport is not None
        conn.transport.abort()
        server.close()
        return replies

    assert eventloop.run(main()) == [1, 2, 3, 4]


async def _raw(address: str, data: bytes) -> bytes:
    """Send raw bytes; return what comes back before the listener closes the connection."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT_S)  # b"" once closed
    finally:
        writer.close()


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        MAGIC + struct.pack(">I", FRAME_BYTES_MAX + 1),
        MAGIC + struct.pack(">I", 3) + b"\xff\xff\xff",
    ],
    ids=["not-a-peer", "oversized-frame", "not-a-batch"],
)
def test_a_bad_connection_is_closed_and_the_listener_keeps_serving(data: bytes) -> None:
    async def main() -> None:
        echo = _Echo()
        server, address = await _serve(echo)
        assert await _raw(address, data) == b""
        # A well-behaved dialer is still answered.
        got: asyncio.Future[pb.Batch] = asyncio.get_running_loop().create_future()
        conn = await dial(address, got.set_result, lambda: None, TIMEOUT_S)
        conn.send(batch_frame("dialer", [message_bytes(Commit(5, 5))]))
        assert batch_from_pb(await asyncio.wait_for(got, TIMEOUT_S)) == [Ack(5, 5)]
        assert echo.seen == [5]
        assert conn.transport is not None
        conn.transport.abort()
        server.close()

    eventloop.run(main())


def test_a_refused_batch_closes_the_connection_and_the_dialer_hears_of_it() -> None:
    async def main() -> None:
        echo = _Echo()
        echo.refuse = {2}
        server, address = await _serve(echo)
        replies: asyncio.Queue[pb.Batch] = asyncio.Queue()
        closed = asyncio.Event()
        conn = await dial(address, replies.put_nowait, closed.set, TIMEOUT_S)
        conn.send(batch_frame("dialer", [message_bytes(Commit(1, 1))]))
        assert batch_from_pb(await asyncio.wait_for(replies.get(), TIMEOUT_S)) == [Ack(1, 1)]
        conn.send(batch_frame("dialer", [message_bytes(Commit(2, 2))]))
        await asyncio.wait_for(closed.wait(), TIMEOUT_S)
        assert conn.error is not None and replies.empty()
        assert echo.seen == [1]
        server.close()

    eventloop.run(main())


def test_a_port_in_use_is_a_clear_error() -> None:
    async def main() -> None:
        server, address = await _serve(_Echo())
        port = int(address.rpartition(":")[2])
        with pytest.raises(FailedPrecondition, match="cannot listen for peers"):
            await listen("127.0.0.1", port, _Echo().inbound, "other")
        server.close()

    eventloop.run(main())


# -- call streams over the wire ------------------------------------------------------------------


async def _echo_txns(requests: AsyncIterator[pb.TxnCalls], context: object) -> AsyncIterator[pb.TxnReturns]:
    """A Txns handler: answers each call with its id as the revision (closes on client_id "boom")."""
    async for message in requests:
        if any(call.request.client_id == "boom" for call in message.calls):
            raise Unavailable("id 0 ends the stream")
        yield pb.TxnReturns(
            returns=[pb.TxnReturn(id=c.id, response=pb.TxnResponse(revision=c.id)) for c in message.calls]
        )


async def _serve_streams() -> tuple[asyncio.Server, str]:
    server = await listen("127.0.0.1", 0, _Echo().inbound, "listener", {TXNS_GREETING: (pb.TxnCalls, _echo_txns)})
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _calls(
    stream: CallStream[pb.TxnRequest, pb.TxnResponse], n: int
) -> list[Coroutine[object, object, pb.TxnResponse]]:
    return [stream.call(pb.TxnRequest(client_id="c", seq=i), TIMEOUT_S) for i in range(n)]


def _txn_stream(address: str) -> CallStream[pb.TxnRequest, pb.TxnResponse]:
    return CallStream(
        lambda: WireCall(address, TXNS_GREETING, pb.TxnReturns.FromString, TIMEOUT_S),
        lambda i, request, ms: pb.TxnCall(id=i, request=request, timeout_ms=ms),
        lambda calls: pb.TxnCalls(calls=calls),
    )


def test_a_call_stream_over_the_wire_answers_every_call_by_id_and_peers_still_work_on_the_same_port() -> None:
    async def main() -> None:
        server, address = await _serve_streams()
        stream = _txn_stream(address)
        answers = await asyncio.gather(*_calls(stream, 100))
        # Each answer is the one for its own call (ids are 1..100 in call order).
        assert [a.revision for a in answers] == list(range(1, 101))
        got: asyncio.Future[pb.Batch] = asyncio.get_running_loop().create_future()
        conn = await dial(address, got.set_result, lambda: None, TIMEOUT_S)
        conn.send(batch_frame("dialer", [message_bytes(Commit(5, 5))]))
        assert batch_from_pb(await asyncio.wait_for(got, TIMEOUT_S)) == [Ack(5, 5)]
        assert conn.transport is not None
        conn.transport.abort()
        await stream.close()
        server.close()

    eventloop.run(main())


def test_calls_made_together_on_a_connected_stream_leave_in_bounded_bundles() -> None:
    """Once connected, a call made while no other waits for an answer is written at once, alone; the
    other calls of that loop iteration are written at its end, without the writer task: still cut at
    the bundle bound, and each answered by its id."""
    sizes: list[int] = []

    async def recording(requests: AsyncIterator[pb.TxnCalls], context: object) -> AsyncIterator[pb.TxnReturns]:
        async for message in requests:
            sizes.append(len(message.calls))
            yield pb.TxnReturns(
                returns=[pb.TxnReturn(id=c.id, response=pb.TxnResponse(revision=c.id)) for c in message.calls]
            )

    async def main() -> list[int]:
        server = await listen("127.0.0.1", 0, _Echo().inbound, "listener", {TXNS_GREETING: (pb.TxnCalls, recording)})
        stream = _txn_stream(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        assert (await stream.call(pb.TxnRequest(), TIMEOUT_S)).revision == 1  # connects
        count = BUNDLE_ITEMS_MAX + 10
        answers = await asyncio.gather(*_calls(stream, count))
        await stream.close()
        server.close()
        return [a.revision for a in answers]

    revisions = eventloop.run(main())
    assert revisions == list(range(2, BUNDLE_ITEMS_MAX + 12))
    assert sizes == [1, 1, BUNDLE_ITEMS_MAX, 9]


def test_a_direct_stream_answers_calls_now_or_later_and_what_is_ready_together_leaves_together() -> None:
    """A DirectStream handler runs as each message is read: answers given then (two messages read
    together) leave in one message at the end of the iteration; an answer given later leaves on its
    own; a CorralError from the handler ends the stream."""

    def on_message(message: pb.TxnCalls, answer: Callable[[pb.TxnReturn], None]) -> None:
        for call in message.calls:
            if call.request.client_id == "boom":
                raise Unavailable("the handler refused the stream")
            ret = pb.TxnReturn(id=call.id, response=pb.TxnResponse(revision=call.id))
            if call.request.client_id == "later":
                asyncio.get_running_loop().call_later(0.05, answer, ret)
            else:
                answer(ret)

    def message(*calls: tuple[int, str]) -> bytes:
        body = pb.TxnCalls(calls=[pb.TxnCall(id=i, request=pb.TxnRequest(client_id=c)) for i, c in calls])
        data = body.SerializeToString()
        return struct.pack(">I", len(data)) + data

    async def read_returns(reader: asyncio.StreamReader) -> list[int]:
        (size,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), TIMEOUT_S))
        returns = pb.TxnReturns.FromString(await asyncio.wait_for(reader.readexactly(size), TIMEOUT_S))
        return [r.id for r in returns.returns]

    async def main() -> tuple[list[int], list[int], bytes]:
        direct = DirectStream(pb.TxnCalls, on_message, lambda returns: pb.TxnReturns(returns=returns))
        server = await listen("127.0.0.1", 0, _Echo().inbound, "listener", {TXNS_GREETING: direct})
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(TXNS_GREETING + message((1, "c"), (2, "later")) + message((3, "c")))
        together = await read_returns(reader)
        later = await read_returns(reader)
        writer.write(message((4, "boom")))
        rest = await asyncio.wait_for(reader.read(), TIMEOUT_S)  # b"": the listener closed the stream
        writer.close()
        server.close()
        return together, later, rest

    together, later, rest = eventloop.run(main())
    assert together == [1, 3]
    assert later == [2]
    assert rest == b""


def test_a_refused_connection_fails_calls_as_never_sent() -> None:
    async def main() -> None:
        server, address = await _serve_streams()
        server.close()
        await server.wait_closed()
        stream = _txn_stream(address)
        with pytest.raises(StreamBroken) as broken:
            await stream.call(pb.TxnRequest(), TIMEOUT_S)
        assert broken.value.code == grpc.StatusCode.UNAVAILABLE and not broken.value.sent
        await stream.close()

    eventloop.run(main())


def test_a_stream_that_breaks_after_a_call_was_written_fails_it_as_maybe_applied_and_the_next_call_reconnects() -> None:
    async def main() -> None:
        server, address = await _serve_streams()
        stream = _txn_stream(address)
        assert (await stream.call(pb.TxnRequest(), TIMEOUT_S)).revision == 1
        # The handler raising ends the connection (as a node stopping would).
        broken_call = _txn_stream(address)
        with pytest.raises(StreamBroken) as broken:
            await broken_call.call(pb.TxnRequest(client_id="boom"), TIMEOUT_S)
        assert broken.value.code == grpc.StatusCode.UNAVAILABLE and broken.value.sent
        # The first stream was not affected; a new session on the broken one connects again.
        assert (await stream.call(pb.TxnRequest(), TIMEOUT_S)).revision == 2
        assert (await broken_call.call(pb.TxnRequest(), TIMEOUT_S)).revision == 2
        await broken_call.close()
        await stream.close()
        server.close()

    eventloop.run(main())


@pytest.mark.parametrize(
    "data",
    [b"corral-nope/1\n", TXNS_GREETING + struct.pack(">I", 3) + b"\xff\xff\xff"],
    ids=["unknown-greeting", "not-txn-calls"],
)
def test_a_bad_call_stream_is_closed_and_the_listener_keeps_serving(data: bytes) -> None:
    async def main() -> None:
        server, address = await _serve_streams()
        assert await _raw(address, data) == b""
        stream = _txn_stream(address)
        assert (await stream.call(pb.TxnRequest(), TIMEOUT_S)).revision == 1
        await stream.close()
        server.close()

    eventloop.run(main())


def test_a_dialer_that_does_not_read_its_answers_stops_being_read() -> None:
    """Flow control: answers pile up in the listener only to the transport's high-water mark; then it
    stops taking calls from that connection instead of buffering every answer in memory."""
    sent = 200
    handled = 0
    all_handled = asyncio.Event()

    async def big_answers(requests: AsyncIterator[pb.RangeCalls], context: object) -> AsyncIterator[pb.RangeReturns]:
        nonlocal handled
        async for message in requests:
            handled += 1
            if handled == sent:
                all_handled.set()
            value = b"x" * (1 << 20)
            kvs = [pb.KeyValue(key="k", value=value)]
            yield pb.RangeReturns(returns=[pb.RangeReturn(id=message.calls[0].id, response=pb.RangeResponse(kvs=kvs))])

    async def main() -> None:
        streams = {RANGES_GREETING: (pb.RangeCalls, big_answers)}
        server = await listen("127.0.0.1", 0, _Echo().inbound, "listener", streams)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = pb.RangeCalls(calls=[pb.RangeCall(id=1, request=pb.RangeRequest(key="k"))]).SerializeToString()
        writer.write(RANGES_GREETING + b"".join(struct.pack(">I", len(request)) + request for _ in range(sent)))
        # Unchecked, all 200 are handled in milliseconds; a second passes without that.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(all_handled.wait(), 1.0)
        assert 0 < handled < sent // 4
        # Reading the answers lets it go on: every call is answered in the end.
        answers = 0
        while answers < sent:
            (size,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), TIMEOUT_S))
            pb.RangeReturns.FromString(await asyncio.wait_for(reader.readexactly(size), TIMEOUT_S))
            answers += 1
        assert handled == sent
        writer.close()
        server.close()

    eventloop.run(main())
