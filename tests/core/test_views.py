"""Views, read leases and rejoining in the 2PC cores (DESIGN.md "Failures"; the core docstrings' rules)."""

from __future__ import annotations

import logging

import pytest

from corral.core.messages import (
    Abort,
    Ack,
    CaughtUp,
    ClientTxn,
    Commit,
    Effects,
    Envelope,
    ErrorInfo,
    FetchReply,
    FetchRequest,
    Join,
    JoinReady,
    LeaseGrant,
    LeaseRequest,
    NotMember,
    Outcome,
    OutcomeKind,
    Prepare,
    Received,
    ResolveReply,
    ResolveRequest,
    SnapshotPage,
    SnapshotRequest,
    Tick,
    TxnResult,
    TxnSpec,
    Vote,
)
from corral.core.twopc_coordinator import Coordinator
from corral.core.twopc_participant import Membership, Participant
from corral.errors import Compacted, Unavailable
from corral.limits import LEASE_DRIFT_FRACTION, LEASE_DRIFT_MS, Timeouts
from corral.model import KeyValue, Put
from corral.records import (
    CaughtUpRecord,
    CoordinatorDisk,
    DiscardedRecord,
    ForgottenRecord,
    ParticipantDisk,
    PreparedRecord,
    SnapshotPageRecord,
    ViewRecord,
)

NODES = ("r1", "r2", "r3")
T = Timeouts(
    prepare_timeout_ms=100,
    commit_retry_ms=50,
    resolve_after_ms=30,
    resolve_interval_ms=30,
    read_lease_ms=1000,
    join_timeout_ms=500,
)
EXPIRY = T.read_lease_ms + int(T.read_lease_ms * LEASE_DRIFT_FRACTION) + LEASE_DRIFT_MS


def put(key: str, value: bytes = b"v") -> TxnSpec:
    return TxnSpec(on_success=(Put(key, value),))


def started(min_replicas: int = 2) -> Coordinator:
    c = Coordinator("c", NODES, CoordinatorDisk(), timeouts=T, min_replicas=min_replicas)
    c.start(0)
    return c


def renew(c: Coordinator, now: int, *members: str) -> None:
    for m in members:
        c.step(Received(m, LeaseRequest(now, 0)), now)


def joining(c: Coordinator) -> str | None:
    """`c.joining`, read afresh (a property: a step may change it after an assert narrowed it)."""
    return c.joining


def prepares_to(eff: Effects) -> list[str]:
    return sorted(e.dst for e in eff.send if isinstance(e.msg, Prepare))


def test_silent_member_is_dropped_only_after_its_lease_surely_expired() -> None:
    """A replica is dropped from the view only after its read lease has expired (with drift margin)."""
    c = started()
    renew(c, 0, "r1", "r2", "r3")
    renew(c, 900, "r1", "r2")  # r3 goes silent after the grant at 0
    assert c.step(Tick(), EXPIRY - 1).persist == ()
    assert c.members == NODES
    eff = c.step(Tick(), EXPIRY)
    assert eff.persist == (ViewRecord(2, ("r1", "r2")),)
    eff = c.step(ClientTxn(1, "cl", 1, put("k"), 10_000), EXPIRY + 1)
    assert prepares_to(eff) == ["r1", "r2"]  # new transactions no longer wait for r3
    # A lease request from the dropped replica is answered: you are outside, catch up.
    eff = c.step(Received("r3", LeaseRequest(5, 0)), EXPIRY + 2)
    assert eff.send[0].msg == NotMember(2, ("r1", "r2"))


def test_view_never_shrinks_below_min_replicas() -> None:
    """With min_replicas=2, losing 2 of 3 replicas stops writes instead of shrinking to one copy."""
    c = started(min_replicas=2)
    renew(c, 0, "r1", "r2", "r3")
    c.step(Tick(), EXPIRY)
    assert len(c.members) == 2  # one dropped
    later = EXPIRY * 3
    c.step(Tick(), later)
    assert len(c.members) == 2  # not below the minimum
    eff = c.step(ClientTxn(1, "cl", 1, put("k"), later + 50), later)
    assert prepares_to(eff) == sorted(c.members)
    eff = c.step(Tick(), later + T.prepare_timeout_ms)
    result = eff.reply[0].result
    assert isinstance(result, ErrorInfo) and result.code == "unavailable"


