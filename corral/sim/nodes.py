"""A simulated node's state, and the replica's shell (`services/replica.py`) as functions of it.

A node is its name, its files, its clock (fixed across restarts: one machine's monotonic clock), its
incarnation (+1 at every start and crash, so timers and sends of a dead incarnation are ignored), its next
tick, and, while up, its core with its storage (coordinator: `DecisionLog` + `Coordinator`; replica:
`ReplicaStorage` + `Participant`) and the reads waiting at it. `SimCluster` starts, crashes and drives
nodes; this module holds what the replica's shell does with one batch of events and with waiting reads:

- `replica_batch` (`ReplicaService._process`): one storage batch for all events, one core step per event
  (a Prepare with the state its compares and deleted leases read, including commits applied earlier in the
  batch), each step's records written into the batch; a FetchRequest is answered by the shell itself, in
  its place in the batch (`fetch`). The storage transaction is opened at the first event that reads or
  writes the store: a batch that does neither (ticks, lease grants) makes nothing durable in the real shell
  either. Whether any event was stepped is returned: a batch of fetches only leaves the node's timer as
  it was.
- `fetch` (`ReplicaService._fetch`): refused unless this replica believes it is a member, else
  `ReplicaStorage.fetch` with the seed's (small) bounds.
- `serve_reads` (`ReplicaService._range`, linearizable): wait up to LEASE_WAIT_MS (bounded by the read's
  deadline) for `can_serve_linearizable(now)`, failing at once if the replica is OUTSIDE; then wait while
  the key is locked (a range read: while any key under its prefix may change, `any_locked_with_prefix`),
  up to the read's deadline; then read the store only if the lease still holds.
  (These waits are measured on the virtual clock; the lease itself on the node's own.)
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corral.core.messages import (
    ClientReply,
    Effects,
    Envelope,
    ErrorInfo,
    Event,
    FetchRequest,
    Prepare,
    Received,
    SnapshotRequest,
)
from corral.core.twopc_coordinator import Coordinator
from corral.core.twopc_participant import Membership, Participant
from corral.errors import Unavailable
from corral.records import Record
from corral.services.catch_up import serve_catch_up
from corral.sim.network import NodeClock, ReadReply, ReadRequest
from corral.store.decision_log import DecisionLog
from corral.store.replica_log import ReplicaBatch, ReplicaStorage

# How long a read waits for a read lease about to be granted (services.replica LEASE_WAIT_S, in ms).
LEASE_WAIT_MS = 300

DeliverTo = frozenset[str] | Literal["all", "some"]


@dataclass(slots=True)
class Arm:
    """Crash the node right after its first step whose effects satisfy `when` (records already durable),
    letting its sends and replies to `deliver_to` out ("some": each destination with even odds)."""

    when: Callable[[Effects], bool]
    deliver_to: DeliverTo
    down_ms: int | None

    def what_gets_out(
        self, eff: Effects, reply_to: Mapping[int, str], rng: random.Random
    ) -> tuple[list[Envelope], list[ClientReply]]:
        dsts = sorted({e.dst for e in eff.send} | {reply_to.get(r.request_id, "") for r in eff.reply})
        if self.deliver_to == "all":
            keep = frozenset(dsts)
        elif self.deliver_to == "some":
            keep = frozenset(d for d in dsts if rng.random() < 0.5)
        else:
            keep = self.deliver_to
        return [e for e in eff.send if e.dst in keep], [r for r in eff.reply if reply_to.get(r.request_id) in keep]


@dataclass(slots=True)
class PendingRead:
    """A linearizable read waiting at a replica: first for a read lease (until `lease_by`), then for its key."""

    client: str
    req: ReadRequest
    lease_by: int  # virtual time
    leased: bool = False


@dataclass(slots=True)
class SimNode:
    name: str
    path: Path
    clock: NodeClock
    incarnation: int = 0
    arm: Arm | None = None
    tick_at: int | None = None  # virtual time of the next Tick
    log: DecisionLog | None = None  # coordinator
    coord: Coordinator | None = None
    storage: ReplicaStorage | None = None  # participant
    part: Participant | None = None
    reads: list[PendingRead] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.coord is not None or self.part is not None

    def local(self, virtual_ms: int) -> int:
        return self.clock.local(virtual_ms)


def describe_nodes(coordinator: SimNode, replicas: Iterable[SimNode]) -> str:
    """One line on every node's state (for liveness failures)."""
    c = coordinator.coord
    parts = [
        f"coordinator in_flight={c.in_flight} unended={c.unended} revision={c.last_revision} view={c.view} "
        f"members={','.join(c.members)} joining={c.joining}"
        if c
        else f"{coordinator.name} down"
    ]
    for r in replicas:
        p = r.part
        parts.append(
            f"{r.name} {p.membership.value} view={p.view} applied={p.applied_revision} prepared={p.prepared_count}"
            if p
            else f"{r.name} down"
        )
    return "; ".join(parts)


