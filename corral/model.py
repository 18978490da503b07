"""Frozen data shared by every layer: key/values, writes, compares, events.

Constructing a write validates its key and the value's type, so an invalid write cannot exist past
the edge of the system. The value's *size* limit is a deployment setting, checked by
`check_value_size` where the configured `Limits` are known.
"""

from __future__ import annotations

import enum
from dataclasses import field

from corral.errors import InvalidArgument
from corral.frozen import frozen
from corral.limits import DEFAULT_LIMITS, KEY_BYTES_MAX, Limits, format_bytes

Revision = int
LeaseId = int


def validate_key(key: object, *, name: str = "key") -> str:
    """Return `key` if it is a valid Corral key.

    Raises:
        InvalidArgument: not a str, empty, over 1024 UTF-8 bytes, or containing NUL.
    """
    if not isinstance(key, str):
        raise InvalidArgument(
            f"{name} must be a str, got {type(key).__name__}; keys are UTF-8 text such as '/config/db'",
            field=name,
        )
    if not key:
        raise InvalidArgument(f"{name} is empty; give at least one character", field=name)
    if "\x00" in key:
        raise InvalidArgument(f"{name} contains a NUL character (\\x00); remove it", field=name)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{name} is not valid UTF-8 text ({exc.reason})", field=name) from None
    if size > KEY_BYTES_MAX:
        raise InvalidArgument(
            f"{name} is {size} bytes; the limit is {KEY_BYTES_MAX} bytes of UTF-8",
            field=name,
            size=size,
            limit=KEY_BYTES_MAX,
        )
    return key


def validate_prefix(prefix: object) -> str:
    """A range prefix: like a key, but the empty prefix (everything) is allowed."""
    if prefix == "":
        return ""
    return validate_key(prefix, name="prefix")


def validate_value(value: object, *, name: str = "value") -> bytes:
    """Return `value` as bytes.

    Raises:
        InvalidArgument: not bytes-like (a str must be encoded first).
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    hint = "; encode text first, e.g. value.encode()" if isinstance(value, str) else ""
    raise InvalidArgument(f"{name} must be bytes, got {type(value).__name__}{hint}", field=name)


def check_value_size(value: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raises InvalidArgument if `value` is over the configured limit."""
    if len(value) > limits.value_bytes_max:
        raise InvalidArgument(
            f"value is {format_bytes(len(value))}; the limit is {format_bytes(limits.value_bytes_max)} "
            "(config: limits.value_bytes_max)",
            field="value",
            size=len(value),
            limit=limits.value_bytes_max,
        )


def validate_revision(revision: object, *, name: str = "revision") -> int:
    """A revision argument: a non-negative int (0 means "current" where a read takes it)."""
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise InvalidArgument(f"{name} must be an int, got {type(revision).__name__}", field=name)
    if revision < 0:
        raise InvalidArgument(f"{name} is {revision}; revisions start at 1 (0 means current)", field=name)
    return revision