def test_participants_are_fixed_when_a_transaction_starts() -> None:
    """A view change does not shrink a pending transaction's participants: it still needs r3's vote."""
    c = started()
    renew(c, 0, "r1", "r2", "r3")
    now = EXPIRY - 10
    c.step(ClientTxn(1, "cl", 1, put("k"), now + 10_000), now)  # participants r1, r2, r3
    renew(c, now, "r1", "r2")
    c.step(Tick(), EXPIRY)  # r3 dropped
    assert c.members == ("r1", "r2")
    txid = next(iter(c._pending))
    for r in ("r1", "r2"):
        eff = c.step(Received(r, Vote(txid, True, True)), EXPIRY + 1)
    assert eff.reply == () and c.in_flight == 1  # still waiting for r3
    eff = c.step(Tick(), now + T.prepare_timeout_ms)
    assert isinstance(eff.reply[0].result, ErrorInfo) and "r3" in eff.reply[0].result.message


def test_join_holds_new_transactions_until_the_joiner_is_in_the_view() -> None:
    """Rejoin: writes are held while the joiner fetches the last revisions; then it prepares everything."""
    c = started()
    renew(c, 0, "r1", "r2", "r3")
    renew(c, 900, "r1", "r2")
    c.step(Tick(), EXPIRY)  # r3 out
    now = EXPIRY + 10
    eff = c.step(Received("r3", Join(0)), now)
    assert c.joining == "r3"
    assert [e.msg for e in eff.send] == [JoinReady(0, c.epoch << 40)]  # nothing in flight: ready at once
    eff = c.step(ClientTxn(1, "cl", 1, put("k"), now + 5000), now + 1)
    assert eff.send == () and eff.reply == ()  # held
    eff = c.step(Received("r3", CaughtUp(0)), now + 2)
    assert ViewRecord(3, NODES) in eff.persist
    assert prepares_to(eff) == list(NODES)  # the held transaction, now with r3
    assert any(isinstance(e.msg, LeaseGrant) and e.dst == "r3" for e in eff.send)
    assert c.joining is None


def test_join_waits_for_in_flight_transactions_and_times_out() -> None:
    c = started()
    renew(c, 0, "r1", "r2", "r3")
    renew(c, 900, "r1", "r2")
    c.step(Tick(), EXPIRY)
    now = EXPIRY + 10
    c.step(ClientTxn(1, "cl", 1, put("k"), now + 5000), now)  # in flight on r1, r2
    eff = c.step(Received("r3", Join(0)), now + 1)
    assert not any(isinstance(e.msg, JoinReady) for e in eff.send)  # not while a transaction is pending
    txid = next(iter(c._pending))
    c.step(Received("r1", Vote(txid, True, True)), now + 2)
    eff = c.step(Received("r2", Vote(txid, True, True)), now + 3)
    assert eff.reply[0].result == TxnResult(1, True)
    assert not any(isinstance(e.msg, JoinReady) for e in eff.send)  # commit not yet acknowledged
    eff = c.step(Tick(), now + 1 + T.join_timeout_ms)
    assert c.joining is None  # gave up; r3 will ask again


