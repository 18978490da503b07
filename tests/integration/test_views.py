"""Issue 4's acceptance for views and read leases, against real processes."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from corral import Conflict, Put, Unavailable
from tests.integration.harness import TEST_TIMEOUTS, local_cluster, wait_until

LEASE_MS = 1500
TIMEOUTS = replace(TEST_TIMEOUTS, read_lease_ms=LEASE_MS)


def test_kill_a_replica_under_load_writes_resume_within_two_leases(tmp_path: Path) -> None:
    """kill -9 one replica under a write load: writes keep succeeding within 2 x lease time; restarted, it
    rejoins and its digest equals the others'."""
    with local_cluster(tmp_path, timeouts=TIMEOUTS) as cluster:
        cluster.start()
        successes: list[tuple[float, float]] = []  # (started, acknowledged)
        stop = threading.Event()

        def writer() -> None:
            with cluster.client(timeout=10) as c:
                n = 0
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        c.put(f"/load/{n % 20}", str(n))
                        successes.append((started, time.monotonic()))
                    except (Unavailable, Conflict):
                        pass
                    n += 1

        threads = [threading.Thread(target=writer) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(successes) > 50, 30, "the write load to start")
        killed_at = time.monotonic()
        cluster.kill("replica-2")
        wait_until(lambda: successes[-1][0] > killed_at + 0.5, 30, "writes started after the kill to succeed")
        stop.set()
        for t in threads:
            t.join(timeout=30)
        # Only writes started after the kill count: one already prepared everywhere could finish at once.
        after = sorted(done for started, done in successes if started > killed_at)
        assert after, "no write started after the kill succeeded"
        gap = after[0] - killed_at
        assert gap <= 2 * LEASE_MS / 1000, f"writes stalled {gap:.2f} s after the kill (lease {LEASE_MS} ms)"
        gaps = [b - a for a, b in itertools.pairwise(after)]
        assert max(gaps, default=0) <= 2 * LEASE_MS / 1000, f"writes stalled {max(gaps):.2f} s after resuming"
        assert "replica-2" not in cluster.status()["coordinator"].view_members
        cluster.start("replica-2")
        _, digest = cluster.wait_converged()
        assert cluster.status()["replica-2"].digest == digest


def test_cut_off_replica_stops_serving_reads_before_it_is_dropped(tmp_path: Path) -> None:
    """A replica cut off from the coordinator (failpoints drop every message between them) refuses
    linearizable reads before the coordinator drops it; no client ever reads a stale value from it."""
    with local_cluster(tmp_path, timeouts=TIMEOUTS) as cluster:
        cluster.start()
        with cluster.client(timeout=5) as c:
            c.put("k", "0")
        acked: list[tuple[float, int]] = [(time.monotonic(), 0)]  # (when acknowledged, value)
        stale: list[str] = []
        served: list[float] = []
        refused: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            with cluster.client(timeout=10) as c:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        c.put("k", str(n))
                    except Unavailable:
                        continue
                    acked.append((time.monotonic(), n))

        def reader() -> None:
            with cluster.pinned_client("replica-2", timeout=0.5) as c:
                while not stop.is_set():
                    started = time.monotonic()
                    floor = max(v for t, v in acked if t <= started)  # acknowledged before the read began
                    try:
                        kv = c.get("k")
                    except Unavailable:
                        refused.append(time.monotonic())
                        continue
                    served.append(time.monotonic())
                    value = int(kv.value) if kv else -1
                    if value < floor:
                        stale.append(f"read {value} after {floor} was acknowledged")

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        wait_until(lambda: len(served) > 20, 30, "reads from replica-2")
        cluster.failpoint("replica-2", "replica.recv.coordinator", "drop")
        cluster.failpoint("replica-2", "replica.send_other.coordinator", "drop")

        def refusing_while_still_in_view() -> bool:
            st = cluster.status()
            assert "replica-2" in st["coordinator"].view_members, "dropped while still holding its lease"
            return not st["replica-2"].lease_valid

        wait_until(refusing_while_still_in_view, 30, "replica-2 to give up its lease", interval_s=0.005)
        wait_until(lambda: "replica-2" not in cluster.status()["coordinator"].view_members, 30, "replica-2 dropped")
        dropped_at = time.monotonic()
        wait_until(lambda: any(v for t, v in acked if t > dropped_at), 30, "writes to go on without replica-2")
        # Keep reading from the cut-off replica while writes go on without it.
        wait_until(lambda: sum(t > dropped_at for t in refused) >= 5, 30, "more reads refused after the drop")
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not stale, stale[:5]
        assert served, "replica-2 never served a read"
        assert not any(t > dropped_at for t in served), "replica-2 served a read after leaving the view"


def test_two_of_three_replicas_down_writes_fail_and_nothing_is_lost(tmp_path: Path) -> None:
    """With 2 of 3 replicas down (min_replicas 2), writes fail with Unavailable; nothing is lost when
    they return."""
    with local_cluster(tmp_path, timeouts=TIMEOUTS) as cluster:
        cluster.start()
        with cluster.client(timeout=5) as c:
            revisions = {f"/k/{i}": c.put(f"/k/{i}", f"v{i}") for i in range(10)}
        cluster.kill("replica-1")
        with cluster.client(timeout=10) as c:
            c.put("/k/after-one", "ok")  # one down: the view moves on
        cluster.kill("replica-3")
        with cluster.client(timeout=3) as c, pytest.raises(Unavailable):
            c.put("/k/after-two", "no")
        assert len(cluster.status()["coordinator"].view_members) == 2  # never below min_replicas
        cluster.start("replica-1", "replica-3")
        cluster.wait_converged(timeout_s=30)
        with cluster.client(timeout=10) as c:
            for key, rev in revisions.items():
                kv = c.get(key)
                assert kv is not None and kv.mod_revision == rev
            assert c.get("/k/after-one") is not None
            assert c.get("/k/after-two") is None  # it failed, so it must not have been applied
            c.put("/k/again", "writes work")


def test_replica_behind_a_compaction_rejoins_from_a_snapshot(tmp_path: Path) -> None:
    """A replica down while the others compacted past what it misses cannot replay that history: it
    takes a member's whole state (several pages), installs it, catches up and rejoins the view."""
    with local_cluster(tmp_path, timeouts=TIMEOUTS) as cluster:
        cluster.start()
        victim = cluster.replicas[2]
        with cluster.client(timeout=20) as c:
            c.put("/snap/gone", "deleted while the victim is down")
            cluster.kill(victim)
            for t in range(25):  # 2,500 keys: three pages of SNAPSHOT_KEYS_MAX
                c.txn(on_success=[Put(f"/snap/{t:02d}/{i:03d}", f"{t}.{i}".encode()) for i in range(100)])
            c.delete("/snap/gone")
            revision = c.put("/snap/last", "x")
            c.compact(revision)  # the live replicas; the victim is down
        cluster.start(victim)
        revision_now, digest = cluster.wait_converged(timeout_s=60)
        status = cluster.status()
        assert status[victim].digest == digest and status[victim].revision == revision_now
        assert victim in status["coordinator"].view_members
        assert "installed a snapshot" in cluster.log(victim)
        with cluster.pinned_client(victim, 10) as pinned:
            assert pinned.get("/snap/gone") is None
            kv = pinned.get("/snap/24/099")
            assert kv is not None and kv.value == b"24.99"
            assert len(pinned.range("/snap/")) == 2501
            pinned.put("/snap/after", "y")  # it takes part in writes again
            kv = pinned.get("/snap/after")
            assert kv is not None and kv.value == b"y"
        cluster.wait_converged()