def validate_lease(lease: object) -> int:
    if isinstance(lease, bool) or not isinstance(lease, int) or lease < 0:
        raise InvalidArgument(f"lease must be a non-negative int id, got {lease!r}", field="lease")
    return lease


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix` (None: no bound)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return None


@frozen
class KeyValue:
    """A key's value at some revision, with etcd's bookkeeping.

    `version` counts writes since the key was (re)created; a delete resets it.
    """

    key: str
    value: bytes
    create_revision: Revision
    mod_revision: Revision
    version: int
    lease: LeaseId = 0


@frozen
class Put:
    key: str
    value: bytes
    lease: LeaseId = 0

    def __post_init__(self) -> None:
        validate_key(self.key)
        object.__setattr__(self, "value", validate_value(self.value))
        validate_lease(self.lease)


@frozen
class Delete:
    key: str

    def __post_init__(self) -> None:
        validate_key(self.key)


# The suffix of a sequential key: its commit revision, zero-padded so keys sort in commit order.
SEQUENTIAL_DIGITS = 20


def sequential_key(prefix: str, revision: int) -> str:
    """The key a PutSequential(prefix) committed at `revision` created."""
    return f"{prefix}{revision:0{SEQUENTIAL_DIGITS}d}"


@frozen
class PutSequential:
    """Create a new key under `prefix`, named by its commit revision (`sequential_key`): unique, and
    increasing in commit order, which is what lock and queue recipes need. It cannot conflict with
    anything in flight, so it locks no key."""

    prefix: str
    value: bytes
    lease: LeaseId = 0

    def __post_init__(self) -> None:
        validate_key(self.prefix + "0" * SEQUENTIAL_DIGITS, name="prefix")
        object.__setattr__(self, "value", validate_value(self.value))
        validate_lease(self.lease)

    def materialize(self, revision: int) -> Put:
        return Put(sequential_key(self.prefix, revision), self.value, self.lease)


@frozen
class DeleteByLease:
    """Delete every key attached to a lease (the coordinator's own transaction when a lease ends).
    Each replica resolves it at prepare time to the keys it holds with that lease."""

    lease: LeaseId

    def __post_init__(self) -> None:
        validate_lease(self.lease)


# What a store applies; what a replica holds prepared (a sequential put is named at commit time);
# what a client may put in a transaction (DeleteByLease is the coordinator's own).
Write = Put | Delete
PreparedWrite = Put | Delete | PutSequential
TxnWrite = Put | Delete | PutSequential | DeleteByLease


class EventKind(enum.StrEnum):
    """What happened to a key in an Event."""

    PUT = "put"
    DELETE = "delete"


@frozen
class Event:
    """One change to one key; `kv` is the key after it (for a delete: key and revision only)."""

    kind: EventKind
    kv: KeyValue
    prev_kv: KeyValue | None = None


class CompareTarget(enum.StrEnum):
    """Which field of a key a Compare looks at."""

    VALUE = "value"
    VERSION = "version"
    CREATE_REVISION = "create_revision"
    MOD_REVISION = "mod_revision"
    LEASE = "lease"


class CompareOp(enum.StrEnum):
    """How a Compare relates the field to its operand."""

    EQUAL = "=="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"


@frozen
class Compare:
    """A condition on one key, evaluated atomically with a transaction's writes (etcd's Compare).

    A missing key has version, create_revision, mod_revision and lease 0; any compare on the
    *value* of a missing key is false (as in etcd), so `value == b""` does not match a missing key.
    """

    key: str
    target: CompareTarget
    op: CompareOp
    operand: bytes | int = field(default=0)

    def __post_init__(self) -> None:
        validate_key(self.key)
        try:
            object.__setattr__(self, "target", CompareTarget(self.target))
        except ValueError:
            choices = ", ".join(t.value for t in CompareTarget)
            raise InvalidArgument(
                f"compare target {self.target!r} is unknown; use one of {choices}", field="target"
            ) from None
        try:
            object.__setattr__(self, "op", CompareOp(self.op))
        except ValueError:
            choices = ", ".join(o.value for o in CompareOp)
            raise InvalidArgument(f"compare op {self.op!r} is unknown; use one of {choices}", field="op") from None
        if self.target is CompareTarget.VALUE:
            object.__setattr__(self, "operand", validate_value(self.operand, name="compare operand"))
        elif isinstance(self.operand, bool) or not isinstance(self.operand, int):
            raise InvalidArgument(
                f"compare on {self.target.value} needs an int operand, got {type(self.operand).__name__}",
                field="operand",
            )

    def holds(self, kv: KeyValue | None) -> bool:
        """Evaluate against the key's current state (`None`: the key does not exist)."""
        if self.target is CompareTarget.VALUE:
            if kv is None:
                return False
            actual: bytes | int = kv.value
        elif kv is None:
            actual = 0
        else:
            actual = {
                CompareTarget.VERSION: kv.version,
                CompareTarget.CREATE_REVISION: kv.create_revision,
                CompareTarget.MOD_REVISION: kv.mod_revision,
                CompareTarget.LEASE: kv.lease,
            }[self.target]
        operand = self.operand
        if self.op is CompareOp.EQUAL:
            return actual == operand
        if self.op is CompareOp.NOT_EQUAL:
            return actual != operand
        if self.op is CompareOp.LESS:
            return actual < operand  # type: ignore[operator]
        return actual > operand  # type: ignore[operator]
