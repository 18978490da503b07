"""Invariant checkers over what one simulation run observed (DESIGN.md "Invariants checked after every test").

Inputs (`Observation`): the durable records each node wrote, in order (the coordinator's CommitRecords, each
replica's Prepared/Committed/Aborted records), every COMMIT the coordinator sent, each replica's store after
quiescence, and the clients' history. Checks, each raising `InvariantViolation` with what broke:

1. One outcome per transaction: a txid has one revision everywhere (decision log, COMMIT messages, replicas'
   CommittedRecords), a revision has one txid, and no committed txid is in any replica's AbortedRecord.
2. Replicas equal: every replica is at the coordinator's last revision, with the same digest and the same
   change history, revision by revision.
3. No lost acknowledged write, no partial transaction, no phantom: a dict model replays the decision log in
   revision order (each commit's request, branch chosen by its compares on the model) and each revision's
   changes on the replicas must be exactly the model's rows; every acknowledged write's TxnResult matches its
   decision; a write the coordinator answered with an error was never committed.
4. No request applied twice: one decision per (client_id, seq) at most.
5. Core invariants: checked by the cluster after every step (`check_invariants`), not here.
6. Linearizability of the clients' history, by `corral.sim.linearizability` (the single hook: `_linearizable`).
7. Reads under the lease rule: every linearizable read a replica served (`ServedRead`, recorded at the instant
   the replica's shell read its store, whether or not the reply reached the client) was served by a member of
   the coordinator's view at that instant (the lease rule: a replica stops reading before it is dropped), and
   returned the key's value as of the newest decision logged by then (freshness: a member's locks cover every
   decided write it has not applied, so nothing newer can exist). Freshness is a real-time check of each read
   on its own, stronger than linearizability for reads; the membership check catches a stale-by-luck read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from corral.core.messages import ErrorInfo, TxnResult, TxnSpec
from corral.model import Delete, Event, KeyValue, PreparedWrite, Put
from corral.records import AbortedRecord, CommitRecord, CommittedRecord, Record, TxId, format_txid
from corral.sim import linearizability as lin
from corral.store.replica_log import ReplicaStorage

OpKind = Literal["put", "delete", "cas", "txn", "get"]
Status = Literal["pending", "ok", "failed", "unknown"]

# A history this long cannot come from the workload bounds; the linearizability search is given a generous
# time budget anyway, so a pathological history reports "timed out" instead of stalling CI.
LINEARIZABILITY_BUDGET_S = 10.0
# The simulated workload attaches no keys to client leases, so no transaction deletes a lease's keys.
NO_LEASES: Mapping[int, Sequence[str]] = {}


class InvariantViolation(AssertionError):
    """A checker found a run that breaks one of the cluster's guarantees."""


@dataclass(slots=True)
class OpRecord:
    """One client operation in the history: what was asked, when, and what came back."""

    client: str
    kind: OpKind
    keys: tuple[str, ...]
    call_ms: int
    seq: int = 0  # writes: the (client, seq) identity shared by all attempts
    txn: TxnSpec | None = None  # writes: the transaction sent
    value: bytes | None = None  # put, cas, txn: the value written
    expected: bytes | None = None  # cas: the value compared against
    replica: str = ""  # get: where it was read
    status: Status = "pending"
    ret_ms: int | None = None  # None while pending and when the outcome is unknown
    result: TxnResult | None = None  # acknowledged write
    error: ErrorInfo | None = None  # failed operation
    output: bytes | None = None  # get: the value read
    request_ids: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status != "pending"

    def describe(self) -> str:
        what = f"{self.kind} {','.join(self.keys)}"
        if self.value is not None:
            what += f" value={self.value!r}"
        if self.kind == "cas":
            what += f" expected={self.expected!r}"
        out = self.result or (self.error.code if self.error else repr(self.output))
        return f"client={self.client} seq={self.seq} {what} [{self.call_ms}, {self.ret_ms}] {self.status} -> {out}"


@dataclass(frozen=True, slots=True)
class ServedRead:
    """A linearizable read served by a replica: at virtual time `at_ms` it returned `value` for `key`.
    `decided_revision` is the newest revision in the coordinator's log at that instant, `view_members` the
    members of the coordinator's current (durable) view."""

    replica: str
    key: str
    value: bytes | None
    at_ms: int
    decided_revision: int
    view_members: tuple[str, ...]


@dataclass(slots=True)
class Observation:
    """Everything the checkers need from one quiescent run."""

    seed: int
    last_revision: int
    commit_records: Sequence[CommitRecord]
    commits_sent: Mapping[TxId, set[int]]
    replica_records: Mapping[str, Sequence[Record]]
    replicas: Mapping[str, ReplicaStorage]
    history: Sequence[OpRecord]
    served_reads: Sequence[ServedRead] = ()


def check_all(obs: Observation) -> None:
    """Run every checker; raise InvariantViolation naming the seed and the broken guarantee."""
    checks = (
        check_one_outcome,
        check_replicas_equal,
        check_writes,
        check_no_double_apply,
        check_reads,
        check_linearizable,
    )
    for check in checks:
        try:
            check(obs)
        except InvariantViolation as err:
            raise InvariantViolation(f"seed {obs.seed}: {check.__name__}: {err}") from None


