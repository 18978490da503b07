"""The vocabulary of the 2PC cores: transactions, peer messages, events, durable records, effects.

Events are named for what happened (`Received`, `Tick`); effects for what to do (`persist`, `send`,
`reply`). A shell performs a step's effects in order: make `persist` durable (fsync), then deliver
`send` and `reply`. `persist_lazy` records may be written later, with any later fsync; losing them in
a crash is harmless (the END of a transaction).

Durable records live in `corral.records`: the store persists them without knowing the cores.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import field

from corral.core.leases import LeaseInfo
from corral.errors import CorralError, InvalidArgument, from_code
from corral.frozen import frozen
from corral.limits import Limits
from corral.model import (
    SEQUENTIAL_DIGITS,
    Compare,
    Delete,
    DeleteByLease,
    KeyValue,
    PreparedWrite,
    Put,
    PutSequential,
    TxnWrite,
    Write,
    check_value_size,
)
from corral.records import Record, TxId

NodeName = str

# Tuples, not `Put | Delete`: a union written in a hot loop is built anew at every test.
_NAMED = (Put, Delete)  # writes that name an existing key
_PUTS = (Put, PutSequential)  # writes that may attach a lease


# -- transactions ------------------------------------------------------------------------------


@frozen
class TxnSpec:
    """A client transaction: if every compare holds, apply on_success, else on_failure."""

    compares: tuple[Compare, ...] = ()
    on_success: tuple[TxnWrite, ...] = ()
    on_failure: tuple[TxnWrite, ...] = ()

    def _writes(self) -> tuple[TxnWrite, ...]:
        return self.on_success + self.on_failure

    def keys(self) -> frozenset[str]:
        """Every key the transaction names (compares, puts, deletes): the unit of the first-wins rule.
        A sequential put names no existing key; a DeleteByLease's keys are found by each replica."""
        named = [w.key for w in self._writes() if isinstance(w, _NAMED)]
        return frozenset([c.key for c in self.compares] + named)

    def compare_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.key for c in self.compares))

    def leases_deleted(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(w.lease for w in self._writes() if isinstance(w, DeleteByLease)))

    def leases_attached(self) -> frozenset[int]:
        """Leases that puts of this transaction attach keys to."""
        return frozenset(w.lease for w in self._writes() if isinstance(w, _PUTS) and w.lease)

    def validate(self, limits: Limits, *, internal: bool = False) -> None:
        """Everything the store would refuse at apply time, refused before prepare instead: a decided
        commit must never fail to apply.

        Raises:
            InvalidArgument: too many operations, a key (or sequential prefix) twice in one branch, an
                explicit key shaped like one of its sequential names, or an oversized value.
        """
        ops = len(self.compares) + max(len(self.on_success), len(self.on_failure))
        if ops > limits.txn_ops_max:
            raise InvalidArgument(
                f"transaction has {ops} operations; the limit is {limits.txn_ops_max} (config: limits.txn_ops_max)",
                field="txn",
            )
        for branch in (self.on_success, self.on_failure):
            seen: set[str] = set()
            prefixes: set[str] = set()
            for w in branch:
                if isinstance(w, DeleteByLease):
                    if not internal:
                        raise InvalidArgument("DeleteByLease is not a client operation; revoke the lease instead")
                    continue
                if isinstance(w, PutSequential):
                    if w.prefix in prefixes:
                        raise InvalidArgument(
                            f"two sequential puts under {w.prefix!r} in one branch would get the same name",
                            field="prefix",
                        )
                    prefixes.add(w.prefix)
                elif w.key in seen:
                    raise InvalidArgument(f"key {w.key!r} is written twice in one branch of a transaction", field="key")
                else:
                    seen.add(w.key)
                if isinstance(w, _PUTS):
                    check_value_size(w.value, limits)
            for key in seen:
                for prefix in prefixes:
                    suffix = key[len(prefix) :]
                    if key.startswith(prefix) and len(suffix) == SEQUENTIAL_DIGITS and suffix.isdigit():
                        raise InvalidArgument(
                            f"key {key!r} has the shape of a sequential key under {prefix!r} in the same branch",
                            field="key",
                        )

    def evaluate(
        self, reads: Mapping[str, KeyValue | None], lease_keys: Mapping[int, Sequence[str]]
    ) -> tuple[bool, tuple[PreparedWrite, ...]]:
        """(succeeded, writes to hold prepared) given the current state of the compare keys and the
        keys each deleted lease holds."""
        succeeded = all(c.holds(reads.get(c.key)) for c in self.compares)
        out: list[PreparedWrite] = []
        explicit = {w.key for w in self._writes() if isinstance(w, _NAMED)}
        for w in self.on_success if succeeded else self.on_failure:
            if isinstance(w, DeleteByLease):
                out.extend(Delete(k) for k in lease_keys.get(w.lease, ()) if k not in explicit)
            else:
                out.append(w)
        return succeeded, tuple(out)