def test_read_lease_counts_from_the_request_and_ends_with_membership() -> None:
    """A lease counts from the request (before the grant); only a member with a live lease reads."""
    p = Participant("r1", "c", NODES, ParticipantDisk(), timeouts=T)
    assert not p.can_serve_linearizable(0)
    eff = p.step(Tick(), 100)
    (req,) = [e.msg for e in eff.send if isinstance(e.msg, LeaseRequest)]
    p.step(Received("c", LeaseGrant(1, NODES, T.read_lease_ms, req.request_ms)), 150)
    assert p.can_serve_linearizable(150)
    assert p.can_serve_linearizable(100 + T.read_lease_ms - 1)
    assert not p.can_serve_linearizable(100 + T.read_lease_ms)
    p.step(Received("c", NotMember(2, ("r2", "r3"))), 200)
    assert p.membership is Membership.OUTSIDE and not p.can_serve_linearizable(201)


def test_outside_replica_catches_up_then_joins() -> None:
    """Rejoin from the participant's side: fetch until level, Join, fetch to the target, CaughtUp."""
    p = Participant("r3", "c", NODES, ParticipantDisk(applied_revision=2), timeouts=T)
    p.step(Received("c", NotMember(2, ("r1", "r2"))), 0)
    eff = p.step(Tick(), 1)
    fetches = [e for e in eff.send if isinstance(e.msg, FetchRequest)]
    assert len(fetches) == 1 and fetches[0].dst in ("r1", "r2") and fetches[0].msg == FetchRequest(3)
    eff = p.step(Received(fetches[0].dst, FetchReply(((3, (Put("a", b"1"),)),), 5, True)), 2)
    assert eff.persist == (CaughtUpRecord(((3, (Put("a", b"1"),)),), 5),)
    assert p.applied_revision == 5
    assert [e.msg for e in eff.send] == [Join(5)]
    eff = p.step(Received("c", JoinReady(6, 99)), 3)
    assert ForgottenRecord(99, drop_outcomes=True) in eff.persist  # older may have happened without us
    assert [e.msg for e in eff.send] == [FetchRequest(6)]
    eff = p.step(Received("r1", FetchReply(((6, (Put("b", b"2"),)),), 6, True)), 4)
    assert [e.msg for e in eff.send] == [CaughtUp(6)]
    p.step(Received("c", LeaseGrant(3, NODES, T.read_lease_ms, 0)), 5)
    assert p.membership is Membership.MEMBER and not p.can_serve_linearizable(5)  # no lease asked yet


def _outside_fetching(applied: int) -> tuple[Participant, Envelope]:
    """A replica at `applied` told at t=0 it is outside view 2 (members r1, r2), and its first fetch,
    sent at the tick at t=1."""
    p = Participant("r3", "c", NODES, ParticipantDisk(applied_revision=applied), timeouts=T)
    p.step(Received("c", NotMember(2, ("r1", "r2"))), 0)
    (fetch,) = [e for e in p.step(Tick(), 1).send if isinstance(e.msg, FetchRequest)]
    return p, fetch


def _other(member: str) -> str:
    return "r1" if member == "r2" else "r2"


def _compacted_everywhere(p: Participant, fetch: Envelope, now: int, compact_revision: int = 8) -> tuple[Effects, str]:
    """Answer `fetch` with Compacted, then the fetch that follows (to the other member) too: the
    effects of the second answer, and the member it came from."""
    compacted = ErrorInfo.of(Compacted("compacted", compact_revision=compact_revision))
    eff = p.step(Received(fetch.dst, FetchReply((), 0, False, compacted)), now)
    assert [e for e in eff.send] == [Envelope(_other(fetch.dst), fetch.msg)]
    return p.step(Received(_other(fetch.dst), FetchReply((), 0, False, compacted)), now), _other(fetch.dst)


