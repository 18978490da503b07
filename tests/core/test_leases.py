"""Leases and sequential keys in the 2PC cores (core/leases.py and the coordinator/participant rules)."""

from __future__ import annotations

import pytest

from corral import InvalidArgument
from corral.core.leases import LeaseInfo
from corral.core.messages import (
    Abort,
    ClientLease,
    ClientTxn,
    Commit,
    Effects,
    Envelope,
    ErrorInfo,
    Join,
    LeaseRequest,
    Prepare,
    Received,
    Tick,
    TxnResult,
    TxnSpec,
    Vote,
    writes_digest,
)
from corral.core.twopc_coordinator import Coordinator
from corral.core.twopc_participant import Participant
from corral.errors import Unavailable
from corral.limits import DEFAULT_LIMITS, Timeouts
from corral.model import Compare, CompareOp, CompareTarget, Delete, DeleteByLease, Put, PutSequential
from corral.records import CommittedRecord, CoordinatorDisk, LeaseEndRecord, LeaseRecord, ParticipantDisk

NODES = ("r1", "r2", "r3")
T = Timeouts(prepare_timeout_ms=100, commit_retry_ms=50, resolve_after_ms=30, resolve_interval_ms=30)


def coordinator(disk: CoordinatorDisk | None = None, now: int = 0) -> Coordinator:
    c = Coordinator("c", NODES, disk or CoordinatorDisk(), timeouts=T)
    c.start(now)
    return c


def grant(c: Coordinator, ttl_ms: int, now: int = 0) -> int:
    eff = c.step(ClientLease(1, "grant", ttl_ms=ttl_ms), now)
    info = eff.reply[0].result
    assert isinstance(info, LeaseInfo) and eff.persist == (LeaseRecord(info.id, ttl_ms),)
    return info.id


def vote_all(c: Coordinator, txid: int, now: int, digest: str = "d") -> list[TxnResult | LeaseInfo | ErrorInfo]:
    replies: list[TxnResult | LeaseInfo | ErrorInfo] = []
    for r in NODES:
        replies += [x.result for x in c.step(Received(r, Vote(txid, True, True, digest=digest)), now).reply]
    return replies


def test_lease_expiry_deletes_its_keys_in_one_transaction() -> None:
    """An expired lease ends through one DeleteByLease transaction; LeaseEndRecord is logged with it."""
    c = coordinator()
    lease = grant(c, 1000)
    eff = c.step(Tick(), 1000)
    prepares = [e.msg for e in eff.send if isinstance(e.msg, Prepare)]
    assert len(prepares) == 3
    assert prepares[0].txn == TxnSpec(on_success=(DeleteByLease(lease),))
    txid = prepares[0].txid
    for r in NODES:
        eff = c.step(Received(r, Vote(txid, True, True, digest="x")), 1001)
    assert LeaseEndRecord(lease) in eff.persist
    assert c.leases.get(lease) is None


def test_keepalive_restarts_the_ttl_and_an_ended_lease_cannot_be_kept() -> None:
    c = coordinator()
    lease = grant(c, 1000)
    eff = c.step(ClientLease(2, "keepalive", lease_id=lease), 900)
    assert eff.reply[0].result == LeaseInfo(lease, 1000, 1000)
    assert not any(isinstance(e.msg, Prepare) for e in c.step(Tick(), 1500).send)  # not expired yet
    c.step(ClientLease(3, "revoke", lease_id=lease), 1600)
    eff = c.step(ClientLease(4, "keepalive", lease_id=lease), 1601)
    err = eff.reply[0].result
    assert isinstance(err, ErrorInfo) and err.code == "lease_expired"


def test_revoke_is_answered_once_the_keys_are_deleted() -> None:
    c = coordinator()
    lease = grant(c, 10_000)
    eff = c.step(ClientLease(7, "revoke", lease_id=lease), 5)
    assert eff.reply == ()  # not yet: the deletion is in flight
    (txid,) = {e.msg.txid for e in eff.send if isinstance(e.msg, Prepare)}
    replies = vote_all(c, txid, 6)
    assert replies == [LeaseInfo(lease, 10_000, 0)]


def test_put_to_an_ended_or_unknown_lease_is_refused() -> None:
    c = coordinator()
    eff = c.step(ClientTxn(1, "cl", 1, TxnSpec(on_success=(Put("k", b"v", 12345),)), 1000), 0)
    err = eff.reply[0].result
    assert isinstance(err, ErrorInfo) and err.code == "lease_expired" and not eff.send


