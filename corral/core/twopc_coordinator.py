"""The 2PC coordinator core: presumed abort, single sequencer of revisions, keeper of the view.

A transaction at the coordinator:

    request ──keys in use──▶ rejected (Conflict); nothing sent, nothing logged
       │     ──a replica is joining──▶ held until the join ends (bounded)
       ▼
    PENDING (PREPARE sent to its participants = the view's members when it started)
       ├─ every participant yes ──▶ COMMITTED: CommitRecord forced, client answered, COMMIT sent
       └─ a no, an unreachable participant, or the deadline ──▶ ABORTED: nothing logged, ABORT sent
    COMMITTED ──every participant acked (or left the view)──▶ ENDED: EndRecord (lazy), forgotten

The view (DESIGN.md "Failures"): the members vote on new transactions and hold read leases.
    member ──no lease request for lease_ms (+ drift margin) since the last grant──▶ dropped
           (only while more than `min_replicas` members remain; never below)
    outside ──Join──▶ JOINING: new transactions held, wait until nothing is in flight and every
           commit is acknowledged ──JoinReady(revision)──▶ the joiner fetches up to it ──CaughtUp──▶
           member (ViewRecord forced), held transactions released

Rules:
- First wins (seed 003): a transaction touching a key of a PENDING transaction is rejected at once.
- A transaction's participants are fixed when it starts. A view change only affects transactions
  started after it; a pending one still needs every original participant's yes (else it aborts).
  This keeps cooperative termination safe: a participant that refused a transaction (never voted)
  can count on it never committing.
- A dropped member's lease has expired before it is dropped (the coordinator counts the lease from
  when it sent the grant, the replica from when it asked), so a replica cut off from the coordinator
  stops serving linearizable reads before writes go on without it.
- A joiner enters the view only when no transaction is pending and every commit is acknowledged, and
  it has applied every revision: from then on it prepares every transaction, so its locks cover
  every write it has not applied, and its reads are as linearizable as any member's.
- Revisions are assigned at commit time, consecutively; COMMITs reach each participant in revision
  order because the core emits them in that order and shells keep one FIFO link per participant.
- A COMMIT is re-sent until acknowledged; an ABORT is sent once (presumed abort: a participant that
  missed it asks, and "no record" means aborted). A participant dropped from the view no longer holds
  up END: it rejoins by catching up from a member's history, and discards what it held in doubt. So a
  late yes vote is answered ABORT only if it comes from a member: to a dropped replica that does not
  know it yet, ABORT could be a presumption about a commit that ENDed without it.
- Resolve queries: PENDING -> PENDING; committed and not ended -> COMMITTED(revision); anything else
  -> ABORTED (presumed abort; for a replica outside the view this means "discard and catch up").
- Leases (core/leases.py): a put may attach a key only to a live lease; an expired or revoked lease is
  ended by the coordinator's own transaction (DeleteByLease) once no in-flight transaction attaches
  to it, and its LeaseEndRecord is logged with that transaction's commit.
- Every participant must vote yes with the same writes digest: replicas that resolved a transaction
  differently (a bug) make it abort instead of diverging.
- Retries: a client request is identified by (client_id, seq). A committed one is answered from
  memory (rebuilt from the log after a restart); one still in flight gains another waiter. An aborted
  one is not remembered: nothing was applied, so running the retry is correct.

This module must not know about sockets, clocks or disks: time arrives as `now_ms`, durability as
records in the returned Effects.
"""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from corral.core.leases import LeaseInfo, LeaseTable
from corral.core.messages import (
    Abort,
    Ack,
    CaughtUp,
    ClientLease,
    ClientReply,
    ClientTxn,
    Commit,
    Effects,
    EffectsBuilder,
    Envelope,
    ErrorInfo,
    Event,
    Join,
    JoinReady,
    LeaseRequest,
    Message,
    NodeName,
    Outcome,
    OutcomeKind,
    Prepare,
    Received,
    ResolveReply,
    ResolveRequest,
    Tick,
    TxnResult,
    TxnSpec,
    Unreachable,
    Vote,
)
from corral.core.views import Joining, ViewKeeper
from corral.errors import Conflict, CorralError, Internal, LeaseExpired, PeerError, Unavailable
from corral.limits import (
    CLIENT_OUTCOMES_MAX,
    DEFAULT_TIMEOUTS,
    FROZEN_REQUESTS_MAX,
    MIN_REPLICAS,
    Timeouts,
)
from corral.model import DeleteByLease
from corral.records import (
    CommitRecord,
    CoordinatorDisk,
    EndRecord,
    EpochRecord,
    LeaseEndRecord,
    LeaseRecord,
    TxId,
    format_txid,
    make_txid,
)