def test_outside_replica_behind_a_compaction_installs_a_snapshot_then_catches_up() -> None:
    """The history a joiner misses is compacted on every member: it takes a member's whole state page
    by page (pages of one revision, in key order), installs it, then fetches what came after."""
    p, fetch = _outside_fetching(2)
    compacted = ErrorInfo.of(Compacted("changes from revision 3 were compacted", compact_revision=8))
    eff = p.step(Received(fetch.dst, FetchReply((), 0, False, compacted)), 2)
    src = _other(fetch.dst)
    assert [e for e in eff.send] == [Envelope(src, FetchRequest(3))]  # the other member may still have it
    eff = p.step(Received(src, FetchReply((), 0, False, compacted)), 2)
    assert [e for e in eff.send] == [Envelope(src, SnapshotRequest(0, ""))]
    a, b, c = (KeyValue(k, b"v", 1, 5, 1) for k in ("a", "b", "c"))
    eff = p.step(Received(src, SnapshotPage(9, "", (a, b), True)), 3)
    assert eff.persist == (SnapshotPageRecord(9, (a, b), True, False),)
    assert [e.msg for e in eff.send] == [SnapshotRequest(9, "b")]  # the same state, after the last key
    assert p.applied_revision == 2  # nothing installed yet
    # A late answer to the first request changes nothing.
    assert p.step(Received(src, SnapshotPage(9, "", (a, b), True)), 4).persist == ()
    eff = p.step(Received(src, SnapshotPage(9, "b", (c,), False)), 5)
    assert eff.persist == (SnapshotPageRecord(9, (c,), False, True),)
    assert p.applied_revision == 9
    assert [e.msg for e in eff.send if e.dst != "c"] == [FetchRequest(10)]


def test_a_member_that_compacted_is_passed_over_for_one_that_has_the_history() -> None:
    """One member serves history only after a snapshot it installed (or compacted); the other still has
    the revisions missed: they are fetched from it, no whole state is copied (seed 7139933 chained
    three snapshots where fetching would have done)."""
    p, fetch = _outside_fetching(2)
    compacted = ErrorInfo.of(Compacted("changes from revision 3 were compacted", compact_revision=5))
    eff = p.step(Received(fetch.dst, FetchReply((), 0, False, compacted)), 2)
    other = _other(fetch.dst)
    assert [e for e in eff.send] == [Envelope(other, FetchRequest(3))]
    history = ((3, (Put("a", b"1"),)), (4, (Put("b", b"2"),)))
    eff = p.step(Received(other, FetchReply(history, 4, True)), 3)
    assert eff.persist == (CaughtUpRecord(history, 4),) and p.applied_revision == 4
    assert [e.msg for e in eff.send] == [Join(4)]
    assert p.rejoin.snapshot is None
    # The next fetch (from revision 5, once the coordinator holds writes at 6) may ask either member.
    eff = p.step(Received("c", JoinReady(6, 99)), 4)
    assert [e.msg for e in eff.send] == [FetchRequest(5)]  # from either: both keep history from 5 on


def test_a_member_known_to_have_compacted_is_not_asked_again_below_its_history() -> None:
    """Its answer said where its history starts: the pages that follow from the other member, below that
    revision, all come from the other member, whichever the rotation would have picked."""
    p, fetch = _outside_fetching(2)
    compacted = ErrorInfo.of(Compacted("changes from revision 3 were compacted", compact_revision=10))
    eff = p.step(Received(fetch.dst, FetchReply((), 0, False, compacted)), 2)
    other = _other(fetch.dst)
    for applied in range(3, 9):
        assert [e for e in eff.send] == [Envelope(other, FetchRequest(applied))]
        page = ((applied, (Put("a", str(applied).encode()),)),)
        now = 100 + 2 * applied  # the rotation alone would pick each member in turn
        eff = p.step(Received(other, FetchReply(page, applied, False)), now)  # more to come
    assert p.applied_revision == 8 and p.rejoin.snapshot is None


def test_snapshot_from_a_member_that_fails_starts_over_from_another() -> None:
    p, fetch = _outside_fetching(2)
    _, src = _compacted_everywhere(p, fetch, 2)
    first = KeyValue("a", b"v", 1, 5, 1)
    p.step(Received(src, SnapshotPage(9, "", (first,), True)), 3)
    gone = ErrorInfo.of(Unavailable("not a member"))
    eff = p.step(Received(src, SnapshotPage(9, "a", (), False, gone)), 4)
    other = _other(src)
    assert [e for e in eff.send] == [Envelope(other, SnapshotRequest(0, ""))]  # from the start
    eff = p.step(Received(other, SnapshotPage(12, "", (first,), False)), 5)
    assert eff.persist == (SnapshotPageRecord(12, (first,), True, True),)  # first: clears the old pages
    assert p.applied_revision == 12


