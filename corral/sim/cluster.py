"""SimCluster: the whole 2PC cluster in one process, on a virtual clock, driven by one seeded RNG.

Model. A coordinator ("c"), participants ("r1".."rN") and clients ("cl1"..; `workload.py`) exchange messages
over the fake network of `network.py`. Each node reads its own clock (`NodeClock`: offset and rate per node)
and is driven exactly as its real shell (the asyncio/gRPC service) drives it:

- coordinator (`services/coordinator.py`): `DecisionLog` + `Coordinator(min_replicas=...)`. Per input (a client
  request or lease request, a batch of messages, an unreachable report, a Tick): one `step_many` of its events
  (as the real shell: a batch of messages is stepped at once), `check_invariants()`, `log.write(persist,
  persist_lazy)` (the fsync), THEN send and reply. Ticks come at the latest step's `wake_at_ms`; a tick that
  finds nothing in flight flushes pending END marks. A client request past its deadline is never handled
  (gRPC); the shell counts the rest of a write's on its own clock less a margin, and then answers
  Unavailable(outcome_unknown) (a lease request's client just gives up at its deadline). Views, read leases,
  joins and client leases are the core's business: the shell only carries their messages. What the shells
  see is kept by `recorder.py` for the checkers.
- replica (`services/replica.py`): `ReplicaStorage` + `Participant`, one storage batch per arriving batch
  of messages or tick, FetchRequests answered by the shell, linearizable reads under the lease rule: see
  `nodes.py`. Sends leave once the batch is durable; `Unreachable` is ignored (the core re-asks from its
  timer). Each read served is recorded (`ServedRead`) with the coordinator's view and newest decision at
  that instant, for the lease checker.

Crashes drop the core and everything in memory (for the coordinator: its pending END marks,
`log.close(flush=False)`); the files stay, and a restart rebuilds the core from them. A crash may come between
steps, or right after a step whose records are durable with none, some or all of its sends out. Random faults
are planned by `faults.py`.

A run: start, workload (plain and session clients) with faults, heal (faults off, every node up), run until
quiescent (every configured replica a member of the coordinator's view and knowing it, nobody joining, no
transaction in flight or prepared anywhere, no lease ending, every commit ENDed, every replica at the last
revision), then the checkers. Not quiescing after healing is a liveness failure. Tests script scenarios with
the same API (`SimConfig.scripted()`, `put`, `read`, `sessions.grant` and its kin, `crash(node, when=...)`,
`disconnect`, `ask`, `run_until`).
"""

from __future__ import annotations

import functools
import logging
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal, cast

from corral.core.messages import (
    ClientReply,
    ClientTxn,
    Effects,
    Envelope,
    ErrorInfo,
    Event,
    Message,
    Outcome,
    Received,
    ResolveReply,
    ResolveRequest,
    SnapshotPage,
    Tick,
    TxnSpec,
    Unreachable,
)
from corral.core.twopc_coordinator import Coordinator
from corral.core.twopc_participant import Membership, Participant
from corral.errors import Unavailable
from corral.records import TxId
from corral.sim.checkers import InvariantViolation, OpKind, OpRecord, ServedRead, check_all
from corral.sim.config import CLOCK_OFFSET_MS_MAX, SESSION_OPS_RANGE, SimConfig
from corral.sim.faults import plan_faults
from corral.sim.network import LeaseCall, Network, NodeClock, ReadRequest, Scheduler, describe
from corral.sim.nodes import (
    LEASE_WAIT_MS,
    Arm,
    DeliverTo,
    PendingRead,
    SimNode,
    describe_nodes,
    replica_batch,
    serve_reads,
)
from corral.sim.observation import replica_history
from corral.sim.recorder import Recorder
from corral.sim.sessions import Sessions
from corral.sim.workload import COORD, Workload
from corral.store.decision_log import DecisionLog
from corral.store.replica_log import ReplicaStorage

WORKLOAD_MAX_MS = 120_000  # clients are bounded by ops x attempts x timeout; beyond this the simulator is stuck
# After healing: a rejoin is a few fetch rounds and a join hold, a commit a few retries; even a replica that
# must wait out a join timeout or two rejoins within ~2 s. Far more than that is a liveness bug.
QUIESCE_MAX_MS = 10_000
# Events at one virtual instant: a busy run has tens (a batch, its sends, reads served); this many means a
# timer that keeps firing at once (a wake time in the past), which would spin a real node's CPU.
INSTANT_EVENTS_MAX = 10_000
ASK_MAX_MS = 1_000  # a scripted query's answer takes two network delays; this much means none is coming
DEADLINE_MARGIN_MS = 50  # the coordinator shell answers this much before a request's deadline (services.base)


