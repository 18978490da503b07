"""Invariant checkers over what one simulation run observed (DESIGN.md "Invariants checked after every test").

Inputs (`Observation`, see `observation.py`): the durable records each node wrote, in order, every COMMIT and
PREPARE the coordinator sent, each replica's store after quiescence, the clients' history, and what the
coordinator did with leases. The model (`observation.Replay`) applies the decision log in revision order.
Checks, each raising `InvariantViolation` with what broke:

1. One outcome per transaction: a txid has one revision everywhere (decision log, COMMIT messages, replicas'
   CommittedRecords), a revision has one txid, and no committed txid is in any replica's AbortedRecord.
2. Replicas equal: every replica is at the coordinator's last revision, with the same digest and the same
   change history, revision by revision.
3. No lost acknowledged write, no partial transaction, no phantom: the model replays the decision log (each
   commit's request, as the coordinator prepared it; branch chosen by its compares on the model; a lease's end
   deleting the keys the model holds with it; a sequential put named by its revision) and each revision's
   changes on the replicas must be exactly the model's rows; every acknowledged write's TxnResult matches its
   decision; a write the coordinator answered with an error was never committed.
4. No request applied twice: one decision per (client_id, seq) at most (the coordinator's own transactions,
   which have no client, are checked per lease in `lease_checkers`).
5. Core invariants: checked by the cluster after every step (`check_invariants`), not here.
6. Linearizability of the clients' history, by `corral.sim.linearizability` (the single hook: `_linearizable`).
7. Reads under the lease rule: every linearizable read a replica served (`ServedRead`, recorded at the instant
   the replica's shell read its store, whether or not the reply reached the client) was served by a member of
   the coordinator's view at that instant (the lease rule: a replica stops reading before it is dropped), and
   returned the key's value (a range read: every key under its prefix) as of the newest decision logged by
   then (freshness: a member's locks cover every decided write it has not applied, so nothing newer can
   exist). Freshness is a real-time check of each read on its own, stronger than linearizability for reads;
   the membership check catches a stale-by-luck read.
8.-12. Client leases and sequential keys: `lease_checkers.py`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from corral.model import Delete, Event, Put, PutSequential, sequential_key
from corral.records import AbortedRecord, CommitRecord, CommittedRecord, TxId, format_txid
from corral.sim import linearizability as lin
from corral.sim.lease_checkers import LEASE_CHECKS
from corral.sim.observation import (
    InvariantViolation,
    Observation,
    OpKind,
    OpRecord,
    Replay,
    ServedRead,
    Status,
    rows_by_revision,
)

__all__ = ["InvariantViolation", "Observation", "OpKind", "OpRecord", "ServedRead", "Status", "check_all"]

# A history this long cannot come from the workload bounds; the linearizability search is given a generous
# time budget anyway, so a pathological history reports "timed out" instead of stalling CI.
LINEARIZABILITY_BUDGET_S = 10.0
# The client of the deletes a lease's end makes, in the linearizability check.
LEASE_END_CLIENT = "lease-end"


def check_all(obs: Observation) -> None:
    """Run every checker; raise InvariantViolation naming the seed and the broken guarantee."""
    checks = (
        check_one_outcome,
        check_replicas_equal,
        check_writes,
        check_no_double_apply,
        check_reads,
        *LEASE_CHECKS,
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
    for name, storage in sorted(obs.replicas.items()):
        if storage.revision != obs.last_revision:
            raise InvariantViolation(
                f"replica={name} is at revision {storage.revision}; the coordinator's last is {obs.last_revision}"
            )
        digests[name] = storage.store.digest()
    first = min(digests)
    for name in sorted(digests):
        if digests[name] != digests[first]:
            raise InvariantViolation(f"replica={name} digest {digests[name]} != replica={first} {digests[first]}")
        if obs.changes(name) != obs.changes(first):
            rev = _first_difference(obs.changes(name), obs.changes(first))
            raise InvariantViolation(f"replica={name} and replica={first} differ at revision {rev}")


def check_writes(obs: Observation) -> None:
    replica_changes = {name: rows_by_revision(obs.changes(name)) for name in sorted(obs.replicas)}
    for step in Replay(obs):
        rev, rec = step.revision, step.decision
        what = step.op.describe() if step.op is not None else f"the coordinator's {step.txn}"
        prepared = obs.coordinator_txns.get(rec.txid)
        if prepared != step.txn:
            raise InvariantViolation(f"revision {rev} ({what}): the coordinator prepared {prepared}")
        if step.succeeded != rec.succeeded:
            raise InvariantViolation(
                f"revision {rev} ({what}): compares held={step.succeeded} on the model, decision says {rec.succeeded}"
            )
        for name, changes in replica_changes.items():
            got = changes.get(rev, [])
            if got != step.rows:
                raise InvariantViolation(
                    f"replica={name} revision {rev} ({what}): changes {got} != expected {step.rows}"
                )
    decided = {(rec.client_id, rec.seq): rec for rec in obs.commit_records}
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
        if not rec.client_id:
            continue  # the coordinator's own (a lease's end): at most one per lease, see lease_checkers
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
    replay = Replay(obs)
    for read in sorted(obs.served_reads, key=lambda r: r.decided_revision):
        replay.advance_to(read.decided_revision)
        got: object
        if read.prefix:
            got = read.kvs
            newest: object = tuple((k, kv.value) for k, kv in sorted(replay.model.items()) if k.startswith(read.key))
        else:
            got = read.value
            kv = replay.model.get(read.key)
            newest = None if kv is None else kv.value
        if got != newest:
            raise InvariantViolation(
                f"replica={read.replica} served {read.key!r}{'*' if read.prefix else ''}={got!r} at t={read.at_ms}, "
                f"but revision {read.decided_revision} (the newest decided then) has {newest!r}: a stale read"
            )


def check_linearizable(obs: Observation) -> None:
    _linearizable(obs)


# -- the linearizability hook ----------------------------------------------------------------------------


def _linearizable(obs: Observation) -> None:
    """The single place `corral.sim.linearizability` plugs in: translate the history, check, report.

    Every key is a register. Besides the clients' operations, the deletes of a lease's end are operations of
    their own, at the instant their decision was logged (a write takes effect for readers at its decision:
    check 7). A sequential put is a put of the name its decision gave it (an unknown outcome that never
    committed has no name and no effect). A probe (compare that names are absent) is a cas of absent
    to absent on each; a range read is a get of every key under its prefix that anything ever wrote. Splitting an
    atomic multi-key operation into per-key operations never raises a false alarm: the projection of a
    linearizable history on one key is linearizable. (A probe of several names that failed says only that
    one of them existed: it is left out.)"""
    decided = {(rec.client_id, rec.seq): rec for rec in obs.commit_records if rec.client_id}
    ops: list[lin.Operation] = []
    written: set[str] = set()
    for step in Replay(obs):
        written.update(w.key for w in step.writes)
        if step.op is None:
            at = obs.commit_times[step.revision]
            for r in step.rows:
                ops.append(lin.Operation(LEASE_END_CLIENT, lin.OpKind.DELETE, r[1], call=at, ret=at))
    for op in obs.history:
        if op.status in ("failed", "pending"):
            continue  # no effect (an error means not applied), or nothing observed
        ops.extend(_operations(op, op.ret_ms if op.status == "ok" else None, decided.get((op.client, op.seq)), written))
    result = lin.check(ops, time_budget_s=LINEARIZABILITY_BUDGET_S)
    if not result.ok:
        raise InvariantViolation(f"history not linearizable (timed_out={result.timed_out}): {result.explanation}")


def _operations(op: OpRecord, ret: int | None, decision: CommitRecord | None, written: set[str]) -> list[lin.Operation]:
    """One client operation as register operations (see `_linearizable`)."""
    call, client = op.call_ms, op.client
    if op.kind == "get":
        if op.status != "ok":
            return []
        return [lin.Operation(client, lin.OpKind.GET, op.keys[0], output=op.output, call=call, ret=ret)]
    if op.kind == "range":
        if op.status != "ok":
            return []
        read = dict(op.kvs)
        keys = sorted({k for k in written | set(read) if k.startswith(op.keys[0])})
        return [lin.Operation(client, lin.OpKind.GET, k, output=read.get(k), call=call, ret=ret) for k in keys]
    if op.kind in ("cas", "probe"):
        output = op.result.succeeded if op.result is not None else None
        if op.kind == "probe":  # compares that names are absent; writes nothing
            if output is None or (not output and len(op.keys) > 1):
                return []  # unknown, or some name existed: nothing is known of each one
            return [lin.Operation(client, lin.OpKind.CAS, k, output=output, call=call, ret=ret) for k in op.keys]
        cas = lin.Operation(
            client, lin.OpKind.CAS, op.keys[0], value=op.value, expected=op.expected, output=output, call=call, ret=ret
        )
        return [cas]
    # A write without compares: each of its writes is a put or delete of one key.
    assert op.txn is not None and not op.txn.compares, f"unsupported transaction shape: {op.describe()}"
    out = []
    for w in op.txn.on_success:
        if isinstance(w, Put):
            out.append(lin.Operation(client, lin.OpKind.PUT, w.key, value=w.value, call=call, ret=ret))
        elif isinstance(w, Delete):
            out.append(lin.Operation(client, lin.OpKind.DELETE, w.key, call=call, ret=ret))
        elif isinstance(w, PutSequential):
            if decision is not None:  # else it never committed: no name, no effect
                name = sequential_key(w.prefix, decision.revision)
                out.append(lin.Operation(client, lin.OpKind.PUT, name, value=w.value, call=call, ret=ret))
        else:
            raise InvariantViolation(f"the checker does not model {w} ({op.describe()})")
    return out


# -- helpers ---------------------------------------------------------------------------------------------


def _first_difference(a: Sequence[Event], b: Sequence[Event]) -> int:
    for x, y in zip(a, b, strict=False):
        if x != y:
            return min(x.kv.mod_revision, y.kv.mod_revision)
    return (a[len(b)] if len(a) > len(b) else b[len(a)]).kv.mod_revision
