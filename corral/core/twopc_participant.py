"""The 2PC participant core: a replica's side of presumed-abort 2PC (DESIGN.md "Replication").

A transaction at a participant:

    (unknown) ──PREPARE, keys free──▶ PREPARED: PreparedRecord forced, keys locked, vote yes
        │  └──keys locked / refused before──▶ vote no (nothing logged)
        │
    PREPARED ──COMMIT(revision)──▶ DECIDED ──all lower revisions applied──▶ APPLIED:
        │                          CommittedRecord (apply + forget, atomically), locks released, ack
        └──ABORT──▶ ABORTED: AbortedRecord, locks released

    (unknown) ──a peer asks about it──▶ REFUSED: AbortedRecord forced, answered ABORTED; a later
                                        PREPARE of it gets a no

Rules:
- Never decide alone: a PREPARED transaction stays locked until the coordinator's decision arrives,
  or a peer reports one (cooperative termination), however long that takes.
- Commits apply in revision order: a COMMIT for revision r waits until r-1 is applied.
- Locks cover every key a prepared transaction reads or writes; a read of a locked key waits (the
  shell's job), which is what makes reads of committed writes linearizable.
- Compares are evaluated at prepare time on the state the shell read for them. That state is final:
  any key with an undecided or unapplied write is locked, and locked keys make the vote a no.
- A prepared transaction with no decision after `resolve_after_ms` is asked about, to the coordinator,
  then again every `resolve_interval_ms`; the peers are asked too once the coordinator has left a
  question unanswered (cooperative termination is for a coordinator that is down, not slow).
- A peer that never saw a transaction newer than everything it forgot refuses it durably and answers
  ABORTED; for older ones it answers UNKNOWN (it might have applied and forgotten it).

This module must not know about sockets, clocks or disks.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from corral.core.messages import (
    Abort,
    Ack,
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
    Unreachable,
    Vote,
)
from corral.errors import Conflict, Internal, InvalidArgument
from corral.limits import DEFAULT_LIMITS, DEFAULT_TIMEOUTS, OUTCOMES_REMEMBERED_MAX, Limits, Timeouts
from corral.model import KeyValue, Write
from corral.records import AbortedRecord, CommittedRecord, ParticipantDisk, PreparedRecord, TxId, format_txid


@dataclass(slots=True)
class _Prepared:
    txid: TxId
    writes: tuple[Write, ...]
    succeeded: bool
    keys: frozenset[str]
    prepared_at_ms: int
    asked_at_ms: int | None = None
    coordinator_answered_ms: int | None = None
    decided_revision: int | None = None


class Participant:
    """See the module docstring."""

    def __init__(
        self,
        node: NodeName,
        coordinator: NodeName,
        peers: Sequence[NodeName],
        disk: ParticipantDisk,
        *,
        now_ms: int = 0,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        limits: Limits = DEFAULT_LIMITS,
        outcomes_max: int = OUTCOMES_REMEMBERED_MAX,
        logger: logging.Logger | None = None,
    ) -> None:
        self.node = node
        self.coordinator = coordinator
        self.peers = tuple(p for p in peers if p != node)
        self.timeouts = timeouts
        self.limits = limits
        self.log = logger or logging.getLogger(__name__)
        self.applied_revision = disk.applied_revision
        self._prepared: dict[TxId, _Prepared] = {}
        self._locks: dict[str, TxId] = {}
        self._decided: dict[int, TxId] = {}  # revision -> txid, committed but waiting for order
        self._outcomes: OrderedDict[TxId, int | None] = OrderedDict(disk.outcomes)
        self._outcomes_max = outcomes_max
        self._forgotten_max = disk.forgotten_max_txid
        self._broken: str | None = None
        for rec in disk.prepared:
            # Recovered in doubt: ask at the first tick (asked_at_ms None), never decide alone.
            self._lock(_Prepared(rec.txid, rec.writes, rec.succeeded, rec.keys, now_ms))

    # -- public --------------------------------------------------------------------------------

    def step(self, event: Event, now_ms: int) -> Effects:
        if self._broken is not None:
            raise Internal(f"participant core stopped after an earlier internal error: {self._broken}")
        out = EffectsBuilder()
        try:
            if isinstance(event, Received):
                self._on_received(out, event.src, event.msg, event.reads, now_ms)
            elif isinstance(event, Tick):
                self._on_tick(out, now_ms)
            elif isinstance(event, Unreachable):
                pass  # votes and acks are re-derived from retransmissions; queries from the timer
            else:
                raise Internal(f"participant got unexpected event {type(event).__name__}")
        except Internal as err:
            self._broken = err.message
            raise
        return out.build(self._next_wake())

    def is_locked(self, key: str) -> bool:
        return key in self._locks

    def locked_keys(self) -> frozenset[str]:
        return frozenset(self._locks)

    def any_locked_with_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self._locks)

    @property
    def prepared_count(self) -> int:
        return len(self._prepared)

    def in_doubt(self) -> list[TxId]:
        return sorted(t for t, p in self._prepared.items() if p.decided_revision is None)

    def check_invariants(self) -> None:
        for key, txid in self._locks.items():
            assert txid in self._prepared and key in self._prepared[txid].keys, (key, txid)
        for p in self._prepared.values():
            for key in p.keys:
                assert self._locks.get(key) == p.txid, (key, p.txid)
        for rev, txid in self._decided.items():
            assert rev > self.applied_revision, (rev, self.applied_revision)
            assert self._prepared[txid].decided_revision == rev

    # -- events --------------------------------------------------------------------------------

    def _on_received(
        self,
        out: EffectsBuilder,
        src: NodeName,
        msg: Message,
        reads: Mapping[str, KeyValue | None] | None,
        now_ms: int,
    ) -> None:
        if isinstance(msg, Prepare):
            self._on_prepare(out, src, msg, reads or {}, now_ms)
        elif isinstance(msg, Commit):
            self._on_decision(out, msg.txid, msg.revision)
        elif isinstance(msg, Abort):
            self._on_decision(out, msg.txid, None)
        elif isinstance(msg, ResolveRequest):
            out.send.append(Envelope(src, ResolveReply(tuple(self._answer(out, t) for t in msg.txids))))
        elif isinstance(msg, ResolveReply):
            for o in msg.outcomes:
                p = self._prepared.get(o.txid)
                if p is None or p.decided_revision is not None:
                    continue
                if src == self.coordinator:
                    p.coordinator_answered_ms = now_ms
                if o.kind is OutcomeKind.COMMITTED:
                    self.log.info("replica=%s txid=%s learned commit from %s", self.node, format_txid(o.txid), src)
                    self._on_decision(out, o.txid, o.revision)
                elif o.kind is OutcomeKind.ABORTED:
                    self.log.info("replica=%s txid=%s learned abort from %s", self.node, format_txid(o.txid), src)
                    self._on_decision(out, o.txid, None)
        else:
            self.log.warning("replica=%s ignored unexpected %s from %s", self.node, type(msg).__name__, src)

    def _on_prepare(
        self, out: EffectsBuilder, src: NodeName, msg: Prepare, reads: Mapping[str, KeyValue | None], now_ms: int
    ) -> None:
        txid = msg.txid
        existing = self._prepared.get(txid)
        if existing is not None:  # a duplicate: the same vote again
            out.send.append(Envelope(src, Vote(txid, True, existing.succeeded)))
            return
        if txid in self._outcomes or txid <= self._forgotten_max:
            done = self._outcomes.get(txid)
            out.send.append(Envelope(src, Vote(txid, done is not None, False)))
            return
        keys = msg.txn.keys()
        busy = sorted(k for k in keys if k in self._locks)
        if busy:
            err = Conflict(
                f"key {busy[0]!r} is locked on {self.node} by transaction {format_txid(self._locks[busy[0]])}; retry",
                key=busy[0],
            )
            out.send.append(Envelope(src, Vote(txid, False, reason=ErrorInfo.of(err))))
            return
        try:
            msg.txn.validate(self.limits)
        except InvalidArgument as err:
            out.send.append(Envelope(src, Vote(txid, False, reason=ErrorInfo.of(err))))
            return
        missing = [k for k in msg.txn.compare_keys() if k not in reads]
        if missing:
            raise Internal(f"prepare of {format_txid(txid)} stepped without reads of {missing}")
        succeeded, writes = msg.txn.evaluate(reads)
        out.persist.append(PreparedRecord(txid, writes, succeeded, keys))
        self._lock(_Prepared(txid, writes, succeeded, keys, now_ms))
        out.send.append(Envelope(src, Vote(txid, True, succeeded)))

    def _on_decision(self, out: EffectsBuilder, txid: TxId, revision: int | None) -> None:
        p = self._prepared.get(txid)
        if revision is None:
            if p is None:
                # Remember it so a late PREPARE is refused, unless this replica committed it (or may have,
                # and forgot): then the ABORT is stale, the coordinator's answer to a late duplicate vote
                # after it ENDed and forgot the commit, and must not overwrite what happened here.
                if txid not in self._outcomes and txid > self._forgotten_max:
                    self._remember(txid, None)
                return
            if p.decided_revision is not None:
                raise Internal(f"abort of {format_txid(txid)}, already committed at {p.decided_revision}")
            out.persist.append(AbortedRecord(txid))
            self._unlock(p)
            self._remember(txid, None)
            return
        if revision <= self.applied_revision:
            if p is not None:
                raise Internal(
                    f"commit of {format_txid(txid)} at revision {revision}, but {self.node} already applied "
                    f"{self.applied_revision} without it"
                )
            if self._outcomes.get(txid, revision) is None:
                raise Internal(f"commit of {format_txid(txid)}, which {self.node} aborted")
            out.send.append(Envelope(self.coordinator, Ack(txid, self.applied_revision)))
            return
        if p is None:
            if txid in self._outcomes and self._outcomes[txid] is None:
                raise Internal(f"commit of {format_txid(txid)}, which {self.node} aborted or refused")
            # Not prepared here: only possible if this replica lost its log. It must not guess.
            self.log.error(
                "replica=%s txid=%s commit at revision %d for a transaction never prepared here",
                self.node,
                format_txid(txid),
                revision,
            )
            return
        if p.decided_revision is not None and p.decided_revision != revision:
            raise Internal(f"{format_txid(txid)} committed at {p.decided_revision} and at {revision}")
        other = self._decided.get(revision)
        if other is not None and other != txid:
            raise Internal(f"revision {revision} given to {format_txid(other)} and {format_txid(txid)}")
        p.decided_revision = revision
        self._decided[revision] = txid
        self._apply_in_order(out)

    def _apply_in_order(self, out: EffectsBuilder) -> None:
        while (txid := self._decided.pop(self.applied_revision + 1, None)) is not None:
            p = self._prepared[txid]
            revision = self.applied_revision + 1
            out.persist.append(CommittedRecord(txid, revision, p.writes))
            self._unlock(p)
            self.applied_revision = revision
            self._remember(txid, revision)
            out.send.append(Envelope(self.coordinator, Ack(txid, revision)))

    def _answer(self, out: EffectsBuilder, txid: TxId) -> Outcome:
        p = self._prepared.get(txid)
        if p is not None:
            if p.decided_revision is not None:
                return Outcome(txid, OutcomeKind.COMMITTED, p.decided_revision)
            return Outcome(txid, OutcomeKind.UNCERTAIN)
        if txid in self._outcomes:
            revision = self._outcomes[txid]
            if revision is None:
                return Outcome(txid, OutcomeKind.ABORTED)
            return Outcome(txid, OutcomeKind.COMMITTED, revision)
        if txid <= self._forgotten_max:
            return Outcome(txid, OutcomeKind.UNKNOWN)
        # Never saw it: refuse it for good, so the coordinator can never collect our yes.
        out.persist.append(AbortedRecord(txid))
        self._remember(txid, None)
        return Outcome(txid, OutcomeKind.ABORTED)

    def _on_tick(self, out: EffectsBuilder, now_ms: int) -> None:
        due = [p for p in self._prepared.values() if p.decided_revision is None and now_ms >= self._ask_time(p)]
        if not due:
            return
        # Peers are asked only once the coordinator failed to answer our previous question: while it
        # answers (even PENDING), a slow replica's prepare must not be refused by its peers.
        silent = [
            p.txid
            for p in due
            if p.asked_at_ms is not None
            and (p.coordinator_answered_ms is None or p.coordinator_answered_ms < p.asked_at_ms)
        ]
        for p in due:
            p.asked_at_ms = now_ms
        out.send.append(Envelope(self.coordinator, ResolveRequest(tuple(sorted(p.txid for p in due)))))
        if silent:
            query = ResolveRequest(tuple(sorted(silent)))
            out.send.extend(Envelope(peer, query) for peer in self.peers)

    # -- helpers -------------------------------------------------------------------------------

    def _ask_time(self, p: _Prepared) -> int:
        if p.asked_at_ms is None:
            return p.prepared_at_ms + self.timeouts.resolve_after_ms
        return p.asked_at_ms + self.timeouts.resolve_interval_ms

    def _lock(self, p: _Prepared) -> None:
        for key in p.keys:
            if key in self._locks:
                raise Internal(f"key {key!r} locked by {format_txid(self._locks[key])} and {format_txid(p.txid)}")
        self._prepared[p.txid] = p
        for key in p.keys:
            self._locks[key] = p.txid

    def _unlock(self, p: _Prepared) -> None:
        del self._prepared[p.txid]
        for key in p.keys:
            del self._locks[key]

    def _remember(self, txid: TxId, revision: int | None) -> None:
        self._outcomes[txid] = revision
        self._outcomes.move_to_end(txid)
        while len(self._outcomes) > self._outcomes_max:
            old, _ = self._outcomes.popitem(last=False)
            self._forgotten_max = max(self._forgotten_max, old)

    def _next_wake(self) -> int | None:
        times = [self._ask_time(p) for p in self._prepared.values() if p.decided_revision is None]
        return min(times) if times else None
