"""Session clients: leases granted, kept alive, let go or revoked, with ephemeral and sequential keys.

Model. A session client (`s1`, `s2`, ..) runs one operation at a time, like any client (`workload.py`), and
keeps its current lease alive in the background as the SDK's `Session` does: a keepalive every
ttl / RENEWALS_PER_TTL, each request's deadline at the end of the TTL counted from the send time of the last
acknowledged renewal; the session is lost once that passes, or when the coordinator answers that the lease is
gone. Its operations:
- grant a lease (when it has none), with a TTL short next to the simulation's timers (LEASE_TTL_MS_RANGE),
  or a little longer than most outages (LONG_LEASE_TTL_MS_RANGE);
- put one of KEYS with its lease (an ephemeral key, shared with the other clients: a plain put detaches it);
- a sequential put under one of SEQ_PREFIXES, mostly with its lease (its name is learned from the revision),
  sometimes with a probe or a read of the name it will likely take racing it from the session's sidecar
  client (`s1+`: another task of the same program);
- read a sequential name (one it created, or one a put may take soon: NAME_AHEAD_MAX past the newest
  revision seen), read the range of every sequential name, or delete a name it created;
- probe a name a sequential put may take soon (or one it took): a transaction that only compares its
  version with 0;
- hold: keep the lease alive while doing nothing for a few TTLs (a lock holder at work), so that sessions
  live through crashes of the coordinator (whose restart must give the lease a fresh TTL);
- write with a lease it knows, or believes, ended (the coordinator must refuse, unless the lease lives on);
- revoke its lease (answered once the keys are gone), sometimes while a put with it is in flight (another
  task of the same program closing the session), or stop keeping it alive and wait until it expired.
When its operations are done, a session stops keeping its lease alive (abandoned, as by a crashed process).

Scripted tests use `grant`, `keepalive`, `revoke` and `keep_alive` (renew in the background until
`stop_keeping_alive`).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.core.leases import LEASE_TTL_MIN_MS
from corral.core.messages import TxnSpec
from corral.errors import LeaseExpired, NotFound
from corral.model import Compare, CompareOp, CompareTarget, Delete, Put, PutSequential, sequential_key
from corral.sim.network import Scheduler
from corral.sim.observation import LeaseOpRecord, OpKind, OpRecord
from corral.sim.workload import KEYS, THINK_MS_MAX, Workload, _Client

# The SDK renews this many times per TTL (client.session.RENEWALS_PER_TTL; a test checks they agree).
RENEWALS_PER_TTL = 3
# Leases of 100-400 ms (LEASE_TTL_MIN_MS is the shortest the coordinator grants): a few keepalives per
# prepare timeout, so a crash, a cut or a few lost keepalives let one expire, and several expire per run.
LEASE_TTL_MS_RANGE = (LEASE_TTL_MIN_MS, 400)
# Some leases outlive most outages (DOWN_MS_RANGE): their sessions keep them alive through a crash of the
# coordinator, whose restart must give them a fresh TTL.
LONG_LEASE_TTL_MS_RANGE = (400, 1_000)
LONG_LEASE_P = 0.3
SEQ_PREFIXES = ("q/", "q/w-")  # nested: a range read of "q/" covers both, and only digits make a name
RANGE_PREFIX = "q/"
NAME_AHEAD_MAX = 3  # a probed or read name is at most this many revisions past the newest one seen
SEQ_WITH_LEASE_P = 0.75  # the rest are sequential keys no lease ends (deleted by their owner, or never)
# A session that lets its lease go waits this many TTLs (past any keepalive in flight, and the coordinator's
# tick) before it counts the lease as expired.
LAPSE_TTLS = 2
# A revoke is a two-phase commit, retried after an abort: its client waits this many attempt timeouts.
REVOKE_TIMEOUT_ATTEMPTS = 3
# Share of revokes sent while a put attaching to the lease is in flight, within this many ms of it (about a
# network delay: the revoke reaches the coordinator before or after the put).
RACING_REVOKE_P = 0.5
RACE_MS_MAX = 5
RACING_PROBE_P = 0.4  # share of sequential puts raced by a probe or read of the next names (RACE_MS_MAX apart)
HOLD_TTLS_MAX = 4  # a hold lasts 1 to this many TTLs: long enough to outlast most coordinator outages
OWN_NAME_P = 0.3  # share of probes (and half of the reads) of a name the session took: it exists, or was deleted


@dataclass(slots=True)
class _Session:
    name: str
    client: _Client
    ops_left: int = 0
    lease: int = 0  # 0: none
    ttl_ms: int = 0
    renewed_ms: int = 0  # when the last acknowledged renewal (or the grant) was sent: the TTL counts from it
    keeping: int = 0  # the running keepalive loop's number (0: none)
    ended: list[int] = field(default_factory=list)  # leases it knows, or believes, ended
    names: list[str] = field(default_factory=list)  # sequential names it created
    last: OpRecord | None = None  # the operation running


class Sessions:
    """See the module docstring."""

    def __init__(
        self,
        workload: Workload,
        sched: Scheduler,
        rng: random.Random,
        *,
        attempt_timeout_ms: int,
        note: Callable[[str], None],
    ) -> None:
        self.workload = workload
        self.sched = sched
        self.rng = rng
        self.attempt_timeout_ms = attempt_timeout_ms
        self.note = note
        self._sessions: dict[str, _Session] = {}
        self._loops = 0

    @property
    def now(self) -> int:
        return self.sched.now_ms

    def start_random(self, count: int, ops_range: tuple[int, int]) -> None:
        for i in range(count):
            s = self._session(f"s{i + 1}")
            s.ops_left = self.rng.randint(*ops_range)
            self.workload.open_ops(s.ops_left)
            s.client.on_done = functools.partial(self._op_done, s)
            self.sched.at(self.rng.randint(0, THINK_MS_MAX), functools.partial(self._next, s))

    # -- scripted operations -------------------------------------------------------------------------

    def grant(self, ttl_ms: int, *, client: str = "s1") -> LeaseOpRecord:
        return self.workload.lease_request(client, "grant", ttl_ms=ttl_ms, timeout_ms=self.attempt_timeout_ms)

    def keepalive(self, lease: int, *, client: str = "s1") -> LeaseOpRecord:
        return self.workload.lease_request(client, "keepalive", lease=lease, timeout_ms=self.attempt_timeout_ms)

    def revoke(self, lease: int, *, client: str = "s1") -> LeaseOpRecord:
        timeout = REVOKE_TIMEOUT_ATTEMPTS * self.attempt_timeout_ms
        return self.workload.lease_request(client, "revoke", lease=lease, timeout_ms=timeout)

    def keep_alive(self, lease: int, ttl_ms: int, *, client: str = "s1") -> None:
        """Renew `lease` in the background, as the SDK's session does, until `stop_keeping_alive`."""
        s = self._session(client)
        s.lease, s.ttl_ms, s.renewed_ms = lease, ttl_ms, self.now
        self._keep(s)

    def stop_keeping_alive(self, client: str = "s1") -> None:
        self._session(client).keeping = 0

    def alive(self, client: str = "s1") -> bool:
        """The session still believes its lease alive (renewed within its TTL, never told it is gone)."""
        s = self._session(client)
        return bool(s.lease)

    # -- the random session ----------------------------------------------------------------------------

    def _session(self, name: str) -> _Session:
        if name not in self._sessions:
            self._sessions[name] = _Session(name, self.workload.client(name))
        return self._sessions[name]

    def _after(self, s: _Session) -> None:
        self.sched.after(self.rng.randint(1, THINK_MS_MAX), lambda: self._next(s))

    def _op_done(self, s: _Session) -> None:
        """An operation in `history` finished: learn the name a sequential put took, then go on."""
        op, s.last = s.last, None
        if op is not None and op.kind == "seq" and op.result is not None and op.txn is not None:
            (w,) = op.txn.on_success
            assert isinstance(w, PutSequential)
            s.names.append(sequential_key(w.prefix, op.result.revision))
        self._after(s)

    def _done_without_history(self, s: _Session) -> None:
        """An operation that is not in `history` (a lease request, a lapse) finished."""
        self.workload.open_ops(-1)
        self._after(s)

    def _next(self, s: _Session) -> None:
        if s.ops_left <= 0:
            s.keeping = 0  # abandoned: the lease expires
            return
        s.ops_left -= 1
        rng = self.rng
        if not s.lease:
            self.workload.lease_request(
                s.name,
                "grant",
                ttl_ms=rng.randint(*(LONG_LEASE_TTL_MS_RANGE if rng.random() < LONG_LEASE_P else LEASE_TTL_MS_RANGE)),
                timeout_ms=self.attempt_timeout_ms,
                then=lambda rec: self._granted(s, rec),
            )
            return
        roll = rng.random()
        if roll < 0.22:
            self._write(s, Put(rng.choice(KEYS), self._value(s), s.lease))
        elif roll < 0.40:
            lease = s.lease if rng.random() < SEQ_WITH_LEASE_P else 0
            seq = PutSequential(rng.choice(SEQ_PREFIXES), self._value(s), lease)
            if rng.random() < RACING_PROBE_P:  # either may go first
                steps: list[Callable[[], None]] = [lambda: self._race(s, seq.prefix), lambda: self._write(s, seq)]
                rng.shuffle(steps)
                steps[0]()
                self.sched.after(rng.randint(0, RACE_MS_MAX), steps[1])
            else:
                self._write(s, seq)
        elif roll < 0.50:
            name = rng.choice(s.names) if s.names and rng.random() < OWN_NAME_P else self._name_ahead(1)
            cmp = Compare(name, CompareTarget.VERSION, CompareOp.EQUAL, 0)
            self._begin(s, OpRecord(s.name, "probe", (name,), self.now, self._seq(s), TxnSpec(compares=(cmp,))))
        elif roll < 0.58:
            name = rng.choice(s.names) if s.names and rng.random() < 0.5 else self._name_ahead(0)
            self._begin(s, OpRecord(s.name, "get", (name,), self.now, replica=self._replica()))
        elif roll < 0.64:
            self._begin(s, OpRecord(s.name, "range", (RANGE_PREFIX,), self.now, replica=self._replica()))
        elif roll < 0.68 and s.names:
            name = s.names.pop(rng.randrange(len(s.names)))
            self._write(s, Delete(name))
        elif roll < 0.73 and s.ended:
            lease = rng.choice(s.ended)
            w = Put(rng.choice(KEYS), self._value(s), lease)
            self._write(s, w if rng.random() < 0.5 else PutSequential(rng.choice(SEQ_PREFIXES), w.value, lease))
        elif roll < 0.85:
            self.sched.after(rng.randint(s.ttl_ms, HOLD_TTLS_MAX * s.ttl_ms), lambda: self._done_without_history(s))
        elif roll < 0.93:
            lease, s.lease, s.keeping = s.lease, 0, 0
            s.ended.append(lease)  # answered or not, it is given up (as the SDK's session.close())
            if rng.random() < RACING_REVOKE_P:
                # The coordinator must not delete the lease's keys before this put is decided.
                self.sched.after(rng.randint(0, RACE_MS_MAX), lambda: self._revoke(s, lease))
                w = Put(rng.choice(KEYS), self._value(s), lease)
                self._write(s, w if rng.random() < 0.5 else PutSequential(rng.choice(SEQ_PREFIXES), w.value, lease))
                return
            self._revoke(s, lease, then=lambda _: self._done_without_history(s))
        else:
            lease, s.keeping = s.lease, 0
            self.note(f"client={s.name} lets lease {lease} expire")

            def lapsed() -> None:
                if s.lease == lease:
                    s.lease = 0
                    s.ended.append(lease)
                self._done_without_history(s)

            self.sched.after(LAPSE_TTLS * s.ttl_ms, lapsed)

    def _race(self, s: _Session, prefix: str) -> None:
        """The sidecar probes or reads a name the session's sequential put in flight will likely take: a
        prepared sequential put and a prepared compare on one of its names must exclude each other."""
        side = f"{s.name}+"
        if not self.workload.idle(side):
            return
        seen = self.workload.revision_seen
        if self.rng.random() < 0.5:
            # Every name it may take soon at once: whichever revision it gets, the compare holds that name.
            names = [sequential_key(prefix, seen + ahead) for ahead in range(1, NAME_AHEAD_MAX + 1)]
            cmps = tuple(Compare(name, CompareTarget.VERSION, CompareOp.EQUAL, 0) for name in names)
            self.workload.submit(TxnSpec(compares=cmps), client=side, kind="probe")
        else:
            name = sequential_key(prefix, seen + self.rng.randint(1, NAME_AHEAD_MAX))
            self.workload.read(name, replica=self._replica(), client=side)

    def _revoke(self, s: _Session, lease: int, then: Callable[[LeaseOpRecord], None] | None = None) -> None:
        timeout = REVOKE_TIMEOUT_ATTEMPTS * self.attempt_timeout_ms
        self.workload.lease_request(s.name, "revoke", lease=lease, timeout_ms=timeout, then=then)

    def _granted(self, s: _Session, rec: LeaseOpRecord) -> None:
        if rec.info is not None:
            s.lease, s.ttl_ms, s.renewed_ms = rec.info.id, rec.info.ttl_ms, rec.call_ms
            self._keep(s)
        self._done_without_history(s)

    def _keep(self, s: _Session) -> None:
        """Start the keepalive loop of the session's current lease (ending any earlier one)."""
        self._loops += 1
        s.keeping = self._loops
        self._renew(s, s.lease, s.keeping)

    def _renew(self, s: _Session, lease: int, loop: int) -> None:
        if s.keeping != loop or s.lease != lease:
            return
        left = s.renewed_ms + s.ttl_ms - self.now
        if left <= 0:
            self._lose(s, lease, "no renewal within the TTL")
            return
        self.workload.lease_request(
            s.name, "keepalive", lease=lease, timeout_ms=left, then=lambda rec: self._renewed(s, lease, rec)
        )
        self.sched.after(max(1, s.ttl_ms // RENEWALS_PER_TTL), lambda: self._renew(s, lease, loop))

    def _renewed(self, s: _Session, lease: int, rec: LeaseOpRecord) -> None:
        if s.lease != lease:
            return
        if rec.info is not None:
            s.renewed_ms = max(s.renewed_ms, rec.call_ms)
        elif rec.error is not None and rec.error.code in (LeaseExpired.code, NotFound.code):
            self._lose(s, lease, rec.error.code)

    def _lose(self, s: _Session, lease: int, why: str) -> None:
        self.note(f"client={s.name} lost lease {lease}: {why}")
        s.lease, s.keeping = 0, 0
        s.ended.append(lease)

    def _write(self, s: _Session, w: Put | Delete | PutSequential) -> None:
        kind: OpKind = "seq" if isinstance(w, PutSequential) else "put" if isinstance(w, Put) else "delete"
        keys = (w.key,) if isinstance(w, Put | Delete) else ()
        value = w.value if isinstance(w, Put | PutSequential) else None
        op = OpRecord(s.name, kind, keys, self.now, self._seq(s), TxnSpec(on_success=(w,)), value)
        if isinstance(w, Put) and w.key in KEYS:
            self.workload.written(w.key, w.value)
        self._begin(s, op)

    def _begin(self, s: _Session, op: OpRecord) -> None:
        s.last = op
        self.workload.begin(s.client, op)

    def _seq(self, s: _Session) -> int:
        s.client.seq += 1
        return s.client.seq

    def _value(self, s: _Session) -> bytes:
        return f"{s.name}.{s.client.seq + 1}".encode()

    def _name_ahead(self, at_least: int) -> str:
        ahead = self.workload.revision_seen + self.rng.randint(at_least, NAME_AHEAD_MAX)
        return sequential_key(self.rng.choice(SEQ_PREFIXES), ahead)

    def _replica(self) -> str:
        return self.workload.random_replica()
