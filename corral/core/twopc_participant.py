"""The 2PC participant core: a replica's side of presumed-abort 2PC, its read lease, and rejoining.

A transaction at a participant:

    (unknown) ──PREPARE, keys free──▶ PREPARED: PreparedRecord forced, keys locked, vote yes
        │  └──keys locked / refused before / not a member──▶ vote no, with the reason
    PREPARED ──COMMIT(revision)──▶ DECIDED ──all lower revisions applied──▶ APPLIED:
        │                          CommittedRecord (apply + forget, atomically), locks released, ack
        └──ABORT──▶ ABORTED: AbortedRecord, locks released
    (unknown) ──one of its participants asks about it──▶ REFUSED: AbortedRecord forced, answered
                                                          ABORTED; a later PREPARE of it gets a no

Membership (DESIGN.md "Failures"):
    UNKNOWN (at start) ──LeaseGrant──▶ MEMBER ──NotMember──▶ OUTSIDE
    MEMBER: renews its read lease every lease/4; serves linearizable reads while the lease holds.
    OUTSIDE: fetches committed revisions from a member until level with it, discards what it held in
        doubt (once decided), then asks to Join ──JoinReady(revision)──▶ fetches up to it ──▶ CaughtUp
        ──LeaseGrant──▶ MEMBER. Which request goes next, and when, is core/rejoin.py's.

Rules:
- Never decide alone: a PREPARED transaction stays locked until its decision arrives from the
  coordinator, or from another of its participants (cooperative termination).
- Commits apply in revision order: a COMMIT for revision r waits until r-1 is applied.
- Locks cover every key a prepared transaction reads or writes; a read of a locked key waits (the
  shell's job), which is what makes reads of committed writes linearizable. A prepared sequential put
  holds every name it may create (prefix + 20 digits above the applied revision) as a lock, and like
  any lock it is exclusive: it is not taken while a prepared transaction holds one of those names.
- Compares are evaluated at prepare time on the state the shell read for them. That state is final:
  any key with an undecided or unapplied write is locked, and locked keys make the vote a no.
- A read lease counts from when its request was made (before the grant), so it ends before the
  coordinator's idea of it; only a member with a live lease serves linearizable reads.
- A prepared transaction with no decision after `resolve_after_ms` is asked about, to the coordinator,
  then again every `resolve_interval_ms`; its other participants are asked too once the coordinator has
  left a question unanswered (cooperative termination is for a coordinator that is down, not slow).
- Only a participant of a transaction may refuse it; it is only ever asked about transactions it was a
  participant of, and refuses one it never saw only if it has not forgotten that far back.
- The coordinator's ABORTED may be presumed (it forgets ended commits). A member can trust it while
  its read lease holds: the coordinator drops a member only once its lease has expired, and until then
  every commit it voted on waits for its ack. Without a lease it may have been dropped without knowing
  it yet, and the commit ENDed without it: it asks again later. A replica outside the view (or not yet
  knowing) must not either: it discards what it held in doubt instead, and catching up brings the
  effect of whatever committed.
- Fetched history is applied only outside the view; a member applies commits only, in revision order
  (an answer to a fetch made while catching up may arrive after the replica rejoined).
- Rejoining raises the forgotten mark to the coordinator's highest txid and drops older outcomes:
  what a replica remembers from before it left cannot be trusted to answer other replicas' questions.

This module must not know about sockets, clocks or disks.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Sequence
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
    FetchReply,
    JoinReady,
    LeaseGrant,
    LeaseRequest,
    NodeName,
    NotMember,
    Outcome,
    OutcomeKind,
    Prepare,
    Received,
    ResolveReply,
    ResolveRequest,
    SnapshotPage,
    Tick,
    Unreachable,
    Vote,
    writes_digest,
)
from corral.core.rejoin import Rejoin, Snapshot, Standing
from corral.errors import Compacted, Internal, InvalidArgument, Unavailable
from corral.limits import DEFAULT_LIMITS, DEFAULT_TIMEOUTS, OUTCOMES_REMEMBERED_MAX, Limits, Timeouts
from corral.model import SEQUENTIAL_DIGITS, PreparedWrite, Put, PutSequential
from corral.records import (
    AbortedRecord,
    CaughtUpRecord,
    CommittedRecord,
    DiscardedRecord,
    ForgottenRecord,
    ParticipantDisk,
    PreparedRecord,
    SnapshotPageRecord,
    TxId,
    format_txid,
)


class Membership(enum.Enum):
    UNKNOWN = "unknown"
    MEMBER = "member"
    OUTSIDE = "outside"


@dataclass(slots=True)
class _Prepared:
    txid: TxId
    writes: tuple[PreparedWrite, ...]
    succeeded: bool
    keys: frozenset[str]
    participants: tuple[NodeName, ...]
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
        self.membership = Membership.UNKNOWN
        self.view = 0
        self.members: tuple[NodeName, ...] = ()
        self.lease_until_ms = 0
        self._next_lease_request_ms = now_ms
        self._prepared: dict[TxId, _Prepared] = {}
        self._locks: dict[str, TxId] = {}
        # Prefixes under which a prepared sequential put will create a key (not named until commit):
        # reads and compares that could see such a key wait, as for a locked key.
        self._sequential: dict[str, set[TxId]] = {}
        self._decided: dict[int, TxId] = {}  # revision -> txid, committed but waiting for order
        self._outcomes: OrderedDict[TxId, int | None] = OrderedDict(disk.outcomes)
        self._outcomes_max = outcomes_max
        self._forgotten_max = disk.forgotten_max_txid
        self.rejoin = Rejoin(coordinator, timeouts)  # while outside the view (core/rejoin.py)
        self._broken: str | None = None
        # The earliest ask time of an undecided prepare, kept as prepares come (None: not known, work it
        # out). It may be early once its holder is decided; an early wake only costs one tick, which
        # works it out again.
        self._ask_wake: int | None = None
        self._ask_wake_known = False
        for rec in disk.prepared:
            # Recovered in doubt: ask at the first tick (asked_at_ms None), never decide alone.
            self._lock(_Prepared(rec.txid, rec.writes, rec.succeeded, rec.keys, rec.participants, now_ms))

    # -- public --------------------------------------------------------------------------------

    def step(self, event: Event, now_ms: int) -> Effects:
        if self._broken is not None:
            raise Internal(f"participant core stopped after an earlier internal error: {self._broken}")
        out = EffectsBuilder()
        try:
            if isinstance(event, Received):
                self._on_received(out, event, now_ms)
            elif isinstance(event, Tick):
                self._on_tick(out, now_ms)
            elif isinstance(event, Unreachable):
                self.rejoin.unreachable(event.dst, event.msgs, self.members, now_ms)
            else:
                raise Internal(f"participant got unexpected event {type(event).__name__}")
        except Internal as err:
            self._broken = err.message
            raise
        return out.build(self._next_wake())

    def can_serve_linearizable(self, now_ms: int) -> bool:
        """A member with a live read lease (checked by the shell before every linearizable read)."""
        return self.membership is Membership.MEMBER and now_ms < self.lease_until_ms

    def is_locked(self, key: str) -> bool:
        """A prepared transaction may change this key (it names it, or may create it sequentially)."""
        return key in self._locks or (bool(self._sequential) and self._may_be_created(key))

    def _may_be_created(self, key: str) -> bool:
        """Could a prepared sequential put name its key `key`?"""
        return any(self._may_name(prefix, key) for prefix in self._sequential)

    def _may_name(self, prefix: str, key: str) -> bool:
        """Could a sequential put under `prefix` not applied yet be named `key`? Only prefix + a 20-digit
        revision above what this replica applied: an existing key never can (helper-4 measured needless
        refusals)."""
        suffix = key[len(prefix) :]
        named = key.startswith(prefix) and len(suffix) == SEQUENTIAL_DIGITS and suffix.isdigit()
        return named and int(suffix) > self.applied_revision

    def locked_keys(self) -> frozenset[str]:
        return frozenset(self._locks)

    def any_locked_with_prefix(self, prefix: str) -> bool:
        """A prepared transaction may change some key starting with `prefix`."""
        return any(k.startswith(prefix) for k in self._locks) or any(
            p.startswith(prefix) or prefix.startswith(p) for p in self._sequential
        )

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
        if self.membership is not Membership.MEMBER:
            assert self.lease_until_ms == 0
        if self._ask_wake_known:  # early is allowed, late would leave an in-doubt prepare unasked
            undecided = [self._ask_time(p) for p in self._prepared.values() if p.decided_revision is None]
            assert not undecided or (self._ask_wake is not None and self._ask_wake <= min(undecided))

    # -- events --------------------------------------------------------------------------------

    def _on_received(self, out: EffectsBuilder, event: Received, now_ms: int) -> None:
        src, msg = event.src, event.msg
        if isinstance(msg, Prepare):
            self._on_prepare(out, event, msg, now_ms)
        elif isinstance(msg, Commit):
            self._on_decision(out, msg.txid, msg.revision)
        elif isinstance(msg, Abort):
            self._on_decision(out, msg.txid, None)
        elif isinstance(msg, ResolveRequest):
            out.send.append(Envelope(src, ResolveReply(tuple(self._answer(out, t) for t in msg.txids))))
        elif isinstance(msg, ResolveReply):
            self._on_resolve_reply(out, src, msg, now_ms)
        elif isinstance(msg, LeaseGrant):
            self._on_lease_grant(msg)
        elif isinstance(msg, NotMember):
            self._on_not_member(msg, now_ms)
        elif isinstance(msg, JoinReady):
            self._on_join_ready(out, msg, now_ms)
        elif isinstance(msg, FetchReply):
            self._on_fetch_reply(out, src, msg, now_ms)
        elif isinstance(msg, SnapshotPage):
            self._on_snapshot_page(out, src, msg, now_ms)
        else:
            self.log.warning("replica=%s ignored unexpected %s from %s", self.node, type(msg).__name__, src)

    def _vote_no(self, out: EffectsBuilder, src: NodeName, txid: TxId, err: Unavailable) -> None:
        out.send.append(Envelope(src, Vote(txid, False, reason=ErrorInfo.of(err))))

    def _on_prepare(self, out: EffectsBuilder, event: Received, msg: Prepare, now_ms: int) -> None:
        src, txid = event.src, msg.txid
        reads = event.reads or {}
        lease_keys = event.lease_keys or {}
        existing = self._prepared.get(txid)
        if existing is not None:  # a duplicate: the same vote again
            out.send.append(Envelope(src, Vote(txid, True, existing.succeeded, digest=writes_digest(existing.writes))))
            return
        if txid in self._outcomes:
            if self._outcomes[txid] is None:
                err = Unavailable(
                    f"transaction {format_txid(txid)} was already aborted on {self.node} (its prepare came late); "
                    "it was not applied; retry"
                )
                self._vote_no(out, src, txid, err)
            return  # committed here: a late duplicate, the decision is made; nothing to say
        if txid <= self._forgotten_max:
            err = Unavailable(f"transaction {format_txid(txid)} is older than what {self.node} remembers; retry")
            self._vote_no(out, src, txid, err)
            return
        if self.membership is Membership.OUTSIDE:
            err = Unavailable(f"{self.node} is outside the view (catching up); retry")
            self._vote_no(out, src, txid, err)
            return
        try:
            msg.txn.validate(self.limits, internal=True)
        except InvalidArgument as err:
            out.send.append(Envelope(src, Vote(txid, False, reason=ErrorInfo.of(err))))
            return
        deleted = msg.txn.leases_deleted()
        missing_leases = [lease for lease in deleted if lease not in lease_keys]
        missing = [k for k in msg.txn.compare_keys() if k not in reads]
        if missing or missing_leases:
            raise Internal(f"prepare of {format_txid(txid)} stepped without reads of {missing or missing_leases}")
        lease_held = {k for lease in deleted for k in lease_keys[lease]}
        keys = msg.txn.keys() | lease_held
        busy = sorted(k for k in keys if self.is_locked(k))
        prefixes = [w.prefix for w in msg.txn.on_success + msg.txn.on_failure if isinstance(w, PutSequential)]
        if prefixes:
            # Locks are mutual: a sequential put may create a name a prepared transaction holds, whose
            # compares were evaluated with that name absent (seed 270).
            busy += sorted(k for k in self._locks if any(self._may_name(p, k) for p in prefixes))
        if busy:
            # Not the first-wins race (the coordinator answers those with Conflict): a transaction the
            # coordinator already decided, or one in doubt here, still holds the key. Transient.
            locked = Unavailable(
                f"key {busy[0]!r} is locked on {self.node} by a prepared transaction whose outcome it is "
                "still applying or learning; the write was not applied; retry",
                key=busy[0],
            )
            self._vote_no(out, src, txid, locked)
            return
        if deleted and any(self._attaches(p, deleted) for p in self._prepared.values()):
            # A prepared put may still attach a key to a lease being deleted: the key set is not final.
            in_use = Unavailable(f"a lease being deleted is still in use on {self.node}; retry")
            self._vote_no(out, src, txid, in_use)
            return
        succeeded, writes = msg.txn.evaluate(reads, lease_keys)
        out.persist.append(PreparedRecord(txid, writes, succeeded, keys, msg.participants))
        self._lock(_Prepared(txid, writes, succeeded, keys, msg.participants, now_ms))
        out.send.append(Envelope(src, Vote(txid, True, succeeded, digest=writes_digest(writes))))

    @staticmethod
    def _attaches(p: _Prepared, leases: Sequence[int]) -> bool:
        return any(isinstance(w, (Put, PutSequential)) and w.lease in leases for w in p.writes)

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
                if self.membership is not Membership.MEMBER:
                    # Catching up already applied this revision from a member's history.
                    self._discard(out, p)
                    return
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
            # Not prepared here: this replica left the view before it voted; catching up will bring it.
            self.log.info(
                "replica=%s txid=%s commit at revision %d of a transaction not prepared here (outside the view?)",
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
        last: TxId | None = None
        while (txid := self._decided.pop(self.applied_revision + 1, None)) is not None:
            p = self._prepared[txid]
            revision = self.applied_revision + 1
            final = tuple(w.materialize(revision) if isinstance(w, PutSequential) else w for w in p.writes)
            out.persist.append(CommittedRecord(txid, revision, final))
            self._unlock(p)
            self.applied_revision = revision
            self._remember(txid, revision)
            last = txid
        if last is not None:
            # One cumulative ack for everything applied in this step (commits apply in order).
            out.send.append(Envelope(self.coordinator, Ack(last, self.applied_revision)))

    def _on_resolve_reply(self, out: EffectsBuilder, src: NodeName, msg: ResolveReply, now_ms: int) -> None:
        trusted = self.can_serve_linearizable(now_ms) or src != self.coordinator
        for o in msg.outcomes:
            p = self._prepared.get(o.txid)
            if p is None or p.decided_revision is not None:
                continue
            if src == self.coordinator:
                p.coordinator_answered_ms = now_ms
            decided = o.kind in (OutcomeKind.COMMITTED, OutcomeKind.ABORTED)
            if not decided:
                continue
            if self.membership is Membership.OUTSIDE:
                # Outside the view: never apply or abort on an answer; catching up is authoritative.
                self.log.info("replica=%s txid=%s decided elsewhere; discarded", self.node, format_txid(o.txid))
                self._discard(out, p)
            elif o.kind is OutcomeKind.COMMITTED:
                self.log.info("replica=%s txid=%s learned commit from %s", self.node, format_txid(o.txid), src)
                self._on_decision(out, o.txid, o.revision)
            elif trusted:
                self.log.info("replica=%s txid=%s learned abort from %s", self.node, format_txid(o.txid), src)
                self._on_decision(out, o.txid, None)

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
        # Never saw it, and we are one of its participants (only they are asked): refuse it for good,
        # so the coordinator can never collect our yes.
        out.persist.append(AbortedRecord(txid))
        self._remember(txid, None)
        return Outcome(txid, OutcomeKind.ABORTED)

    # -- membership, leases, rejoining (the requests: core/rejoin.py) -------------------------------

    def _on_lease_grant(self, msg: LeaseGrant) -> None:
        if msg.view < self.view:
            return
        if self.membership is not Membership.MEMBER:
            self.log.info("replica=%s is a member of view %d", self.node, msg.view)
        self.view, self.members = msg.view, msg.members
        self.membership = Membership.MEMBER
        self.rejoin.joined()
        if msg.request_ms:
            self.lease_until_ms = max(self.lease_until_ms, msg.request_ms + msg.lease_ms)

    def _on_not_member(self, msg: NotMember, now_ms: int) -> None:
        if msg.view < self.view:
            return
        if self.membership is not Membership.OUTSIDE:
            self.log.warning(
                "replica=%s is outside view %d (members %s); catching up", self.node, msg.view, msg.members
            )
            self.membership = Membership.OUTSIDE
            self.rejoin.left()
        self.view, self.members = msg.view, msg.members
        self.lease_until_ms = 0

    def _on_join_ready(self, out: EffectsBuilder, msg: JoinReady, now_ms: int) -> None:
        if self.membership is not Membership.OUTSIDE:
            return
        self.rejoin.join_ready(msg.revision)
        if msg.txid_high > self._forgotten_max:
            out.persist.append(ForgottenRecord(msg.txid_high, drop_outcomes=True))
            self._forgotten_max = msg.txid_high
            for txid in [t for t in self._outcomes if t <= msg.txid_high]:
                del self._outcomes[txid]
        self._progress_rejoin(out, now_ms)

    def _on_fetch_reply(self, out: EffectsBuilder, src: NodeName, msg: FetchReply, now_ms: int) -> None:
        if self.membership is not Membership.OUTSIDE:
            return  # a late answer to a fetch made while catching up
        if not self.rejoin.answers_last_fetch(self.applied_revision):
            return
        if msg.error is not None:
            if msg.error.code == Compacted.code:
                history_from = msg.error.details.get("compact_revision")
                history_from = history_from if isinstance(history_from, int) else 0
                if not self.rejoin.fetch_compacted(src, history_from, self.members):
                    # Gone there; another member may still have it (the next fetch goes at once).
                    self.log.info("replica=%s history compacted on %s; asking another member", self.node, src)
                    self._progress_rejoin(out, now_ms)
                    return
                # The history we miss is gone on every member: take a member's whole state instead.
                self.log.warning("replica=%s catching up from a snapshot of %s: %s", self.node, src, msg.error.message)
                self.rejoin.snapshot = Snapshot(src)
                self._progress_rejoin(out, now_ms)
                return
            # Unavailable: the peer is not a member (just restarted, or left the view); the next tick asks
            # another.
            self.log.warning("replica=%s cannot catch up from %s: %s", self.node, src, msg.error.message)
            return
        self.rejoin.level_with_peer = msg.complete
        if msg.through_revision > self.applied_revision:
            revisions = tuple((r, w) for r, w in msg.revisions if r > self.applied_revision)
            out.persist.append(CaughtUpRecord(revisions, msg.through_revision))
            self._caught_up_to(out, msg.through_revision)
        self._progress_rejoin(out, now_ms)

    def _on_snapshot_page(self, out: EffectsBuilder, src: NodeName, msg: SnapshotPage, now_ms: int) -> None:
        snap = self.rejoin.snapshot
        if self.membership is not Membership.OUTSIDE or snap is None or src != snap.peer:
            return  # late, or from a snapshot given up
        if msg.after_key != snap.after_key or (snap.revision and msg.revision != snap.revision):
            return  # an answer to an older request
        snap.sent_ms = None
        if msg.error is not None:
            # The member cannot serve that state (no longer a member, or compacted past it): start over
            # from another member's current state.
            self.log.warning("replica=%s snapshot from %s abandoned: %s", self.node, src, msg.error.message)
            self.rejoin.restart_snapshot(src, self.members, now_ms)
        elif msg.revision <= self.applied_revision:
            # Not ahead of us (we applied something meanwhile): fetching history may do after all.
            self.rejoin.snapshot = None
            self.rejoin.level_with_peer = False
        else:
            first = snap.revision == 0
            snap.revision = msg.revision
            out.persist.append(SnapshotPageRecord(msg.revision, msg.kvs, first, not msg.more))
            if msg.more:
                if msg.kvs:
                    snap.after_key = msg.kvs[-1].key
            else:
                self.log.info("replica=%s installed a snapshot of %s at revision %d", self.node, src, msg.revision)
                self.rejoin.snapshot = None
                self.rejoin.level_with_peer = False  # fetch what came after the snapshot
                self._caught_up_to(out, msg.revision)
        self._progress_rejoin(out, now_ms)

    def _caught_up_to(self, out: EffectsBuilder, revision: int) -> None:
        """Fetched history or a snapshot brought this replica to `revision` (its records persisted)."""
        self.applied_revision = revision
        # Decisions waiting for order that catching up has now passed: their effect came from the peer.
        for rev in [r for r in self._decided if r <= revision]:
            self._discard(out, self._prepared[self._decided.pop(rev)])
        self._apply_in_order(out)

    def _standing(self) -> Standing:
        return Standing(self.members, self.applied_revision, bool(self._decided), bool(self._prepared))

    def _progress_rejoin(self, out: EffectsBuilder, now_ms: int) -> None:
        """While outside: send the next request of rejoining, if it is due."""
        if self.membership is Membership.OUTSIDE and self.members:
            self.rejoin.progress(out, self._standing(), now_ms)

    # -- timers --------------------------------------------------------------------------------

    def _on_tick(self, out: EffectsBuilder, now_ms: int) -> None:
        self._ask_wake_known = False
        if self.membership is Membership.MEMBER and now_ms >= self.lease_until_ms:
            self.lease_until_ms = 0  # expired: reads wait for the next grant
        if now_ms >= self._next_lease_request_ms:
            self._next_lease_request_ms = now_ms + max(1, self.timeouts.read_lease_ms // 4)
            out.send.append(Envelope(self.coordinator, LeaseRequest(now_ms, self.applied_revision)))
        self._progress_rejoin(out, now_ms)
        due = [p for p in self._prepared.values() if p.decided_revision is None and now_ms >= self._ask_time(p)]
        if not due:
            return
        # Peers are asked only once the coordinator failed to answer our previous question: while it
        # answers (even PENDING), a slow replica's prepare must not be refused by its peers. Only a
        # transaction's own participants are asked.
        silent = [
            p
            for p in due
            if p.asked_at_ms is not None
            and (p.coordinator_answered_ms is None or p.coordinator_answered_ms < p.asked_at_ms)
        ]
        for p in due:
            p.asked_at_ms = now_ms
        out.send.append(Envelope(self.coordinator, ResolveRequest(tuple(sorted(p.txid for p in due)))))
        by_peer: dict[NodeName, list[TxId]] = {}
        for p in silent:
            for peer in p.participants or self.peers:
                if peer != self.node:
                    by_peer.setdefault(peer, []).append(p.txid)
        for peer, txids in sorted(by_peer.items()):
            out.send.append(Envelope(peer, ResolveRequest(tuple(sorted(txids)))))

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
        if self._ask_wake_known and p.decided_revision is None:
            ask = self._ask_time(p)
            self._ask_wake = ask if self._ask_wake is None else min(self._ask_wake, ask)
        for key in p.keys:
            self._locks[key] = p.txid
        for w in p.writes:
            if isinstance(w, PutSequential):
                self._sequential.setdefault(w.prefix, set()).add(p.txid)

    def _discard(self, out: EffectsBuilder, p: _Prepared) -> None:
        """Drop an in-doubt record without an outcome, and mark the txid forgotten: asked about it
        later, this replica must answer UNKNOWN, never refuse it (it did vote yes)."""
        out.persist.append(DiscardedRecord(p.txid))
        if p.txid > self._forgotten_max:
            self._forgotten_max = p.txid
            out.persist.append(ForgottenRecord(p.txid))
        self._unlock(p)

    def _unlock(self, p: _Prepared) -> None:
        del self._prepared[p.txid]
        for key in p.keys:
            del self._locks[key]
        for w in p.writes:
            if isinstance(w, PutSequential):
                holders = self._sequential[w.prefix]
                holders.discard(p.txid)
                if not holders:
                    del self._sequential[w.prefix]

    def _remember(self, txid: TxId, revision: int | None) -> None:
        self._outcomes[txid] = revision
        self._outcomes.move_to_end(txid)
        while len(self._outcomes) > self._outcomes_max:
            old, _ = self._outcomes.popitem(last=False)
            self._forgotten_max = max(self._forgotten_max, old)

    def _next_wake(self) -> int | None:
        if not self._ask_wake_known:
            undecided = [self._ask_time(p) for p in self._prepared.values() if p.decided_revision is None]
            self._ask_wake = min(undecided, default=None)
            self._ask_wake_known = True
        times = [self._next_lease_request_ms]
        if self._ask_wake is not None:
            times.append(self._ask_wake)
        if self.membership is Membership.MEMBER and self.lease_until_ms:
            times.append(self.lease_until_ms)
        if self.membership is Membership.OUTSIDE and self.members:
            rejoin = self.rejoin.wake_ms(self._standing())
            if rejoin is not None:
                times.append(rejoin)
        return min(times)
