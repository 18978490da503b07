"""Durable records of the 2PC protocol, and the start state a node folds them into.

Plain data, below both the cores (which emit records) and the store (which persists them), so
neither has to know the other. A txid packs the coordinator's epoch (incarnation, +1 at every start)
above a counter: txids never repeat across restarts, and anyone can tell which incarnation started
a transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from corral.frozen import frozen
from corral.model import KeyValue, PreparedWrite, Write

TxId = int

_COUNTER_BITS = 40


def make_txid(epoch: int, counter: int) -> TxId:
    return (epoch << _COUNTER_BITS) | counter


def txid_epoch(txid: TxId) -> int:
    return txid >> _COUNTER_BITS


def format_txid(txid: TxId) -> str:
    """`e3.17`: epoch 3, seventeenth transaction of that incarnation (for logs and messages)."""
    return f"e{txid_epoch(txid)}.{txid & ((1 << _COUNTER_BITS) - 1)}"


# -- records -------------------------------------------------------------------------------


@frozen
class EpochRecord:
    """Coordinator: a new incarnation started (forced before any of its txids is used)."""

    epoch: int


@frozen
class CommitRecord:
    """Coordinator: the decision to commit txid at revision (forced before anyone hears of it)."""

    txid: TxId
    revision: int
    client_id: str
    seq: int
    succeeded: bool


@frozen
class EndRecord:
    """Coordinator: every replica applied txid; its commit need not be re-sent (lazy)."""

    txid: TxId


@frozen
class LeaseRecord:
    """Coordinator: a lease was granted (forced before the client hears its id)."""

    lease_id: int
    ttl_ms: int


@frozen
class LeaseEndRecord:
    """Coordinator: a lease ended and its keys are deleted (logged with that deletion's commit)."""

    lease_id: int


@frozen
class ViewRecord:
    """Coordinator: the replicas that vote on new transactions and may hold read leases (forced)."""

    view: int
    members: tuple[str, ...]


@frozen
class PreparedRecord:
    """Replica: voted yes on txid; these are the writes it will apply if committed (forced)."""

    txid: TxId
    writes: tuple[PreparedWrite, ...]
    succeeded: bool
    keys: frozenset[str]
    participants: tuple[str, ...] = ()


@frozen
class CommittedRecord:
    """Replica: apply txid's writes at revision, atomically with forgetting its PreparedRecord."""

    txid: TxId
    revision: int
    writes: tuple[Write, ...]


@frozen
class AbortedRecord:
    """Replica: txid aborted; forget its PreparedRecord (or promise never to vote yes on it)."""

    txid: TxId


@frozen
class CaughtUpRecord:
    """Replica (catching up outside the view): apply fetched revisions in order, then stand at
    `through_revision`."""

    revisions: tuple[tuple[int, tuple[Write, ...]], ...]
    through_revision: int


@frozen
class SnapshotPageRecord:
    """Replica (catching up past a member's compacted history): stage one page of the member's state at
    `revision` (`first` clears what an abandoned snapshot staged); at the `last` page, the staged state
    replaces the whole store, at `revision`, with no history below it."""

    revision: int
    kvs: tuple[KeyValue, ...]
    first: bool
    last: bool


@frozen
class DiscardedRecord:
    """Replica (outside the view): drop an in-doubt PREPARED record without applying it; catching up
    brings its effect if it committed. No outcome is recorded."""

    txid: TxId


@frozen
class ForgottenRecord:
    """Replica: outcomes of txids up to this one may be unknown here. `drop_outcomes` (on rejoining)
    also forgets the outcomes it remembers up to there: from before it left, they cannot be trusted."""

    txid: TxId
    drop_outcomes: bool = False


Record = (
    EpochRecord
    | CommitRecord
    | EndRecord
    | LeaseRecord
    | LeaseEndRecord
    | ViewRecord
    | PreparedRecord
    | CommittedRecord
    | AbortedRecord
    | CaughtUpRecord
    | SnapshotPageRecord
    | DiscardedRecord
    | ForgottenRecord
)


# -- start states ------------------------------------------------------------------------------


@frozen
class CoordinatorDisk:
    """What the coordinator finds in its log at start."""

    epoch: int = 0  # the last incarnation's epoch (0: never started)
    last_revision: int = 0
    unended: tuple[CommitRecord, ...] = ()  # committed, not every participant acknowledged
    remembered: tuple[CommitRecord, ...] = ()  # recent commits, for answering client retries
    view: int = 0  # 0: no view recorded yet (every configured replica is a member)
    members: tuple[str, ...] = ()
    leases: tuple[tuple[int, int], ...] = ()  # live leases: (id, ttl_ms)

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> CoordinatorDisk:
        """Fold a log (in write order) into the start state; used by the shell and the simulator."""
        epoch = last_revision = view = 0
        members: tuple[str, ...] = ()
        commits: dict[TxId, CommitRecord] = {}
        ended: set[TxId] = set()
        leases: dict[int, int] = {}
        for rec in records:
            if isinstance(rec, LeaseRecord):
                leases[rec.lease_id] = rec.ttl_ms
            elif isinstance(rec, LeaseEndRecord):
                leases.pop(rec.lease_id, None)
            elif isinstance(rec, EpochRecord):
                epoch = max(epoch, rec.epoch)
            elif isinstance(rec, ViewRecord) and rec.view > view:
                view, members = rec.view, rec.members
            elif isinstance(rec, CommitRecord):
                commits[rec.txid] = rec
                last_revision = max(last_revision, rec.revision)
            elif isinstance(rec, EndRecord):
                ended.add(rec.txid)
        ordered = sorted(commits.values(), key=lambda r: r.revision)
        unended = tuple(r for r in ordered if r.txid not in ended)
        return cls(epoch, last_revision, unended, tuple(ordered), view, members, tuple(leases.items()))


@frozen
class ParticipantDisk:
    """What a replica finds on disk at start (its store and its 2PC tables)."""

    applied_revision: int = 0
    prepared: tuple[PreparedRecord, ...] = ()
    outcomes: tuple[tuple[TxId, int | None], ...] = ()  # recent: txid -> revision (None: aborted), oldest first
    forgotten_max_txid: TxId = 0  # every txid at or below this may have been forgotten

    @classmethod
    def from_records(cls, records: Iterable[Record], applied_revision: int = 0) -> ParticipantDisk:
        """Fold a record log into the start state (for the simulator; the shell keeps tables)."""
        prepared: dict[TxId, PreparedRecord] = {}
        outcomes: dict[TxId, int | None] = {}
        applied = applied_revision
        forgotten = 0
        for rec in records:
            if isinstance(rec, PreparedRecord):
                prepared[rec.txid] = rec
            elif isinstance(rec, CommittedRecord):
                prepared.pop(rec.txid, None)
                outcomes[rec.txid] = rec.revision
                applied = max(applied, rec.revision)
            elif isinstance(rec, AbortedRecord):
                prepared.pop(rec.txid, None)
                outcomes[rec.txid] = None
            elif isinstance(rec, DiscardedRecord):
                prepared.pop(rec.txid, None)
            elif isinstance(rec, CaughtUpRecord):
                applied = max(applied, rec.through_revision)
            elif isinstance(rec, ForgottenRecord):
                forgotten = max(forgotten, rec.txid)
                if rec.drop_outcomes:
                    outcomes = {t: r for t, r in outcomes.items() if t > rec.txid}
        return cls(applied, tuple(prepared.values()), tuple(outcomes.items()), forgotten)
