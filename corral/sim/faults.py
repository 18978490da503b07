"""Random faults of one simulated run, drawn up front from the seed and scheduled on the virtual clock.

- crash: a node (coordinator or replica) crashes between two steps, or right after a step whose records are
  durable with none or some of its sends out; it restarts after its down time.
- partition: a node is cut off from every other node (clients included) for an interval.
- link cut: a replica is cut off from the coordinator only; clients and the other replicas still reach it,
  so it keeps receiving reads while it cannot renew its read lease.

Each outage is short (shorter than a read lease, mostly: transactions abort or wait) or, with the seed's
`long_outage_p`, long: longer than a lease plus the coordinator's drift margin, so the replica is dropped from
the view, catches up from a member's history and rejoins (if it is back before the workload ends, under load).
Faults that fire after healing are skipped; healing ends every cut and restarts every crashed node.

- compaction: while a replica is down or outside the view, an operator compacts every member at the newest
  revision they all hold, so the replica behind must take a member's snapshot to catch up. Drawn from a stream of
  its own (the seed's other draws are unchanged by it, and so are the regression seeds' schedules).
"""

from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING

from corral.core.twopc_participant import Membership
from corral.sim.config import (
    COMPACTION_RETRY_MS,
    COMPACTIONS_MAX,
    DOWN_MS_RANGE,
    FAULT_WINDOW_MS,
    LONG_OUTAGE_EXTRA_MS,
    LONG_OUTAGE_FACTOR,
    PARTITION_MS_RANGE,
    lease_expiry_ms,
)
from corral.sim.nodes import DeliverTo
from corral.sim.observation import replica_history
from corral.sim.workload import COORD

if TYPE_CHECKING:
    from corral.sim.cluster import SimCluster


def plan_faults(sim: SimCluster) -> None:
    """Draw every random fault of the run from the seed and schedule it."""
    rng, cfg = sim.rng, sim.cfg
    nodes = (COORD, *sim.names)
    expiry = lease_expiry_ms(cfg.timeouts)

    def length(short: tuple[int, int]) -> int:
        if rng.random() < cfg.long_outage_p:
            return rng.randint(expiry + LONG_OUTAGE_EXTRA_MS, LONG_OUTAGE_FACTOR * expiry)
        return rng.randint(*short)

    for _ in range(cfg.crashes):
        node, at = rng.choice(nodes), rng.randint(1, FAULT_WINDOW_MS)
        down = length(DOWN_MS_RANGE)
        mode = rng.choice(("between", "after-persist"))
        deliver: DeliverTo = rng.choice(("some", frozenset[str]()))
        sim.sched.at(at, functools.partial(_crash, sim, node, mode, down, deliver))
    for _ in range(cfg.partitions):
        node, at = rng.choice(nodes), rng.randint(1, FAULT_WINDOW_MS)
        sim.sched.at(at, functools.partial(_cut, sim, node, length(PARTITION_MS_RANGE)))
    for _ in range(cfg.link_cuts):
        replica, at = rng.choice(sim.names), rng.randint(1, FAULT_WINDOW_MS)
        sim.sched.at(at, functools.partial(_cut_link, sim, replica, length(PARTITION_MS_RANGE)))
    own = random.Random(f"compactions-{sim.seed}")
    for _ in range(own.randint(0, COMPACTIONS_MAX) if cfg.crashes or cfg.partitions or cfg.link_cuts else 0):
        sim.sched.at(own.randint(1, 2 * FAULT_WINDOW_MS), functools.partial(_compact, sim))


def _crash(sim: SimCluster, node: str, mode: str, down_ms: int, deliver: DeliverTo) -> None:
    if sim.healed or not sim.is_up(node):
        return
    if mode == "between":
        sim.crash(node, down_ms=down_ms)
    else:
        sim.note(f"node={node} armed: crash after its next durable step")
        sim.crash(node, when=lambda eff: bool(eff.persist), deliver_to=deliver, down_ms=down_ms)


def _cut(sim: SimCluster, node: str, length_ms: int) -> None:
    if not sim.healed:
        sim.note(f"node={node} cut off for {length_ms} ms")
        sim.net.cut(node, sim.now + length_ms)


def _cut_link(sim: SimCluster, replica: str, length_ms: int) -> None:
    if not sim.healed:
        sim.note(f"node={replica} cut off from {COORD} (only) for {length_ms} ms")
        sim.net.cut_link(replica, COORD, sim.now + length_ms)


def _compact(sim: SimCluster, behind_at: int | None = None) -> None:
    """`corral compact` at the newest revision every member that is up holds (as an operator would), once a
    replica has been behind (down or outside) for a few revisions. The history it removes is archived
    first, for the checkers (`observation.replica_history`)."""
    if sim.healed:
        return
    stores = {n: r.storage for n, r in sim.replicas.items() if r.storage is not None}
    members = [n for n in stores if sim.participant(n).membership is Membership.MEMBER]
    revision = min((stores[n].revision for n in members), default=0)
    if len(members) == len(sim.names) or behind_at is None or revision <= behind_at:
        # Wait for a replica to fall behind, and for the members to move on without it.
        behind = None if len(members) == len(sim.names) else (revision if behind_at is None else behind_at)
        sim.sched.after(COMPACTION_RETRY_MS, functools.partial(_compact, sim, behind))
        return
    if revision <= max(stores[n].store.compact_revision for n in members):
        return
    sim.note(f"compact members={','.join(members)} revision={revision}")
    kept = {n: replica_history(stores, sim.rec.archives, n) for n in members}
    for n in members:
        sim.rec.archives[n] = (revision, [e for e in kept[n] if e.kv.mod_revision <= revision])
        stores[n].store.compact(revision)