def check_one_outcome(obs: Observation) -> None:
    revisions: dict[TxId, set[int]] = defaultdict(set)
    for decision in obs.commit_records:
        revisions[decision.txid].add(decision.revision)
    for txid, revs in obs.commits_sent.items():
        revisions[txid] |= revs
    aborted: dict[TxId, list[str]] = defaultdict(list)
    for name, records in obs.replica_records.items():
        applied: set[TxId] = set()
        for rec in records:
            if isinstance(rec, CommittedRecord):
                if rec.txid in applied:
                    raise InvariantViolation(f"replica={name} txid={format_txid(rec.txid)} applied twice")
                applied.add(rec.txid)
                revisions[rec.txid].add(rec.revision)
            elif isinstance(rec, AbortedRecord):
                aborted[rec.txid].append(name)
    owner: dict[int, TxId] = {}
    for txid, revs in sorted(revisions.items()):
        if len(revs) != 1:
            raise InvariantViolation(f"txid={format_txid(txid)} committed at several revisions {sorted(revs)}")
        (rev,) = revs
        if owner.setdefault(rev, txid) != txid:
            raise InvariantViolation(
                f"revision {rev} given to txid={format_txid(owner[rev])} and txid={format_txid(txid)}"
            )
        if txid in aborted:
            raise InvariantViolation(
                f"txid={format_txid(txid)} committed at revision {rev} but aborted on {', '.join(aborted[txid])}"
            )


def check_replicas_equal(obs: Observation) -> None:
    digests: dict[str, str] = {}
    histories: dict[str, list[Event]] = {}
    for name, storage in sorted(obs.replicas.items()):
        if storage.revision != obs.last_revision:
            raise InvariantViolation(
                f"replica={name} is at revision {storage.revision}; the coordinator's last is {obs.last_revision}"
            )
        digests[name] = storage.store.digest()
        histories[name] = storage.store.changes(1) if obs.last_revision else []
    first = min(histories)
    for name in sorted(histories):
        if digests[name] != digests[first]:
            raise InvariantViolation(f"replica={name} digest {digests[name]} != replica={first} {digests[first]}")
        if histories[name] != histories[first]:
            rev = _first_difference(histories[name], histories[first])
            raise InvariantViolation(f"replica={name} and replica={first} differ at revision {rev}")


def check_writes(obs: Observation) -> None:
    by_revision = {rec.revision: rec for rec in obs.commit_records}
    missing = [r for r in range(1, obs.last_revision + 1) if r not in by_revision]
    if missing:
        raise InvariantViolation(f"revisions {missing[:5]} have no decision in the coordinator's log")
    writes = {(op.client, op.seq): op for op in obs.history if op.txn is not None}
    decided = {(rec.client_id, rec.seq): rec for rec in obs.commit_records}
    replica_changes = {
        name: _by_revision(s.store.changes(1)) if obs.last_revision else {} for name, s in obs.replicas.items()
    }
    model: dict[str, KeyValue] = {}
    for rev in range(1, obs.last_revision + 1):
        rec = by_revision[rev]
        op = writes.get((rec.client_id, rec.seq))
        if op is None or op.txn is None:
            raise InvariantViolation(f"revision {rev} commits client={rec.client_id} seq={rec.seq}, never requested")
        succeeded, branch = op.txn.evaluate(model, NO_LEASES)
        if succeeded != rec.succeeded:
            raise InvariantViolation(
                f"revision {rev} ({op.describe()}): compares held={succeeded} on the model, decision says "
                f"{rec.succeeded}"
            )
        expected = _apply(model, branch, rev)
        for name, changes in sorted(replica_changes.items()):
            got = changes.get(rev, [])
            if got != expected:
                raise InvariantViolation(
                    f"replica={name} revision {rev} ({op.describe()}): changes {got} != expected {expected}"
                )
    for op in obs.history:
        if op.txn is None:
            continue
        found = decided.get((op.client, op.seq))
        if op.status == "ok":
            assert op.result is not None
            if found is None:
                raise InvariantViolation(f"acknowledged write lost: {op.describe()} has no decision")
            if (found.revision, found.succeeded) != (op.result.revision, op.result.succeeded):
                raise InvariantViolation(f"{op.describe()} but the decision is {found}")
        elif op.status == "failed" and found is not None:
            raise InvariantViolation(f"{op.describe()} was answered with an error yet committed: {found}")


def check_no_double_apply(obs: Observation) -> None:
    seen: dict[tuple[str, int], int] = {}
    for rec in obs.commit_records:
        key = (rec.client_id, rec.seq)
        if key in seen:
            raise InvariantViolation(
                f"client={rec.client_id} seq={rec.seq} committed twice: revisions {seen[key]} and {rec.revision}"
            )
        seen[key] = rec.revision


