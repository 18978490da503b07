"""One simulated run's shape: cluster size, network, timers, clocks and how many random faults.

`SimConfig.random(rng)` draws a run from a seed; `SimConfig.scripted()` is the calm, fixed setting of the
scenario tests. Every bound below is named with the reason for its value; together they keep one random run
to a few hundred milliseconds of CPU, so that CI sweeps 1,000 seeds in well under a minute.
"""

from __future__ import annotations

import random

from corral.frozen import frozen
from corral.limits import (
    FETCH_BYTES_MAX,
    FETCH_REVISIONS_MAX,
    LEASE_DRIFT_FRACTION,
    LEASE_DRIFT_MS,
    MIN_REPLICAS,
    OUTCOMES_REMEMBERED_MAX,
    Timeouts,
)
from corral.sim.network import NetConfig

CLIENTS_RANGE = (2, 4)  # two already race on keys; four give concurrent reads and conflicts
OPS_RANGE = (5, 15)  # per client
# Session clients (`sessions.py`) per seed: none on a quarter of the seeds, so that runs without leases stay
# common; two race for sequential names and end leases while the other holds keys.
SESSIONS_CHOICES = (0, 1, 1, 2)
SESSION_OPS_RANGE = (4, 12)  # per session client: a few leases granted, kept, revoked or let go each
CRASHES_MAX = 3  # random crashes per run: enough to hit a node twice or two nodes at once
PARTITIONS_MAX = 2  # a node cut off from everyone
LINK_CUTS_MAX = 2  # a replica cut off from the coordinator only (clients and peers still reach it)
COMPACTION_RETRY_MS = 25  # a compaction waits for a replica to be behind, looking again this often
COMPACTIONS_MAX = 2  # operator compactions per run with faults (a replica behind one catches up from a snapshot)
FAULT_WINDOW_MS = 1_500  # random faults start within this window (workloads run ~0.3-3 s of virtual time)
DOWN_MS_RANGE = (10, 400)  # outlasts the prepare timeout and several resolve intervals at the high end
PARTITION_MS_RANGE = (10, 300)
# A long outage outlasts a lease with its drift margin (so the replica is dropped from the view) by this much
# at least, and by at most LONG_OUTAGE_FACTOR leases: long enough to rejoin under load, short enough that
# the workload is still running when it ends.
LONG_OUTAGE_EXTRA_MS = 30
LONG_OUTAGE_FACTOR = 4
LONG_OUTAGE_P_CHOICES = (0.0, 0.3, 0.7)  # per seed: chance that each random outage is a long one
# Leases of 100-400 ms and joins of ~300 ms make views change within a short schedule; a lease below 100 ms
# would be lost to the network's late deliveries (up to 400 ms) on most seeds.
READ_LEASE_MS_RANGE = (100, 400)
JOIN_TIMEOUT_MS_RANGE = (250, 350)
# min_replicas per seed: the default 2 of 3 mostly; 1 lets the view shrink to one copy, 3 never shrinks it.
MIN_REPLICAS_CHOICES = (MIN_REPLICAS, MIN_REPLICAS, MIN_REPLICAS, MIN_REPLICAS, 1, 3)
# Clock rates differ by up to this fraction from the virtual time. The coordinator waits a lease plus
# LEASE_DRIFT_FRACTION of it before dropping a silent replica, so rates within (1 +- s) with
# (1 + s) / (1 - s) < 1 + LEASE_DRIFT_FRACTION are what the margin promises to cover.
CLOCK_SKEW_MAX = 0.04
CLOCK_SKEW_CHOICES = (0.0, 0.01, CLOCK_SKEW_MAX)
CLOCK_OFFSET_MS_MAX = 1_000_000  # clocks of different machines start anywhere (never at 0: 0 means "none")
SMALL_OUTCOMES_RANGE = (3, 40)  # some seeds shrink the replicas' outcome memory: forgetting, trims (every max//10+1)
# Catching up in pages of a few revisions (and few bytes: values are ~6 bytes) exercises the fetch's paging
# and its "answer to an older request" rule; the real bounds serve thousands at once.
FETCH_REVISIONS_MAX_CHOICES = (1, 3, FETCH_REVISIONS_MAX)
FETCH_BYTES_MAX_CHOICES = (8, 40, FETCH_BYTES_MAX)
# A read's deadline: from shorter than a prepare (a read of a locked key fails in doubt) to several of them.
READ_TIMEOUT_MS_RANGE = (30, 200)
# Some reads wait longer than a lease: a read waiting for a lock can outlive its replica's membership.
LONG_READ_P = 0.2
LONG_READ_TIMEOUT_MS_RANGE = (200, 900)

