"""What one simulation run observed, and the model of the store that the checkers replay it against.

Observed (by the cluster's shells and the clients, never read back from a core's memory): the clients'
operations (`OpRecord`) and lease requests (`LeaseOpRecord`); each node's durable records in write order;
every transaction the coordinator prepared (so its own lease-ending transactions are known, not only the
clients'); when each decision was logged; each LeaseEndRecord with the commits logged in the same write;
the coordinator's side of every lease (`LeaseStep`: its clock and epoch at each grant, acknowledged
keepalive, accepted revoke, start, and each deletion it began); reads served; the replicas' stores.

`Replay` is the model: a dict of key -> KeyValue that applies the decision log in revision order, each
transaction evaluated on the model (its compares; a DeleteByLease resolved to the keys the model holds with
that lease; a sequential put named by its revision), giving the rows every replica must have written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from corral.core.leases import LeaseInfo
from corral.core.messages import ErrorInfo, TxnResult, TxnSpec
from corral.frozen import frozen
from corral.model import Delete, DeleteByLease, Event, KeyValue, PreparedWrite, Put, PutSequential, Write
from corral.records import CommitRecord, Record, TxId
from corral.store.replica_log import ReplicaStorage

# put, delete, cas (compare a value, then put), txn (puts of two keys), get (one key), seq (a sequential put),
# probe (compare that a name is absent, write nothing), range (read every key under a prefix).
OpKind = Literal["put", "delete", "cas", "txn", "get", "seq", "probe", "range"]
Status = Literal["pending", "ok", "failed", "unknown"]
LeaseOp = Literal["grant", "keepalive", "revoke"]
# What the coordinator did to a lease in one step: its TTL (re)started (start of an epoch with the lease
# on disk, grant, acknowledged keepalive), a revoke made it end, it began deleting its keys (a PREPARE of
# its DeleteByLease), or it ended (LeaseEndRecord logged).
LeaseStepKind = Literal["start", "grant", "keepalive", "revoke", "delete", "end"]


class InvariantViolation(AssertionError):
    """A checker found a run that breaks one of the cluster's guarantees."""


@dataclass(slots=True)
class OpRecord:
    """One client operation in the history: what was asked, when, and what came back."""

    client: str
    kind: OpKind
    keys: tuple[str, ...]  # get, probe: the key; range: the prefix; seq: none (named at commit)
    call_ms: int
    seq: int = 0  # writes: the (client, seq) identity shared by all attempts
    txn: TxnSpec | None = None  # writes: the transaction sent
    value: bytes | None = None  # put, cas, txn, seq: the value written
    expected: bytes | None = None  # cas: the value compared against
    replica: str = ""  # get, range: where it was read
    status: Status = "pending"
    ret_ms: int | None = None  # None while pending and when the outcome is unknown
    result: TxnResult | None = None  # acknowledged write
    error: ErrorInfo | None = None  # failed operation
    output: bytes | None = None  # get: the value read
    kvs: tuple[tuple[str, bytes], ...] = ()  # range: what was read
    request_ids: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status != "pending"

    def describe(self) -> str:
        what = f"{self.kind} {','.join(self.keys)}"
        if self.txn is not None and self.txn.leases_attached():
            what += f" lease={','.join(str(lease) for lease in sorted(self.txn.leases_attached()))}"
        if self.value is not None:
            what += f" value={self.value!r}"
        if self.kind == "cas":
            what += f" expected={self.expected!r}"
        seen = self.kvs if self.kind == "range" else self.output
        out = self.result or (self.error.code if self.error else repr(seen))
        return f"client={self.client} seq={self.seq} {what} [{self.call_ms}, {self.ret_ms}] {self.status} -> {out}"


@dataclass(slots=True)
class LeaseOpRecord:
    """One lease request of a client: sent at `call_ms`, answered (or given up on) at `ret_ms`."""

    client: str
    op: LeaseOp
    lease: int  # a grant: the id it was answered with (0 until then)
    ttl_ms: int
    call_ms: int
    request_id: int
    status: Status = "pending"
    ret_ms: int | None = None
    info: LeaseInfo | None = None
    error: ErrorInfo | None = None

    @property
    def done(self) -> bool:
        return self.status != "pending"

    def describe(self) -> str:
        out = self.info or (self.error.code if self.error else None)
        return f"client={self.client} lease-{self.op} lease={self.lease} [{self.call_ms}, {self.ret_ms}] -> {out}"