def test_outside_replica_discards_what_it_held_in_doubt() -> None:
    """Outside the view, a decided answer is never applied or aborted on: the record is discarded and
    catching up brings the effect (the coordinator's ABORTED may be presumed)."""
    rec = PreparedRecord(42, (Put("k", b"v"),), True, frozenset({"k"}), NODES)
    p = Participant("r3", "c", NODES, ParticipantDisk(prepared=(rec,)), timeouts=T)
    p.step(Received("c", NotMember(2, ("r1", "r2"))), 0)
    eff = p.step(Received("c", ResolveReply((Outcome(42, OutcomeKind.ABORTED),))), 1)
    assert eff.persist == (DiscardedRecord(42), ForgottenRecord(42)) and not p.is_locked("k")
    # It voted yes once: asked about it later, it must not refuse it (which would answer ABORTED for
    # a transaction that may have committed), only say it does not know.
    eff = p.step(Received("r1", ResolveRequest((42,))), 2)
    assert eff.send[0].msg == ResolveReply((Outcome(42, OutcomeKind.UNKNOWN),)) and eff.persist == ()


def test_unknown_membership_does_not_trust_a_presumed_abort() -> None:
    """After a restart (membership unknown) the coordinator's ABORTED is not acted on; a peer's is."""
    rec = PreparedRecord(42, (Put("k", b"v"),), True, frozenset({"k"}), NODES)
    p = Participant("r3", "c", NODES, ParticipantDisk(prepared=(rec,)), timeouts=T)
    eff = p.step(Received("c", ResolveReply((Outcome(42, OutcomeKind.ABORTED),))), 1)
    assert eff.persist == () and p.is_locked("k")
    eff = p.step(Received("r1", ResolveReply((Outcome(42, OutcomeKind.ABORTED),))), 2)
    assert eff.persist and not p.is_locked("k")


def test_resolve_queries_go_only_to_the_transactions_participants() -> None:
    """Only a transaction's participants may refuse it, so only they are asked."""
    p = Participant("r1", "c", ("r1", "r2", "r3", "r4"), ParticipantDisk(), timeouts=T)
    p.step(Received("c", Prepare(7, put("k"), ("r1", "r2")), {}), 0)
    p.step(Tick(), T.resolve_after_ms)
    eff = p.step(Tick(), T.resolve_after_ms + T.resolve_interval_ms)
    asked = sorted(e.dst for e in eff.send if isinstance(e.msg, ResolveRequest))
    assert asked == ["c", "r2"]


def test_commit_to_a_replica_that_left_does_not_hold_up_end() -> None:
    """A participant dropped from the view no longer holds up END (it rejoins by catching up)."""
    c = started()
    renew(c, 0, "r1", "r2", "r3")
    now = EXPIRY - 10
    c.step(ClientTxn(1, "cl", 1, put("k"), now + 10_000), now)
    txid = next(iter(c._pending))
    for r in NODES:
        c.step(Received(r, Vote(txid, True, True)), now)
    renew(c, now, "r1", "r2")
    c.step(Received("r1", Ack(txid, 1)), now + 1)
    c.step(Received("r2", Ack(txid, 1)), now + 2)
    assert c.unended == 1  # waiting for r3
    eff = c.step(Tick(), EXPIRY)
    assert c.unended == 0 and eff.persist_lazy  # END once r3 left the view
    assert not any(isinstance(e.msg, Commit) and e.dst == "r3" for e in c.step(Tick(), EXPIRY + 500).send)


