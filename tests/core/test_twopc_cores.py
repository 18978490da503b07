"""The 2PC cores wired back to back, no network, no disk (STYLE.md: "a helper wires two cores").

Each test names the DESIGN.md "Replication: two-phase commit" rule it checks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest

from corral.core.leases import LeaseInfo
from corral.core.messages import (
    Abort,
    Ack,
    ClientTxn,
    Commit,
    Effects,
    Envelope,
    ErrorInfo,
    LeaseGrant,
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
from corral.core.twopc_coordinator import Coordinator
from corral.core.twopc_participant import Participant
from corral.limits import Timeouts
from corral.model import Compare, CompareOp, CompareTarget, KeyValue, Put
from corral.records import (
    AbortedRecord,
    CommitRecord,
    CommittedRecord,
    CoordinatorDisk,
    EpochRecord,
    ParticipantDisk,
    PreparedRecord,
    Record,
    ViewRecord,
    make_txid,
)

NODES = ("r1", "r2", "r3")
T = Timeouts(prepare_timeout_ms=100, commit_retry_ms=50, resolve_after_ms=30, resolve_interval_ms=30)


@dataclass
class Wire:
    """A coordinator and participants with instant, lossless delivery; participants keep a dict store."""

    coord: Coordinator
    parts: dict[str, Participant]
    data: dict[str, dict[str, KeyValue]] = field(default_factory=dict)
    replies: dict[int, TxnResult | LeaseInfo | ErrorInfo] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    held: list[Envelope] = field(default_factory=list)  # sends intercepted by `hold`
    hold: set[str] = field(default_factory=set)
    now: int = 0

    @classmethod
    def new(cls) -> Wire:
        coord = Coordinator("c", NODES, CoordinatorDisk(), timeouts=T)
        parts = {n: Participant(n, "c", NODES, ParticipantDisk(), timeouts=T) for n in NODES}
        w = cls(coord, parts, {n: {} for n in NODES})
        w.run("c", coord.start(0))
        return w

    def run(self, src: str, effects: Effects) -> None:
        queue: deque[tuple[str, Envelope]] = deque((src, e) for e in effects.send)
        for r in effects.reply:
            self.replies[r.request_id] = r.result
        while queue:
            sender, env = queue.popleft()
            if env.dst in self.hold or sender in self.hold:
                self.held.append(env)
                continue
            if env.dst in self.down:
                continue
            eff = self.deliver(sender, env)
            for r in eff.reply:
                self.replies[r.request_id] = r.result
            queue.extend((env.dst, e) for e in eff.send)

    def deliver(self, src: str, env: Envelope) -> Effects:
        if env.dst == "c":
            return self.coord.step(Received(src, env.msg), self.now)
        part = self.parts[env.dst]
        reads = None
        if isinstance(env.msg, Prepare):
            reads = {k: self.data[env.dst].get(k) for k in env.msg.txn.compare_keys()}
        eff = part.step(Received(src, env.msg, reads), self.now)
        for rec in eff.persist:
            if isinstance(rec, CommittedRecord):
                for w in rec.writes:
                    if isinstance(w, Put):
                        old = self.data[env.dst].get(w.key)
                        self.data[env.dst][w.key] = KeyValue(
                            w.key,
                            w.value,
                            old.create_revision if old else rec.revision,
                            rec.revision,
                            old.version + 1 if old else 1,
                        )
                    else:
                        self.data[env.dst].pop(w.key, None)
        part.check_invariants()
        self.coord.check_invariants()
        return eff

    def txn(self, rid: int, txn: TxnSpec, client: str = "cl", seq: int | None = None) -> None:
        ev = ClientTxn(rid, client, rid if seq is None else seq, txn, deadline_ms=self.now + 1000)
        self.run("c", self.coord.step(ev, self.now))

    def tick(self, ms: int) -> None:
        self.now += ms
        self.run("c", self.coord.step(Tick(), self.now))
        for n, p in self.parts.items():
            if n not in self.down:
                self.run(n, p.step(Tick(), self.now))


def put(key: str, value: bytes) -> TxnSpec:
    return TxnSpec(on_success=(Put(key, value),))


def test_commit_reaches_every_replica_at_one_revision() -> None:
    """Rule 4: all yes -> commit at the next revision; every replica applies it."""
    w = Wire.new()
    w.txn(1, put("a", b"1"))
    w.txn(2, put("b", b"2"))
    assert w.replies == {1: TxnResult(1, True), 2: TxnResult(2, True)}
    for n in NODES:
        assert {k: v.value for k, v in w.data[n].items()} == {"a": b"1", "b": b"2"}
        assert w.parts[n].applied_revision == 2
    assert w.coord.unended == 0  # every replica acked: END


def test_first_wins_on_the_same_key() -> None:
    """Rule 2: a later transaction on an in-flight key is aborted at once with Conflict."""
    w = Wire.new()
    w.hold = {"r3"}  # r3's vote is late, so the first transaction stays in flight
    w.txn(1, put("k", b"first"))
    w.txn(2, put("k", b"second"))
    result = w.replies[2]
    assert isinstance(result, ErrorInfo) and result.code == "conflict" and "'k'" in result.message
    assert 1 not in w.replies
    w.hold = set()
    held, w.held = w.held, []
    for env in held:
        w.run("r3", w.deliver("c", env))
    assert w.replies[1] == TxnResult(1, True)


def test_compare_and_set_branches() -> None:
    """Compares are evaluated at prepare; every replica picks the same branch."""
    w = Wire.new()
    w.txn(1, put("n", b"1"))
    cas = TxnSpec(
        compares=(Compare("n", CompareTarget.VALUE, CompareOp.EQUAL, b"1"),),
        on_success=(Put("n", b"2"),),
        on_failure=(Put("failed", b"yes"),),
    )
    w.txn(2, cas)
    w.txn(3, cas)
    assert w.replies[2] == TxnResult(2, True)
    assert w.replies[3] == TxnResult(3, False)
    assert all(w.data[n]["n"].value == b"2" and w.data[n]["failed"].value == b"yes" for n in NODES)


def test_unreachable_replica_aborts_with_unavailable() -> None:
    """A replica that cannot be reached before voting: abort, clear error, nothing applied."""
    w = Wire.new()
    eff = w.coord.step(ClientTxn(1, "cl", 1, put("a", b"1"), 1000), 0)
    prepares = [e for e in eff.send if e.dst == "r2"]
    eff2 = w.coord.step(Unreachable("r2", tuple(e.msg for e in prepares)), 1)
    result = eff2.reply[0].result
    assert isinstance(result, ErrorInfo) and result.code == "unavailable" and "r2" in result.message
    assert all(isinstance(e.msg, Abort) for e in eff2.send)
    assert not eff2.persist


def test_vote_timeout_aborts() -> None:
    """No vote by the deadline -> abort (presumed abort: nothing logged)."""
    w = Wire.new()
    w.down = {"r3"}
    w.txn(1, put("a", b"1"))
    assert 1 not in w.replies
    w.tick(T.prepare_timeout_ms)
    result = w.replies[1]
    assert isinstance(result, ErrorInfo) and result.code == "unavailable" and "r3" in result.message
    assert "a" not in w.data["r1"]
    assert w.parts["r1"].prepared_count == 0  # the ABORT released r1's locks


def test_retry_of_a_committed_request_is_answered_not_reapplied() -> None:
    """Client retries: the same (client_id, seq) gets the remembered outcome."""
    w = Wire.new()
    w.txn(1, put("a", b"1"), seq=7)
    w.txn(2, put("a", b"2"), seq=7)  # same seq, a retry whose payload should not matter
    assert w.replies[1] == w.replies[2] == TxnResult(1, True)
    assert w.data["r1"]["a"].value == b"1" and w.parts["r1"].applied_revision == 1


def test_coordinator_restart_rebuilds_retry_memory_and_resends_unended_commits() -> None:
    """Coordinator recovery: COMMIT without END is re-sent; decisions answer retries after restart."""
    log: list[Record] = [EpochRecord(1), CommitRecord(5, 1, "cl", 3, True)]
    coord = Coordinator("c", NODES, CoordinatorDisk.from_records(log), timeouts=T)
    eff = coord.start(0)
    assert eff.persist == (EpochRecord(2), ViewRecord(1, NODES))  # a log from before views: all are members
    assert [(e.dst, e.msg) for e in eff.send] == [(n, Commit(5, 1)) for n in NODES]
    eff = coord.step(ClientTxn(9, "cl", 3, put("x", b"y"), 1000), 0)
    assert eff.reply[0].result == TxnResult(1, True) and not eff.send


def test_presumed_abort_after_coordinator_restart() -> None:
    """Coordinator recovery: no decision logged -> the transaction is aborted for whoever asks."""
    coord = Coordinator("c", NODES, CoordinatorDisk.from_records([EpochRecord(1)]), timeouts=T)
    coord.start(0)
    old_txid = (1 << 40) | 4
    eff = coord.step(Received("r1", ResolveRequest((old_txid,))), 0)
    (env,) = eff.send
    assert isinstance(env.msg, ResolveReply) and env.msg.outcomes[0].kind is OutcomeKind.ABORTED


def test_participant_recovers_in_doubt_and_asks_everyone() -> None:
    """Participant recovery: PREPARED without outcome -> locks re-taken; the coordinator is asked, and
    once it leaves a question unanswered, the peers too (cooperative termination)."""
    rec = PreparedRecord(42, (Put("k", b"v"),), True, frozenset({"k"}), NODES)
    p = Participant("r1", "c", NODES, ParticipantDisk(prepared=(rec,)), now_ms=0, timeouts=T)
    assert p.is_locked("k")
    assert _queries(p.step(Tick(), 1)) == []
    eff = p.step(Tick(), T.resolve_after_ms)
    assert _queries(eff) == [("c", ResolveRequest((42,)))]
    eff = p.step(Tick(), T.resolve_after_ms + T.resolve_interval_ms)  # the coordinator never answered
    assert sorted(dst for dst, _ in _queries(eff)) == ["c", "r2", "r3"]
    assert all(msg == ResolveRequest((42,)) for _, msg in _queries(eff))
    # A peer that committed it tells us; we apply at that revision.
    eff = p.step(Received("r2", ResolveReply((_outcome(42, OutcomeKind.COMMITTED, 1),))), 70)
    assert eff.persist == (CommittedRecord(42, 1, (Put("k", b"v"),)),)
    assert not p.is_locked("k") and p.applied_revision == 1


def test_a_coordinator_that_answers_keeps_peers_out() -> None:
    """A slow prepare elsewhere must not be refused by peers while the coordinator answers PENDING
    (found by an integration test: peers refusing a delayed prepare aborted healthy writes)."""
    p = Participant("r1", "c", NODES, ParticipantDisk(), timeouts=T)
    p.step(Received("c", Prepare(7, put("k", b"v"), NODES), {}), 0)
    now = 0
    for _ in range(5):
        now += T.resolve_interval_ms
        eff = p.step(Tick(), now)
        assert [dst for dst, _ in _queries(eff)] == ["c"]
        p.step(Received("c", ResolveReply((_outcome(7, OutcomeKind.PENDING),))), now + 1)


def test_uncertain_peers_do_not_decide() -> None:
    """Never decide alone: UNCERTAIN / PENDING / UNKNOWN answers change nothing."""
    rec = PreparedRecord(42, (Put("k", b"v"),), True, frozenset({"k"}))
    p = Participant("r1", "c", NODES, ParticipantDisk(prepared=(rec,)), timeouts=T)
    for kind in (OutcomeKind.UNCERTAIN, OutcomeKind.PENDING, OutcomeKind.UNKNOWN):
        eff = p.step(Received("r2", ResolveReply((_outcome(42, kind),))), 5)
        assert eff.persist == () and p.is_locked("k")


def test_peer_that_never_saw_a_transaction_refuses_it_durably() -> None:
    """Cooperative termination: a replica that never voted can abort, and then must vote no."""
    p = Participant("r2", "c", NODES, ParticipantDisk(), timeouts=T)
    eff = p.step(Received("r1", ResolveRequest((77,))), 0)
    assert eff.persist == (AbortedRecord(77),)
    assert eff.send[0].msg == ResolveReply((_outcome(77, OutcomeKind.ABORTED),))
    eff = p.step(Received("c", Prepare(77, put("k", b"v")), {}), 1)
    vote = eff.send[0].msg
    assert isinstance(vote, Vote) and not vote.yes and not p.is_locked("k")
    assert vote.reason is not None and "already aborted" in vote.reason.message  # a reason, not a bare no


def test_commits_apply_in_revision_order() -> None:
    """Rule 5: a commit for revision r waits for r-1."""
    p = Participant("r1", "c", NODES, ParticipantDisk(), timeouts=T)
    p.step(Received("c", Prepare(1, put("a", b"1")), {}), 0)
    p.step(Received("c", Prepare(2, put("b", b"2")), {}), 0)
    eff = p.step(Received("c", Commit(2, 2)), 0)
    assert eff.persist == () and p.applied_revision == 0
    eff = p.step(Received("c", Commit(1, 1)), 0)
    assert [r.revision for r in eff.persist if isinstance(r, CommittedRecord)] == [1, 2]
    assert [e.msg for e in eff.send] == [Ack(2, 2)]  # one cumulative ack: revisions 1 and 2 are applied


def test_locked_key_gets_a_no_vote() -> None:
    """Replicas lock keys at prepare, a second line of defence behind the coordinator's check. A key a
    replica still holds locked is a transient refusal (not applied, retry), not the first-wins Conflict."""
    p = Participant("r1", "c", NODES, ParticipantDisk(), timeouts=T)
    p.step(Received("c", Prepare(1, put("a", b"1")), {}), 0)
    eff = p.step(Received("c", Prepare(2, put("a", b"2")), {}), 0)
    vote = eff.send[0].msg
    assert isinstance(vote, Vote) and not vote.yes and vote.reason is not None
    assert vote.reason.code == "unavailable" and "'a' is locked" in vote.reason.message


def test_core_refuses_input_after_an_internal_error() -> None:
    """After an internal error a core refuses more input (h11's ERROR state)."""
    p = Participant("r1", "c", NODES, ParticipantDisk(), timeouts=T)
    p.step(Received("c", LeaseGrant(1, NODES, 1000, 0)), 0)  # a member: an impossible commit is a bug
    p.step(Received("c", Prepare(1, put("a", b"1")), {}), 0)
    p.step(Received("c", Commit(1, 1)), 0)
    with pytest.raises(Exception, match="already applied"):
        p.step(Received("c", Prepare(9, put("z", b"1")), {}), 0)
        p.step(Received("c", Commit(9, 1)), 0)
    with pytest.raises(Exception, match="stopped after an earlier internal error"):
        p.step(Tick(), 1)


def test_stale_abort_after_end_does_not_overwrite_a_commit() -> None:
    """One outcome per transaction: an ABORT answering a late duplicate vote, after END, is ignored.

    Found by the simulation (tests/sim/regressions.py): a duplicate PREPARE arrived after the
    commit ENDed; the replica voted again, the coordinator (which forgets ended commits) answered ABORT,
    the replica recorded the transaction as aborted, and a late duplicate COMMIT then stopped its core.
    """
    w = Wire.new()
    w.txn(1, put("a", b"1"))
    assert w.replies[1] == TxnResult(1, True) and w.coord.unended == 0
    txid = make_txid(w.coord.epoch, 1)
    w.run("c", Effects(send=(Envelope("r1", Prepare(txid, put("a", b"1"))),)))  # late duplicate PREPARE
    eff = w.deliver("c", Envelope("r1", Commit(txid, 1)))  # late duplicate COMMIT
    assert [e.msg for e in eff.send] == [Ack(txid, 1)]
    eff = w.parts["r1"].step(Received("r2", ResolveRequest((txid,))), 0)
    assert eff.send[0].msg == ResolveReply((_outcome(txid, OutcomeKind.COMMITTED, 1),))


def _queries(eff: Effects) -> list[tuple[str, object]]:
    """The resolve queries among a step's sends (ticks also renew the read lease)."""
    return [(e.dst, e.msg) for e in eff.send if isinstance(e.msg, ResolveRequest)]


def _outcome(txid: int, kind: OutcomeKind, revision: int = 0) -> Outcome:
    return Outcome(txid, kind, revision)


def test_unacked_commit_is_resent_when_its_retry_is_due_and_only_to_the_replica_that_missed_it() -> None:
    """Rule 6: a COMMIT is re-sent until acked, every commit_retry_ms, to the replicas that have not
    acked it; a tick before that (or ticks for other reasons) re-sends nothing."""
    c = Coordinator("c", NODES, CoordinatorDisk(), timeouts=T)
    c.start(0)
    eff = c.step(ClientTxn(1, "cl", 1, put("a", b"1"), deadline_ms=1000), 0)
    (txid,) = {e.msg.txid for e in eff.send if isinstance(e.msg, Prepare)}
    for n in NODES:
        eff = c.step(Received(n, Vote(txid, True, True, digest="d")), 1)
    assert sorted(e.dst for e in eff.send if isinstance(e.msg, Commit)) == list(NODES)
    c.step(Received("r1", Ack(txid, 1)), 2)
    c.step(Received("r2", Ack(txid, 1)), 2)

    def commits_at(now: int) -> list[str]:
        return [e.dst for e in c.step(Tick(), now).send if isinstance(e.msg, Commit)]

    assert commits_at(1 + T.commit_retry_ms - 1) == []
    assert commits_at(1 + T.commit_retry_ms) == ["r3"]
    assert commits_at(1 + T.commit_retry_ms) == []  # not again until the next retry is due
    assert commits_at(1 + 2 * T.commit_retry_ms) == ["r3"]
    c.step(Received("r3", Ack(txid, 1)), 1 + 2 * T.commit_retry_ms)
    assert commits_at(1 + 5 * T.commit_retry_ms) == []
    c.check_invariants()