def test_a_lease_ends_only_after_in_flight_attachments_settle() -> None:
    """No key is left behind: the deletion waits for a transaction attaching a key to the lease."""
    c = coordinator()
    lease = grant(c, 1000)
    eff = c.step(ClientTxn(2, "cl", 1, TxnSpec(on_success=(Put("k", b"v", lease),)), 5000), 990)
    (put_txid,) = {e.msg.txid for e in eff.send if isinstance(e.msg, Prepare)}
    eff = c.step(Tick(), 1000)  # expired, but a put attaching to it is in flight
    assert not any(isinstance(e.msg, Prepare) for e in eff.send)
    sends: list[Envelope] = []
    for r in NODES:
        eff = c.step(Received(r, Vote(put_txid, True, True, digest="d")), 1001)
        sends += eff.send
    assert eff.reply[0].result == TxnResult(1, True)
    # The deletion starts in the very step that settled the last attachment.
    deletes = [e.msg for e in sends if isinstance(e.msg, Prepare) and e.msg.txid != put_txid]
    assert deletes and deletes[0].txn.leases_deleted() == (lease,)


def test_restart_gives_live_leases_a_fresh_ttl() -> None:
    """A coordinator restart must not expire every session."""
    disk = CoordinatorDisk.from_records([LeaseRecord(5, 1000), LeaseRecord(6, 1000), LeaseEndRecord(6)])
    c = coordinator(disk, now=50_000)
    assert c.leases.get(6) is None
    lease = c.leases.get(5)
    assert lease is not None and lease.expires_at_ms == 51_000
    assert not any(isinstance(e.msg, Prepare) for e in c.step(Tick(), 50_999).send)


def test_replicas_that_disagree_on_the_writes_abort() -> None:
    """Every participant must vote yes with the same digest, or the transaction aborts."""
    c = coordinator()
    eff = c.step(ClientTxn(1, "cl", 1, TxnSpec(on_success=(Put("k", b"v"),)), 1000), 0)
    (txid,) = {e.msg.txid for e in eff.send if isinstance(e.msg, Prepare)}
    c.step(Received("r1", Vote(txid, True, True, digest="a")), 1)
    c.step(Received("r2", Vote(txid, True, True, digest="a")), 1)
    eff = c.step(Received("r3", Vote(txid, True, True, digest="b")), 1)
    err = eff.reply[0].result
    assert isinstance(err, ErrorInfo) and "disagree" in err.message and not eff.persist


def test_participant_resolves_delete_by_lease_to_the_keys_it_holds() -> None:
    p = Participant("r1", "c", NODES, ParticipantDisk(), timeouts=T)
    txn = TxnSpec(on_success=(DeleteByLease(9),))
    eff = p.step(Received("c", Prepare(1, txn, NODES), {}, {9: ["a", "b"]}), 0)
    vote = eff.send[0].msg
    assert isinstance(vote, Vote) and vote.yes
    assert vote.digest == writes_digest((Delete("a"), Delete("b")))
    assert p.is_locked("a") and p.is_locked("b")


def test_participant_refuses_a_lease_deletion_while_a_prepared_put_attaches_to_it() -> None:
    """The key set of a lease is final only when no prepared put may still attach a key to it."""
    p = Participant("r1", "c", NODES, ParticipantDisk(), timeouts=T)
    p.step(Received("c", Prepare(1, TxnSpec(on_success=(Put("x", b"1", 9),)), NODES), {}), 0)
    eff = p.step(Received("c", Prepare(2, TxnSpec(on_success=(DeleteByLease(9),)), NODES), {}, {9: []}), 1)
    vote = eff.send[0].msg
    assert isinstance(vote, Vote) and not vote.yes and vote.reason is not None


def test_sequential_put_is_named_by_its_revision_and_locks_its_prefix() -> None:
    """A prepared sequential put may create any name under its prefix: reads there wait; at commit it
    is named prefix + zero-padded revision."""
    p = Participant("r1", "c", NODES, ParticipantDisk(), timeouts=T)
    p.step(Received("c", Prepare(1, TxnSpec(on_success=(PutSequential("/q/item-", b"x"),)), NODES), {}), 0)
    assert p.is_locked("/q/item-00000000000000000001") and p.any_locked_with_prefix("/q/")
    assert not p.is_locked("/q/other") and not p.any_locked_with_prefix("/r/")
    # A compare on a name it might create must wait too: the vote is no...
    name = "/q/item-00000000000000000005"
    cas = TxnSpec(compares=(Compare(name, CompareTarget.VERSION, CompareOp.EQUAL, 0),))
    eff = p.step(Received("c", Prepare(2, cas, NODES), {name: None}), 1)
    assert isinstance(eff.send[0].msg, Vote) and not eff.send[0].msg.yes
    # ...but a key that can never be its name (not prefix + 20 digits) is not held up.
    other = TxnSpec(on_success=(Put("/q/item-head", b"1"),))
    eff = p.step(Received("c", Prepare(3, other, NODES), {}), 1)
    assert isinstance(eff.send[0].msg, Vote) and eff.send[0].msg.yes
    eff = p.step(Received("c", Commit(1, 1)), 2)
    assert eff.persist == (CommittedRecord(1, 1, (Put("/q/item-00000000000000000001", b"x"),)),)
    p.step(Received("c", Commit(3, 2)), 3)
    assert not p.any_locked_with_prefix("/q/")