def test_outside_replica_never_asks_to_be_woken_in_the_past() -> None:
    """A replica that asked to join and went back to fetching (no member answers) must not keep the
    expired join timer as its wake time: its shell would tick in a loop (found by the simulator,
    tests/sim/regressions.py)."""
    p = Participant("r3", "c", NODES, ParticipantDisk(), timeouts=T)
    p.step(Received("c", NotMember(2, ("r1", "r2"))), 0)
    eff = p.step(Tick(), 1)
    (fetch,) = [e for e in eff.send if isinstance(e.msg, FetchRequest)]
    eff = p.step(Received(fetch.dst, FetchReply((), 0, True)), 2)
    assert [e.msg for e in eff.send] == [Join(0)]
    p.step(Tick(), 3)  # fetches again before the next Join; nobody answers (members down)
    for now in range(4, 4 * T.join_timeout_ms, 97):
        eff = p.step(Tick(), now)
        assert eff.wake_at_ms is not None and eff.wake_at_ms > now, (now, eff.wake_at_ms)


def _dropped_in_doubt() -> tuple[Participant, int]:
    """r3 voted yes on txid 42 with a lease from request 100, then heard nothing (cut off from the
    coordinator): meanwhile 42 may have committed, r3 been dropped, and 42 ENDed without r3's ack."""
    p = Participant("r3", "c", NODES, ParticipantDisk(), timeouts=T)
    p.step(Received("c", LeaseGrant(1, NODES, T.read_lease_ms, 100)), 101)
    eff = p.step(Received("c", Prepare(42, put("k"), NODES), {}), 102)
    vote = eff.send[0].msg
    assert isinstance(vote, Vote) and vote.yes
    return p, 42


def test_member_with_a_live_lease_trusts_the_coordinators_abort() -> None:
    p, txid = _dropped_in_doubt()
    eff = p.step(Received("c", ResolveReply((Outcome(txid, OutcomeKind.ABORTED),))), 100 + T.read_lease_ms - 1)
    assert eff.persist and not p.is_locked("k")


def test_member_without_a_lease_does_not_trust_a_presumed_abort() -> None:
    """A replica that lost its lease may have been dropped without knowing it, and the commit ENDed
    without its ack: the coordinator's ABORTED is then presumed, not a decision. It waits until it
    renews its lease (still a member: then the answer is true) or learns it is outside (then it
    discards). Found by the simulator (seeds 569, 619: an AbortedRecord for a committed transaction)."""
    p, txid = _dropped_in_doubt()
    late = 100 + T.read_lease_ms
    eff = p.step(Received("c", ResolveReply((Outcome(txid, OutcomeKind.ABORTED),))), late)
    assert eff.persist == () and p.is_locked("k")
    p.step(Received("c", NotMember(2, ("r1", "r2"))), late + 1)
    eff = p.step(Received("c", ResolveReply((Outcome(txid, OutcomeKind.ABORTED),))), late + 2)
    assert eff.persist == (DiscardedRecord(txid), ForgottenRecord(txid)) and not p.is_locked("k")


def test_late_yes_from_a_dropped_replica_gets_no_presumed_abort() -> None:
    """A yes for a transaction that committed and ENDed without the voter (dropped from the view):
    answering ABORT would make the voter, still believing it is a member, abort a committed
    transaction. Only members get that answer (their commits wait for their acks)."""
    c = started()
    renew(c, 0, "r1", "r2", "r3")
    now = EXPIRY - 10
    c.step(ClientTxn(1, "cl", 1, put("k"), now + 10_000), now)
    txid = next(iter(c._pending))
    for r in NODES:
        c.step(Received(r, Vote(txid, True, True)), now)
    renew(c, now, "r1", "r2")
    c.step(Received("r1", Ack(txid, 1)), now + 1)
    c.step(Received("r2", Ack(txid, 1)), now + 2)
    c.step(Tick(), EXPIRY)  # r3 dropped: the commit ENDs without it
    assert c.unended == 0 and "r3" not in c.members
    eff = c.step(Received("r3", Vote(txid, True, True)), EXPIRY + 1)  # a duplicate of its old vote
    assert not any(isinstance(e.msg, Abort) for e in eff.send)
    eff = c.step(Received("r1", Vote(txid, True, True)), EXPIRY + 2)  # a member applied it: ignores ABORT
    assert [e.msg for e in eff.send] == [Abort(txid)]


