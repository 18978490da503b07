"""The simulation's checkers catch what they claim to (DESIGN.md "Invariants checked after every test").

Each test breaks one guarantee, in what the cluster observed or (for the lease and sequential-key checkers of
`corral.sim.lease_checkers`) in the cores themselves, patched for the test, and shows that the checker meant
for it says so. Every patch also passes the checkers that come before it, so each test proves its own
checker, not a neighbour.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pytest

from corral.core.leases import LEASE_TTL_MIN_MS, Lease, LeaseInfo, LeaseTable
from corral.core.messages import TxnSpec
from corral.errors import CorralError
from corral.model import KeyValue, PreparedWrite, Put, PutSequential, sequential_key
from corral.sim.checkers import InvariantViolation, OpRecord, ServedRead
from corral.sim.cluster import SimCluster
from corral.sim.config import SimConfig
from corral.sim.network import NodeClock
from tests.sim.test_twopc_sim import (
    LEASE_TTL_MS,
    STEP_MAX_MS,
    _end_revision,
    _granted,
    _lease_done,
    _members,
    _settle,
    _settle_op,
)


@pytest.fixture
def sim() -> Iterator[SimCluster]:
    cluster = SimCluster(0, SimConfig.scripted()).start()
    yield cluster
    cluster.close()


def test_checkers_catch_a_diverged_replica(sim: SimCluster) -> None:
    _settle(sim, sim.put("k", b"v"))
    storage = sim.replicas["r3"].storage
    assert storage is not None
    storage.store.put("k", b"evil")
    with pytest.raises(InvariantViolation, match="replica=r3 is at revision 2"):
        sim.check()


def test_checkers_catch_a_non_linearizable_read(sim: SimCluster) -> None:
    _settle(sim, sim.put("k", b"v"))
    ghost = OpRecord("rd9", "get", ("k",), sim.now + 1, replica="r1", status="ok", ret_ms=sim.now + 2, output=b"ghost")
    sim.history.append(ghost)
    with pytest.raises(InvariantViolation, match="not linearizable"):
        sim.check()


def test_checkers_catch_a_lost_acknowledged_write(sim: SimCluster) -> None:
    _settle(sim, sim.put("k", b"v"))
    op = sim.put("k", b"w")
    _settle(sim, op)
    assert op.result is not None
    sim.commit_records.pop()  # as if the decision never reached the log
    with pytest.raises(InvariantViolation, match="no decision"):
        sim.check()


# -- the read-lease checker catches what it claims to ----------------------------------------------------


def test_checkers_catch_a_read_served_outside_the_view(sim: SimCluster) -> None:
    _settle(sim, sim.put("k", b"v"))
    sim.served_reads.append(ServedRead("r3", "k", b"v", sim.now, 1, ("r1", "r2")))
    with pytest.raises(InvariantViolation, match="lease rule"):
        sim.check()


def test_checkers_catch_a_stale_served_read(sim: SimCluster) -> None:
    _settle(sim, sim.put("k", b"v"))
    _settle(sim, sim.put("k", b"w"))
    sim.served_reads.append(ServedRead("r1", "k", b"v", sim.now, 2, sim.names))
    with pytest.raises(InvariantViolation, match="stale read"):
        sim.check()


def test_clock_drift_beyond_the_lease_margin_is_caught() -> None:
    """The lease rule holds only while clocks drift less than the coordinator's margin. A replica whose
    clock runs at half speed still believes its lease holds after the coordinator dropped it: its reads
    are then stale, and the checkers say so (the random runs keep drift within the margin)."""
    sim = SimCluster(0, SimConfig.scripted())
    r3 = sim.replicas["r3"]
    r3.clock = NodeClock(r3.clock.offset_ms, 0.5)
    sim.start()
    try:
        _settle(sim, sim.put("k", b"v1"))
        sim.run_for(100)
        sim.disconnect("r3", "c")
        assert sim.run_until(lambda: "r3" not in _members(sim), STEP_MAX_MS) and sim.can_serve("r3")
        _settle_op(sim, sim.put("k", b"v2"))
        stale = sim.read("k", replica="r3", client="reader", timeout_ms=50)
        _settle_op(sim, stale)
        assert stale.status == "ok" and stale.output == b"v1"
        sim.reconnect("r3", "c")
        sim.quiesce(STEP_MAX_MS)
        with pytest.raises(InvariantViolation, match="lease rule"):
            sim.check()
    finally:
        sim.close()


# -- the lease and sequential-key checkers catch what they claim to ----------------------------------------


def _expire(sim: SimCluster, lease: int) -> None:
    assert sim.run_until(lambda: _end_revision(sim, lease) is not None, STEP_MAX_MS)
    sim.quiesce(STEP_MAX_MS)


def test_a_lease_end_that_leaves_a_key_behind_is_caught(sim: SimCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every replica resolves a lease's deletion to all of its keys but the last: they agree, so nothing in
    the protocol stops it, and the model (which resolves it the same way) agrees too."""
    evaluate = TxnSpec.evaluate

    def forgetful(
        self: TxnSpec, reads: Mapping[str, KeyValue | None], lease_keys: Mapping[int, Sequence[str]]
    ) -> tuple[bool, tuple[PreparedWrite, ...]]:
        return evaluate(self, reads, {lease: list(keys)[:-1] for lease, keys in lease_keys.items()})

    monkeypatch.setattr(TxnSpec, "evaluate", forgetful)
    lease = _granted(sim)
    for key in ("a", "b"):
        _settle_op(sim, sim.put(key, b"1", lease=lease))
    _expire(sim, lease)
    with pytest.raises(InvariantViolation, match=r"check_lease_ends: .*keys holding it just before"):
        sim.check()