assert (1 + CLOCK_SKEW_MAX) / (1 - CLOCK_SKEW_MAX) < 1 + LEASE_DRIFT_FRACTION, "skew beyond the drift margin"

# Scripted runs: FIFO links with a fixed delay and every sender told of a failed send; short timers.
SCRIPTED_NET = NetConfig(fifo=True, delay_min_ms=5, delay_max_ms=5, report_p=1.0)
SCRIPTED_TIMEOUTS = Timeouts(
    prepare_timeout_ms=100,
    commit_retry_ms=30,
    resolve_after_ms=40,
    resolve_interval_ms=40,
    read_lease_ms=200,
    join_timeout_ms=300,
)
SCRIPTED_FETCH_REVISIONS_MAX = 2  # scripted catch-ups take several pages


def lease_expiry_ms(timeouts: Timeouts) -> int:
    """How long after its last grant the coordinator may drop a silent member (the core's arithmetic)."""
    lease = timeouts.read_lease_ms
    return lease + int(lease * LEASE_DRIFT_FRACTION) + LEASE_DRIFT_MS


@frozen
class SimConfig:
    """One run's shape: sizes, network, timers and how many random faults."""

    participants: int = 3
    clients: int = 0
    sessions: int = 0
    ops_range: tuple[int, int] = OPS_RANGE
    net: NetConfig = SCRIPTED_NET
    timeouts: Timeouts = SCRIPTED_TIMEOUTS
    min_replicas: int = MIN_REPLICAS
    attempt_timeout_ms: int = 300
    read_timeout_ms: int = 100
    crashes: int = 0
    partitions: int = 0
    link_cuts: int = 0
    long_outage_p: float = 0.0
    clock_skew: float = 0.0  # each node's clock rate is within 1 +- this
    flush_p: float = 1.0  # chance that a coordinator tick flushes pending END marks
    outcomes_max: int = OUTCOMES_REMEMBERED_MAX
    fetch_revisions_max: int = SCRIPTED_FETCH_REVISIONS_MAX
    fetch_bytes_max: int = FETCH_BYTES_MAX

    @classmethod
    def scripted(cls) -> SimConfig:
        """No clients, no sessions, no random faults, FIFO links with a fixed 5 ms delay: for scenario tests."""
        return cls()

    @classmethod
    def random(cls, rng: random.Random) -> SimConfig:
        net = NetConfig(
            fifo=rng.random() < 0.5,
            delay_min_ms=1,
            delay_max_ms=rng.randint(2, 10),
            drop_p=rng.choice((0.0, 0.01, 0.03, 0.08)),
            dup_p=rng.choice((0.0, 0.02, 0.05)),
            late_p=rng.choice((0.0, 0.02, 0.05)),
            late_max_ms=rng.randint(50, 400),
            ambiguous_p=rng.choice((0.0, 0.01)),
            report_p=rng.random(),
            rpc_timeout_ms=rng.randint(10, 40),
        )
        timeouts = Timeouts(
            prepare_timeout_ms=rng.randint(50, 200),
            commit_retry_ms=30,
            resolve_after_ms=rng.randint(30, 60),
            resolve_interval_ms=rng.randint(30, 60),
            read_lease_ms=rng.randint(*READ_LEASE_MS_RANGE),
            join_timeout_ms=rng.randint(*JOIN_TIMEOUT_MS_RANGE),
        )
        long_reads = rng.random() < LONG_READ_P
        return cls(
            clients=rng.randint(*CLIENTS_RANGE),
            sessions=rng.choice(SESSIONS_CHOICES),
            net=net,
            timeouts=timeouts,
            min_replicas=rng.choice(MIN_REPLICAS_CHOICES),
            attempt_timeout_ms=rng.randint(80, 400),
            read_timeout_ms=rng.randint(*(LONG_READ_TIMEOUT_MS_RANGE if long_reads else READ_TIMEOUT_MS_RANGE)),
            crashes=rng.randint(0, CRASHES_MAX),
            partitions=rng.randint(0, PARTITIONS_MAX),
            link_cuts=rng.randint(0, LINK_CUTS_MAX),
            long_outage_p=rng.choice(LONG_OUTAGE_P_CHOICES),
            clock_skew=rng.choice(CLOCK_SKEW_CHOICES),
            flush_p=rng.choice((0.1, 0.5, 1.0)),
            outcomes_max=rng.randint(*SMALL_OUTCOMES_RANGE) if rng.random() < 0.25 else OUTCOMES_REMEMBERED_MAX,
            fetch_revisions_max=rng.choice(FETCH_REVISIONS_MAX_CHOICES),
            fetch_bytes_max=rng.choice(FETCH_BYTES_MAX_CHOICES),
        )
