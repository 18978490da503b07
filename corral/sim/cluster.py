"""SimCluster: the whole 2PC cluster in one process, on a virtual clock, driven by one seeded RNG.

Model. A coordinator ("c"), participants ("r1".."rN") and clients ("cl1"..) exchange messages over the fake
network of `network.py`. Each node is driven exactly as its real shell (the asyncio/gRPC service) drives it:

- coordinator: `DecisionLog` + `Coordinator`. Per event (client request, message, unreachable report,
  Tick): step, `check_invariants()`, `log.write(persist, persist_lazy)` (the fsync), THEN send and reply.
  A batch of messages is stepped event by event, then written with one `log.write`. Ticks come at the
  latest step's `wake_at_ms`; a tick that finds nothing in flight flushes pending END marks. A client
  request past its deadline is never handled (gRPC); at its deadline less a margin the shell answers
  Unavailable(outcome_unknown).
- participant: `ReplicaStorage` + `Participant`. Per arriving batch: one `storage.batch()`, one step per
  message (a Prepare with `b.read(compare keys)`), each step's records written into the batch; the batch
  is durable when it ends, and only then do the collected sends leave. Ticks likewise; `Unreachable` is
  ignored (the core re-asks from its timer). A read waits while its key is locked, up to its deadline,
  then fails Unavailable; it is served only by a node that is up.
- client: one operation at a time on KEYS: put, delete, compare-and-set, a two-key txn, or a read at a
  random live replica. A write carries (client_id, seq); on timeout it is retried with the same seq, at most
  ATTEMPTS_MAX attempts, then its outcome is unknown. An error reply means "not applied", except
  Unavailable(outcome_unknown), which ends the attempt like a timeout.

Faults (random runs, drawn up front from the seed): the network's (drop, duplicate, delay, reorder, cut
off), and crashes: between steps, or right after a step whose records are durable with none, some or all of
its sends out. A crash drops the core and everything in memory (for the coordinator: its pending END marks,
`log.close(flush=False)`); the files stay, and a restart rebuilds the core from them.

A run: start, workload with faults, heal (faults off, every node up), run until quiescent (no transaction
in flight or prepared anywhere, every commit acknowledged, every replica at the last revision), then the
checkers. Not quiescing after healing is a liveness failure. Tests script scenarios with the same API
(`SimConfig.scripted()`, `put`, `read`, `crash(node, when=...)`, `run_until`).
"""

from __future__ import annotations

import functools
import logging
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast

from corral.core.messages import (
    Abort,
    Ack,
    ClientReply,
    ClientTxn,
    Commit,
    Effects,
    Envelope,
    ErrorInfo,
    Event,
    Prepare,
    Received,
    ResolveReply,
    ResolveRequest,
    Tick,
    TxnResult,
    TxnSpec,
    Unreachable,
    Vote,
)
from corral.core.twopc_coordinator import Coordinator
from corral.core.twopc_participant import Participant
from corral.errors import Unavailable
from corral.limits import OUTCOMES_REMEMBERED_MAX, Timeouts
from corral.model import Compare, CompareOp, CompareTarget, Delete, Put
from corral.records import CommitRecord, Record, TxId
from corral.sim.checkers import InvariantViolation, Observation, OpKind, OpRecord, check_all
from corral.sim.network import NetConfig, Network, ReadReply, ReadRequest, Scheduler, describe
from corral.store.decision_log import DecisionLog
from corral.store.replica_log import ReplicaStorage

COORD = "c"
KEYS = ("k0", "k1", "k2")  # few keys: conflicts, locked reads and compares that matter
PEER_MESSAGES = (Prepare, Commit, Abort, Vote, Ack, ResolveRequest, ResolveReply)