@frozen
class LeaseStep:
    """The coordinator's side of a lease in one step: what happened (`LeaseStepKind`), in which epoch, at
    what time on its own clock (`local_ms`) and in virtual time (`at_ms`)."""

    epoch: int
    local_ms: int
    at_ms: int
    lease: int
    kind: LeaseStepKind
    ttl_ms: int = 0


@frozen
class LeaseEnd:
    """A LeaseEndRecord, with the revisions of the commits logged in the same forced write."""

    lease: int
    revisions: tuple[int, ...]
    at_ms: int


@frozen
class ServedRead:
    """A linearizable read served by a replica: at virtual time `at_ms` it returned `value` for `key` (a range
    read: `kvs` for every key under the prefix `key`). `decided_revision` is the newest revision in the
    coordinator's log at that instant, `view_members` the members of the coordinator's current (durable) view."""

    replica: str
    key: str
    value: bytes | None
    at_ms: int
    decided_revision: int
    view_members: tuple[str, ...]
    prefix: bool = False
    kvs: tuple[tuple[str, bytes], ...] = ()


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
    coordinator_txns: Mapping[TxId, TxnSpec] = field(default_factory=dict)  # every transaction it prepared
    commit_times: Mapping[int, int] = field(default_factory=dict)  # revision -> virtual time it was logged
    lease_ends: Sequence[LeaseEnd] = ()
    lease_steps: Sequence[LeaseStep] = ()
    lease_history: Sequence[LeaseOpRecord] = ()
    live_leases: frozenset[int] = frozenset()  # live in the coordinator's log after quiescence
    clock_skew: float = 0.0  # every node's clock runs at a rate within 1 +- this of virtual time
    archives: Mapping[str, Archive] = field(default_factory=dict)  # history kept before compactions, snapshots
    _changes: dict[str, list[Event]] = field(default_factory=dict)

    def changes(self, replica: str) -> list[Event]:
        """Every change `replica` applied, in revision order (read once per run; see `replica_history`)."""
        if replica not in self._changes:
            self._changes[replica] = replica_history(self.replicas, self.archives, replica)
        return self._changes[replica]


# A replica's history up to a revision, kept by the simulator before a compaction or a snapshot replaced it.
Archive = tuple[int, list[Event]]


def replica_history(stores: Mapping[str, ReplicaStorage], archives: Mapping[str, Archive], name: str) -> list[Event]:
    """Every change `name` applied, in revision order: what was archived before a compaction, then its store.

    A replica that installed a member's snapshot at revision S has no history of its own from where its
    archive ends up to S (its store's history starts at S + 1). Those revisions it is given from the other
    replicas, whichever holds them: each archive is whole up to its end, and each store from its
    `history_from` (it may itself have come from a snapshot: seed 7139933 had every replica install one in
    turn). Its state at S is still checked: by the final digests, and by the previous values its own
    changes after S carry."""
    store = stores[name].store
    end, archived = archives.get(name, (0, []))
    if store.history_from > end + 1:
        archived = [*archived, *_held_elsewhere(stores, archives, name, end + 1, store.history_from - 1)]
        end = store.history_from - 1
    return [*archived, *store.changes(end + 1)]


def _held_elsewhere(
    stores: Mapping[str, ReplicaStorage], archives: Mapping[str, Archive], name: str, first: int, last: int
) -> list[Event]:
    """The changes of revisions `first`..`last`, from replicas other than `name` that hold them."""
    out: list[Event] = []
    revision = first
    while revision <= last:
        for n in sorted((set(stores) | set(archives)) - {name}):  # a replica down now still has its archive
            held_to, held = archives.get(n, (0, []))
            storage = stores.get(n)
            if revision <= held_to:
                upto = min(held_to, last)
                out += [e for e in held if revision <= e.kv.mod_revision <= upto]
                break
            if storage is not None and max(1, storage.store.history_from) <= revision <= storage.revision:
                upto = min(storage.revision, last)
                out += storage.store.changes(revision, end_revision=upto)
                break
        else:
            raise InvariantViolation(f"no replica holds the changes of revision {revision} (for {name}'s history)")
        revision = upto + 1
    return out