def writes_digest(writes: Sequence[PreparedWrite]) -> str:
    """A short hash of the writes a replica will apply: replicas that resolved a transaction
    differently (they never should) are caught at the vote instead of diverging."""
    h = hashlib.blake2b(digest_size=8)
    for w in writes:
        if isinstance(w, Put):
            h.update(b"P" + w.key.encode() + b"\0" + str(w.lease).encode() + b"\0" + w.value)
        elif isinstance(w, PutSequential):
            h.update(b"S" + w.prefix.encode() + b"\0" + str(w.lease).encode() + b"\0" + w.value)
        else:
            h.update(b"D" + w.key.encode())
        h.update(b"\1")
    return h.hexdigest()


@frozen
class ErrorInfo:
    """A typed error as data, so it can cross cores, the wire and the simulator."""

    code: str
    message: str
    details: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, err: CorralError) -> ErrorInfo:
        return cls(err.code, err.message, dict(err.details))

    def to_error(self) -> CorralError:
        return from_code(self.code, self.message, dict(self.details))


# -- peer messages -------------------------------------------------------------------------------


@frozen
class Prepare:
    """Vote on txid. `participants` is fixed for the transaction's life: every one of them must vote
    yes for it to commit, and only they may be asked about it (cooperative termination)."""

    txid: TxId
    txn: TxnSpec
    participants: tuple[NodeName, ...] = ()


@frozen
class Commit:
    txid: TxId
    revision: int


@frozen
class Abort:
    txid: TxId


@frozen
class Vote:
    txid: TxId
    yes: bool
    succeeded: bool = False
    reason: ErrorInfo | None = None
    digest: str = ""  # writes_digest of what the voter holds prepared (a yes vote)


@frozen
class Ack:
    """Cumulative: the sender has applied every revision up to `revision` (commits apply in revision
    order), so one ack settles every commit at or below it; `txid` is the last one applied."""

    txid: TxId
    revision: int


@frozen
class ResolveRequest:
    """ "What became of these transactions?" from a replica holding them prepared."""

    txids: tuple[TxId, ...]


class OutcomeKind(enum.IntEnum):
    UNKNOWN = 0  # cannot tell (forgotten long ago); the asker must ask someone else
    PENDING = 1  # the coordinator is still collecting votes
    COMMITTED = 2
    ABORTED = 3
    UNCERTAIN = 4  # a replica that voted yes and has not heard the decision either


@frozen
class Outcome:
    txid: TxId
    kind: OutcomeKind
    revision: int = 0


@frozen
class ResolveReply:
    outcomes: tuple[Outcome, ...]


# -- views, read leases, rejoining ---------------------------------------------------------------


@frozen
class LeaseRequest:
    """A replica asks to keep serving linearizable reads; `request_ms` is its own clock at sending,
    echoed back so the lease counts from before the grant (the safe side)."""

    request_ms: int
    applied_revision: int


@frozen
class LeaseGrant:
    """To a member of the view: serve linearizable reads until your request_ms + lease_ms."""

    view: int
    members: tuple[NodeName, ...]
    lease_ms: int
    request_ms: int


@frozen
class NotMember:
    """To a replica outside the view: catch up from a member, then ask to join."""

    view: int
    members: tuple[NodeName, ...]


@frozen
class Join:
    """A caught-up replica asks to enter the view."""

    applied_revision: int


@frozen
class JoinReady:
    """The coordinator paused new transactions: fetch up to `revision`, then report CaughtUp.
    `txid_high` is the highest txid issued so far; the joiner may have forgotten anything below it."""

    revision: int
    txid_high: TxId


@frozen
class CaughtUp:
    applied_revision: int


