"""Peer links over real loopback TCP: batching behind the batch in flight, FIFO answers, and a peer that
stops answering reported unreachable after the link's timeout (and only for what it left unanswered)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from corral import eventloop
from corral.core.messages import Abort, Ack, Commit, Message, Prepare, TxnSpec, Vote
from corral.model import Put
from corral.rpc import corral_pb2 as pb
from corral.rpc.convert import batch_from_pb
from corral.services.failpoints import Failpoints
from corral.services.links import PeerLinks
from corral.services.wire import listen

DEADLINE_S = 10


def _prepare(txid: int) -> Prepare:
    return Prepare(txid, TxnSpec((), (Put(f"k/{txid}", b"v", 0),), ()), ("peer",))


def _txid(msg: Message) -> int:
    """The transaction a message is about (every message this test exchanges is about one)."""
    assert isinstance(msg, (Prepare, Commit, Abort, Vote, Ack)), f"{msg!r} names no transaction"
    return msg.txid


def _txids(msgs: Iterable[Message]) -> list[int]:
    return [_txid(m) for m in msgs]


class _Peer:
    """A listener that records each batch's txids and answers it with one Ack per message, once the
    test releases it (`hold`), or never (`silent_from`: that txid and everything after it)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.hold: asyncio.Event | None = None
        self.silent_from: int | None = None

    async def inbound(self, batch: pb.Batch) -> asyncio.Future[list[Message]]:
        txids = _txids(batch_from_pb(batch))
        self.batches.append(txids)
        answer: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        if self.silent_from is not None and max(txids) >= self.silent_from:
            return answer  # never answered
        hold = self.hold

        async def release() -> None:
            if hold is not None:
                await hold.wait()
            answer.set_result([Ack(t, t) for t in txids])

        asyncio.get_running_loop().create_task(release())
        return answer


async def _wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _links(peer: _Peer, timeout_s: float) -> tuple[PeerLinks, asyncio.Server, list[int], list[int]]:
    server = await listen("127.0.0.1", 0, peer.inbound, "peer")
    port = server.sockets[0].getsockname()[1]
    acked: list[int] = []
    unreachable: list[int] = []
    links = PeerLinks(
        "me",
        {"peer": f"127.0.0.1:{port}"},
        on_messages=lambda src, msgs: acked.extend(_txids(msgs)),
        on_unreachable=lambda dst, msgs: unreachable.extend(_txids(msgs)),
        faults=Failpoints("me"),
        rpc_timeout_s=timeout_s,
    )
    return links, server, acked, unreachable


def test_prepares_queued_behind_the_one_in_flight_leave_together_and_answers_keep_their_order() -> None:
    async def main() -> tuple[list[list[int]], list[int]]:
        peer = _Peer()
        peer.hold = asyncio.Event()
        links, server, acked, _ = await _links(peer, timeout_s=5)
        try:
            links.send("peer", _prepare(1))
            await _wait_for(lambda: peer.batches == [[1]], "the first batch")
            # Each flushed at once: without the in-flight limit, 2 would leave alone, then 3 and 4.
            links.send("peer", _prepare(2))
            links.flush()
            links.send("peer", _prepare(3))
            links.send("peer", _prepare(4))
            links.flush()
            peer.hold.set()
            await _wait_for(lambda: len(acked) == 4, "every answer")
            return peer.batches, acked
        finally:
            await links.close()
            server.close()

    batches, acked = eventloop.run(main())
    assert batches == [[1], [2, 3, 4]]
    assert acked == [1, 2, 3, 4]


def test_a_peer_that_stops_answering_is_reported_unreachable_for_what_it_left_unanswered() -> None:
    timeout_s = 0.4

    async def main() -> tuple[list[int], list[int], float]:
        peer = _Peer()
        peer.silent_from = 2
        links, server, acked, unreachable = await _links(peer, timeout_s)
        try:
            links.send("peer", _prepare(1))
            await _wait_for(lambda: acked == [1], "the first answer")
            # The stall check armed for batch 1 fires before batch 2 is overdue: it must re-arm, not
            # report batch 2 early or forget it.
            await asyncio.sleep(timeout_s / 2)
            started = time.monotonic()
            links.send("peer", _prepare(2))
            await _wait_for(lambda: unreachable, "the unanswered batch to be reported")
            return acked, unreachable, time.monotonic() - started
        finally:
            await links.close()
            server.close()

    acked, unreachable, waited = eventloop.run(main())
    assert acked == [1]
    assert unreachable == [2]
    assert waited >= 0.4 * 0.9  # not before its own timeout (loop time vs monotonic: a little slack)