def test_member_ignores_a_late_fetch_reply() -> None:
    """A fetch answered after the replica rejoined (the request went out while it caught up) must not
    be applied: a member applies commits only, in revision order, and its prepared transactions hold
    the next revisions. Found by the simulator (seed 937: Internal, "already applied 7 without it")."""
    p = Participant("r3", "c", NODES, ParticipantDisk(applied_revision=6), timeouts=T)
    p.step(Received("c", NotMember(2, ("r1", "r2"))), 0)
    p.step(Tick(), 1)  # FetchRequest(7) to a member that answers late
    p.step(Received("r1", FetchReply((), 6, True)), 2)  # another member: level -> Join
    p.step(Received("c", JoinReady(6, 99)), 3)
    p.step(Received("c", LeaseGrant(3, NODES, T.read_lease_ms, 0)), 4)
    assert p.membership is Membership.MEMBER
    p.step(Received("c", Prepare(100, put("k"), NODES), {}), 5)
    eff = p.step(Received("r2", FetchReply(((7, (Put("k", b"v"),)),), 7, True)), 6)  # the late answer
    assert eff.persist == () and p.applied_revision == 6
    eff = p.step(Received("c", Commit(100, 7)), 7)
    assert p.applied_revision == 7 and not p.is_locked("k")


def test_caught_up_answering_an_earlier_join_ready_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """A join times out and the replica asks again; the JoinReady of both attempts may reach it, and it
    answers the older one first. That CaughtUp is below the held revision: not a peer's mistake, and
    not a reason to refuse the join whose own CaughtUp follows (found by the simulator, seed 21965)."""
    c = started()
    renew(c, 0, "r1", "r2", "r3")
    renew(c, 900, "r1", "r2")
    c.step(Tick(), EXPIRY)  # r3 out
    now = EXPIRY + 10
    c.step(Received("r3", Join(0)), now)  # JoinReady(0) goes out; the join then times out
    now += T.join_timeout_ms
    c.step(Tick(), now)
    assert joining(c) is None
    c.step(ClientTxn(1, "cl", 1, put("k"), now + 5000), now)
    txid = next(iter(c._pending))
    for r in ("r1", "r2"):
        c.step(Received(r, Vote(txid, True, True)), now + 1)
    for r in ("r1", "r2"):
        c.step(Received(r, Ack(txid, 1)), now + 2)
    eff = c.step(Received("r3", Join(0)), now + 3)
    assert [e.msg for e in eff.send] == [JoinReady(1, c.epoch << 40 | 1)]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        eff = c.step(Received("r3", CaughtUp(0)), now + 4)  # its answer to the first JoinReady
    assert eff.persist == () and joining(c) == "r3" and not caplog.records
    eff = c.step(Received("r3", CaughtUp(1)), now + 5)
    assert ViewRecord(3, NODES) in eff.persist and joining(c) is None


def test_outside_replica_with_a_commit_waiting_for_order_keeps_fetching() -> None:
    """A replica heard COMMIT(42, revision 2) before revision 1 (it waits for order), then learned it is
    outside. The member it fetched from had not applied revision 1 yet either, so it answered "complete
    through 0". The replica must not take that as level and wait for 42 forever: a decided revision above
    what it applied is history a member has or will have, so it fetches until it has it; 42's effect comes
    with it, and then it asks to join (found by the simulation: tests/sim/regressions.py, seed 6664)."""
    p, txid = _dropped_in_doubt()
    p.step(Received("c", Commit(txid, 2)), 103)
    p.step(Received("c", NotMember(2, ("r1", "r2"))), 104)
    eff = p.step(Tick(), 105)
    (fetch,) = [e for e in eff.send if isinstance(e.msg, FetchRequest)]
    sent = [e.msg for e in p.step(Received(fetch.dst, FetchReply((), 0, True)), 106).send]
    for now in range(107, 107 + 4 * T.resolve_interval_ms, 7):
        sent += [e.msg for e in p.step(Tick(), now).send]
    assert FetchRequest(1) in sent and Join(0) not in sent
    history = ((1, (Put("a", b"1"),)), (2, (Put("k", b"v"),)))
    eff = p.step(Received("r1", FetchReply(history, 2, True)), 300)
    assert DiscardedRecord(txid) in eff.persist and p.applied_revision == 2
    assert [e.msg for e in eff.send] == [Join(2)]