@frozen
class FetchRequest:
    """To a member: send me the committed revisions from `from_revision` on (served by the shell
    from the store's history, not by the core)."""

    from_revision: int


@frozen
class FetchReply:
    """Committed revisions in order (revision, writes), covering everything up to `through_revision`
    (revisions without writes are simply absent); `complete` when that is the sender's newest
    revision. `error` when the history asked for is gone (compacted)."""

    revisions: tuple[tuple[int, tuple[Write, ...]], ...]
    through_revision: int
    complete: bool
    error: ErrorInfo | None = None


@frozen
class SnapshotRequest:
    """To a member, from a replica whose missing history that member has compacted: one page of the
    whole state at `revision` (0: the member's current one), the live keys after `after_key` (served
    by the shell from the store, not by the core)."""

    revision: int
    after_key: str = ""


@frozen
class SnapshotPage:
    """Live keys of the state at `revision` after `after_key`, in key order; `more` until the last
    page. `error` when the member cannot serve that state (not a member, or compacted past it)."""

    revision: int
    after_key: str
    kvs: tuple[KeyValue, ...]
    more: bool
    error: ErrorInfo | None = None


Message = (
    Prepare
    | Commit
    | Abort
    | Vote
    | Ack
    | ResolveRequest
    | ResolveReply
    | LeaseRequest
    | LeaseGrant
    | NotMember
    | Join
    | JoinReady
    | CaughtUp
    | FetchRequest
    | FetchReply
    | SnapshotRequest
    | SnapshotPage
)


@frozen
class Envelope:
    dst: NodeName
    msg: Message


# -- events ----------------------------------------------------------------------------------------


@frozen
class Received:
    """A message arrived from `src`. For a Prepare, `reads` holds the current state of its compare
    keys and `lease_keys` the keys each lease it deletes holds (read by the shell right before the
    step, so the core stays free of I/O)."""

    src: NodeName
    msg: Message
    reads: Mapping[str, KeyValue | None] | None = None
    lease_keys: Mapping[int, Sequence[str]] | None = None


@frozen
class Unreachable:
    """The shell could not deliver these messages to `dst` (connection refused, RPC timed out)."""

    dst: NodeName
    msgs: tuple[Message, ...]


@frozen
class ClientTxn:
    """A client's transaction arrived at the coordinator. (client_id, seq) identify it across retries."""

    request_id: int
    client_id: str
    seq: int
    txn: TxnSpec
    deadline_ms: int


@frozen
class ClientLease:
    """A client's lease request: grant (ttl_ms), keepalive, revoke or ttl (of lease_id)."""

    request_id: int
    op: str
    lease_id: int = 0
    ttl_ms: int = 0


@frozen
class Tick:
    """Time passed; the core checks its timers."""


Event = Received | Unreachable | ClientTxn | ClientLease | Tick


# -- effects ---------------------------------------------------------------------------------------


@frozen
class TxnResult:
    revision: int
    succeeded: bool


@frozen
class ClientReply:
    request_id: int
    result: TxnResult | LeaseInfo | ErrorInfo


@frozen
class Effects:
    persist: tuple[Record, ...] = ()  # made durable before anything below
    persist_lazy: tuple[Record, ...] = ()  # durable eventually; ordering-free
    send: tuple[Envelope, ...] = ()
    reply: tuple[ClientReply, ...] = ()
    wake_at_ms: int | None = None  # step me again with Tick by then

    def __add__(self, other: Effects) -> Effects:
        wake = [w for w in (self.wake_at_ms, other.wake_at_ms) if w is not None]
        return Effects(
            self.persist + other.persist,
            self.persist_lazy + other.persist_lazy,
            self.send + other.send,
            self.reply + other.reply,
            min(wake) if wake else None,
        )


class EffectsBuilder:
    """Accumulates a step's effects in order; cores use it so a step reads top to bottom."""

    __slots__ = ("persist", "persist_lazy", "reply", "send")

    def __init__(self) -> None:
        self.persist: list[Record] = []
        self.persist_lazy: list[Record] = []
        self.send: list[Envelope] = []
        self.reply: list[ClientReply] = []

    def build(self, wake_at_ms: int | None) -> Effects:
        return Effects(tuple(self.persist), tuple(self.persist_lazy), tuple(self.send), tuple(self.reply), wake_at_ms)