class SimFailure(Exception):
    """A run broke an invariant or a core failed; the message names the seed and the replay command."""

    def __init__(self, seed: int, message: str) -> None:
        super().__init__(f"seed {seed}: {message}\nreplay: python -m corral.sim --seed {seed} --verbose")
        self.seed = seed


class _TraceHandler(logging.Handler):
    def __init__(self, sim: SimCluster) -> None:
        super().__init__(logging.DEBUG)
        self.sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        self.sim.note(f"log {record.levelname.lower()} {record.getMessage()}")
        if record.levelno >= logging.ERROR:
            self.sim.core_errors.append(record.getMessage())


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
        self.coordinator = SimNode(COORD, self._dir / "coordinator.db", self._clock())
        self.replicas = {n: SimNode(n, self._dir / f"{n}.db", self._clock()) for n in self.names}
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
        self.sessions = Sessions(
            self.workload, self.sched, self.rng, attempt_timeout_ms=self.cfg.attempt_timeout_ms, note=self.note
        )
        self.history = self.workload.history
        self.rec = Recorder(self.names, self.note)
        self.commit_records = self.rec.commit_records
        self.replica_records = self.rec.replica_records
        self.served_reads = self.rec.served_reads
        self.probes: dict[str, list[object]] = {}  # what scripted peers (`ask`) received
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
        self.sessions.start_random(self.cfg.sessions, SESSION_OPS_RANGE)
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
        instant, events = self.now, 0
        while not cond():
            t = self.sched.next_time()
            if t is None or t > limit:
                self.sched.advance_to(limit)
                return cond()
            events = events + 1 if t == instant else 0
            if events > INSTANT_EVENTS_MAX:
                raise InvariantViolation(f"{events} events at t={t} and counting: a node is spinning ({self.state()})")
            instant = t
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
        if core is None or core.in_flight or core.unended or core.joining is not None or core.leases.ending():
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
        return describe_nodes(self.coordinator, self.replicas.values())

    def check(self) -> None:
        """Run the checkers (after quiescence)."""
        coord, log = self.coordinator.coord, self.coordinator.log
        assert coord is not None and log is not None, "check() needs the coordinator up"
        storages = {n: r.storage for n, r in self.replicas.items() if r.storage is not None}
        live = frozenset(lease for lease, _ in log.load().leases)
        if len(coord.leases) != len(live) or not all(coord.leases.live(lease) for lease in live):
            raise InvariantViolation(f"seed {self.seed}: the coordinator's live leases differ from its log's {live}")
        obs = self.rec.observation(
            self.seed,
            coord.last_revision,
            replicas=storages,
            workload=self.workload,
            live_leases=live,
            clock_skew=self.cfg.clock_skew,
        )
        check_all(obs)

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

    def put(self, key: str, value: bytes, *, client: str = "cl1", attempts: int = 1, lease: int = 0) -> OpRecord:
        return self.workload.put(key, value, client=client, attempts=attempts, lease=lease)

    def read(
        self, key: str, *, replica: str, client: str = "rd1", timeout_ms: int | None = None, prefix: bool = False
    ) -> OpRecord:
        """A client reads `key` (`prefix`: every key under it) at `replica` now (deadline: `timeout_ms`, default
        the config's)."""
        return self.workload.read(key, replica=replica, client=client, timeout_ms=timeout_ms, prefix=prefix)

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
            n.arm = Arm(when, target, down_ms)

    def restart(self, node: str) -> None:
        n = self._nodes[node]
        if n.up:
            return
        if n is self.coordinator:
            self._start_coordinator()
        else:
            self._start_replica(n)

    def disconnect(self, node: str, *others: str) -> None:
        """Cut the links between `node` and each of `others`, both ways, until `reconnect` or `heal`
        (a replica cut off from the coordinator only: `disconnect("r3", "c")`; clients still reach it)."""
        self.note(f"node={node} disconnected from {','.join(others)}")
        for other in others:
            self.net.block(node, other)
            self.net.block(other, node)

    def reconnect(self, node: str, *others: str) -> None:
        self.note(f"node={node} reconnected to {','.join(others)}")
        for other in others:
            self.net.unblock(node, other)
            self.net.unblock(other, node)

    def ask(self, replica: str, txid: TxId, *, asker: str = "probe") -> Outcome:
        """What `replica` answers a participant's termination query about `txid` (`asker` stands for a peer
        the replica cannot tell from a real one)."""
        self.net.send(asker, replica, [ResolveRequest((txid,))])
        replies = self.probes.setdefault(asker, [])
        asked = len(replies)
        assert self.run_until(lambda: len(replies) > asked, ASK_MAX_MS), f"{replica} did not answer"
        reply = replies[asked]
        assert isinstance(reply, ResolveReply), reply
        return reply.outcomes[0]

    def can_serve(self, replica: str) -> bool:
        """`replica` would serve a linearizable read now (it is up, a member, and its read lease holds)."""
        node = self.replicas[replica]
        return node.part is not None and node.part.can_serve_linearizable(node.local(self.now))

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
        disk = node.log.load()
        core = Coordinator(
            COORD,
            self.names,
            disk,
            timeouts=self.cfg.timeouts,
            min_replicas=self.cfg.min_replicas,
            logger=self.logger,
        )
        node.coord = core
        self.note(f"node={COORD} start epoch={core.epoch} revision={core.last_revision} view={core.view}")
        now = node.local(self.now)
        eff = core.start(now)
        core.check_invariants()
        self.rec.coordinator_started(core.epoch, disk.leases, now, self.now)
        self.rec.coordinator_step((), eff, core.epoch, now, self.now)
        self._coord_perform(eff, now)

    def _start_replica(self, node: SimNode) -> None:
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

    def _crash(self, node: SimNode, down_ms: int | None) -> None:
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

    def _set_wake(self, node: SimNode, wake_local_ms: int | None) -> None:
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

    def _tick(self, node: SimNode) -> None:
        if node.coord is not None:
            self._coord_steps([Tick()])
            # The shell flushes END marks when a tick finds it idle; some seeds skip some, to lose more.
            if node.log and node.log.pending_ends and not node.coord.in_flight and self.rng.random() < self.cfg.flush_p:
                node.log.flush()
        elif node.part is not None:
            self._replica_batch(node, [Tick()])

    # -- the coordinator's shell -----------------------------------------------------------------------

    def _coord_steps(self, events: Sequence[Event]) -> None:
        """The coordinator shell: step the events at once (`step_many`), one `log.write`, then send and reply."""
        node = self.coordinator
        core = node.coord
        assert core is not None
        now = node.local(self.now)
        eff = core.step_many(events, now)
        core.check_invariants()
        for ev in events:
            if isinstance(ev, ClientTxn):
                inc = node.incarnation
                self._waiting[ev.request_id] = inc
                due = node.clock.virtual(ev.deadline_ms)
                self.sched.at(due, functools.partial(self._server_timeout, ev.request_id, inc))
        self.rec.coordinator_step(events, eff, core.epoch, now, self.now)
        self._coord_perform(eff, now)

    def _coord_perform(self, eff: Effects, now: int) -> None:
        node = self.coordinator
        assert node.log is not None and node.coord is not None
        node.log.write(eff.persist, eff.persist_lazy)
        self.rec.coordinator_wrote(eff.persist, node.coord.epoch, now, self.now)
        self._after_step(node, eff)

    def _server_timeout(self, request_id: int, inc: int) -> None:
        """The coordinator shell's own deadline for a client request: answer "outcome unknown"."""
        if self._waiting.pop(request_id, None) == inc and self.coordinator.incarnation == inc:
            err = Unavailable(
                "no decision before the deadline; the write may or may not have been applied", outcome_unknown=True
            )
            self._emit(self.coordinator, (), (ClientReply(request_id, ErrorInfo.of(err)),))

    # -- the replica's shell ---------------------------------------------------------------------------

    def _replica_batch(self, node: SimNode, events: Sequence[Event]) -> None:
        """The replica shell (`nodes.replica_batch`): one storage batch for all events, then the sends."""
        assert node.part is not None and node.storage is not None
        snap = node.part.rejoin.snapshot
        if snap is not None and any(
            isinstance(e, Received) and e.src == snap.peer and isinstance(e.msg, SnapshotPage) and not e.msg.more
            for e in events
        ):
            # The last page of the snapshot under way may replace the store: keep its history for the
            # checkers first, as a compaction does (observation.replica_history). Not for a late page of an
            # older snapshot (seed 7185387), and not when what it got by an earlier snapshot is only held
            # by replicas that are down right now: its archive stays as it was.
            stores = {n: r.storage for n, r in self.replicas.items() if r.storage is not None}
            try:
                kept = replica_history(stores, self.rec.archives, node.name)
            except InvariantViolation:
                pass
            else:
                self.rec.archives[node.name] = (node.storage.revision, kept)
        bounds = (self.cfg.fetch_revisions_max, self.cfg.fetch_bytes_max)
        eff, stepped = replica_batch(node.part, node.storage, events, node.local(self.now), bounds)
        self.replica_records[node.name].extend(eff.persist)
        self._after_step(node, eff, set_wake=stepped)
        self._serve_reads(node)

    def _serve_reads(self, node: SimNode) -> None:
        """Answer the reads waiting at `node` that can be answered now; record each one served."""
        for read, reply in serve_reads(node, self.now):
            if reply.error is None:
                rec, req = self.rec, read.req
                served = ServedRead(
                    node.name,
                    req.key,
                    reply.value,
                    self.now,
                    rec.decided_revision,
                    rec.view_members,
                    req.prefix,
                    reply.kvs,
                )
                self.served_reads.append(served)
            self.net.send(node.name, read.client, [reply], token=node.incarnation)

    def _after_step(self, node: SimNode, eff: Effects, *, set_wake: bool = True) -> None:
        """The step's records are durable: crash here if armed, else send, reply and set the wake time."""
        arm = node.arm
        if arm is not None and arm.when(eff):
            out, replies = arm.what_gets_out(eff, self.workload.reply_to, self.rng)
            self.note(f"node={node.name} crash after durable step; {len(out) + len(replies)} sends go out")
            self._emit(node, out, replies)
            self._crash(node, arm.down_ms)
            return
        self._emit(node, eff.send, eff.reply)
        if set_wake:
            self._set_wake(node, eff.wake_at_ms)

    def _emit(self, node: SimNode, out: Sequence[Envelope], replies: Sequence[ClientReply]) -> None:
        by_dst: dict[str, list[object]] = {}
        self.rec.sent(out)
        for env in out:
            by_dst.setdefault(env.dst, []).append(env.msg)
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
                if dst in self.workload.clients:
                    self.workload.receive(dst, item)
                else:
                    self.probes.setdefault(dst, []).append(item)
        elif node is self.coordinator:  # up: the network delivers only to live nodes
            for item in items:
                if isinstance(item, ClientTxn):
                    # gRPC: a request past its deadline is never handled; else the server keeps a margin,
                    # and counts the remaining time on its own clock.
                    remaining = item.deadline_ms - self.now
                    if remaining > 0 and node.up:
                        deadline = node.local(self.now) + remaining - min(DEADLINE_MARGIN_MS, remaining // 10)
                        self._coord_steps([replace(item, deadline_ms=deadline)])
                elif isinstance(item, LeaseCall) and item.deadline_ms > self.now and node.up:
                    self._coord_steps([item.request])
            peer: list[Event] = [Received(src, m) for m in items if isinstance(m, Message)]
            if peer and node.up:
                self._coord_steps(peer)
        else:
            msgs: list[Event] = [Received(src, m) for m in items if isinstance(m, Message)]
            if msgs:
                self._replica_batch(node, msgs)
            inc = node.incarnation
            for item in items:
                if isinstance(item, ReadRequest) and node.up:
                    read = PendingRead(src, item, min(self.now + LEASE_WAIT_MS, item.deadline_ms))
                    node.reads.append(read)
                    for t in sorted({read.lease_by, item.deadline_ms}):
                        self.sched.at(t, lambda: self._serve_reads(node) if node.incarnation == inc else None)
            self._serve_reads(node)

    def _on_unreachable(self, src: str, dst: str, items: tuple[object, ...], token: int) -> None:
        node = self._nodes.get(src)
        if node is None or not node.up or node.incarnation != token:
            return  # a client just times out; a crashed sender's connections died with it
        msgs = tuple(m for m in items if isinstance(m, Message))
        if not msgs:
            return
        self.note(f"node={src} unreachable dst={dst} n={len(msgs)}")
        if node.coord is not None:  # a replica's shell ignores it: its core re-asks from the timer
            self._coord_steps([Unreachable(dst, msgs)])
