"""Every bound and default timeout in Corral, each with the reason for its value.

An unbounded queue, batch or retry fails late and far from its cause, so each one has a name here.
Values that an operator may change are also fields of `Limits`, which the config file can override.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

# Keys are paths like "/locks/build/000000000042"; 1 KiB is etcd's practical bound and keeps the
# SQLite primary-key index compact.
KEY_BYTES_MAX = 1024

# Values are configuration, small documents and task outputs, not blobs. 1 MiB matches ZooKeeper's
# jute.maxbuffer default; every replica holds every value, so large values multiply.
VALUE_BYTES_MAX = 1 * MIB

# A transaction's writes and compares together. Every key of a transaction is locked on every
# replica during 2PC, so a huge transaction blocks many others; 128 is etcd's --max-txn-ops.
TXN_OPS_MAX = 128

# One range read answers at most this many keys per call; the SDK pages beyond it. Bounds the
# memory of a single reply.
RANGE_LIMIT_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits a deployment may tune (config file section `[limits]`)."""

    key_bytes_max: int = KEY_BYTES_MAX
    value_bytes_max: int = VALUE_BYTES_MAX
    txn_ops_max: int = TXN_OPS_MAX
    range_limit_max: int = RANGE_LIMIT_MAX


DEFAULT_LIMITS = Limits()


def format_bytes(n: int) -> str:
    """Human size for error messages: `3.0 MiB`, `512 B`."""
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    if n >= KIB:
        return f"{n / KIB:.1f} KiB"
    return f"{n} B"
