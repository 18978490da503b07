"""Sessions and watches under failures: a client killed -9 (its ephemeral keys go, group watchers see
it leave), a coordinator restart (live sessions keep their keys), and a watch whose replica is killed
twice (every revision seen once, in order)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

from corral.client import Client
from corral.errors import Conflict, Unavailable
from corral.model import Compare, CompareOp, CompareTarget, Put
from tests.integration.harness import TEST_TIMEOUTS, local_cluster, wait_until
from tests.recipes.conftest import ClientProcesses, read_records

EPHEMERAL_TTL_S = 1.0


def test_a_killed_client_loses_its_keys_and_leaves_its_group(clients: ClientProcesses, tmp_path: Path) -> None:
    """kill -9 a process holding a lease with ephemeral keys and a group membership: the keys are gone
    within TTL + 1 s, and a group watcher in another process sees it join, then leave."""
    out = tmp_path / "ephemeral.jsonl"
    with clients.cluster.client(timeout=10) as client:
        start = client.put("/test/ephemeral-start", "x") + 1
        watcher = clients.start("group-watch", start, 2, out)
        holder = clients.start("ephemeral", EPHEMERAL_TTL_S, out, "doomed")
        wait_until(lambda: any(r["ev"] == "ready" for r in read_records(out)), 30, "the holder to be ready")
        assert len(client.range("/eph/doomed/")) == 5
        killed_at = clients.kill(holder)
        wait_until(lambda: not client.range("/eph/doomed/"), EPHEMERAL_TTL_S + 5, "the ephemeral keys to go")
        gone_after = time.monotonic() - killed_at
        assert gone_after <= EPHEMERAL_TTL_S + 1, f"keys outlived their holder by {gone_after:.2f} s"
        assert client.range("/corral/groups/workers/") == []
    clients.wait_all([watcher], 30)
    seen = [(r["ev"], r["member"]) for r in read_records(out) if r["ev"] in ("joined", "left")]
    assert seen == [("joined", "doomed"), ("left", "doomed")]
    left = next(r for r in read_records(out) if r["ev"] == "left")
    assert left["t"] - killed_at <= EPHEMERAL_TTL_S + 1, "the watcher heard of the leave late"


# Sessions renew every TTL/3 and give up a TTL after the last renewal they sent: 3 s leaves them 2 s
# after the kill to reach the new coordinator (a restart takes 0.3-1 s here), on a loaded machine too.
RESTART_TTL_S = 3.0


def test_sessions_keep_their_keys_across_a_coordinator_restart(tmp_path: Path) -> None:
    """5 client processes keep sessions alive while the coordinator is killed -9 and restarted: after
    more than a TTL past the restart, none of their keys (or group memberships) has disappeared."""
    with local_cluster(tmp_path / "cluster") as cluster:
        cluster.start()
        procs = ClientProcesses(cluster, tmp_path)
        try:
            out = tmp_path / "sessions.jsonl"
            for i in range(5):
                procs.start("ephemeral", RESTART_TTL_S, out, f"s{i}")
            wait_until(lambda: sum(r["ev"] == "ready" for r in read_records(out)) == 5, 30, "5 sessions")
            with cluster.client(timeout=10) as client:
                before = {kv.key: kv.mod_revision for kv in client.range("/eph/")}
                assert len(before) == 25
                cluster.kill("coordinator")
                cluster.start("coordinator")
                restarted_at = time.monotonic()
                # The scenario's duration, not a synchronisation: had the restart forgotten or expired
                # the leases, their keys would be deleted within a TTL of it.
                time.sleep(1.5 * RESTART_TTL_S)
                assert time.monotonic() - restarted_at > RESTART_TTL_S
                after = {kv.key: kv.mod_revision for kv in client.range("/eph/")}
                assert after == before, "keys of live sessions disappeared"
                assert len(client.range("/corral/groups/workers/")) == 5
                assert all(p.poll() is None for p in procs.procs), "a session holder died"
        finally:
            procs.close()


WATCHED = 2000
WRITERS = 4
# A short read lease makes each view change (a replica killed) stall writes briefly.
WATCH_TIMEOUTS = replace(TEST_TIMEOUTS, read_lease_ms=1500)


def test_a_watch_sees_every_revision_once_while_its_replica_is_killed_twice(tmp_path: Path) -> None:
    """2,000 writes while the replica serving a watch (in another process) is killed -9 twice: the watch
    resumes elsewhere by itself and reports every revision once, in order. The watcher keeps the SDK
    from shuffling replicas, so it is served by the first live replica: replica-1, then replica-2 once
    replica-1 is killed, then replica-3 once replica-2 is."""
    with local_cluster(tmp_path / "cluster", timeouts=WATCH_TIMEOUTS) as cluster:
        cluster.start()
        procs = ClientProcesses(cluster, tmp_path)
        try:
            out = tmp_path / "watch.jsonl"
            with cluster.client(timeout=20) as client:
                start = client.put("/test/watch-start", "x") + 1
            watcher = procs.start("watch", "/watched/", start, WATCHED, out)
            acked: list[int] = []
            lock = threading.Lock()

            def writer(first: int) -> None:
                with cluster.client(timeout=20) as c:
                    for i in range(first, WATCHED, WRITERS):
                        _create(c, f"/watched/{i:05d}")
                        with lock:
                            acked.append(i)

            threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
            for t in threads:
                t.start()
            for victim, after in (("replica-1", 500), ("replica-2", 1200)):
                wait_until(lambda: len(acked) >= after, 120, f"{after} writes")  # noqa: B023 (called at once)
                cluster.kill(victim)
                cluster.start(victim, wait=False)
            for t in threads:
                t.join(timeout=180)
            assert len(acked) == WATCHED
            procs.wait_all([watcher], 120)
            with cluster.client(timeout=20) as client:
                truth = sorted((kv.create_revision, kv.key) for kv in client.range("/watched/"))
            seen = [(r["revision"], r["key"]) for r in read_records(out) if r["ev"] == "event"]
            assert len(truth) == WATCHED
            assert seen == truth, "the watch missed, repeated or reordered a revision"
            cluster.wait_up("replica-1", "replica-2")
        finally:
            procs.close()


def _create(client: Client, key: str) -> None:
    """Create `key` once: a retry after an unknown outcome must not write it a second time, so that
    each key has exactly one event."""
    create = [Compare(key, CompareTarget.VERSION, CompareOp.EQUAL, 0)]
    deadline = time.monotonic() + 60
    while True:
        try:
            client.txn(create, [Put(key, b"x")])
            return
        except (Unavailable, Conflict):
            assert time.monotonic() < deadline, f"could not create {key}"