def persists(kind: type) -> Callable[[Effects], bool]:
    """A crash trigger: the step persisted a record of `kind`."""
    return lambda eff: any(isinstance(r, kind) for r in eff.persist)


def sends(kind: type, to: str | None = None) -> Callable[[Effects], bool]:
    """A crash trigger: the step sends a message of `kind` (to `to`, if given)."""
    return lambda eff: any(isinstance(e.msg, kind) and to in (None, e.dst) for e in eff.send)


# -- the replica's shell ---------------------------------------------------------------------------------


def replica_batch(
    core: Participant, storage: ReplicaStorage, events: Sequence[Event], now_ms: int, fetch_bounds: tuple[int, int]
) -> tuple[Effects, bool]:
    """Step `events` in one storage batch (see the module docstring): (what to persist and send, stepped)."""
    persisted: list[Record] = []
    out: list[Envelope] = []
    wake: int | None = None
    stepped = False
    with contextlib.ExitStack() as stack:
        batch: ReplicaBatch | None = None
        for ev in events:
            if isinstance(ev, Received) and isinstance(ev.msg, FetchRequest | SnapshotRequest):
                revisions_max, bytes_max = fetch_bounds
                reply = serve_catch_up(core, storage, ev.msg, revisions_max=revisions_max, bytes_max=bytes_max)
                out.append(Envelope(ev.src, reply))
                continue
            event = ev
            if isinstance(ev, Received) and isinstance(ev.msg, Prepare):
                batch = batch or stack.enter_context(storage.batch())
                txn = ev.msg.txn
                leases = txn.leases_deleted()
                event = Received(
                    ev.src, ev.msg, batch.read(txn.compare_keys()), batch.lease_keys(leases) if leases else None
                )
            eff = core.step(event, now_ms)
            core.check_invariants()
            if eff.persist:
                batch = batch or stack.enter_context(storage.batch())
                batch.write(eff.persist)
                persisted.extend(eff.persist)
            out.extend(eff.send)
            wake, stepped = eff.wake_at_ms, True
    return Effects(tuple(persisted), (), tuple(out), (), wake), stepped


def serve_reads(node: SimNode, now_virtual: int) -> list[tuple[PendingRead, ReadReply]]:
    """Answer every waiting read that can be answered now (see the module docstring); keep the others."""
    core, storage = node.part, node.storage
    if core is None or storage is None or not node.reads:
        return []
    now = node.local(now_virtual)
    waiting: list[PendingRead] = []
    answered: list[tuple[PendingRead, ReadReply]] = []
    for read in node.reads:
        req = read.req
        error: Unavailable | None = None
        if not read.leased:
            if core.can_serve_linearizable(now):
                read.leased = True
            elif core.membership is Membership.OUTSIDE or now_virtual >= read.lease_by:
                error = _no_lease(core)
        if read.leased:
            locked = core.any_locked_with_prefix(req.key) if req.prefix else core.is_locked(req.key)
            if locked:
                if now_virtual >= req.deadline_ms:
                    error = Unavailable(f"key {req.key!r} is in doubt on {node.name}; try again later", key=req.key)
            elif not core.can_serve_linearizable(now):
                error = _no_lease(core)  # the wait for the lock outlived the lease
            elif req.prefix:
                kvs = tuple((kv.key, kv.value) for kv in storage.store.range(req.key))
                answered.append((read, ReadReply(req.request_id, kvs=kvs)))
                continue
            else:
                kv = storage.store.get(req.key)
                answered.append((read, ReadReply(req.request_id, None if kv is None else kv.value)))
                continue
        if error is None:
            waiting.append(read)
        else:
            answered.append((read, ReadReply(req.request_id, error=ErrorInfo.of(error))))
    node.reads = waiting
    return answered


def _no_lease(core: Participant) -> Unavailable:
    return Unavailable(
        f"{core.node} holds no read lease ({core.membership.value}); another replica can answer", replica=core.node
    )
