"""SimCluster: the whole 2PC cluster in one process, on a virtual clock, driven by one seeded RNG.

Model. A coordinator ("c"), participants ("r1".."rN") and clients ("cl1"..; `workload.py`) exchange messages
over the fake network of `network.py`. Each node reads its own clock (`NodeClock`: offset and rate per node)
and is driven exactly as its real shell (the asyncio/gRPC service) drives it:

- coordinator (`services/coordinator.py`): `DecisionLog` + `Coordinator(min_replicas=...)`. Per event (client
  request, message, unreachable report, Tick): step, `check_invariants()`, `log.write(persist, persist_lazy)`
  (the fsync), THEN send and reply. A batch of messages is stepped event by event, then written with one
  `log.write`. Ticks come at the latest step's `wake_at_ms`; a tick that finds nothing in flight flushes
  pending END marks. A client request past its deadline is never handled (gRPC); at its deadline less a margin
  the shell answers Unavailable(outcome_unknown). Views, leases and joins are the core's business.
- participant (`services/replica.py`): `ReplicaStorage` + `Participant`. Per arriving batch: one
  `storage.batch()`, one step per message (a Prepare with `b.read(compare keys)`), each step's records written
  into the batch; a FetchRequest is answered by the shell itself, in its place in the batch, exactly as
  `ReplicaService._fetch`: refused unless this replica believes it is a member, else `ReplicaStorage.fetch`
  (small bounds per seed, so catching up takes several pages). The batch is durable when it ends, and only then
  do the collected sends leave. Ticks likewise; `Unreachable` is ignored (the core re-asks from its timer).
  A batch in which no event was stepped leaves the replica's timer as it was.
- reads at a replica (`ReplicaService._range`, linearizable): wait up to LEASE_WAIT_MS (bounded by the
  read's deadline) for `can_serve_linearizable(now)`, failing Unavailable at once if the replica is OUTSIDE;
  then wait while the key is locked, up to the read's deadline (then Unavailable: in doubt); then, at the
  instant of reading the store, the lease must still hold (else Unavailable). Each read served is recorded
  (`ServedRead`) with the coordinator's view and newest decision at that instant, for the lease checker.

Crashes drop the core and everything in memory (for the coordinator: its pending END marks,
`log.close(flush=False)`); the files stay, and a restart rebuilds the core from them. A crash may come between
steps, or right after a step whose records are durable with none, some or all of its sends out. Random faults
are planned by `faults.py`.

A run: start, workload with faults, heal (faults off, every node up), run until quiescent (every configured
replica a member of the coordinator's view and knowing it, nobody joining, no transaction in flight or prepared
anywhere, every commit ENDed, every replica at the last revision), then the checkers. Not quiescing after
healing is a liveness failure. Tests script scenarios with the same API (`SimConfig.scripted()`, `put`,
`read`, `crash(node, when=...)`, `cut_from_coordinator`, `run_until`).
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast, get_args

from corral.core.messages import (
    ClientReply,
    ClientTxn,
    Commit,
    Effects,
    Envelope,
    ErrorInfo,
    Event,
    FetchReply,
    FetchRequest,
    Message,
    Prepare,
    Received,
    Tick,
    TxnSpec,
    Unreachable,
)
from corral.core.twopc_coordinator import Coordinator
from corral.core.twopc_participant import Membership, Participant
from corral.errors import CorralError, Unavailable
from corral.records import CommitRecord, Record, TxId, ViewRecord
from corral.sim.checkers import InvariantViolation, Observation, OpKind, OpRecord, ServedRead, check_all
from corral.sim.config import CLOCK_OFFSET_MS_MAX, SimConfig
from corral.sim.faults import plan_faults
from corral.sim.network import Network, NodeClock, ReadReply, ReadRequest, Scheduler, describe
from corral.sim.workload import COORD, Workload
from corral.store.decision_log import DecisionLog
from corral.store.replica_log import ReplicaStorage

PEER_MESSAGES: tuple[type, ...] = get_args(Message)

WORKLOAD_MAX_MS = 120_000  # clients are bounded by ops x attempts x timeout; beyond this the simulator is stuck
# After healing: a rejoin is a few fetch rounds and a join hold, a commit a few retries; even a replica that
# must wait out a join timeout or two rejoins within ~2 s. Far more than that is a liveness bug.
QUIESCE_MAX_MS = 10_000
DEADLINE_MARGIN_MS = 50  # the coordinator shell answers this much before a request's deadline (services.base)
# How long a read waits for a read lease about to be granted (services.replica LEASE_WAIT_S, in ms).
LEASE_WAIT_MS = 300

DeliverTo = frozenset[str] | Literal["all", "some"]


class SimFailure(Exception):
    """A run broke an invariant or a core failed; the message names the seed and the replay command."""

    def __init__(self, seed: int, message: str) -> None:
        super().__init__(f"seed {seed}: {message}\nreplay: python -m corral.sim --seed {seed} --verbose")
        self.seed = seed


@dataclass(slots=True)
class _Arm:
    """Crash `node` right after its first step whose effects satisfy `when` (records already durable)."""

    when: Callable[[Effects], bool]
    deliver_to: DeliverTo
    down_ms: int | None


@dataclass(slots=True)
class _Read:
    """A linearizable read waiting at a replica: first for a read lease (until `lease_by`), then for its key."""

    client: str
    req: ReadRequest
    lease_by: int
    leased: bool = False


@dataclass(slots=True)
class _Node:
    name: str
    path: Path
    clock: NodeClock
    incarnation: int = 0
    arm: _Arm | None = None
    tick_at: int | None = None  # virtual time of the next Tick
    log: DecisionLog | None = None  # coordinator
    coord: Coordinator | None = None
    storage: ReplicaStorage | None = None  # participant
    part: Participant | None = None
    reads: list[_Read] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.coord is not None or self.part is not None

    def local(self, virtual_ms: int) -> int:
        return self.clock.local(virtual_ms)


class _TraceHandler(logging.Handler):
    def __init__(self, sim: SimCluster) -> None:
        super().__init__(logging.DEBUG)
        self.sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        self.sim.note(f"log {record.levelname.lower()} {record.getMessage()}")
        if record.levelno >= logging.ERROR:
            self.sim.core_errors.append(record.getMessage())


def persists(kind: type) -> Callable[[Effects], bool]:
    """A crash trigger: the step persisted a record of `kind`."""
    return lambda eff: any(isinstance(r, kind) for r in eff.persist)


def sends(kind: type, to: str | None = None) -> Callable[[Effects], bool]:
    """A crash trigger: the step sends a message of `kind` (to `to`, if given)."""
    return lambda eff: any(isinstance(e.msg, kind) and to in (None, e.dst) for e in eff.send)


class SimCluster:
    """See the module docstring."""

    def __init__(self, seed: int, config: SimConfig | None = None, *, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.cfg = config if config is not None else SimConfig.random(self.rng)
        self.sched = Scheduler()
        self.trace: list[str] | None = [] if trace else None
        self.core_errors: list[str] = []
        self.logger = logging.Logger(f"corral.sim.seed{seed}", logging.DEBUG if trace else logging.WARNING)
        self.logger.addHandler(_TraceHandler(self))
        shm = Path("/dev/shm")
        self._dir = Path(tempfile.mkdtemp(prefix="corral-sim-", dir=shm if shm.is_dir() else None))
        self.names = tuple(f"r{i + 1}" for i in range(self.cfg.participants))
        self.coordinator = _Node(COORD, self._dir / "coordinator.db", self._clock())
        self.replicas = {n: _Node(n, self._dir / f"{n}.db", self._clock()) for n in self.names}
        self._nodes = {COORD: self.coordinator, **self.replicas}
        self.net = Network(
            self.sched,
            self.rng,
            self.cfg.net,
            deliver=self._deliver,
            unreachable=self._on_unreachable,
            is_up=lambda n: n not in self._nodes or self._nodes[n].up,
            no_dup_from=lambda n: n not in self._nodes,
            trace=self.note if trace else None,
        )
        self.workload = Workload(
            self.sched,
            self.net,
            self.rng,
            replicas=self.names,
            live_replicas=lambda: [n for n in self.names if self.replicas[n].up],
            attempt_timeout_ms=self.cfg.attempt_timeout_ms,
            read_timeout_ms=self.cfg.read_timeout_ms,
            note=self.note,
        )
        self.history = self.workload.history
        self.commit_records: list[CommitRecord] = []
        self.commits_sent: dict[TxId, set[int]] = {}
        self.replica_records: dict[str, list[Record]] = {n: [] for n in self.names}
        self.served_reads: list[ServedRead] = []
        self.view_members: tuple[str, ...] = self.names  # the coordinator's durable view (all, before its first)
        self.decided_revision = 0  # the newest revision in the coordinator's log
        self.healed = False
        self.crash_count = 0
        self._waiting: dict[int, int] = {}  # request id -> coordinator incarnation still owing an answer

    def _clock(self) -> NodeClock:
        skew = self.cfg.clock_skew
        return NodeClock(self.rng.randint(1, CLOCK_OFFSET_MS_MAX), 1.0 + self.rng.uniform(-skew, skew))

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def now(self) -> int:
        return self.sched.now_ms

    def start(self) -> SimCluster:
        """Start every node and the random clients and faults the config asks for."""
        for name in self.names:
            self._start_replica(self.replicas[name])
        self._start_coordinator()
        self.workload.start_random(self.cfg.clients, self.cfg.ops_range)
        plan_faults(self)
        return self

    def run(self) -> None:
        """The whole random run: workload with faults, heal, quiesce, check. Raises SimFailure."""
        try:
            self.start()
            if not self.run_until(self.workload.done, WORKLOAD_MAX_MS):
                raise InvariantViolation(f"the workload did not finish in {WORKLOAD_MAX_MS} ms")
            self.heal()
            self.quiesce()
            self.check()
        except SimFailure:
            raise
        except Exception as err:
            raise SimFailure(self.seed, f"{type(err).__name__}: {err}") from err
        finally:
            self.close()

    def close(self) -> None:
        for node in self._nodes.values():
            if node.log is not None:
                node.log.close(flush=False)
            if node.storage is not None:
                node.storage.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def run_until(self, cond: Callable[[], bool], max_ms: int) -> bool:
        """Run events until `cond()` holds (True) or `max_ms` of virtual time pass (False)."""
        limit = self.now + max_ms
        while not cond():
            t = self.sched.next_time()
            if t is None or t > limit:
                self.sched.advance_to(limit)
                return cond()
            self.sched.run_one()
            if self.core_errors:
                raise InvariantViolation(f"a core logged an error: {self.core_errors[0]}")
        return True

    def run_for(self, ms: int) -> None:
        self.run_until(lambda: False, ms)

    def heal(self) -> None:
        """Stop every fault and restart every crashed node."""
        self.note("heal")
        self.healed = True
        self.net.heal()
        for node in self._nodes.values():
            node.arm = None
            if not node.up:
                self.restart(node.name)

    def quiescent(self) -> bool:
        core = self.coordinator.coord
        if core is None or core.in_flight or core.unended or core.joining is not None:
            return False
        if len(core.members) != len(self.names):
            return False
        return all(
            r.part is not None
            and r.part.membership is Membership.MEMBER
            and r.part.prepared_count == 0
            and r.part.applied_revision == core.last_revision
            for r in self.replicas.values()
        )

    def quiesce(self, max_ms: int = QUIESCE_MAX_MS) -> None:
        """Run until quiescent; raises InvariantViolation (liveness) if it takes over `max_ms`."""
        if not self.run_until(self.quiescent, max_ms):
            raise InvariantViolation(f"no quiescence {max_ms} ms after healing: {self.state()}")

    def state(self) -> str:
        c = self.coordinator.coord
        parts = [
            (
                f"coordinator in_flight={c.in_flight} unended={c.unended} revision={c.last_revision} "
                f"view={c.view} members={','.join(c.members)} joining={c.joining}"
            )
            if c
            else "c down"
        ]
        for name, r in self.replicas.items():
            p = r.part
            parts.append(
                f"{name} {p.membership.value} view={p.view} applied={p.applied_revision} prepared={p.prepared_count}"
                if p
                else f"{name} down"
            )
        return "; ".join(parts)

    def check(self) -> None:
        """Run the checkers (after quiescence)."""
        coord = self.coordinator.coord
        assert coord is not None, "check() needs the coordinator up"
        storages = {n: r.storage for n, r in self.replicas.items() if r.storage is not None}
        check_all(
            Observation(
                self.seed,
                coord.last_revision,
                self.commit_records,
                self.commits_sent,
                self.replica_records,
                storages,
                self.history,
                self.served_reads,
            )
        )

    def note(self, line: str) -> None:
        if self.trace is not None:
            self.trace.append(f"t={self.now} {line}")

    def is_up(self, node: str) -> bool:
        return self._nodes[node].up

    # -- scripted operations -----------------------------------------------------------------------

    def submit(
        self, txn: TxnSpec, *, client: str = "cl1", kind: OpKind = "txn", value: bytes | None = None, attempts: int = 1
    ) -> OpRecord:
        """A client sends a write now, trying at most `attempts` times; the record fills in as it completes."""
        return self.workload.submit(txn, client=client, kind=kind, value=value, attempts=attempts)

    def put(self, key: str, value: bytes, *, client: str = "cl1", attempts: int = 1) -> OpRecord:
        return self.workload.put(key, value, client=client, attempts=attempts)

    def read(self, key: str, *, replica: str, client: str = "rd1", timeout_ms: int | None = None) -> OpRecord:
        """A client reads `key` at `replica` now (deadline: `timeout_ms`, default the config's)."""
        return self.workload.read(key, replica=replica, client=client, timeout_ms=timeout_ms)

    def crash(
        self,
        node: str,
        *,
        when: Callable[[Effects], bool] | None = None,
        deliver_to: Iterable[str] | Literal["all", "some"] = (),
        down_ms: int | None = None,
    ) -> None:
        """Crash `node` now, or (with `when`) right after its first step matching `when`, once that step's
        records are durable, letting only its sends to `deliver_to` out. Restart after `down_ms` (None: stay
        down until `restart` or `heal`)."""
        n = self._nodes[node]
        target = cast(DeliverTo, deliver_to if isinstance(deliver_to, str) else frozenset(deliver_to))
        if when is None:
            self._crash(n, down_ms)
        else:
            n.arm = _Arm(when, target, down_ms)

    def restart(self, node: str) -> None:
        n = self._nodes[node]
        if n.up:
            return
        if n is self.coordinator:
            self._start_coordinator()
        else:
            self._start_replica(n)

    def cut_from_coordinator(self, replica: str, ms: int | None = None) -> None:
        """Cut the links between `replica` and the coordinator (clients and peers still reach it), for `ms`
        (None: until `reconnect` or `heal`)."""
        self.note(f"node={replica} cut off from {COORD}")
        if ms is None:
            self.net.block(replica, COORD)
            self.net.block(COORD, replica)
        else:
            self.net.cut_link(replica, COORD, self.now + ms)

    def reconnect(self, replica: str) -> None:
        self.note(f"node={replica} reconnected to {COORD}")
        self.net.unblock(replica, COORD)
        self.net.unblock(COORD, replica)

    def value(self, replica: str, key: str) -> bytes | None:
        storage = self.replicas[replica].storage
        assert storage is not None, f"{replica} is down"
        kv = storage.store.get(key)
        return None if kv is None else kv.value

    def participant(self, replica: str) -> Participant:
        core = self.replicas[replica].part
        assert core is not None, f"{replica} is down"
        return core

    def coordinator_core(self) -> Coordinator:
        core = self.coordinator.coord
        assert core is not None, "the coordinator is down"
        return core

    # -- nodes ---------------------------------------------------------------------------------

    def _start_coordinator(self) -> None:
        node = self.coordinator
        node.incarnation += 1
        node.log = DecisionLog(node.path, synchronous="OFF")
        core = Coordinator(
            COORD,
            self.names,
            node.log.load(),
            timeouts=self.cfg.timeouts,
            min_replicas=self.cfg.min_replicas,
            logger=self.logger,
        )
        node.coord = core
        self.note(f"node={COORD} start epoch={core.epoch} revision={core.last_revision} view={core.view}")
        eff = core.start(node.local(self.now))
        core.check_invariants()
        self._coord_perform([eff])

    def _start_replica(self, node: _Node) -> None:
        node.incarnation += 1
        node.storage = ReplicaStorage(node.path, synchronous="OFF", outcomes_max=self.cfg.outcomes_max)
        disk = node.storage.load()
        node.part = Participant(
            node.name,
            COORD,
            self.names,
            disk,
            now_ms=node.local(self.now),
            timeouts=self.cfg.timeouts,
            outcomes_max=self.cfg.outcomes_max,
            logger=self.logger,
        )
        node.part.check_invariants()
        self.note(f"node={node.name} start revision={disk.applied_revision} prepared={len(disk.prepared)}")
        self._set_wake(node, node.local(self.now))  # ask about anything recovered in doubt, and for a lease

    def _crash(self, node: _Node, down_ms: int | None) -> None:
        if not node.up:
            return
        self.note(f"node={node.name} crash" + (f" down_ms={down_ms}" if down_ms is not None else ""))
        self.crash_count += 1
        node.incarnation += 1
        node.arm, node.tick_at, node.coord, node.part = None, None, None, None
        node.reads.clear()
        if node.log is not None:
            node.log.close(flush=False)  # pending END marks are lost, as in a real crash
            node.log = None
        if node.storage is not None:
            node.storage.close()
            node.storage = None
        self.net.forget_sender(node.name)
        if down_ms is not None:
            inc = node.incarnation
            self.sched.after(down_ms, lambda: self.restart(node.name) if node.incarnation == inc else None)

    def _set_wake(self, node: _Node, wake_local_ms: int | None) -> None:
        """The shells' Ticker: tick when the latest step's wake time (on the node's clock) comes."""
        if wake_local_ms is None:
            node.tick_at = None
            return
        wake = node.clock.virtual(wake_local_ms)
        node.tick_at = wake
        inc = node.incarnation

        def fire() -> None:
            if node.incarnation == inc and node.tick_at == wake:
                node.tick_at = None
                self._tick(node)

        self.sched.at(wake, fire)

    def _tick(self, node: _Node) -> None:
        if node.coord is not None:
            self._coord_steps([Tick()])
            # The shell flushes END marks when a tick finds it idle; some seeds skip some, to lose more.
            if node.log and node.log.pending_ends and not node.coord.in_flight and self.rng.random() < self.cfg.flush_p:
                node.log.flush()
        elif node.part is not None:
            self._replica_batch(node, [Tick()])

    # -- the coordinator's shell -----------------------------------------------------------------------

    def _coord_steps(self, events: Sequence[Event]) -> None:
        """The coordinator shell: step each event of a batch, then one `log.write`, then send and reply."""
        node = self.coordinator
        core = node.coord
        assert core is not None
        now = node.local(self.now)
        effects = []
        for ev in events:
            effects.append(core.step(ev, now))
            core.check_invariants()
            if isinstance(ev, ClientTxn):
                inc = node.incarnation
                self._waiting[ev.request_id] = inc
                due = node.clock.virtual(ev.deadline_ms)
                self.sched.at(due, lambda rid=ev.request_id: self._server_timeout(rid, inc))
        self._coord_perform(effects)

    def _coord_perform(self, effects: Sequence[Effects]) -> None:
        log = self.coordinator.log
        assert log is not None
        forced = tuple(r for e in effects for r in e.persist)
        log.write(forced, [r for e in effects for r in e.persist_lazy])
        for rec in forced:
            if isinstance(rec, CommitRecord):
                self.commit_records.append(rec)
                self.decided_revision = max(self.decided_revision, rec.revision)
            elif isinstance(rec, ViewRecord):
                self.view_members = rec.members
                self.note(f"node={COORD} view={rec.view} members={','.join(rec.members)}")
        out = tuple(env for e in effects for env in e.send)
        replies = tuple(r for e in effects for r in e.reply)
        self._after_step(self.coordinator, Effects(forced, (), out, replies, effects[-1].wake_at_ms))

    def _server_timeout(self, request_id: int, inc: int) -> None:
        """The coordinator shell's own deadline for a client request: answer "outcome unknown"."""
        if self._waiting.pop(request_id, None) == inc and self.coordinator.incarnation == inc:
            err = Unavailable(
                "no decision before the deadline; the write may or may not have been applied", outcome_unknown=True
            )
            self._emit(self.coordinator, (), (ClientReply(request_id, ErrorInfo.of(err)),))

    # -- the replica's shell ---------------------------------------------------------------------------

    def _replica_batch(self, node: _Node, events: Sequence[Event]) -> None:
        """The replica shell: one storage batch (one fsync) for all events, then the sends."""
        core, storage = node.part, node.storage
        assert core is not None and storage is not None
        now = node.local(self.now)
        persisted: list[Record] = []
        out: list[Envelope] = []
        wake: int | None = None
        stepped = False
        with storage.batch() as b:
            for ev in events:
                if isinstance(ev, Received) and isinstance(ev.msg, FetchRequest):
                    out.append(Envelope(ev.src, self._fetch(core, storage, ev.msg)))
                    continue
                event = ev
                if isinstance(ev, Received) and isinstance(ev.msg, Prepare):
                    event = Received(ev.src, ev.msg, b.read(ev.msg.txn.compare_keys()))
                eff = core.step(event, now)
                core.check_invariants()
                b.write(eff.persist)
                persisted.extend(eff.persist)
                out.extend(eff.send)
                wake, stepped = eff.wake_at_ms, True
        self.replica_records[node.name].extend(persisted)
        self._after_step(node, Effects(tuple(persisted), (), tuple(out), (), wake), set_wake=stepped)
        self._serve_reads(node)

    def _fetch(self, core: Participant, storage: ReplicaStorage, req: FetchRequest) -> FetchReply:
        """`ReplicaService._fetch`: committed history for a replica catching up, from a member only."""
        if core.membership is not Membership.MEMBER:
            err = Unavailable(f"{core.node} is not a member of the view; fetch from a member")
            return FetchReply((), 0, False, ErrorInfo.of(err))
        try:
            revisions, through, complete = storage.fetch(
                req.from_revision, revisions_max=self.cfg.fetch_revisions_max, bytes_max=self.cfg.fetch_bytes_max
            )
        except CorralError as err:
            return FetchReply((), 0, False, ErrorInfo.of(err))
        return FetchReply(revisions, through, complete)

    def _serve_reads(self, node: _Node) -> None:
        """`ReplicaService._range` for every waiting read: lease first, then locks, then the lease again."""
        core, storage = node.part, node.storage
        if core is None or storage is None or not node.reads:
            return
        now = node.local(self.now)
        waiting: list[_Read] = []
        for read in node.reads:
            req = read.req
            error: Unavailable | None = None
            if not read.leased:
                if core.can_serve_linearizable(now):
                    read.leased = True
                elif core.membership is Membership.OUTSIDE or self.now >= read.lease_by:
                    error = self._no_lease(core)
            if read.leased:
                if core.is_locked(req.key):
                    if self.now >= req.deadline_ms:
                        error = Unavailable(f"key {req.key!r} is in doubt on {node.name}; try again later", key=req.key)
                elif not core.can_serve_linearizable(now):
                    error = self._no_lease(core)  # the wait for the lock outlived the lease
                else:
                    kv = storage.store.get(req.key)
                    value = None if kv is None else kv.value
                    self.served_reads.append(
                        ServedRead(node.name, req.key, value, self.now, self.decided_revision, self.view_members)
                    )
                    self.net.send(node.name, read.client, [ReadReply(req.request_id, value)], token=node.incarnation)
                    continue
            if error is None:
                waiting.append(read)
                continue
            self.net.send(node.name, read.client, [ReadReply(req.request_id, error=ErrorInfo.of(error))])
        node.reads = waiting

    @staticmethod
    def _no_lease(core: Participant) -> Unavailable:
        return Unavailable(
            f"{core.node} holds no read lease ({core.membership.value}); another replica can answer", replica=core.node
        )

    def _after_step(self, node: _Node, eff: Effects, *, set_wake: bool = True) -> None:
        """The step's records are durable: crash here if armed, else send, reply and set the wake time."""
        arm = node.arm
        if arm is not None and arm.when(eff):
            reply_to = self.workload.reply_to
            dsts = sorted({e.dst for e in eff.send} | {reply_to.get(r.request_id, "") for r in eff.reply})
            if arm.deliver_to == "all":
                keep = frozenset(dsts)
            elif arm.deliver_to == "some":
                keep = frozenset(d for d in dsts if self.rng.random() < 0.5)
            else:
                keep = arm.deliver_to
            self.note(f"node={node.name} crash after durable step; sends to {sorted(keep) or 'nobody'} go out")
            replies = [r for r in eff.reply if reply_to.get(r.request_id) in keep]
            self._emit(node, [e for e in eff.send if e.dst in keep], replies)
            self._crash(node, arm.down_ms)
            return
        self._emit(node, eff.send, eff.reply)
        if set_wake:
            self._set_wake(node, eff.wake_at_ms)

    def _emit(self, node: _Node, out: Sequence[Envelope], replies: Sequence[ClientReply]) -> None:
        by_dst: dict[str, list[object]] = {}
        for env in out:
            by_dst.setdefault(env.dst, []).append(env.msg)
            if isinstance(env.msg, Commit):
                self.commits_sent.setdefault(env.msg.txid, set()).add(env.msg.revision)
        for reply in replies:
            self._waiting.pop(reply.request_id, None)
            by_dst.setdefault(self.workload.reply_to[reply.request_id], []).append(reply)
        for dst, items in by_dst.items():
            self.net.send(node.name, dst, items, token=node.incarnation)

    # -- the network's callbacks ---------------------------------------------------------------------

    def _deliver(self, src: str, dst: str, items: tuple[object, ...]) -> None:
        if self.trace is not None:
            for item in items:
                self.note(f"node={dst} from={src} {describe(item)}")
        node = self._nodes.get(dst)
        if node is None:
            for item in items:
                self.workload.receive(dst, item)
        elif node is self.coordinator:  # up: the network delivers only to live nodes
            for item in items:
                if isinstance(item, ClientTxn):
                    # gRPC: a request past its deadline is never handled; else the server keeps a margin,
                    # and counts the remaining time on its own clock.
                    remaining = item.deadline_ms - self.now
                    if remaining > 0 and node.up:
                        deadline = node.local(self.now) + remaining - min(DEADLINE_MARGIN_MS, remaining // 10)
                        self._coord_steps([replace(item, deadline_ms=deadline)])
            peer: list[Event] = [Received(src, m) for m in items if isinstance(m, PEER_MESSAGES)]
            if peer and node.up:
                self._coord_steps(peer)
        else:
            msgs: list[Event] = [Received(src, m) for m in items if isinstance(m, PEER_MESSAGES)]
            if msgs:
                self._replica_batch(node, msgs)
            inc = node.incarnation
            for item in items:
                if isinstance(item, ReadRequest) and node.up:
                    read = _Read(src, item, min(self.now + LEASE_WAIT_MS, item.deadline_ms))
                    node.reads.append(read)
                    for t in sorted({read.lease_by, item.deadline_ms}):
                        self.sched.at(t, lambda: self._serve_reads(node) if node.incarnation == inc else None)
            self._serve_reads(node)

    def _on_unreachable(self, src: str, dst: str, items: tuple[object, ...], token: int) -> None:
        node = self._nodes.get(src)
        if node is None or not node.up or node.incarnation != token:
            return  # a client just times out; a crashed sender's connections died with it
        msgs = tuple(m for m in items if isinstance(m, PEER_MESSAGES))
        if not msgs:
            return
        self.note(f"node={src} unreachable dst={dst} n={len(msgs)}")
        if node.coord is not None:  # a replica's shell ignores it: its core re-asks from the timer
            self._coord_steps([Unreachable(dst, cast(tuple[Message, ...], msgs))])