def test_a_snapshot_not_ahead_of_the_joiner_is_dropped_for_fetching() -> None:
    p, fetch = _outside_fetching(9)
    _, src = _compacted_everywhere(p, fetch, 2)
    eff = p.step(Received(src, SnapshotPage(9, "", (), False)), 3)
    assert eff.persist == () and p.applied_revision == 9
    assert [e.msg for e in eff.send if isinstance(e.msg, FetchRequest)] == [FetchRequest(10)]


def _level_and_joining(applied: int) -> tuple[Participant, Envelope]:
    """An outside replica at `applied` that fetched, heard it is level, and asked to join at t=2."""
    p, fetch = _outside_fetching(applied)
    assert fetch.msg == FetchRequest(applied + 1)
    eff = p.step(Received(fetch.dst, FetchReply((), applied, True)), 2)
    assert [e.msg for e in eff.send] == [Join(applied)]
    return p, fetch


def test_a_snapshot_begun_after_asking_to_join_leaves_no_past_timer() -> None:
    """The network duplicated a fetch: its second answer says level again, its third finds the member
    compacted past us meanwhile, and so has the other member, so the replica takes a snapshot after
    all. While it does, the timer of the Join it sent must not count: past, it would have the shell
    tick in a loop at one instant (found by the simulation: tests/sim/regressions.py, seed 7012185)."""
    p, fetch = _level_and_joining(9)
    assert p.step(Received(fetch.dst, FetchReply((), 9, True)), 3).send == ()  # asked to join already
    compacted = ErrorInfo.of(Compacted("changes from revision 10 were compacted", compact_revision=11))
    eff = p.step(Received(fetch.dst, FetchReply((), 0, False, compacted)), 4)
    assert eff.send == ()  # the other member may have it: asked when the Join is answered
    src = _other(fetch.dst)
    eff = p.step(Received(src, FetchReply((), 0, False, compacted)), 4)  # it has compacted too
    assert [e.msg for e in eff.send] == [SnapshotRequest(0, "")]
    for now in range(5, 5 + 2 * T.join_timeout_ms):
        eff = p.step(Tick(), now)
        assert eff.wake_at_ms is not None and eff.wake_at_ms > now, now
        assert Join(9) not in [e.msg for e in eff.send]  # the snapshot comes first
    eff = p.step(Received(src, SnapshotPage(12, "", (KeyValue("a", b"v", 12, 12, 1),), False)), 600)
    assert p.applied_revision == 12 and [e.msg for e in eff.send if e.dst != "c"] == [FetchRequest(13)]


def test_an_error_answering_an_older_fetch_is_ignored() -> None:
    """A fetch answered twice: the first answer brought the missing revision, so the second, an error
    (the member compacted it meanwhile), answers a request already satisfied: no snapshot for it."""
    p, fetch = _outside_fetching(8)
    eff = p.step(Received(fetch.dst, FetchReply(((9, (Put("a", b"1"),)),), 9, True)), 2)
    assert p.applied_revision == 9 and [e.msg for e in eff.send] == [Join(9)]
    compacted = ErrorInfo.of(Compacted("changes from revision 9 were compacted", compact_revision=10))
    eff = p.step(Received(fetch.dst, FetchReply((), 0, False, compacted)), 3)
    assert eff.send == () and eff.persist == ()