# -- bounds (each keeps one run small enough for 1,000 seeds in well under a minute) ----------------------
CLIENTS_RANGE = (2, 4)  # two already race on keys; four give concurrent reads and conflicts
OPS_RANGE = (5, 15)  # per client
ATTEMPTS_MAX = 3  # a write's attempts before its outcome is declared unknown (the SDK's retry bound)
CRASHES_MAX = 3  # random crashes per run: enough to hit a node twice or two nodes at once
PARTITIONS_MAX = 2
FAULT_WINDOW_MS = 1_500  # random faults start within this window (workloads run ~0.3-3 s of virtual time)
DOWN_MS_RANGE = (10, 400)  # outlasts the prepare timeout and several resolve intervals at the high end
PARTITION_MS_RANGE = (10, 300)
WORKLOAD_MAX_MS = 120_000  # clients are bounded by ops x attempts x timeout; beyond this the simulator is stuck
QUIESCE_MAX_MS = 10_000  # after healing: hundreds of commit retries and resolve intervals; more is a liveness bug
DEADLINE_MARGIN_MS = 50  # the coordinator shell answers this much before a request's deadline (services.base)
THINK_MS_MAX = 20  # a client's pause between operations (at least 1 ms: the checker needs ret < next call)
BACKOFF_MS_MAX = 20  # a client's pause before retrying a timed-out write
READ_SLACK_MS = 60  # how long past a read's deadline its client still waits for the reply
SMALL_OUTCOMES_RANGE = (3, 40)  # some seeds shrink the replicas' outcome memory: forgetting, trims (every max//10+1)

# Scripted runs: FIFO links with a fixed delay and every sender told of a failed send; short timers.
SCRIPTED_NET = NetConfig(fifo=True, delay_min_ms=5, delay_max_ms=5, report_p=1.0)
SCRIPTED_TIMEOUTS = Timeouts(prepare_timeout_ms=100, commit_retry_ms=30, resolve_after_ms=40, resolve_interval_ms=40)

DeliverTo = frozenset[str] | Literal["all", "some"]


class SimFailure(Exception):
    """A run broke an invariant or a core failed; the message names the seed and the replay command."""

    def __init__(self, seed: int, message: str) -> None:
        super().__init__(f"seed {seed}: {message}\nreplay: python -m corral.sim --seed {seed} --verbose")
        self.seed = seed


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One run's shape: sizes, network, timers and how many random faults."""

    participants: int = 3
    clients: int = 0
    ops_range: tuple[int, int] = OPS_RANGE
    net: NetConfig = SCRIPTED_NET
    timeouts: Timeouts = SCRIPTED_TIMEOUTS
    attempt_timeout_ms: int = 300
    read_timeout_ms: int = 100
    crashes: int = 0
    partitions: int = 0
    flush_p: float = 1.0  # chance that a coordinator tick flushes pending END marks
    outcomes_max: int = OUTCOMES_REMEMBERED_MAX

    @classmethod
    def scripted(cls) -> SimConfig:
        """No clients, no random faults, FIFO links with a fixed 5 ms delay: for scenario tests."""
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
        )
        return cls(
            clients=rng.randint(*CLIENTS_RANGE),
            net=net,
            timeouts=timeouts,
            attempt_timeout_ms=rng.randint(80, 400),
            read_timeout_ms=rng.randint(30, 200),
            crashes=rng.randint(0, CRASHES_MAX),
            partitions=rng.randint(0, PARTITIONS_MAX),
            flush_p=rng.choice((0.1, 0.5, 1.0)),
            outcomes_max=rng.randint(*SMALL_OUTCOMES_RANGE) if rng.random() < 0.25 else OUTCOMES_REMEMBERED_MAX,
        )


@dataclass(slots=True)
class _Arm:
    """Crash `node` right after its first step whose effects satisfy `when` (records already durable)."""

    when: Callable[[Effects], bool]
    deliver_to: DeliverTo
    down_ms: int | None


@dataclass(slots=True)
class _Node:
    name: str
    path: Path
    incarnation: int = 0
    arm: _Arm | None = None
    tick_at: int | None = None
    log: DecisionLog | None = None  # coordinator
    coord: Coordinator | None = None
    storage: ReplicaStorage | None = None  # participant
    part: Participant | None = None
    reads: list[tuple[str, ReadRequest]] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.coord is not None or self.part is not None


@dataclass(slots=True)
class _Client:
    name: str
    ops_left: int
    scripted: bool
    seq: int = 0
    op: OpRecord | None = None
    attempts: int = 0
    attempts_max: int = ATTEMPTS_MAX
    attempts_over: int = 0  # the last request id whose attempt ended without an answer


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