ClientKey = tuple[str, int]

# Client ids of the coordinator's own transactions (lease ends) start with this; they are not
# remembered for retries.
INTERNAL_CLIENT = "corral:"


@dataclass(slots=True)
class _Pending:
    txid: TxId
    txn: TxnSpec
    keys: frozenset[str]
    client: ClientKey
    waiters: list[int]
    deadline_ms: int
    participants: tuple[NodeName, ...]
    attaches: frozenset[int] = frozenset()  # leases its puts attach keys to
    votes: dict[NodeName, Vote] = field(default_factory=dict)


@dataclass(slots=True)
class _Committed:
    txid: TxId
    revision: int
    unacked: set[NodeName]
    last_sent_ms: dict[NodeName, int]
    next_retry_ms: int = 0  # when the first unacknowledged COMMIT is re-sent (the timer heap's key)


class Coordinator:
    """See the module docstring."""

    def __init__(
        self,
        node: NodeName,
        replicas: Sequence[NodeName],
        disk: CoordinatorDisk,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        min_replicas: int = MIN_REPLICAS,
        client_outcomes_max: int = CLIENT_OUTCOMES_MAX,
        logger: logging.Logger | None = None,
    ) -> None:
        if not replicas:
            raise Internal("a coordinator needs at least one replica")
        self.node = node
        self.replicas: tuple[NodeName, ...] = tuple(replicas)
        self.timeouts = timeouts
        self.log = logger or logging.getLogger(__name__)
        self.epoch = disk.epoch + 1
        self._counter = 0
        self.last_revision = disk.last_revision
        self.views = ViewKeeper(self.replicas, disk.view, disk.members, timeouts=timeouts, min_replicas=min_replicas)
        self._held: deque[ClientTxn] = deque()
        self._pending: dict[TxId, _Pending] = {}
        # Timers as heaps with lazy deletion: an entry counts only while it matches the current state
        # (pending deadline of a pending txid; next_retry_ms of a committed one), so finding the next
        # wake-up does not scan every transaction after every step.
        self._deadline_heap: list[tuple[int, TxId]] = []
        self._retry_heap: list[tuple[int, TxId]] = []
        self._key_owner: dict[str, TxId] = {}
        self._inflight_clients: dict[ClientKey, TxId] = {}
        self._committed: dict[TxId, _Committed] = {}
        self._client_outcomes: OrderedDict[ClientKey, TxnResult] = OrderedDict()
        self._lease_grants = disk.leases
        self.leases = LeaseTable(self.epoch, (), 0)  # rebuilt in start(), with fresh TTLs
        self._attaching: dict[int, set[TxId]] = {}  # lease -> pending transactions attaching keys to it
        self._lease_txns: dict[TxId, int] = {}  # pending DeleteByLease transaction -> lease
        self._lease_retry_ms: dict[int, int] = {}  # lease -> earliest time to try deleting it again
        self._client_outcomes_max = client_outcomes_max
        self._started = False
        self._broken: str | None = None
        for rec in disk.remembered:
            self._remember(rec)
        self._recovered = disk.unended

    # -- public --------------------------------------------------------------------------------

    def start(self, now_ms: int) -> Effects:
        """First step: log the new epoch (and the first view), re-send unended commits in order."""
        if self._started:
            raise Internal("coordinator started twice")
        self._started = True
        out = EffectsBuilder()
        out.persist.append(EpochRecord(self.epoch))
        out.persist.extend(self.views.start(now_ms))
        # Client leases survive a restart with a fresh TTL: a restart must not expire every session.
        self.leases = LeaseTable(self.epoch, self._lease_grants, now_ms)
        for rec in self._recovered:
            c = _Committed(rec.txid, rec.revision, set(self.views.members), {})
            self._committed[rec.txid] = c
            self._send_commit(out, c, self.views.members, now_ms)
        self.log.info(
            "coordinator=%s epoch=%d view=%d members=%s revision=%d recovered_unended=%d",
            self.node,
            self.epoch,
            self.views.view,
            ",".join(self.views.members),
            self.last_revision,
            len(self._recovered),
        )
        self._recovered = ()
        return out.build(self._next_wake())

    def step(self, event: Event, now_ms: int) -> Effects:
        """Feed one event; return what to persist, send and reply, in that order."""
        return self.step_many((event,), now_ms)

    def step_many(self, events: Sequence[Event], now_ms: int) -> Effects:
        """Feed several events that arrived together (a batch of votes, a burst of requests): the same
        as stepping each in order, with the per-step work (timers, joins, lease ends) done once."""
        if self._broken is not None:
            raise Internal(f"coordinator core stopped after an earlier internal error: {self._broken}")
        if not self._started:
            raise Internal("coordinator stepped before start()")
        out = EffectsBuilder()
        try:
            for event in events:
                if isinstance(event, ClientTxn):
                    self._on_client_txn(out, event, now_ms)
                elif isinstance(event, ClientLease):
                    self._on_client_lease(out, event, now_ms)
                elif isinstance(event, Received):
                    self._on_received(out, event.src, event.msg, now_ms)
                elif isinstance(event, Unreachable):
                    self._on_unreachable(out, event.dst, event.msgs, now_ms)
                elif isinstance(event, Tick):
                    self._on_tick(out, now_ms)
                else:
                    raise Internal(f"unknown event {type(event).__name__}")
            self._progress_join(out, now_ms)
            self._progress_lease_ends(out, now_ms)
        except Internal as err:
            # A half-updated machine must not keep deciding (h11's ERROR state).
            self._broken = err.message
            raise
        return out.build(self._next_wake())

    def outcome_of(self, txid: TxId) -> Outcome:
        if txid in self._pending:
            return Outcome(txid, OutcomeKind.PENDING)
        if txid in self._committed:
            return Outcome(txid, OutcomeKind.COMMITTED, self._committed[txid].revision)
        return Outcome(txid, OutcomeKind.ABORTED)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def unended(self) -> int:
        return len(self._committed)

    @property
    def joining(self) -> NodeName | None:
        return self.views.joining.replica if self.views.joining else None

    @property
    def view(self) -> int:
        return self.views.view

    @property
    def members(self) -> tuple[NodeName, ...]:
        return self.views.members

    @property
    def min_replicas(self) -> int:
        return self.views.min_replicas

    def check_invariants(self) -> None:
        for key, txid in self._key_owner.items():
            assert txid in self._pending and key in self._pending[txid].keys, (key, txid)
        for p in self._pending.values():
            for key in p.keys:
                assert self._key_owner.get(key) == p.txid, (key, p.txid)
            assert self._inflight_clients.get(p.client) == p.txid
            assert set(p.votes) <= set(p.participants)
        for c in self._committed.values():
            assert c.revision <= self.last_revision
        self.views.check_invariants()

    # -- events --------------------------------------------------------------------------------

    def _on_client_txn(self, out: EffectsBuilder, ev: ClientTxn, now_ms: int) -> None:
        client: ClientKey = (ev.client_id, ev.seq)
        done = self._client_outcomes.get(client)
        if done is not None:
            out.reply.append(ClientReply(ev.request_id, done))
            return
        running = self._inflight_clients.get(client)
        if running is not None:
            self._pending[running].waiters.append(ev.request_id)
            return
        if self.views.joining is not None:
            if len(self._held) >= FROZEN_REQUESTS_MAX:
                full = Unavailable("a replica is joining and too many requests are waiting; retry shortly")
                out.reply.append(ClientReply(ev.request_id, ErrorInfo.of(full)))
            else:
                self._held.append(ev)
            return
        for lease in sorted(ev.txn.leases_attached()):
            if not self.leases.live(lease):
                gone = LeaseExpired(
                    f"lease {lease} has expired or was revoked (its keys are deleted); grant a new one", lease=lease
                )
                out.reply.append(ClientReply(ev.request_id, ErrorInfo.of(gone)))
                return
        keys = ev.txn.keys()
        for key in sorted(keys):
            owner = self._key_owner.get(key)
            if owner is not None:
                err = Conflict(
                    f"key {key!r} is being written by transaction {format_txid(owner)}, which arrived first; "
                    "retry after it ends",
                    key=key,
                )
                out.reply.append(ClientReply(ev.request_id, ErrorInfo.of(err)))
                return
        self._start_txn(out, ev.txn, client=client, waiters=[ev.request_id], deadline_ms=ev.deadline_ms, now_ms=now_ms)

    def _start_txn(
        self, out: EffectsBuilder, txn: TxnSpec, *, client: ClientKey, waiters: list[int], deadline_ms: int, now_ms: int
    ) -> TxId:
        self._counter += 1
        txid = make_txid(self.epoch, self._counter)
        deadline = min(deadline_ms, now_ms + self.timeouts.prepare_timeout_ms)
        participants = self.views.members
        keys = txn.keys()
        attaches = txn.leases_attached()
        self._pending[txid] = _Pending(txid, txn, keys, client, waiters, deadline, participants, attaches)
        heapq.heappush(self._deadline_heap, (deadline, txid))
        for key in keys:
            self._key_owner[key] = txid
        for lease in attaches:
            self._attaching.setdefault(lease, set()).add(txid)
        self._inflight_clients[client] = txid
        prepare = Prepare(txid, txn, participants)
        for p in participants:
            out.send.append(Envelope(p, prepare))
        return txid

    # -- leases ---------------------------------------------------------------------------------

    def _on_client_lease(self, out: EffectsBuilder, ev: ClientLease, now_ms: int) -> None:
        answer = self.leases.request(ev.op, ev.lease_id, ev.ttl_ms, ev.request_id, now_ms)
        if ev.op == "grant" and isinstance(answer, LeaseInfo):
            out.persist.append(LeaseRecord(answer.id, answer.ttl_ms))  # forced before the client hears of it
        if answer is not None:
            result = ErrorInfo.of(answer) if isinstance(answer, CorralError) else answer
            out.reply.append(ClientReply(ev.request_id, result))

    def _progress_lease_ends(self, out: EffectsBuilder, now_ms: int) -> None:
        """Start deleting the keys of every ending lease that nothing in flight attaches to."""
        for lease_id in [i for i, due in self._lease_retry_ms.items() if due <= now_ms]:
            # Its retry is due: whatever still holds it back (a join) ends in a step, which comes back
            # here. Left in, it would be a wake time in the past and the shell's ticker would spin (seed 19).
            del self._lease_retry_ms[lease_id]
        if self.views.joining is not None:
            return  # held like any transaction until the joiner is in
        busy = set(self._lease_txns.values())
        for lease in self.leases.ending():
            if lease.id in busy or self._attaching.get(lease.id) or lease.id in self._lease_retry_ms:
                continue
            txn = TxnSpec(on_success=(DeleteByLease(lease.id),))
            client = (f"{INTERNAL_CLIENT}lease-{lease.id}", self._counter + 1)
            deadline = now_ms + self.timeouts.prepare_timeout_ms
            txid = self._start_txn(out, txn, client=client, waiters=[], deadline_ms=deadline, now_ms=now_ms)
            self._lease_txns[txid] = lease.id

    def _lease_txn_done(self, out: EffectsBuilder, txid: TxId, committed: bool, now_ms: int) -> None:
        lease_id = self._lease_txns.pop(txid, None)
        if lease_id is None:
            return
        if not committed:
            self._lease_retry_ms[lease_id] = now_ms + self.timeouts.commit_retry_ms
            return
        lease = self.leases.end(lease_id)
        self._lease_retry_ms.pop(lease_id, None)
        out.persist.append(LeaseEndRecord(lease_id))
        if lease is not None:
            self.log.info("coordinator=%s lease=%d ended; its keys are deleted", self.node, lease_id)
            out.reply.extend(ClientReply(r, LeaseInfo(lease.id, lease.ttl_ms, 0)) for r in lease.waiters)

    def _on_received(self, out: EffectsBuilder, src: NodeName, msg: Message, now_ms: int) -> None:
        if isinstance(msg, Vote):
            self._on_vote(out, src, msg, now_ms)
        elif isinstance(msg, Ack):
            self._on_ack(out, src, msg)
        elif isinstance(msg, ResolveRequest):
            out.send.append(Envelope(src, ResolveReply(tuple(self.outcome_of(t) for t in msg.txids))))
        elif isinstance(msg, LeaseRequest):
            answer = self.views.on_lease_request(src, msg, now_ms)
            if answer is not None:
                out.send.append(Envelope(src, answer))
        elif isinstance(msg, Join):
            self._on_join(out, src, now_ms)
        elif isinstance(msg, CaughtUp):
            self._on_caught_up(out, src, msg, now_ms)
        else:
            self.log.warning("coordinator=%s ignored unexpected %s from %s", self.node, type(msg).__name__, src)

    def _on_vote(self, out: EffectsBuilder, src: NodeName, vote: Vote, now_ms: int) -> None:
        p = self._pending.get(vote.txid)
        if p is None:
            if vote.yes and vote.txid not in self._committed and src in self.views.members:
                # A yes for a transaction already aborted: the voter holds locks for nothing. (Or ENDed:
                # a member applied it and ignores this.) Not to a non-member: the commit may have ENDed
                # without it, so ABORT would be a presumption; it learns it is outside and discards.
                out.send.append(Envelope(src, Abort(vote.txid)))
            return
        if src not in p.participants:
            self.log.warning("coordinator=%s vote from non-participant %s ignored", self.node, src)
            return
        p.votes[src] = vote
        if not vote.yes:
            reason = vote.reason or ErrorInfo.of(PeerError(f"{src} voted no without a reason"))
            self._abort(out, p, reason, now_ms)
            return
        if len(p.votes) < len(p.participants):
            return
        outcomes = {v.succeeded for v in p.votes.values()}
        if len(outcomes) != 1 or len({v.digest for v in p.votes.values()}) != 1:
            detail = ", ".join(f"{n}={v.succeeded}/{v.digest}" for n, v in sorted(p.votes.items()))
            err = Internal(f"replicas disagree on the outcome of {format_txid(p.txid)}: {detail}")
            self.log.error("coordinator=%s txid=%s %s", self.node, format_txid(p.txid), err.message)
            self._abort(out, p, ErrorInfo.of(err), now_ms)
            return
        self._commit(out, p, outcomes.pop(), now_ms)

    def _on_ack(self, out: EffectsBuilder, src: NodeName, ack: Ack) -> None:
        """Acks are cumulative: `src` applied every revision up to `ack.revision`. `_committed` is in
        revision order (revisions are assigned in decision order), so only its head is visited."""
        settled = []
        for c in self._committed.values():
            if c.revision > ack.revision:
                break
            if src in c.unacked:
                settled.append(c)
        for c in settled:
            c.unacked.discard(src)
            if not c.unacked:
                self._end(out, c)
            else:
                self._schedule_retry(c)

    def _on_unreachable(self, out: EffectsBuilder, dst: NodeName, msgs: Sequence[Message], now_ms: int) -> None:
        for msg in msgs:
            if isinstance(msg, Prepare) and msg.txid in self._pending:
                err = Unavailable(
                    f"replica {dst} is unreachable and was asked to vote on this write, so it was not applied; "
                    "retry (a replica that stays silent leaves the view once its read lease expires)",
                    replica=dst,
                )
                self._abort(out, self._pending[msg.txid], ErrorInfo.of(err), now_ms)
            elif isinstance(msg, Commit) and msg.txid in self._committed:
                # Re-sent by the timer; back off from now so a dead replica is not hammered.
                c = self._committed[msg.txid]
                c.last_sent_ms[dst] = now_ms
                self._schedule_retry(c)

    def _on_tick(self, out: EffectsBuilder, now_ms: int) -> None:
        for p in [p for p in self._pending.values() if p.deadline_ms <= now_ms]:
            missing = sorted(set(p.participants) - set(p.votes))
            err = Unavailable(
                f"no vote from {', '.join(missing)} in time; the write was not applied; retry",
                replicas=missing,
            )
            self._abort(out, p, ErrorInfo.of(err), now_ms)
        for held in [h for h in self._held if h.deadline_ms <= now_ms]:
            self._held.remove(held)
            err = Unavailable("a replica was joining the view and the request's deadline passed; retry")
            out.reply.append(ClientReply(held.request_id, ErrorInfo.of(err)))
        self._expire_leases(out, now_ms)
        for lease in self.leases.expire(now_ms):
            self.log.info("coordinator=%s lease=%d expired", self.node, lease.id)
        # Only commits whose retry timer is due: a scan of every committed transaction at every tick
        # cost the coordinator ~5% of its CPU at 64 clients. Heap entries are never late (a COMMIT's
        # next retry only moves later), stale ones are skipped.
        retry = self.timeouts.commit_retry_ms
        heap, due_now = self._retry_heap, []
        while heap and heap[0][0] <= now_ms:
            due_ms, txid = heapq.heappop(heap)
            c = self._committed.get(txid)
            if c is not None and c.next_retry_ms == due_ms:
                due_now.append(c)
        for c in sorted(due_now, key=lambda c: c.revision):
            due = [n for n in sorted(c.unacked) if c.last_sent_ms.get(n, 0) + retry <= now_ms]
            c.next_retry_ms = 0  # its entry was popped: _send_commit pushes the next one
            self._send_commit(out, c, due, now_ms)

    # -- the view (core/views.py) ------------------------------------------------------------

    def _expire_leases(self, out: EffectsBuilder, now_ms: int) -> None:
        for member, silent_ms, record in self.views.drop_expired(now_ms):
            out.persist.append(record)
            self.log.warning(
                "coordinator=%s dropped %s from the view (no lease renewal since %d ms ago); view=%d members=%s",
                self.node,
                member,
                silent_ms,
                record.view,
                ",".join(record.members),
            )
            # It no longer holds up END: it rejoins by catching up, and discards what it held in doubt.
            for c in list(self._committed.values()):
                if member in c.unacked:
                    c.unacked.discard(member)
                    if not c.unacked:
                        self._end(out, c)
                    else:
                        self._schedule_retry(c)

    def _on_join(self, out: EffectsBuilder, src: NodeName, now_ms: int) -> None:
        if src not in self.replicas:
            return
        if src in self.views.members:
            out.send.append(Envelope(src, self.views.membership_notice(src, now_ms)))
            return
        if self.views.joining is None:
            self.views.joining = Joining(src, now_ms + self.timeouts.join_timeout_ms)
            self.log.info("coordinator=%s %s asks to join; holding new transactions", self.node, src)
        # Another replica joining: this one asks again later.

    def _progress_join(self, out: EffectsBuilder, now_ms: int) -> None:
        j = self.views.joining
        if j is None:
            return
        if now_ms >= j.deadline_ms:
            self.log.warning("coordinator=%s join of %s timed out; releasing held transactions", self.node, j.replica)
            self._end_join(out, now_ms)
            return
        if not j.ready_sent and not self._pending and not self._committed:
            j.ready_sent = True
            out.send.append(Envelope(j.replica, JoinReady(self.last_revision, make_txid(self.epoch, self._counter))))

    def _on_caught_up(self, out: EffectsBuilder, src: NodeName, msg: CaughtUp, now_ms: int) -> None:
        j = self.views.joining
        if j is None or j.replica != src or not j.ready_sent:
            return
        if msg.applied_revision < self.last_revision:
            # An answer to the JoinReady of an earlier join (that timed out): the answer to this one follows.
            return
        if msg.applied_revision != self.last_revision:
            # A peer's mistake must not stop the coordinator: refuse the join; the replica tries again.
            self.log.error(
                "coordinator=%s %s reports revision %d, but writes are held at %d; join refused",
                self.node,
                src,
                msg.applied_revision,
                self.last_revision,
            )
            self._end_join(out, now_ms)
            return
        record = self.views.admit(src, now_ms)
        out.persist.append(record)
        self.log.info(
            "coordinator=%s %s joined; view=%d members=%s", self.node, src, record.view, ",".join(record.members)
        )
        out.send.append(Envelope(src, self.views.membership_notice(src, now_ms)))
        self._end_join(out, now_ms)

    def _end_join(self, out: EffectsBuilder, now_ms: int) -> None:
        self.views.joining = None
        held, self._held = self._held, deque()
        for ev in held:
            self._on_client_txn(out, ev, now_ms)

    # -- decisions -----------------------------------------------------------------------------

    def _release(self, p: _Pending) -> None:
        del self._pending[p.txid]
        for key in p.keys:
            if self._key_owner.get(key) == p.txid:
                del self._key_owner[key]
        self._inflight_clients.pop(p.client, None)
        for lease in p.attaches:
            holders = self._attaching.get(lease)
            if holders is not None:
                holders.discard(p.txid)
                if not holders:
                    del self._attaching[lease]

    def _commit(self, out: EffectsBuilder, p: _Pending, succeeded: bool, now_ms: int) -> None:
        self._release(p)
        self.last_revision += 1
        internal = p.client[0].startswith(INTERNAL_CLIENT)
        rec = CommitRecord(p.txid, self.last_revision, "" if internal else p.client[0], p.client[1], succeeded)
        out.persist.append(rec)
        self._lease_txn_done(out, p.txid, True, now_ms)
        result = self._remember(rec)
        out.reply.extend(ClientReply(r, result) for r in p.waiters)
        # Participants that left the view since the transaction started do not hold up its END.
        c = _Committed(p.txid, rec.revision, set(p.participants) & set(self.views.members), {})
        self._committed[p.txid] = c
        self._send_commit(out, c, p.participants, now_ms)
        if not c.unacked:
            self._end(out, c)
        self.log.debug("coordinator=%s txid=%s commit revision=%d", self.node, format_txid(p.txid), rec.revision)

    def _abort(self, out: EffectsBuilder, p: _Pending, reason: ErrorInfo, now_ms: int) -> None:
        self._release(p)
        self._lease_txn_done(out, p.txid, False, now_ms)
        out.reply.extend(ClientReply(r, reason) for r in p.waiters)
        for n in p.participants:
            out.send.append(Envelope(n, Abort(p.txid)))
        self.log.debug("coordinator=%s txid=%s abort: %s", self.node, format_txid(p.txid), reason.message)

    def _end(self, out: EffectsBuilder, c: _Committed) -> None:
        del self._committed[c.txid]
        out.persist_lazy.append(EndRecord(c.txid))

    def _send_commit(self, out: EffectsBuilder, c: _Committed, to: Iterable[NodeName], now_ms: int) -> None:
        commit = Commit(c.txid, c.revision)  # one object for every link: shells encode it once
        for n in to:
            c.last_sent_ms[n] = now_ms
            out.send.append(Envelope(n, commit))
        self._schedule_retry(c)

    def _schedule_retry(self, c: _Committed) -> None:
        if c.unacked:
            due_ms = min(c.last_sent_ms.get(n, 0) for n in c.unacked) + self.timeouts.commit_retry_ms
            if due_ms != c.next_retry_ms:  # unchanged (a partial ack): its heap entry stands
                c.next_retry_ms = due_ms
                heapq.heappush(self._retry_heap, (due_ms, c.txid))

    def _remember(self, rec: CommitRecord) -> TxnResult:
        result = TxnResult(rec.revision, rec.succeeded)
        if rec.client_id:
            key = (rec.client_id, rec.seq)
            self._client_outcomes[key] = result
            self._client_outcomes.move_to_end(key)
            while len(self._client_outcomes) > self._client_outcomes_max:
                self._client_outcomes.popitem(last=False)
        return result

    def _next_wake(self) -> int | None:
        deadlines = self._deadline_heap
        while deadlines and deadlines[0][1] not in self._pending:
            heapq.heappop(deadlines)
        retries = self._retry_heap
        while retries:
            due, txid = retries[0]
            c = self._committed.get(txid)
            if c is not None and c.next_retry_ms == due:
                break
            heapq.heappop(retries)
        times = [deadlines[0][0]] if deadlines else []
        if retries:
            times.append(retries[0][0])
        times.extend(h.deadline_ms for h in self._held)
        times.extend(self.views.next_wake())
        expiry = self.leases.next_expiry_ms()
        if expiry is not None:
            times.append(expiry)
        times.extend(self._lease_retry_ms.values())
        return min(times) if times else None
