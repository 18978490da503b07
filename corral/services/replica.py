"""The replica process: a 2PC participant over its durable store, serving reads.

A batch of protocol messages is processed in one storage batch: for each message, read what a
PREPARE's compares need (seeing commits applied earlier in the batch), step the core, write its
records. The batch commits at once (no fsync); votes, acks and other sends go out through the
releaser, in order, once a grouped WAL fsync has made the batch durable.

Reads (linearizable by default) need a read lease, wait while a key they cover is locked by a
prepared transaction, up to the caller's deadline, then fail with `Unavailable`: a replica never
answers with a value that a decided-but-unapplied commit would contradict. The lease must still hold
when the store is read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress

import grpc

from corral.config import COORDINATOR, ClusterConfig, NodeConfig
from corral.core.messages import (
    Abort,
    Ack,
    Commit,
    Envelope,
    Event,
    FetchRequest,
    Message,
    Prepare,
    Received,
    SnapshotRequest,
    Tick,
)
from corral.core.twopc_participant import Membership, Participant
from corral.errors import CorralError, Internal, InvalidArgument, Unavailable
from corral.limits import WATCH_PROGRESS_S
from corral.model import validate_key, validate_prefix, validate_revision
from corral.records import AbortedRecord, CommittedRecord, PreparedRecord, Record
from corral.rpc import corral_pb2 as pb
from corral.rpc import corral_pb2_grpc as pb_grpc
from corral.rpc.convert import batch_from_pb, error_to_pb, event_to_pb, kv_into
from corral.services.base import (
    Context,
    PeerEndpoint,
    Releaser,
    Ticker,
    answer_calls,
    call_timeout_s,
    deadline_s,
    fail_stop,
    now_ms,
)
from corral.services.catch_up import serve_catch_up
from corral.services.failpoints import Failpoints
from corral.services.links import PeerLinks
from corral.store.durability import WalSync
from corral.store.replica_log import ReplicaStorage

log = logging.getLogger(__name__)

# A watch stream sends at most this many revisions per message.
WATCH_REVISIONS_MAX = 1000

# How long a read waits for a read lease that is about to be granted (a replica that just started,
# or one between renewals); longer and a cut-off replica would hold reads before clients fail over.
LEASE_WAIT_S = 0.3
# How long a compaction waits for this replica to apply the revision it names (a COMMIT in flight); a
# revision no replica has reached is refused after that.
COMPACT_WAIT_S = 2.0

_STEP_FAILPOINT = {Prepare: "replica.on_prepare", Commit: "replica.on_commit", Abort: "replica.on_abort"}
# Records whose durability can wait for another batch's fsync (WalSync lazy waiters).
_OUTCOME_RECORDS = frozenset({CommittedRecord, AbortedRecord})


class ReplicaService(PeerEndpoint, pb_grpc.ClientServicer, pb_grpc.PeerServicer, pb_grpc.AdminServicer):
    def __init__(self, config: ClusterConfig, node: NodeConfig, faults: Failpoints) -> None:
        self.config = config
        self.node = node
        self.faults = faults
        self.started_at = time.monotonic()
        self.storage = ReplicaStorage(node.data_dir / "replica.db", limits=config.limits, synchronous="NORMAL")
        self.wal = WalSync(node.data_dir / "replica.db")
        self.releaser = Releaser(node.name, self.wal)
        self.core = Participant(
            node.name,
            COORDINATOR,
            [r.name for r in config.replicas],
            self.storage.load(),
            now_ms=now_ms(),
            timeouts=config.timeouts,
            limits=config.limits,
            logger=logging.getLogger("corral.core.participant"),
        )
        self.links = PeerLinks(
            node.name,
            config.peer_addresses(node.name),
            on_messages=self._on_replies,
            on_unreachable=lambda dst, msgs: None,  # queries are repeated by the core's timer
            faults=faults,
            rpc_timeout_s=config.timeouts.resolve_interval_ms / 1000,
        )
        self.ticker = Ticker(node.name, self._on_tick)
        self._changed = asyncio.Event()  # set (and replaced) after every batch: wakes waiting reads
        self.reads_served = 0  # for Status: shows how clients spread their reads
        self.watches_open = 0

    async def start(self) -> None:
        self.ticker.start()
        self.ticker.wake_at(now_ms())  # ask about anything recovered in doubt
        log.info("replica=%s revision=%d in_doubt=%d", self.node.name, self.storage.revision, len(self.core.in_doubt()))

    async def close(self) -> None:
        await self.ticker.stop()
        await self.links.close()
        self.storage.close()
        self.wal.close()

    # -- the loop body -------------------------------------------------------------------------

    def _process(
        self,
        src: str | None,
        events: list[Event],
        capture: str | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> asyncio.Future[list[Message]]:
        """Step every event inside one storage batch; once it is durable, send. The returned future
        resolves to the messages addressed to `capture` (the answer to the batch being served), and
        `on_ready()` runs right after."""
        sends: list[Envelope] = []
        records: list[Record] = []
        wake = None
        stepped = False
        now = now_ms()  # one clock reading per batch, as the coordinator's step_many
        core, hit = self.core, self.faults.hit
        try:
            with self.storage.batch() as batch:
                for event in events:
                    ev = event
                    if isinstance(ev, Received):
                        msg = ev.msg
                        if isinstance(msg, (FetchRequest, SnapshotRequest)):
                            # Catch-up is served by the shell from the store; the core is not involved.
                            sends.append(Envelope(ev.src, serve_catch_up(core, self.storage, msg)))
                            continue
                        name = _STEP_FAILPOINT.get(type(msg))
                        if name:
                            hit(name)
                        if isinstance(msg, Prepare):
                            leases = msg.txn.leases_deleted()
                            compares = msg.txn.compare_keys()
                            ev = Received(
                                ev.src,
                                msg,
                                batch.read(compares) if compares else {},
                                batch.lease_keys(leases) if leases else None,
                            )
                    eff = core.step(ev, now)
                    if eff.persist:
                        batch.write(eff.persist)
                        records.extend(eff.persist)
                    sends.extend(eff.send)
                    wake, stepped = eff.wake_at_ms, True
        except Internal as err:
            fail_stop(self.node.name, err)
            raise
        kinds = {type(r) for r in records}
        persisted = bool(records)
        persisted_prepare = PreparedRecord in kinds
        persisted_commit = CommittedRecord in kinds
        # Something persisted must be durable soon: anything but applied outcomes and their acks.
        urgent = not kinds <= _OUTCOME_RECORDS or any(type(env.msg) is not Ack for env in sends)
        sends = _latest_acks(sends)
        ticket = self.wal.note_commit() if persisted else 0
        if stepped:  # a batch of fetches only leaves the core's timer as it was (its lease renewals)
            self.ticker.wake_at(wake)
        # Locks released by this batch are released in memory and the store holds the applies:
        # waiting reads may look again (a decided commit is final even before our fsync).
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        answer: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()

        def act() -> None:
            if persisted_prepare:
                self.faults.hit("replica.after_prepare_log")
            if persisted_commit:
                self.faults.hit("replica.after_commit_apply")
            captured = []
            for env in sends:
                if env.dst == capture:
                    captured.append(env.msg)
                else:
                    self.links.send(env.dst, env.msg)
            answer.set_result(captured)
            if on_ready is not None:
                on_ready()

        # Applied outcomes and their acks only: the ack may wait for the next fsync (WalSync).
        self.releaser.release(ticket, act, lazy=not urgent)
        return answer

    def _on_tick(self) -> None:
        self._process(None, [Tick()])

    def _on_replies(self, src: str, msgs: list[Message]) -> None:
        self._process(src, [Received(src, m) for m in msgs])

    # -- Peer service ---------------------------------------------------------------------------

    async def _inbound(self, batch: pb.Batch) -> asyncio.Future[list[Message]]:
        action = self.faults.hit(f"replica.recv.{batch.src}", "replica.recv")
        if action is not None and action.kind in ("drop", "error"):
            raise Unavailable(f"failpoint replica.recv: {action.kind}")
        if action is not None and action.kind == "delay":
            await asyncio.sleep(action.arg_ms / 1000)
        return self._step_batch(batch)

    def _step_batch(self, batch: pb.Batch, on_ready: Callable[[], None] | None = None) -> asyncio.Future[list[Message]]:
        msgs = batch_from_pb(batch)
        return self._process(batch.src, [Received(batch.src, m) for m in msgs], batch.src, on_ready)

    # -- Client service (reads) ------------------------------------------------------------------

    async def Txn(self, request: pb.TxnRequest, context: Context) -> pb.TxnResponse:
        err = InvalidArgument(f"{self.node.name} is a replica; writes go to the coordinator")
        return pb.TxnResponse(error=error_to_pb(err))

    async def Txns(
        self, request_iterator: AsyncIterator[pb.TxnCalls], context: Context
    ) -> AsyncIterator[pb.TxnReturns]:
        err = InvalidArgument(f"{self.node.name} is a replica; writes go to the coordinator")
        response = pb.TxnResponse(error=error_to_pb(err))
        async for message in request_iterator:
            yield pb.TxnReturns(returns=[pb.TxnReturn(id=call.id, response=response) for call in message.calls])

    def _not_here(self, what: str) -> pb.LeaseReply:
        err = InvalidArgument(f"{self.node.name} is a replica; {what} go to the coordinator")
        return pb.LeaseReply(error=error_to_pb(err))

    async def LeaseGrant(self, request: pb.LeaseGrantRequest, context: Context) -> pb.LeaseReply:
        return self._not_here("leases")

    async def LeaseRevoke(self, request: pb.LeaseIdRequest, context: Context) -> pb.LeaseReply:
        return self._not_here("leases")

    async def LeaseTimeToLive(self, request: pb.LeaseIdRequest, context: Context) -> pb.LeaseReply:
        return self._not_here("leases")

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[pb.LeaseIdRequest], context: Context
    ) -> AsyncIterator[pb.LeaseReply]:
        yield self._not_here("leases")

    async def Watch(self, request: pb.WatchRequest, context: Context) -> AsyncIterator[pb.WatchResponse]:
        """Committed events from start_revision on, in revision order, then live as commits apply;
        an empty response every WATCH_PROGRESS_S says how far the stream has covered. A replica
        without a read lease (cut off from the coordinator, or outside the view) ends the stream
        with Unavailable instead: its silence would pass for "nothing new" while commits go on
        elsewhere, and the client resumes on another replica from where this one left off."""
        store = self.storage.store
        try:
            key = validate_prefix(request.key) if request.prefix else validate_key(request.key)
            start = validate_revision(request.start_revision, name="start_revision")
        except CorralError as err:
            yield pb.WatchResponse(error=error_to_pb(err))
            return
        next_revision = start or store.revision + 1
        loop = asyncio.get_running_loop()
        sent = loop.time()  # when the stream last said something (the client takes silence for death)
        self.watches_open += 1
        try:
            while True:
                changed = self._changed
                head = store.revision
                if head < next_revision:
                    quiet = loop.time() - sent
                    if quiet < WATCH_PROGRESS_S:
                        # Woken by any change (lease grants too, every lease/4), not only commits: the
                        # progress report is due by the clock, not by a quiet second.
                        with suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), WATCH_PROGRESS_S - quiet)
                        continue
                    try:
                        await self._wait_for_lease(LEASE_WAIT_S)
                    except Unavailable as err:
                        yield pb.WatchResponse(error=error_to_pb(err))
                        return
                    yield pb.WatchResponse(revision=next_revision - 1)
                    sent = loop.time()
                    continue
                end = min(head, next_revision + WATCH_REVISIONS_MAX - 1)
                try:
                    events = store.changes(next_revision, prefix=key, end_revision=end)
                except CorralError as err:
                    yield pb.WatchResponse(error=error_to_pb(err))
                    return
                if not request.prefix:
                    events = [e for e in events if e.kv.key == key]
                yield pb.WatchResponse(events=[event_to_pb(e, with_prev=request.prev_kv) for e in events], revision=end)
                sent = loop.time()
                next_revision = end + 1
        finally:
            self.watches_open -= 1

    async def Range(self, request: pb.RangeRequest, context: Context) -> pb.RangeResponse:
        action = self.faults.hit("replica.read")
        if action is not None and action.kind in ("drop", "error"):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"failpoint replica.read: {action.kind}")
        return await self._range(request, deadline_s(context, self.config.timeouts.request_timeout_ms))

    async def Ranges(
        self, request_iterator: AsyncIterator[pb.RangeCalls], context: Context
    ) -> AsyncIterator[pb.RangeReturns]:
        """Many reads over one stream, each answered by id as soon as it is ready."""
        default_ms = self.config.timeouts.request_timeout_ms

        async def handle(call: pb.RangeCall) -> pb.RangeReturn:
            action = self.faults.hit("replica.read")
            if action is not None and action.kind in ("drop", "error"):
                refused = Unavailable(f"failpoint replica.read: {action.kind}", replica=self.node.name)
                return pb.RangeReturn(id=call.id, response=pb.RangeResponse(error=error_to_pb(refused)))
            response = await self._range(call.request, call_timeout_s(call.timeout_ms, default_ms))
            return pb.RangeReturn(id=call.id, response=response)

        async for answers in answer_calls(request_iterator, handle):
            yield pb.RangeReturns(returns=answers)

    async def _range(self, request: pb.RangeRequest, timeout_s: float) -> pb.RangeResponse:
        try:
            return await self._read(request, timeout_s)
        except CorralError as err:
            return pb.RangeResponse(error=error_to_pb(err))

    async def _read(self, request: pb.RangeRequest, timeout_s: float) -> pb.RangeResponse:
        if request.prefix:
            prefix = validate_prefix(request.key)
            locked: Callable[[], bool] = lambda: self.core.any_locked_with_prefix(prefix)  # noqa: E731
            what = f"a key under {prefix!r}"
        else:
            key = validate_key(request.key)
            locked = lambda: self.core.is_locked(key)  # noqa: E731
            what = f"key {key!r}"
        revision = validate_revision(request.revision)
        if request.limit < 0:
            raise InvalidArgument(f"limit is {request.limit}; use 0 (no limit) or a positive number", field="limit")
        limit = min(request.limit or self.config.limits.range_limit_max, self.config.limits.range_limit_max)
        if not request.serializable:
            started = asyncio.get_running_loop().time()
            await self._wait_for_lease(min(timeout_s, LEASE_WAIT_S))
            timeout_s -= asyncio.get_running_loop().time() - started  # one deadline for both waits
            # Test-only: a deliberately broken read that ignores prepared keys, to show the
            # linearizability checker catches it (tests/integration/test_nemesis.py).
            broken = self.faults.hit("replica.read.skip_lock_wait")
            if broken is None or broken.kind != "drop":
                await self._wait_unlocked(locked, what, timeout_s)
            # The lease is checked again now, when the store is read: the wait for a lock may outlast it,
            # and a replica dropped meanwhile may have discarded the transaction that held the lock.
            await self._wait_for_lease(0)
        store = self.storage.store
        if request.prefix:
            kvs = store.range(request.key, revision=revision, limit=limit + 1)
            more = len(kvs) > limit
            kvs = kvs[:limit]
        else:
            kv = store.get(request.key, revision=revision)
            kvs, more = ([kv] if kv else []), False
        self.reads_served += 1
        response = pb.RangeResponse(revision=revision or store.revision, more=more)
        for kv in kvs:
            kv_into(response.kvs.add(), kv)  # in place: a KeyValue passed in would be copied
        return response

    async def _wait_for_lease(self, timeout_s: float) -> None:
        """A member between two grants (or just started) gets a moment to renew; otherwise fail fast,
        so the client moves on to another replica."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.core.can_serve_linearizable(now_ms()):
            remaining = deadline - loop.time()
            if remaining <= 0 or self.core.membership is Membership.OUTSIDE:
                raise Unavailable(
                    f"{self.node.name} holds no read lease ({self.core.membership.value}; it may be cut off from "
                    "the coordinator or catching up); another replica can answer",
                    replica=self.node.name,
                )
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue

    async def _wait_for_revision(self, revision: int, timeout_s: float) -> None:
        """Until the store has applied `revision`, at most `timeout_s` (then the caller's check fails)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.storage.revision < revision:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def _wait_unlocked(self, locked: Callable[[], bool], what: str, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while locked():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Unavailable(
                    f"{what} is in doubt on {self.node.name}: a transaction touching it is prepared and its "
                    "outcome is not known yet (is the coordinator down?); retry later",
                    replica=self.node.name,
                )
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue

    # -- Admin service ---------------------------------------------------------------------------

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        return pb.StatusResponse(
            name=self.node.name,
            role="replica",
            revision=self.storage.revision,
            digest=self.storage.store.digest(),
            pid=os.getpid(),
            prepared=self.core.prepared_count,
            uptime_s=time.monotonic() - self.started_at,
            members=self.members_pb(),
            locked_keys=len(self.core.locked_keys()),
            view=self.core.view,
            view_members=list(self.core.members),
            membership=self.core.membership.value,
            lease_valid=self.core.can_serve_linearizable(now_ms()),
            fsyncs=self.wal.fsyncs,
            batches_received=self.batches_received,
            messages_received=self.messages_received,
            reads_served=self.reads_served,
            watches_open=self.watches_open,
        )

    async def Compact(self, request: pb.CompactRequest, context: Context) -> pb.CompactResponse:
        try:
            revision = validate_revision(request.revision)
            # A write is acknowledged once every replica prepared it; this one may apply its COMMIT a
            # moment later. Compacting at the revision just written waits for that apply.
            wait_s = min(COMPACT_WAIT_S, deadline_s(context, self.config.timeouts.request_timeout_ms))
            await self._wait_for_revision(revision, wait_s)
            self.storage.store.compact(revision)
        except CorralError as err:
            return pb.CompactResponse(error=error_to_pb(err))
        return pb.CompactResponse(compact_revision=self.storage.store.compact_revision)


def _latest_acks(sends: list[Envelope]) -> list[Envelope]:
    """The sends with only the last ack to each destination: acks are cumulative (each says "applied
    through revision r", and r only grows), so a batch of 40 commits is answered by one ack, not 40."""
    last: dict[str, int] = {}
    acks = 0
    for i, env in enumerate(sends):
        if isinstance(env.msg, Ack):
            last[env.dst] = i
            acks += 1
    if acks == len(last):
        return sends
    return [env for i, env in enumerate(sends) if not isinstance(env.msg, Ack) or last[env.dst] == i]