def sends(kind: type) -> Callable[[Effects], bool]:
    """A crash trigger: the step sends a message of `kind`."""
    return lambda eff: any(isinstance(e.msg, kind) for e in eff.send)


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
        self.coordinator = _Node(COORD, self._dir / "coordinator.db")
        self.replicas = {n: _Node(n, self._dir / f"{n}.db") for n in self.names}
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
        self.clients: dict[str, _Client] = {}
        self.history: list[OpRecord] = []
        self.commit_records: list[CommitRecord] = []
        self.commits_sent: dict[TxId, set[int]] = {}
        self.replica_records: dict[str, list[Record]] = {n: [] for n in self.names}
        self.healed = False
        self.crash_count = 0
        self._request_id = 0
        self._reply_to: dict[int, str] = {}
        self._waiting: dict[int, int] = {}  # request id -> coordinator incarnation still owing an answer
        self._written: dict[str, list[bytes]] = {k: [] for k in KEYS}

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def now(self) -> int:
        return self.sched.now_ms

    def start(self) -> SimCluster:
        """Start every node and the random clients and faults the config asks for."""
        for name in self.names:
            self._start_replica(self.replicas[name])
        self._start_coordinator()
        for i in range(self.cfg.clients):
            client = self._client(f"cl{i + 1}", scripted=False)
            client.ops_left = self.rng.randint(*self.cfg.ops_range)
            self.sched.at(self.rng.randint(0, THINK_MS_MAX), functools.partial(self._next_op, client))
        self._plan_faults()
        return self

    def run(self) -> None:
        """The whole random run: workload with faults, heal, quiesce, check. Raises SimFailure."""
        try:
            self.start()
            if not self.run_until(self.clients_done, WORKLOAD_MAX_MS):
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
        if core is None or core.in_flight or core.unended:
            return False
        return all(
            r.part is not None and r.part.prepared_count == 0 and r.part.applied_revision == core.last_revision
            for r in self.replicas.values()
        )

    def quiesce(self, max_ms: int = QUIESCE_MAX_MS) -> None:
        """Run until quiescent; raises InvariantViolation (liveness) if it takes over `max_ms`."""
        if not self.run_until(self.quiescent, max_ms):
            raise InvariantViolation(f"no quiescence {max_ms} ms after healing: {self.state()}")

    def state(self) -> str:
        c = self.coordinator.coord
        parts = [
            f"coordinator in_flight={c.in_flight} unended={c.unended} revision={c.last_revision}" if c else "c down"
        ]
        for name, r in self.replicas.items():
            p = r.part
            parts.append(f"{name} applied={p.applied_revision} prepared={p.prepared_count}" if p else f"{name} down")
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
            )
        )

    def clients_done(self) -> bool:
        return all(c.op is None and c.ops_left == 0 for c in self.clients.values())

    def note(self, line: str) -> None:
        if self.trace is not None:
            self.trace.append(f"t={self.now} {line}")

    # -- scripted operations -----------------------------------------------------------------------

    def submit(
        self, txn: TxnSpec, *, client: str = "cl1", kind: OpKind = "txn", value: bytes | None = None, attempts: int = 1
    ) -> OpRecord:
        """A client sends a write now, trying at most `attempts` times; the record fills in as it completes."""
        cl = self._client(client, scripted=True)
        cl.seq += 1
        op = OpRecord(client, kind, tuple(sorted(txn.keys())), self.now, seq=cl.seq, txn=txn, value=value)
        self._begin(cl, op, attempts_max=attempts)
        return op

    def put(self, key: str, value: bytes, *, client: str = "cl1", attempts: int = 1) -> OpRecord:
        txn = TxnSpec(on_success=(Put(key, value),))
        return self.submit(txn, client=client, kind="put", value=value, attempts=attempts)

    def read(self, key: str, *, replica: str, client: str = "rd1", timeout_ms: int | None = None) -> OpRecord:
        """A client reads `key` at `replica` now (deadline: `timeout_ms`, default the config's)."""
        cl = self._client(client, scripted=True)
        op = OpRecord(client, "get", (key,), self.now, replica=replica)
        self._begin(cl, op, read_timeout_ms=timeout_ms)
        return op

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

    def value(self, replica: str, key: str) -> bytes | None:
        storage = self.replicas[replica].storage
        assert storage is not None, f"{replica} is down"
        kv = storage.store.get(key)
        return None if kv is None else kv.value

    def participant(self, replica: str) -> Participant:
        core = self.replicas[replica].part
        assert core is not None, f"{replica} is down"
        return core

    # -- nodes ---------------------------------------------------------------------------------

    def _start_coordinator(self) -> None:
        node = self.coordinator
        node.incarnation += 1
        node.log = DecisionLog(node.path, synchronous="OFF")
        core = Coordinator(COORD, self.names, node.log.load(), timeouts=self.cfg.timeouts, logger=self.logger)
        node.coord = core
        self.note(f"node={COORD} start epoch={core.epoch} revision={core.last_revision}")
        eff = core.start(self.now)
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
            now_ms=self.now,
            timeouts=self.cfg.timeouts,
            outcomes_max=self.cfg.outcomes_max,
            logger=self.logger,
        )
        node.part.check_invariants()
        self.note(f"node={node.name} start revision={disk.applied_revision} prepared={len(disk.prepared)}")
        self._set_wake(node, self.now)  # ask about anything recovered in doubt

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

    def _set_wake(self, node: _Node, wake_at_ms: int | None) -> None:
        """The shells' Ticker: tick when the latest step's wake time comes (a core reports its minimum)."""
        node.tick_at = wake_at_ms
        if wake_at_ms is None:
            return
        inc = node.incarnation

        def fire() -> None:
            if node.incarnation == inc and node.tick_at == wake_at_ms:
                node.tick_at = None
                self._tick(node)

        self.sched.at(wake_at_ms, fire)

    def _tick(self, node: _Node) -> None:
        if node.coord is not None:
            self._coord_steps([Tick()])
            # The shell flushes END marks when a tick finds it idle; some seeds skip some, to lose more.
            if node.log and node.log.pending_ends and not node.coord.in_flight and self.rng.random() < self.cfg.flush_p:
                node.log.flush()
        elif node.part is not None:
            self._replica_batch(node, [Tick()])

    def _coord_steps(self, events: Sequence[Event]) -> None:
        """The coordinator shell: step each event of a batch, then one `log.write`, then send and reply."""
        core = self.coordinator.coord
        assert core is not None
        effects = []
        for ev in events:
            effects.append(core.step(ev, self.now))
            core.check_invariants()
            if isinstance(ev, ClientTxn):
                inc = self.coordinator.incarnation
                self._waiting[ev.request_id] = inc
                self.sched.at(ev.deadline_ms, functools.partial(self._server_timeout, ev.request_id, inc))
        self._coord_perform(effects)

    def _coord_perform(self, effects: Sequence[Effects]) -> None:
        log = self.coordinator.log
        assert log is not None
        forced = tuple(r for e in effects for r in e.persist)
        log.write(forced, [r for e in effects for r in e.persist_lazy])
        self.commit_records.extend(r for r in forced if isinstance(r, CommitRecord))
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

    def _replica_batch(self, node: _Node, events: Sequence[Event]) -> None:
        """The replica shell: one storage batch (one fsync) for all events, then the sends."""
        core, storage = node.part, node.storage
        assert core is not None and storage is not None
        persisted: list[Record] = []
        out: list[Envelope] = []
        wake: int | None = None
        with storage.batch() as b:
            for ev in events:
                event = ev
                if isinstance(ev, Received) and isinstance(ev.msg, Prepare):
                    event = Received(ev.src, ev.msg, b.read(ev.msg.txn.compare_keys()))
                eff = core.step(event, self.now)
                core.check_invariants()
                b.write(eff.persist)
                persisted.extend(eff.persist)
                out.extend(eff.send)
                wake = eff.wake_at_ms
        self.replica_records[node.name].extend(persisted)
        self._after_step(node, Effects(tuple(persisted), (), tuple(out), (), wake))
        self._serve_reads(node)

    def _after_step(self, node: _Node, eff: Effects) -> None:
        """The step's records are durable: crash here if armed, else send, reply and set the wake time."""
        arm = node.arm
        if arm is not None and arm.when(eff):
            dsts = sorted({e.dst for e in eff.send} | {self._reply_to.get(r.request_id, "") for r in eff.reply})
            if arm.deliver_to == "all":
                keep = frozenset(dsts)
            elif arm.deliver_to == "some":
                keep = frozenset(d for d in dsts if self.rng.random() < 0.5)
            else:
                keep = arm.deliver_to
            self.note(f"node={node.name} crash after durable step; sends to {sorted(keep) or 'nobody'} go out")
            replies = [r for r in eff.reply if self._reply_to.get(r.request_id) in keep]
            self._emit(node, [e for e in eff.send if e.dst in keep], replies)
            self._crash(node, arm.down_ms)
            return
        self._emit(node, eff.send, eff.reply)
        self._set_wake(node, eff.wake_at_ms)

    def _emit(self, node: _Node, out: Sequence[Envelope], replies: Sequence[ClientReply]) -> None:
        by_dst: dict[str, list[object]] = {}
        for env in out:
            by_dst.setdefault(env.dst, []).append(env.msg)
            if isinstance(env.msg, Commit):
                self.commits_sent.setdefault(env.msg.txid, set()).add(env.msg.revision)
        for reply in replies:
            self._waiting.pop(reply.request_id, None)
            by_dst.setdefault(self._reply_to[reply.request_id], []).append(reply)
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
                self._client_receive(self.clients[dst], item)
        elif node is self.coordinator:  # up: the network delivers only to live nodes
            for item in items:
                if isinstance(item, ClientTxn):
                    # gRPC: a request past its deadline is never handled; else the server keeps a margin.
                    remaining = item.deadline_ms - self.now
                    if remaining > 0 and node.up:
                        deadline = self.now + remaining - min(DEADLINE_MARGIN_MS, remaining // 10)
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
                    node.reads.append((src, item))
                    self.sched.at(
                        item.deadline_ms, lambda: self._serve_reads(node) if node.incarnation == inc else None
                    )
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
            self._coord_steps([Unreachable(dst, msgs)])

    def _serve_reads(self, node: _Node) -> None:
        """Answer every waiting read whose key is unlocked, and fail those past their deadline."""
        core, storage = node.part, node.storage
        if core is None or storage is None or not node.reads:
            return
        waiting: list[tuple[str, ReadRequest]] = []
        for client, req in node.reads:
            if not core.is_locked(req.key):
                kv = storage.store.get(req.key)
                reply = ReadReply(req.request_id, None if kv is None else kv.value)
            elif req.deadline_ms <= self.now:
                err = Unavailable(f"key {req.key!r} is in doubt on {node.name}; try again later", key=req.key)
                reply = ReadReply(req.request_id, error=ErrorInfo.of(err))
            else:
                waiting.append((client, req))
                continue
            self.net.send(node.name, client, [reply], token=node.incarnation)
        node.reads = waiting

    # -- clients -------------------------------------------------------------------------------------

    def _client(self, name: str, *, scripted: bool) -> _Client:
        client = self.clients.setdefault(name, _Client(name, 0, scripted))
        assert client.op is None, f"client {name} is busy with {client.op}"
        return client

    def _next_op(self, cl: _Client) -> None:
        if cl.ops_left <= 0:
            return
        cl.ops_left -= 1
        rng = self.rng
        key, other = rng.sample(KEYS, 2)
        roll = rng.random()
        if roll < 0.3:
            live = [n for n in self.names if self.replicas[n].up] or list(self.names)
            self._begin(cl, OpRecord(cl.name, "get", (key,), self.now, replica=rng.choice(live)))
            return
        cl.seq += 1
        value = f"{cl.name}.{cl.seq}".encode()
        op = OpRecord(cl.name, "put", (key,), self.now, cl.seq, TxnSpec(on_success=(Put(key, value),)), value)
        if roll < 0.55:
            pass  # the put above
        elif roll < 0.65:
            op.kind, op.value, op.txn = "delete", None, TxnSpec(on_success=(Delete(key),))
        elif roll < 0.85:
            op.kind, op.expected = "cas", rng.choice(self._written[key][-3:] or [b"never-written"])
            cmp = Compare(key, CompareTarget.VALUE, CompareOp.EQUAL, op.expected)
            op.txn = TxnSpec(compares=(cmp,), on_success=(Put(key, value),))
        else:
            op.kind, op.keys = "txn", tuple(sorted((key, other)))
            op.txn = TxnSpec(on_success=(Put(key, value), Put(other, value)))
        for k in op.keys if op.value is not None else ():
            self._written[k].append(value)
        self._begin(cl, op)

    def _begin(
        self, cl: _Client, op: OpRecord, *, read_timeout_ms: int | None = None, attempts_max: int = ATTEMPTS_MAX
    ) -> None:
        cl.op, cl.attempts, cl.attempts_max = op, 0, attempts_max
        self.history.append(op)
        self.note(f"client={cl.name} begin {op.describe()}")
        if op.kind != "get":
            self._send_attempt(cl, op)
            return
        rid = self._new_request(cl, op)
        deadline = self.now + (read_timeout_ms or self.cfg.read_timeout_ms)
        self.net.send(cl.name, op.replica, [ReadRequest(rid, op.keys[0], deadline)])
        self.sched.at(deadline + READ_SLACK_MS, lambda: self._finish(cl, op, "unknown") if cl.op is op else None)

    def _new_request(self, cl: _Client, op: OpRecord) -> int:
        self._request_id += 1
        self._reply_to[self._request_id] = cl.name
        op.request_ids.append(self._request_id)
        return self._request_id

    def _send_attempt(self, cl: _Client, op: OpRecord) -> None:
        if cl.op is not op:
            return
        assert op.txn is not None
        cl.attempts += 1
        rid = self._new_request(cl, op)
        deadline = self.now + self.cfg.attempt_timeout_ms
        self.net.send(cl.name, COORD, [ClientTxn(rid, cl.name, op.seq, op.txn, deadline)])
        self.sched.at(deadline, lambda: self._attempt_over(cl, op, rid))

    def _attempt_over(self, cl: _Client, op: OpRecord, rid: int) -> None:
        """The attempt timed out, or the coordinator said its outcome is unknown: retry, or give up."""
        if cl.op is not op or op.request_ids[-1] != rid or cl.attempts_over == rid:
            return
        cl.attempts_over = rid
        if cl.attempts < cl.attempts_max:
            self.note(f"client={cl.name} request={rid} outcome unknown; retrying seq={op.seq}")
            self.sched.after(self.rng.randint(1, BACKOFF_MS_MAX), lambda: self._send_attempt(cl, op))
        else:
            self._finish(cl, op, "unknown")

    def _client_receive(self, cl: _Client, item: object) -> None:
        op = cl.op
        rid = item.request_id if isinstance(item, ClientReply | ReadReply) else -1
        if op is None or rid not in op.request_ids:
            return  # a late answer to an operation already given up on
        if isinstance(item, ReadReply):
            op.output, op.error = item.value, item.error
            self._finish(cl, op, "failed" if item.error else "ok")
        elif isinstance(item, ClientReply):
            if isinstance(item.result, TxnResult):
                op.result = item.result
                self._finish(cl, op, "ok")
            elif item.result.details.get("outcome_unknown"):
                self._attempt_over(cl, op, rid)
            elif rid == op.request_ids[-1]:
                # "Not applied": an earlier attempt passed its deadline before this one was sent, so it
                # was either decided already (then this one would have got its outcome) or never runs.
                op.error = item.result
                self._finish(cl, op, "failed")

    def _finish(self, cl: _Client, op: OpRecord, status: Literal["ok", "failed", "unknown"]) -> None:
        op.status = status
        op.ret_ms = None if status == "unknown" else self.now
        cl.op = None
        self.note(f"client={cl.name} end {op.describe()}")
        if not cl.scripted:
            self.sched.after(self.rng.randint(1, THINK_MS_MAX), lambda: self._next_op(cl))

    # -- random faults -------------------------------------------------------------------------------

    def _plan_faults(self) -> None:
        rng = self.rng
        nodes = (COORD, *self.names)
        for _ in range(self.cfg.crashes):
            node, at = rng.choice(nodes), rng.randint(1, FAULT_WINDOW_MS)
            down = rng.randint(*DOWN_MS_RANGE)
            mode = rng.choice(("between", "after-persist"))
            deliver: DeliverTo = rng.choice(("some", frozenset[str]()))
            self.sched.at(at, functools.partial(self._fault_crash, node, mode, down, deliver))
        for _ in range(self.cfg.partitions):
            node, at = rng.choice(nodes), rng.randint(1, FAULT_WINDOW_MS)
            length = rng.randint(*PARTITION_MS_RANGE)
            self.sched.at(at, functools.partial(self._fault_cut, node, length))

    def _fault_crash(self, node: str, mode: str, down_ms: int, deliver: DeliverTo) -> None:
        if self.healed or not self._nodes[node].up:
            return
        if mode == "between":
            self._crash(self._nodes[node], down_ms)
        else:
            self.note(f"node={node} armed: crash after its next durable step")
            self.crash(node, when=lambda eff: bool(eff.persist), deliver_to=deliver, down_ms=down_ms)

    def _fault_cut(self, node: str, length_ms: int) -> None:
        if not self.healed:
            self.note(f"node={node} cut off for {length_ms} ms")
            self.net.cut(node, self.now + length_ms)
