"""The coordinator process: drives the 2PC coordinator core over gRPC.

The loop for every input (a client request, a batch of votes/acks, a resolve query, a timer):
step the core, commit the step's records to the decision log (no fsync yet), then hand the sends and
answers to the releaser, which carries them out in order once a grouped WAL fsync has made the records
durable. Votes for many transactions arrive in one batch from each replica, and commits made while
an fsync runs share the next one: group commit without a separate batching stage.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable

from corral.config import ClusterConfig, NodeConfig
from corral.core.leases import LeaseInfo
from corral.core.messages import (
    Ack,
    ClientLease,
    ClientTxn,
    Effects,
    ErrorInfo,
    Event,
    Message,
    Received,
    Tick,
    TxnResult,
    Unreachable,
    Vote,
)
from corral.core.twopc_coordinator import Coordinator
from corral.errors import CorralError, FailedPrecondition, Internal, Unavailable
from corral.records import CommitRecord
from corral.rpc import corral_pb2 as pb
from corral.rpc import corral_pb2_grpc as pb_grpc
from corral.rpc.convert import batch_from_pb, error_to_pb, txn_from_pb
from corral.services.base import (
    Context,
    PeerEndpoint,
    Releaser,
    Ticker,
    answers_of,
    call_timeout_s,
    deadline_s,
    fail_stop,
    now_ms,
)
from corral.services.failpoints import Failpoints
from corral.services.links import PeerLinks
from corral.store.decision_log import DecisionLog
from corral.store.durability import WalSync

log = logging.getLogger(__name__)

Result = TxnResult | LeaseInfo | ErrorInfo

# Pending END marks are flushed when this many accumulate or the coordinator is idle for a tick.
END_FLUSH_BATCH = 1000


class CoordinatorService(PeerEndpoint, pb_grpc.ClientServicer, pb_grpc.PeerServicer, pb_grpc.AdminServicer):
    def __init__(self, config: ClusterConfig, node: NodeConfig, faults: Failpoints) -> None:
        self.config = config
        self.node = node
        self.faults = faults
        self.started_at = time.monotonic()
        self.decisions = DecisionLog(node.data_dir / "decisions.db", synchronous="NORMAL")
        self.wal = WalSync(node.data_dir / "decisions.db")
        self.releaser = Releaser(node.name, self.wal)
        self.core = Coordinator(
            node.name,
            [r.name for r in config.replicas],
            self.decisions.load(),
            timeouts=config.timeouts,
            min_replicas=config.min_replicas,
            logger=logging.getLogger("corral.core.coordinator"),
        )
        self.links = PeerLinks(
            node.name,
            config.peer_addresses(node.name),
            on_messages=self._on_peer_messages,
            on_unreachable=self._on_unreachable,
            faults=faults,
            rpc_timeout_s=config.timeouts.prepare_timeout_ms / 1000,
        )
        self.ticker = Ticker(node.name, self._on_tick)
        # How to answer each request the core has not answered yet (called once it is durable).
        self._waiters: dict[int, Callable[[Result], None]] = {}
        self._ids = itertools.count(1)
        # Peer replies and unreachables of one loop iteration, stepped together (see _on_peer_messages).
        self._inbox: list[Event] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._perform([self.core.start(now_ms())])  # the new epoch is durable before we serve
        self.ticker.start()

    async def close(self) -> None:
        self._inbox.clear()  # not stepped: the decision log is closing (the core recovers by asking)
        await self.ticker.stop()
        await self.links.close()
        self.decisions.close()
        self.wal.close()

    # -- the loop body -------------------------------------------------------------------------

    def _step(
        self, events: list[Event], capture: str | None = None, on_ready: Callable[[], None] | None = None
    ) -> asyncio.Future[list[Message]]:
        try:
            effects = [self.core.step_many(events, now_ms())]
        except Internal as err:
            fail_stop(self.node.name, err)
            raise
        return self._perform(effects, capture, on_ready)

    def _perform(
        self, effects: list[Effects], capture: str | None = None, on_ready: Callable[[], None] | None = None
    ) -> asyncio.Future[list[Message]]:
        """Commit the records now; send and answer once they are durable. Messages for `capture` are
        the answer to the batch being served: they resolve the returned future instead of being sent
        (and `on_ready()` runs right after)."""
        forced = [r for e in effects for r in e.persist]
        lazy = [r for e in effects for r in e.persist_lazy]
        self.decisions.write(forced, lazy)
        ticket = self.wal.note_commit() if forced else 0
        if self.decisions.pending_ends >= END_FLUSH_BATCH:
            self.decisions.flush()
        if effects:
            self.ticker.wake_at(effects[-1].wake_at_ms)
        answer: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        decided = any(isinstance(r, CommitRecord) for r in forced)

        def act() -> None:
            if decided:
                self.faults.hit("coordinator.after_commit_log")
            # Answers first: their callbacks then run before the link tasks the sends wake, so a
            # client learns its outcome without waiting behind COMMIT writes (order is free here: all
            # of it is durable).
            for eff in effects:
                for reply in eff.reply:
                    waiter = self._waiters.pop(reply.request_id, None)
                    if waiter is not None:
                        waiter(reply.result)
            captured: list[Message] = []
            for eff in effects:
                for env in eff.send:
                    if env.dst == capture:
                        captured.append(env.msg)
                    else:
                        self.links.send(env.dst, env.msg)
            answer.set_result(captured)
            if on_ready is not None:
                on_ready()

        self.releaser.release(ticket, act)
        return answer

    def _on_peer_messages(self, src: str, msgs: list[Message]) -> None:
        """Replies are stepped once per loop iteration, all links' together: the votes of three
        replicas that arrive together cost one step, one decision-log write and one release."""
        self._to_inbox([Received(src, m) for m in msgs])

    def _on_unreachable(self, dst: str, msgs: list[Message]) -> None:
        self._to_inbox([Unreachable(dst, tuple(msgs))])  # after that link's replies, in order

    def _to_inbox(self, events: list[Event]) -> None:
        if not self._inbox:
            asyncio.get_running_loop().call_soon(self._step_inbox)
        self._inbox.extend(events)

    def _step_inbox(self) -> None:
        events, self._inbox = self._inbox, []
        if not events:
            return
        received = [e for e in events if isinstance(e, Received)]
        if any(isinstance(e.msg, Vote) for e in received):
            self.faults.hit("coordinator.on_vote")
        self._step(events)
        for src in dict.fromkeys(e.src for e in received if isinstance(e.msg, Ack)):
            self.faults.hit(f"coordinator.commit_acked.{src}")

    def _on_tick(self) -> None:
        self._step_inbox()  # what arrived before the tick is stepped before it
        self._step([Tick()])
        if self.decisions.pending_ends and not self.core.in_flight:
            self.decisions.flush()

    # -- Client service ----------------------------------------------------------------------

    async def Txn(self, request: pb.TxnRequest, context: Context) -> pb.TxnResponse:
        return await self._txn(request, deadline_s(context, self.config.timeouts.request_timeout_ms))

    async def Txns(
        self, request_iterator: AsyncIterator[pb.TxnCalls], context: Context
    ) -> AsyncIterator[pb.TxnReturns]:
        """Many writes over one stream, each answered by id as soon as it is decided. The calls of a
        message are stepped together as it arrives, with no task or timer each: the core answers every
        request by its deadline (a pending transaction aborts at it; a held one is refused at it)."""
        answers: asyncio.Queue[pb.TxnReturn | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for message in request_iterator:
                    self._txn_calls(message.calls, answers.put_nowait)
            finally:
                answers.put_nowait(None)

        pumping = asyncio.get_running_loop().create_task(pump())
        try:
            async for bundle in answers_of(answers):
                yield pb.TxnReturns(returns=bundle)
        finally:
            pumping.cancel()

    def txns_direct(self, message: pb.TxnCalls, answer: Callable[[pb.TxnReturn], None]) -> None:
        """`Txns` for the wire's direct streams: the calls are stepped as the message is read."""
        self._txn_calls(message.calls, answer)

    def _txn_calls(self, calls: Iterable[pb.TxnCall], answer: Callable[[pb.TxnReturn], None]) -> None:
        events: list[Event] = []
        default_ms = self.config.timeouts.request_timeout_ms
        for call in calls:
            request = call.request  # each access of a submessage builds a new wrapper: once
            try:
                txn = txn_from_pb(request.txn)
                txn.validate(self.config.limits)
            except CorralError as err:
                answer(pb.TxnReturn(id=call.id, response=pb.TxnResponse(error=error_to_pb(err))))
                continue
            rid = next(self._ids)
            # Answered in place: the answer is queued before the sends of the same step wake their
            # links, so the client's reply leaves ahead of the COMMITs.
            self._waiters[rid] = functools.partial(self._answered, call.id, answer)
            client_id = request.client_id or f"anonymous-{self.core.epoch}-{rid}"
            deadline_ms = now_ms() + int(call_timeout_s(call.timeout_ms, default_ms) * 1000)
            events.append(ClientTxn(rid, client_id, request.seq, txn, deadline_ms))
        if events:
            self._step(events)

    def _answered(self, call_id: int, answer: Callable[[pb.TxnReturn], None], result: Result) -> None:
        out = pb.TxnReturn(id=call_id)
        if isinstance(result, TxnResult):  # filled in place: a response passed in would be copied
            response = out.response
            response.revision = result.revision
            response.succeeded = result.succeeded
        else:
            out.response.CopyFrom(self._txn_response(result))
        answer(out)

    def _await_answer(self, rid: int) -> asyncio.Future[Result]:
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()

        def answer(result: Result) -> None:
            if not fut.done():
                fut.set_result(result)

        self._waiters[rid] = answer
        return fut

    @staticmethod
    def _txn_response(result: Result) -> pb.TxnResponse:
        if isinstance(result, ErrorInfo):
            return pb.TxnResponse(error=error_to_pb(result))
        if not isinstance(result, TxnResult):
            raise Internal(f"a transaction was answered with {type(result).__name__}")
        return pb.TxnResponse(revision=result.revision, succeeded=result.succeeded)

    async def _txn(self, request: pb.TxnRequest, timeout_s: float) -> pb.TxnResponse:
        try:
            txn = txn_from_pb(request.txn)
            txn.validate(self.config.limits)
        except CorralError as err:
            return pb.TxnResponse(error=error_to_pb(err))
        rid = next(self._ids)
        fut = self._await_answer(rid)
        # A request without a client id cannot be retried safely; give it a one-off identity.
        client_id = request.client_id or f"anonymous-{self.core.epoch}-{rid}"
        try:
            self._step([ClientTxn(rid, client_id, request.seq, txn, now_ms() + int(timeout_s * 1000))])
            result = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            unknown = Unavailable(
                "no decision before the deadline; the write may or may not have been applied "
                "(retry with the same client id and sequence to find out)",
                outcome_unknown=True,
            )
            return pb.TxnResponse(error=error_to_pb(unknown))
        finally:
            self._waiters.pop(rid, None)
        return self._txn_response(result)

    async def _lease(self, context: Context, op: str, lease_id: int = 0, ttl_ms: int = 0) -> pb.LeaseReply:
        timeout_s = deadline_s(context, self.config.timeouts.request_timeout_ms)
        rid = next(self._ids)
        fut = self._await_answer(rid)
        try:
            self._step([ClientLease(rid, op, lease_id, ttl_ms)])
            result = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            late = Unavailable(f"lease {op} got no answer before the deadline; retry", outcome_unknown=True)
            return pb.LeaseReply(error=error_to_pb(late))
        finally:
            self._waiters.pop(rid, None)
        if isinstance(result, ErrorInfo):
            return pb.LeaseReply(error=error_to_pb(result))
        if not isinstance(result, LeaseInfo):
            raise Internal(f"a lease request was answered with {type(result).__name__}")
        return pb.LeaseReply(id=result.id, ttl_ms=result.ttl_ms, remaining_ms=result.remaining_ms)

    async def LeaseGrant(self, request: pb.LeaseGrantRequest, context: Context) -> pb.LeaseReply:
        return await self._lease(context, "grant", ttl_ms=request.ttl_ms)

    async def LeaseRevoke(self, request: pb.LeaseIdRequest, context: Context) -> pb.LeaseReply:
        return await self._lease(context, "revoke", lease_id=request.id)

    async def LeaseTimeToLive(self, request: pb.LeaseIdRequest, context: Context) -> pb.LeaseReply:
        return await self._lease(context, "ttl", lease_id=request.id)

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[pb.LeaseIdRequest], context: Context
    ) -> AsyncIterator[pb.LeaseReply]:
        async for request in request_iterator:
            yield await self._lease(context, "keepalive", lease_id=request.id)

    async def Watch(self, request: pb.WatchRequest, context: Context) -> AsyncIterator[pb.WatchResponse]:
        wrong = FailedPrecondition(
            "watches are served by replicas, not the coordinator; connect with the cluster config"
        )
        yield pb.WatchResponse(error=error_to_pb(wrong))

    async def Ranges(
        self, request_iterator: AsyncIterator[pb.RangeCalls], context: Context
    ) -> AsyncIterator[pb.RangeReturns]:
        wrong = FailedPrecondition("reads are served by replicas, not the coordinator; connect with the cluster config")
        response = pb.RangeResponse(error=error_to_pb(wrong))
        async for message in request_iterator:
            yield pb.RangeReturns(returns=[pb.RangeReturn(id=call.id, response=response) for call in message.calls])

    async def Range(self, request: pb.RangeRequest, context: Context) -> pb.RangeResponse:
        wrong = FailedPrecondition("reads are served by replicas, not the coordinator; connect with the cluster config")
        return pb.RangeResponse(error=error_to_pb(wrong))

    # -- Peer service ---------------------------------------------------------------------------

    def _step_batch(self, batch: pb.Batch, on_ready: Callable[[], None] | None = None) -> asyncio.Future[list[Message]]:
        return self._step([Received(batch.src, m) for m in batch_from_pb(batch)], batch.src, on_ready)

    # -- Admin service ---------------------------------------------------------------------------

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        return pb.StatusResponse(
            name=self.node.name,
            role="coordinator",
            revision=self.core.last_revision,
            pid=os.getpid(),
            epoch=self.core.epoch,
            prepared=self.core.in_flight,
            uptime_s=time.monotonic() - self.started_at,
            members=self.members_pb(),
            view=self.core.view,
            view_members=list(self.core.members),
            joining=self.core.joining or "",
            fsyncs=self.wal.fsyncs,
            batches_received=self.batches_received,
            messages_received=self.messages_received,
        )

    async def Compact(self, request: pb.CompactRequest, context: Context) -> pb.CompactResponse:
        wrong = FailedPrecondition("compaction is done on each replica; the coordinator keeps no history")
        return pb.CompactResponse(error=error_to_pb(wrong))