def test_clients_cannot_send_delete_by_lease() -> None:
    with pytest.raises(InvalidArgument, match="not a client operation"):
        TxnSpec(on_success=(DeleteByLease(3),)).validate(DEFAULT_LIMITS)
    TxnSpec(on_success=(DeleteByLease(3),)).validate(DEFAULT_LIMITS, internal=True)


def _prepared(eff: Effects) -> set[int]:
    return {e.msg.txid for e in eff.send if isinstance(e.msg, Prepare)}


_NO = ErrorInfo.of(Unavailable("a lease being deleted is still in use on r1; retry"))


def test_a_retried_lease_deletion_never_asks_to_be_woken_in_the_past() -> None:
    """An aborted deletion of a lease's keys is retried commit_retry_ms later. Once the retry has started, its
    time must not stay the core's wake time: a wake time in the past makes the shell's ticker tick in a loop
    (a spinning CPU). Found by the simulation (tests/sim/regressions.py, seed 19)."""
    c = coordinator()
    grant(c, 1000)
    (txid,) = _prepared(c.step(Tick(), 1000))
    assert c.step(Received("r1", Vote(txid, False, reason=_NO)), 1001).wake_at_ms == 1001 + T.commit_retry_ms
    eff = c.step(Tick(), 1051)
    assert _prepared(eff) and txid not in _prepared(eff)  # the retry
    assert eff.wake_at_ms is not None and eff.wake_at_ms > 1051


def test_a_lease_deletion_held_by_a_join_never_asks_to_be_woken_in_the_past() -> None:
    """The same while a join holds the retry back: the join's end (a step) starts it, not a timer."""
    c = coordinator()
    for t in (1000, 2000):  # r1 and r2 renew their read leases; r3 falls silent and is dropped
        for r in ("r1", "r2"):
            c.step(Received(r, LeaseRequest(t, 0)), t)
    c.step(Tick(), 2300)
    assert c.members == ("r1", "r2")
    grant(c, 1000, now=2300)
    (txid,) = _prepared(c.step(Tick(), 3300))
    c.step(Received("r1", Vote(txid, False, reason=_NO)), 3301)  # retry at 3351
    c.step(Received("r3", Join(0)), 3310)
    assert c.joining == "r3"
    eff = c.step(Tick(), 3360)
    assert not _prepared(eff) and eff.wake_at_ms is not None and eff.wake_at_ms > 3360


def test_sequential_put_votes_no_while_a_prepared_transaction_holds_a_name_it_may_take() -> None:
    """Locks are mutual: as a compare votes no while a sequential put that may create its name is prepared,
    a sequential put votes no while a prepared transaction holds a name it may create (prefix + 20 digits
    above the applied revision). Else the put commits first, creating the name the compare found absent:
    the compare's outcome depends on when each replica evaluated it (found by the simulation:
    tests/sim/regressions.py, seed 270)."""
    p = Participant("r1", "c", NODES, ParticipantDisk(applied_revision=1), timeouts=T)
    name = "/q/item-00000000000000000002"
    probe = TxnSpec(compares=(Compare(name, CompareTarget.VERSION, CompareOp.EQUAL, 0),))
    eff = p.step(Received("c", Prepare(1, probe, NODES), {name: None}), 0)
    assert isinstance(eff.send[0].msg, Vote) and eff.send[0].msg.yes
    seq = TxnSpec(on_success=(PutSequential("/q/item-", b"x"),))
    eff = p.step(Received("c", Prepare(2, seq, NODES), {}), 1)
    assert isinstance(eff.send[0].msg, Vote) and not eff.send[0].msg.yes
    # Keys it can never create do not hold it up: at or below the applied revision, or under another prefix.
    p.step(Received("c", Abort(1)), 2)
    taken = "/q/item-00000000000000000001"
    p.step(Received("c", Prepare(3, TxnSpec(on_success=(Put(taken, b"1"), Put("/r/x", b"2"))), NODES), {}), 3)
    for txid, prefix in ((4, "/q/item-"), (5, "/r/")):
        eff = p.step(Received("c", Prepare(txid, TxnSpec(on_success=(PutSequential(prefix, b"y"),)), NODES), {}), 4)
        assert isinstance(eff.send[0].msg, Vote) and eff.send[0].msg.yes, prefix
