"""The 2PC coordinator core: presumed abort, single sequencer of revisions (DESIGN.md "Replication").

A transaction at the coordinator:

    request ──keys in use──▶ rejected (Conflict); nothing sent, nothing logged
       │
       ▼
    PENDING (PREPARE sent to every participant, collecting votes)
       ├─ all yes ──▶ COMMITTED: CommitRecord(txid, revision) forced, client answered, COMMIT sent
       └─ a no, an unreachable participant, or the deadline ──▶ ABORTED: nothing logged, ABORT sent
    COMMITTED ──every participant acked──▶ ENDED: EndRecord written lazily, forgotten

Rules:
- First wins (seed 003): a transaction touching a key of a PENDING transaction is rejected at once.
- Revisions are assigned at commit time, consecutively; COMMITs reach each participant in revision
  order because the core emits them in that order and shells keep one FIFO link per participant.
- A COMMIT is re-sent until acknowledged; an ABORT is sent once (presumed abort: a participant that
  missed it asks, and "no record" means aborted).
- Resolve queries: PENDING -> PENDING; committed and not ended -> COMMITTED(revision); anything else
  -> ABORTED, because a commit is always logged before anyone hears of it and ENDED means every
  participant already applied it (a late query from one of them is ignored on arrival).
- Retries: a client request is identified by (client_id, seq). A committed one is answered from
  memory (rebuilt from the log after a restart); one still in flight gains another waiter. An aborted
  one is not remembered: nothing was applied, so running the retry is correct.

This module must not know about sockets, clocks or disks: time arrives as `now_ms`, durability as
records in the returned Effects.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from corral.core.messages import (
    Abort,
    Ack,
    ClientReply,
    ClientTxn,
    Commit,
    Effects,
    EffectsBuilder,
    Envelope,
    ErrorInfo,
    Event,
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
from corral.errors import Conflict, Internal, PeerError, Unavailable
from corral.limits import CLIENT_OUTCOMES_MAX, DEFAULT_TIMEOUTS, Timeouts
from corral.records import CommitRecord, CoordinatorDisk, EndRecord, EpochRecord, TxId, format_txid, make_txid

ClientKey = tuple[str, int]


@dataclass(slots=True)
class _Pending:
    txid: TxId
    txn: TxnSpec
    keys: frozenset[str]
    client: ClientKey
    waiters: list[int]
    deadline_ms: int
    votes: dict[NodeName, Vote] = field(default_factory=dict)


@dataclass(slots=True)
class _Committed:
    txid: TxId
    revision: int
    unacked: set[NodeName]
    last_sent_ms: dict[NodeName, int]


class Coordinator:
    """See the module docstring."""

    def __init__(
        self,
        node: NodeName,
        participants: Sequence[NodeName],
        disk: CoordinatorDisk,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        client_outcomes_max: int = CLIENT_OUTCOMES_MAX,
        logger: logging.Logger | None = None,
    ) -> None:
        if not participants:
            raise Internal("a coordinator needs at least one participant")
        self.node = node
        self.participants: tuple[NodeName, ...] = tuple(participants)
        self.timeouts = timeouts
        self.log = logger or logging.getLogger(__name__)
        self.epoch = disk.epoch + 1
        self._counter = 0
        self.last_revision = disk.last_revision
        self._pending: dict[TxId, _Pending] = {}
        self._key_owner: dict[str, TxId] = {}
        self._inflight_clients: dict[ClientKey, TxId] = {}
        self._committed: dict[TxId, _Committed] = {}
        self._client_outcomes: OrderedDict[ClientKey, TxnResult] = OrderedDict()
        self._client_outcomes_max = client_outcomes_max
        self._started = False
        self._broken: str | None = None
        for rec in disk.remembered:
            self._remember(rec)
        self._recovered = disk.unended

    # -- public --------------------------------------------------------------------------------

    def start(self, now_ms: int) -> Effects:
        """First step after construction: log the new epoch, re-send unended commits (in order)."""
        if self._started:
            raise Internal("coordinator started twice")
        self._started = True
        out = EffectsBuilder()
        out.persist.append(EpochRecord(self.epoch))
        for rec in self._recovered:
            c = _Committed(rec.txid, rec.revision, set(self.participants), {})
            self._committed[rec.txid] = c
            self._send_commit(out, c, self.participants, now_ms)
        self.log.info(
            "coordinator=%s epoch=%d revision=%d recovered_unended=%d",
            self.node,
            self.epoch,
            self.last_revision,
            len(self._recovered),
        )
        self._recovered = ()
        return out.build(self._next_wake())

    def step(self, event: Event, now_ms: int) -> Effects:
        """Feed one event; return what to persist, send and reply, in that order."""
        if self._broken is not None:
            raise Internal(f"coordinator core stopped after an earlier internal error: {self._broken}")
        if not self._started:
            raise Internal("coordinator stepped before start()")
        out = EffectsBuilder()
        try:
            if isinstance(event, ClientTxn):
                self._on_client_txn(out, event, now_ms)
            elif isinstance(event, Received):
                self._on_received(out, event.src, event.msg, now_ms)
            elif isinstance(event, Unreachable):
                self._on_unreachable(out, event.dst, event.msgs, now_ms)
            elif isinstance(event, Tick):
                self._on_tick(out, now_ms)
            else:
                raise Internal(f"unknown event {type(event).__name__}")
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

    def check_invariants(self) -> None:
        for key, txid in self._key_owner.items():
            assert txid in self._pending and key in self._pending[txid].keys, (key, txid)
        for p in self._pending.values():
            for key in p.keys:
                assert self._key_owner.get(key) == p.txid, (key, p.txid)
            assert self._inflight_clients.get(p.client) == p.txid
        for c in self._committed.values():
            assert c.revision <= self.last_revision
            assert c.unacked <= set(self.participants)

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
        self._counter += 1
        txid = make_txid(self.epoch, self._counter)
        deadline = min(ev.deadline_ms, now_ms + self.timeouts.prepare_timeout_ms)
        self._pending[txid] = _Pending(txid, ev.txn, keys, client, [ev.request_id], deadline)
        for key in keys:
            self._key_owner[key] = txid
        self._inflight_clients[client] = txid
        for p in self.participants:
            out.send.append(Envelope(p, Prepare(txid, ev.txn)))

    def _on_received(self, out: EffectsBuilder, src: NodeName, msg: Message, now_ms: int) -> None:
        if isinstance(msg, Vote):
            self._on_vote(out, src, msg, now_ms)
        elif isinstance(msg, Ack):
            self._on_ack(out, src, msg)
        elif isinstance(msg, ResolveRequest):
            out.send.append(Envelope(src, ResolveReply(tuple(self.outcome_of(t) for t in msg.txids))))
        else:
            self.log.warning("coordinator=%s ignored unexpected %s from %s", self.node, type(msg).__name__, src)

    def _on_vote(self, out: EffectsBuilder, src: NodeName, vote: Vote, now_ms: int) -> None:
        p = self._pending.get(vote.txid)
        if p is None:
            if vote.yes and vote.txid not in self._committed:
                # A yes for a transaction already aborted: the voter holds locks for nothing.
                out.send.append(Envelope(src, Abort(vote.txid)))
            return
        if src not in self.participants:
            self.log.warning("coordinator=%s vote from non-participant %s ignored", self.node, src)
            return
        p.votes[src] = vote
        if not vote.yes:
            reason = vote.reason or ErrorInfo.of(PeerError(f"{src} voted no without a reason"))
            self._abort(out, p, reason)
            return
        if len(p.votes) < len(self.participants):
            return
        outcomes = {v.succeeded for v in p.votes.values()}
        if len(outcomes) != 1:
            detail = ", ".join(f"{n}={v.succeeded}" for n, v in sorted(p.votes.items()))
            err = Internal(f"replicas disagree on the compares of {format_txid(p.txid)}: {detail}")
            self.log.error("coordinator=%s txid=%s %s", self.node, format_txid(p.txid), err.message)
            self._abort(out, p, ErrorInfo.of(err))
            return
        self._commit(out, p, outcomes.pop(), now_ms)

    def _on_ack(self, out: EffectsBuilder, src: NodeName, ack: Ack) -> None:
        c = self._committed.get(ack.txid)
        if c is None:
            return
        c.unacked.discard(src)
        if not c.unacked:
            del self._committed[ack.txid]
            out.persist_lazy.append(EndRecord(ack.txid))

    def _on_unreachable(self, out: EffectsBuilder, dst: NodeName, msgs: Sequence[Message], now_ms: int) -> None:
        for msg in msgs:
            if isinstance(msg, Prepare) and msg.txid in self._pending:
                err = Unavailable(
                    f"replica {dst} is unreachable; every replica must vote on a write, so it was not applied",
                    replica=dst,
                )
                self._abort(out, self._pending[msg.txid], ErrorInfo.of(err))
            elif isinstance(msg, Commit) and msg.txid in self._committed:
                # Re-sent by the timer; back off from now so a dead replica is not hammered.
                self._committed[msg.txid].last_sent_ms[dst] = now_ms

    def _on_tick(self, out: EffectsBuilder, now_ms: int) -> None:
        for p in [p for p in self._pending.values() if p.deadline_ms <= now_ms]:
            missing = sorted(set(self.participants) - set(p.votes))
            err = Unavailable(
                f"no vote from {', '.join(missing)} in time; the write was not applied",
                replicas=missing,
            )
            self._abort(out, p, ErrorInfo.of(err))
        retry = self.timeouts.commit_retry_ms
        for c in sorted(self._committed.values(), key=lambda c: c.revision):
            due = [n for n in sorted(c.unacked) if c.last_sent_ms.get(n, 0) + retry <= now_ms]
            self._send_commit(out, c, due, now_ms)

    # -- decisions -----------------------------------------------------------------------------

    def _release(self, p: _Pending) -> None:
        del self._pending[p.txid]
        for key in p.keys:
            if self._key_owner.get(key) == p.txid:
                del self._key_owner[key]
        self._inflight_clients.pop(p.client, None)

    def _commit(self, out: EffectsBuilder, p: _Pending, succeeded: bool, now_ms: int) -> None:
        self._release(p)
        self.last_revision += 1
        rec = CommitRecord(p.txid, self.last_revision, p.client[0], p.client[1], succeeded)
        out.persist.append(rec)
        result = self._remember(rec)
        out.reply.extend(ClientReply(r, result) for r in p.waiters)
        c = _Committed(p.txid, rec.revision, set(self.participants), {})
        self._committed[p.txid] = c
        self._send_commit(out, c, self.participants, now_ms)
        self.log.debug("coordinator=%s txid=%s commit revision=%d", self.node, format_txid(p.txid), rec.revision)

    def _abort(self, out: EffectsBuilder, p: _Pending, reason: ErrorInfo) -> None:
        self._release(p)
        out.reply.extend(ClientReply(r, reason) for r in p.waiters)
        for n in self.participants:
            out.send.append(Envelope(n, Abort(p.txid)))
        self.log.debug("coordinator=%s txid=%s abort: %s", self.node, format_txid(p.txid), reason.message)

    def _send_commit(self, out: EffectsBuilder, c: _Committed, to: Iterable[NodeName], now_ms: int) -> None:
        for n in to:
            c.last_sent_ms[n] = now_ms
            out.send.append(Envelope(n, Commit(c.txid, c.revision)))

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
        times = [p.deadline_ms for p in self._pending.values()]
        retry = self.timeouts.commit_retry_ms
        times.extend(min(c.last_sent_ms.get(n, 0) for n in c.unacked) + retry for c in self._committed.values())
        return min(times) if times else None