# -- the model -------------------------------------------------------------------------------------------

# A change as a store records it: (kind, key, value, create_revision, mod_revision, version, lease).
Row = tuple[str, str, bytes, int, int, int, int]


def row(event: Event) -> Row:
    kv = event.kv
    return (str(event.kind), kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def rows_by_revision(events: Sequence[Event]) -> dict[int, list[Row]]:
    out: dict[int, list[Row]] = defaultdict(list)
    for e in events:
        out[e.kv.mod_revision].append(row(e))
    return out


@frozen
class Step:
    """One revision as the model applied it."""

    revision: int
    decision: CommitRecord
    txn: TxnSpec
    op: OpRecord | None  # None: the coordinator's own transaction (a lease's end)
    succeeded: bool  # whether the compares held on the model
    writes: tuple[Write, ...]  # what was applied (sequential puts named)
    rows: list[Row]  # what a store must have written, in key order


class Replay:
    """The decision log applied to a dict model in revision order (see the module docstring)."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.model: dict[str, KeyValue] = {}
        self.revision = 0
        self._decisions = {rec.revision: rec for rec in obs.commit_records}
        self._requests = {(op.client, op.seq): op for op in obs.history if op.txn is not None}

    def __iter__(self) -> Iterator[Step]:
        while self.revision < self.obs.last_revision:
            yield self.advance()

    def advance_to(self, revision: int) -> None:
        while self.revision < revision:
            self.advance()

    def advance(self) -> Step:
        rev = self.revision + 1
        rec = self._decisions.get(rev)
        if rec is None:
            raise InvariantViolation(f"revision {rev} has no decision in the coordinator's log")
        op: OpRecord | None = None
        if rec.client_id:
            op = self._requests.get((rec.client_id, rec.seq))
            if op is None or op.txn is None:
                raise InvariantViolation(
                    f"revision {rev} commits client={rec.client_id} seq={rec.seq}, never requested"
                )
            txn = op.txn
        else:
            found = self.obs.coordinator_txns.get(rec.txid)
            if found is None or found.compares or not all(isinstance(w, DeleteByLease) for w in found.on_success):
                raise InvariantViolation(f"revision {rev} is the coordinator's own, but not a lease's end: {found}")
            txn = found
        lease_keys = {lease: self.keys_with_lease(lease) for lease in txn.leases_deleted()}
        succeeded, branch = txn.evaluate(self.model, lease_keys)
        writes = tuple(_name(w, rev) for w in branch)
        rows = apply_writes(self.model, writes, rev)
        self.revision = rev
        return Step(rev, rec, txn, op, succeeded, writes, rows)

    def keys_with_lease(self, lease: int) -> list[str]:
        return sorted(k for k, kv in self.model.items() if kv.lease == lease)


def _name(w: PreparedWrite, revision: int) -> Write:
    return w.materialize(revision) if isinstance(w, PutSequential) else w


def apply_writes(model: dict[str, KeyValue], writes: Sequence[Write], rev: int) -> list[Row]:
    """Apply `writes` to the dict model at `rev`; return the rows a store must have written, in key order."""
    rows: list[Row] = []
    for w in writes:
        old = model.get(w.key)
        if isinstance(w, Put):
            kv = KeyValue(
                w.key, w.value, old.create_revision if old else rev, rev, old.version + 1 if old else 1, w.lease
            )
            model[w.key] = kv
            rows.append(("put", kv.key, kv.value, kv.create_revision, rev, kv.version, kv.lease))
        elif isinstance(w, Delete) and old is not None:
            del model[w.key]
            rows.append(("delete", w.key, b"", 0, rev, 0, 0))
    return sorted(rows, key=lambda r: r[1])
