"""Issue 3's acceptance, against real processes: 2PC over gRPC, logs, recovery, kill -9.

Each test starts a fresh cluster (a coordinator and 3 replicas) in a temp dir on free ports. Failpoints
stop a process at an exact protocol step (see corral/services/failpoints.py).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from corral import Client, Compare, CompareOp, CompareTarget, Conflict, KeyValue, Put, Unavailable
from corral.config import free_port
from tests.integration.harness import TEST_TIMEOUTS, LocalCluster, local_cluster, wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path) as c:
        c.start()
        yield c


def _value(kv: KeyValue | None) -> bytes | None:
    """The value read; None for a key that is not there."""
    return None if kv is None else kv.value


def _values(cluster: LocalCluster, key: str) -> set[bytes | None]:
    """The key as every replica holds it, read without waiting (serializable) from each one."""
    out = set()
    for node in cluster.config.replicas:
        from corral.client.aio import Endpoints

        endpoints = Endpoints(cluster.config.coordinator.address, (node.address,), ())
        with cluster.client(timeout=5) as c:
            c.aio.endpoints = endpoints
            kv = c.get(key, serializable=True)
        out.add(None if kv is None else kv.value)
    return out


def test_put_get_del_survive_a_restart_of_every_process(cluster: LocalCluster) -> None:
    """Seed 003's promise: durable put/del/get across restarts (clean stop, then kill -9)."""
    with cluster.client() as c:
        for i in range(20):
            c.put(f"/k/{i}", f"v{i}")
        c.delete("/k/3")
        rev = c.put("/k/0", "changed")
    cluster.stop()
    cluster.start()
    with cluster.client() as c:
        assert _value(c.get("/k/0")) == b"changed"
        assert c.get("/k/3") is None
        assert len(c.range("/k/")) == 19
        c.put("/k/after", "x")
    cluster.kill()
    cluster.start()
    with cluster.client() as c:
        assert _value(c.get("/k/after")) == b"x"
        assert _value(c.get("/k/0", revision=rev - 1)) == b"v0"
    revision, _ = cluster.wait_converged()
    assert revision == rev + 1


def test_two_clients_race_on_one_key_first_wins(cluster: LocalCluster) -> None:
    """Seed 003: of two writes in flight on one key, the first proceeds, the other gets Conflict."""
    # Hold the first write in flight: replica-3 takes 1 s to answer the coordinator.
    cluster.failpoint("replica-3", "replica.recv.coordinator", "1*delay(1000)")
    first_done: list[int] = []
    with cluster.client() as a, cluster.client() as b:
        t = threading.Thread(target=lambda: first_done.append(a.put("race", "from-a")))
        t.start()
        wait_until(lambda: cluster.status()["coordinator"].prepared == 1, 5, "the first write to be in flight")
        with pytest.raises(Conflict, match="'race' is being written by transaction"):
            b.put("race", "from-b")
        t.join(timeout=10)
        assert first_done, "the first write should commit"
    cluster.wait_converged()
    assert _values(cluster, "race") == {b"from-a"}