def check_reads(obs: Observation) -> None:
    for read in obs.served_reads:
        if read.replica not in read.view_members:
            raise InvariantViolation(
                f"replica={read.replica} served a linearizable read of {read.key!r} at t={read.at_ms} while outside "
                f"the coordinator's view {','.join(read.view_members)} (the lease rule failed)"
            )
    # Replay the decisions once, in revision order, answering the reads in order of their revision.
    writes = {(op.client, op.seq): op for op in obs.history if op.txn is not None}
    by_revision = {rec.revision: rec for rec in obs.commit_records}
    model: dict[str, KeyValue] = {}
    rev = 0
    for read in sorted(obs.served_reads, key=lambda r: r.decided_revision):
        while rev < read.decided_revision:
            rev += 1
            rec = by_revision.get(rev)
            op = writes.get((rec.client_id, rec.seq)) if rec is not None else None
            if rec is None or op is None or op.txn is None:
                raise InvariantViolation(f"revision {rev} has no decision or no request behind it")
            _apply(model, op.txn.evaluate(model, NO_LEASES)[1], rev)
        kv = model.get(read.key)
        newest = None if kv is None else kv.value
        if read.value != newest:
            raise InvariantViolation(
                f"replica={read.replica} served {read.key!r}={read.value!r} at t={read.at_ms}, but revision "
                f"{read.decided_revision} (the newest decided then) has {newest!r}: a stale read"
            )


def check_linearizable(obs: Observation) -> None:
    _linearizable(obs.history)


# -- the linearizability hook ----------------------------------------------------------------------------


def _linearizable(history: Sequence[OpRecord]) -> None:
    """The single place `corral.sim.linearizability` plugs in: translate the history, check, report."""
    ops: list[lin.Operation] = []
    for op in history:
        if op.status in ("failed", "pending"):
            continue  # no effect (an error means not applied), or nothing observed
        ret = op.ret_ms if op.status == "ok" else None
        if op.kind == "get":
            if op.status == "ok":
                ops.append(
                    lin.Operation(op.client, lin.OpKind.GET, op.keys[0], output=op.output, call=op.call_ms, ret=ret)
                )
        elif op.kind == "cas":
            output = op.result.succeeded if op.result is not None else None
            ops.append(
                lin.Operation(
                    op.client,
                    lin.OpKind.CAS,
                    op.keys[0],
                    value=op.value,
                    expected=op.expected,
                    output=output,
                    call=op.call_ms,
                    ret=ret,
                )
            )
        else:
            # A write without compares: each of its writes is a put or delete of one key (per-key histories
            # of a linearizable multi-key history are linearizable, so splitting never raises a false alarm).
            assert op.txn is not None and not op.txn.compares, f"unsupported transaction shape: {op.describe()}"
            for w in op.txn.on_success:
                if isinstance(w, Put):
                    ops.append(lin.Operation(op.client, lin.OpKind.PUT, w.key, value=w.value, call=op.call_ms, ret=ret))
                elif isinstance(w, Delete):
                    ops.append(lin.Operation(op.client, lin.OpKind.DELETE, w.key, call=op.call_ms, ret=ret))
                else:
                    raise InvariantViolation(f"the checker does not model {w} ({op.describe()})")
    result = lin.check(ops, time_budget_s=LINEARIZABILITY_BUDGET_S)
    if not result.ok:
        raise InvariantViolation(f"history not linearizable (timed_out={result.timed_out}): {result.explanation}")


# -- helpers ---------------------------------------------------------------------------------------------

_Row = tuple[str, str, bytes, int, int, int, int]


def _row(event: Event) -> _Row:
    kv = event.kv
    return (str(event.kind), kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _by_revision(events: Sequence[Event]) -> dict[int, list[_Row]]:
    out: dict[int, list[_Row]] = defaultdict(list)
    for e in events:
        out[e.kv.mod_revision].append(_row(e))
    return out


def _apply(model: dict[str, KeyValue], writes: Sequence[PreparedWrite], rev: int) -> list[_Row]:
    """Apply `writes` to the dict model at `rev`; return the rows a store must have written, in key order."""
    rows: list[_Row] = []
    for w in writes:
        if not isinstance(w, Put | Delete):
            raise InvariantViolation(f"the checker's model does not apply {w}")  # the workload never sends one
        old = model.get(w.key)
        if isinstance(w, Put):
            kv = KeyValue(
                w.key, w.value, old.create_revision if old else rev, rev, old.version + 1 if old else 1, w.lease
            )
            model[w.key] = kv
            rows.append(("put", kv.key, kv.value, kv.create_revision, rev, kv.version, kv.lease))
        elif old is not None:
            del model[w.key]
            rows.append(("delete", w.key, b"", 0, rev, 0, 0))
    return sorted(rows, key=lambda r: r[1])


def _first_difference(a: Sequence[Event], b: Sequence[Event]) -> int:
    for x, y in zip(a, b, strict=False):
        if x != y:
            return min(x.kv.mod_revision, y.kv.mod_revision)
    return (a[len(b)] if len(a) > len(b) else b[len(a)]).kv.mod_revision