def test_a_put_committed_to_an_ended_lease_is_caught(sim: SimCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator forgets to check that a put's lease is live: a key attaches to an ended lease."""
    monkeypatch.setattr(LeaseTable, "live", lambda self, lease_id: True)
    lease = _granted(sim, ttl_ms=LEASE_TTL_MIN_MS)
    _expire(sim, lease)
    _settle_op(sim, sim.put("z", b"orphan", lease=lease))
    sim.quiesce(STEP_MAX_MS)
    with pytest.raises(InvariantViolation, match=r"check_no_orphans: .*an orphan ephemeral key"):
        sim.check()


def test_a_misnamed_sequential_key_is_caught(sim: SimCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas name a sequential put after the next revision (the model, which names it the same way,
    agrees with them)."""
    monkeypatch.setattr(
        PutSequential,
        "materialize",
        lambda self, revision: Put(sequential_key(self.prefix, revision + 1), self.value, self.lease),
    )
    _settle_op(sim, sim.submit(TxnSpec(on_success=(PutSequential("q/", b"x"),)), kind="seq"))
    sim.quiesce(STEP_MAX_MS)
    with pytest.raises(InvariantViolation, match=r"check_sequential: .*should have created 'q/0+1'"):
        sim.check()


def test_a_kept_alive_lease_that_ends_is_caught(sim: SimCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator acknowledges keepalives without restarting the lease's TTL."""

    def forgetful(self: LeaseTable, lease_id: int, now_ms: int) -> Lease | None:
        lease = self.get(lease_id)
        return None if lease is None or lease.ending else lease

    monkeypatch.setattr(LeaseTable, "keepalive", forgetful)
    lease = _granted(sim)
    sim.sessions.keep_alive(lease, LEASE_TTL_MS)
    _expire(sim, lease)
    with pytest.raises(InvariantViolation, match=r"check_kept_alive: .*a lease kept alive is ending"):
        sim.check()


def test_a_session_that_loses_its_lease_while_renewing_is_caught(sim: SimCluster) -> None:
    """The client's side of check 11, on virtual time: a renewal acknowledged (as if sent just before the
    deletion began) means the deletion came before the TTL could have run out on the coordinator's clock."""
    lease = _granted(sim)
    sim.sessions.keep_alive(lease, LEASE_TTL_MS)
    sim.run_for(2 * LEASE_TTL_MS)
    sim.sessions.stop_keeping_alive()
    _expire(sim, lease)
    sim.check()
    renewed = [op for op in sim.workload.lease_history if op.op == "keepalive" and op.info is not None][-1]
    deleted = next(s for s in sim.rec.lease_steps if s.kind == "delete" and s.lease == lease)
    renewed.call_ms = deleted.at_ms - 1
    with pytest.raises(InvariantViolation, match=r"check_kept_alive: .*before its TTL of 300 ms could have run out"):
        sim.check()


def test_a_revoke_answered_before_the_keys_are_gone_is_caught(sim: SimCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator answers a revoke at once instead of once the lease's keys are deleted."""
    request = LeaseTable.request

    def hasty(self: LeaseTable, op: str, lease_id: int, ttl_ms: int, *rest: int) -> LeaseInfo | CorralError | None:
        answer = request(self, op, lease_id, ttl_ms, *rest)
        lease = self.get(lease_id)
        if answer is None and lease is not None:
            lease.waiters.remove(rest[0])
            return LeaseInfo(lease.id, lease.ttl_ms, 0)
        return answer

    monkeypatch.setattr(LeaseTable, "request", hasty)
    lease = _granted(sim)
    _settle_op(sim, sim.put("a", b"1", lease=lease))
    revoke = sim.sessions.revoke(lease)
    _lease_done(sim, revoke)
    _expire(sim, lease)
    with pytest.raises(InvariantViolation, match=r"check_revokes: .*answered, but the lease's end was logged"):
        sim.check()