def test_unsynchronised_race_gives_one_winner_per_overlap(cluster: LocalCluster) -> None:
    """Many real races: every write either commits or gets Conflict; replicas hold the last winner."""
    results: dict[str, list[tuple[int, str]]] = {"a": [], "b": []}

    def writer(name: str) -> None:
        with cluster.client() as c:
            for i in range(40):
                with contextlib.suppress(Conflict):
                    results[name].append((c.put("hot", f"{name}{i}"), f"{name}{i}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    committed = sorted(results["a"] + results["b"])
    assert committed, "some writes must commit"
    assert len({rev for rev, _ in committed}) == len(committed)  # one revision each
    cluster.wait_converged()
    assert _values(cluster, "hot") == {committed[-1][1].encode()}


def test_replica_crash_before_voting_aborts_then_recovers(cluster: LocalCluster) -> None:
    """A replica dies before voting: the write aborts with a clear error (seen by a client whose deadline
    is shorter than the view change); after restart, writes work."""
    with cluster.client(timeout=5) as c:
        c.put("k", "old")
    cluster.failpoint("replica-2", "replica.on_prepare", "1*crash")
    with cluster.client(timeout=0.5) as c, pytest.raises(Unavailable, match="replica-2"):
        c.put("k", "new")
    cluster.wait_exited("replica-2")
    with cluster.client(timeout=10) as c:
        cluster.start("replica-2")
        assert _value(c.get("k")) == b"old"
        c.put("k", "newer")
    cluster.wait_converged()
    assert _values(cluster, "k") == {b"newer"}


def test_replica_crash_after_prepare_log_before_vote_rejoins_and_catches_up(cluster: LocalCluster) -> None:
    """PREPARED logged, vote never sent: that attempt aborts; the SDK retries and the write commits once
    the view drops the silent replica. The restarted replica holds the old attempt in doubt: it
    discards it, catches up from a member, rejoins the view, and agrees with the others."""
    with cluster.client(timeout=5) as c:
        c.put("k", "old")
    cluster.failpoint("replica-2", "replica.after_prepare_log", "1*crash")
    with cluster.client(timeout=20) as c:
        rev = c.put("k", "new")
    cluster.wait_exited("replica-2")
    st = cluster.status()
    assert "replica-2" not in st["coordinator"].view_members  # written without it
    cluster.start("replica-2")  # waits until it is a member again, with a read lease
    revision, _ = cluster.wait_converged()
    assert revision == rev and _values(cluster, "k") == {b"new"}
    assert "replica-2" in cluster.status()["coordinator"].view_members


def test_replica_crash_after_voting_yes_applies_commit_on_restart(cluster: LocalCluster) -> None:
    """A replica dies holding PREPARED (it voted yes): the commit completes, and on restart the
    replica applies it."""
    with cluster.client(timeout=5) as c:
        cluster.failpoint("replica-2", "replica.on_commit", "1*crash")
        rev = c.put("k", "committed")
        cluster.wait_exited("replica-2")
        st = cluster.status()
        assert st["replica-1"].revision == rev and not st["replica-2"].up
        cluster.start("replica-2")
    revision, _ = cluster.wait_converged()
    assert revision == rev
    assert _values(cluster, "k") == {b"committed"}


def test_coordinator_crash_before_decision_aborts_everywhere(cluster: LocalCluster) -> None:
    """Coordinator dies after PREPARE, before logging a decision: after restart the transaction is
    aborted on every replica and the key keeps its old value."""
    with cluster.client(timeout=5) as c:
        c.put("k", "old")
    cluster.failpoint("coordinator", "coordinator.on_vote", "1*crash")
    with cluster.client(timeout=2) as c, pytest.raises(Unavailable):
        c.put("k", "new")
    cluster.wait_exited("coordinator")
    assert all(cluster.status()[r].prepared == 1 for r in cluster.replicas)  # in doubt everywhere
    cluster.start("coordinator")
    cluster.wait_converged()
    assert _values(cluster, "k") == {b"old"}


def test_coordinator_crash_after_commit_log_before_send(cluster: LocalCluster) -> None:
    """Coordinator dies after logging COMMIT, before sending it: after restart every replica applies it."""
    with cluster.client(timeout=5) as c:
        c.put("k", "old")
    cluster.failpoint("coordinator", "coordinator.after_commit_log", "1*crash")
    with cluster.client(timeout=1) as c, pytest.raises(Unavailable):
        c.put("k", "new")
    cluster.wait_exited("coordinator")
    assert all(cluster.status()[r].prepared == 1 for r in cluster.replicas)
    cluster.start("coordinator")
    cluster.wait_converged()
    assert _values(cluster, "k") == {b"new"}


def test_commit_reached_one_replica_others_learn_it_from_peers(cluster: LocalCluster) -> None:
    """Coordinator dies after COMMIT reached replica-1 only and stays down: replica-2 and replica-3
    learn the outcome from replica-1 (cooperative termination) and apply it."""
    cluster.failpoint("coordinator", "coordinator.send_commit.replica-2", "drop")
    cluster.failpoint("coordinator", "coordinator.send_commit.replica-3", "drop")
    cluster.failpoint("coordinator", "coordinator.commit_acked.replica-1", "1*crash")
    # The crash may beat the reply to the client; the outcome is settled by the replicas below.
    with cluster.client(timeout=1) as c, contextlib.suppress(Unavailable):
        c.put("k", "v")
    cluster.wait_exited("coordinator")
    revision, _ = cluster.wait_converged()
    assert not cluster.alive("coordinator")
    assert revision == 1 and _values(cluster, "k") == {b"v"}
    assert "learned commit from replica-1" in cluster.log("replica-2") + cluster.log("replica-3")


def test_reads_of_an_in_doubt_key_fail_while_the_coordinator_is_down(tmp_path: Path) -> None:
    """Coordinator down with a key in doubt: reads of it fail with Unavailable at the deadline (never a
    value), reads of other keys succeed while the replicas' read leases last; once it is back, reads
    return the decided value. (A long lease here: reads of other keys last as long as the lease.)"""
    with local_cluster(tmp_path, timeouts=replace(TEST_TIMEOUTS, read_lease_ms=30_000)) as cluster:
        cluster.start()
        with cluster.client(timeout=5) as c:
            c.put("doubt", "old")
            c.put("other", "fine")
        cluster.failpoint("coordinator", "coordinator.on_vote", "1*crash")
        with cluster.client(timeout=2) as c, pytest.raises(Unavailable):
            c.put("doubt", "new")
        cluster.wait_exited("coordinator")
        with cluster.client(timeout=1) as c:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(Unavailable, match="in doubt"):
                    c.get("doubt")
                # It waited for an outcome until (about) the 1 s deadline, then gave up; not at once.
                assert 0.5 <= time.monotonic() - started <= 3.0
                assert _value(c.get("other")) == b"fine"
            # A serializable read answers at once, from the replica's applied state.
            assert _value(c.get("doubt", serializable=True)) == b"old"
        cluster.start("coordinator")
        with cluster.client(timeout=10) as c:
            assert _value(c.get("doubt")) == b"old"


def test_without_the_coordinator_linearizable_reads_stop_when_leases_expire(cluster: LocalCluster) -> None:
    """A replica cut off from the coordinator (here: the coordinator is gone) stops serving linearizable
    reads once its lease expires: it cannot know whether writes go on without it."""
    with cluster.client(timeout=5) as c:
        c.put("k", "v")
    cluster.kill("coordinator")
    wait_until(lambda: not any(s.lease_valid for s in cluster.status().values()), 10, "leases to expire")
    with cluster.client(timeout=1) as c:
        with pytest.raises(Unavailable, match="no read lease"):
            c.get("k")
        assert _value(c.get("k", serializable=True)) == b"v"
    cluster.start("coordinator")
    with cluster.client(timeout=10) as c:
        assert _value(c.get("k")) == b"v"


def test_kill_every_process_under_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """kill -9 of every process during a write load from 8 clients, then restart: every acknowledged
    write is there, and every replica has the same digest at the same revision."""
    with local_cluster(tmp_path) as cluster:
        cluster.start()
        acked: dict[str, bytes] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def load(i: int) -> None:
            with cluster.client(timeout=2) as c:
                n = 0
                while not stop.is_set():
                    key, value = f"/load/{i}/{n}", f"{i}-{n}".encode()
                    try:
                        c.put(key, value)
                    except Unavailable:
                        continue
                    with lock:
                        acked[key] = value
                    n += 1

        threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 150 + random.Random(1).randrange(100), 60, "writes to be acknowledged")
        cluster.kill()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        before = len(acked)
        cluster.start()
        revision, _ = cluster.wait_converged(timeout_s=30)
        assert revision >= before
        with cluster.client(timeout=10) as c:
            stored = {kv.key: kv.value for kv in c.range("/load/")}
        missing = [k for k, v in acked.items() if stored.get(k) != v]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


def test_retry_after_lost_reply_applies_once(cluster: LocalCluster) -> None:
    """The coordinator crashes right after logging COMMIT (the reply is lost); the SDK retries the
    same request through the restart and gets the remembered answer: a CAS increment counts once."""
    with cluster.client(timeout=5) as c:
        c.put("counter", "0")
    cluster.failpoint("coordinator", "coordinator.after_commit_log", "1*crash")

    def restart_when_dead() -> None:
        cluster.wait_exited("coordinator")
        cluster.start("coordinator", wait=False)

    restarter = threading.Thread(target=restart_when_dead)
    restarter.start()
    with cluster.client(timeout=30) as c:
        increment = c.txn(
            [Compare("counter", CompareTarget.VALUE, CompareOp.EQUAL, b"0")],
            [Put("counter", b"1")],
        )
        restarter.join(timeout=30)
        assert increment.succeeded
        kv = c.get("counter")
    assert kv is not None and kv.value == b"1" and kv.version == 2  # created, then one increment
    assert kv.mod_revision == increment.revision


def test_reads_spread_over_every_replica(cluster: LocalCluster) -> None:
    """A client picks a random replica per read: every replica serves a fair share (each answers
    reads, so read capacity grows with replicas). 300 reads: each replica's expected 100; the bound
    (40) is more than 7 standard deviations below it."""
    with cluster.client(timeout=10) as c:
        c.put("/spread/k", "v")
        before = {n: s.reads_served for n, s in cluster.status().items() if s.role == "replica"}
        for _ in range(300):
            kv = c.get("/spread/k")
            assert kv is not None and kv.value == b"v"
        after = {n: s.reads_served for n, s in cluster.status().items() if s.role == "replica"}
    served = {n: after[n] - before[n] for n in before}
    assert sum(served.values()) == 300, served
    assert min(served.values()) >= 40, served


def test_clients_call_over_the_wire_and_over_grpc_alike(cluster: LocalCluster) -> None:
    """A client that found the cluster by the coordinator's address learns every node's wire address
    and sends its writes and reads there; one that knows none calls over gRPC. Both see one store."""
    coordinator = cluster.config.coordinator.address
    with Client(coordinator, timeout=10) as wired:
        expected = {(n.address, n.peer_address) for n in cluster.config.nodes.values()}
        assert set(wired.aio.endpoints.wires) == expected
        wired.put("/transport/wire", "w")
        with cluster.client(timeout=10) as grpc_only:
            grpc_only.aio.endpoints = replace(grpc_only.aio.endpoints, wires=())
            grpc_only.put("/transport/grpc", "g")
            for c in (wired, grpc_only):
                got = {k: c.get(f"/transport/{k}") for k in ("wire", "grpc")}
                assert {k: kv.value if kv else None for k, kv in got.items()} == {"wire": b"w", "grpc": b"g"}
    # The wire is really used: a client pointed at a wire address nobody listens on cannot write,
    # though the coordinator's gRPC address would answer.
    with cluster.client(timeout=1.5) as misdirected:
        misdirected.aio.endpoints = replace(
            misdirected.aio.endpoints, wires=((coordinator, f"127.0.0.1:{free_port()}"),)
        )
        with pytest.raises(Unavailable):
            misdirected.put("/transport/nowhere", "x")
    with cluster.client(timeout=10) as c:
        assert c.get("/transport/nowhere") is None
