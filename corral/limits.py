"""Every bound and default timeout in Corral, each with the reason for its value.

An unbounded queue, batch or retry fails late and far from its cause, so each one has a name here.
Values that an operator may change are also fields of `Limits`, which the config file can override.
"""

from __future__ import annotations

from corral.frozen import frozen

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
# The most `txn_ops_max` may be configured to: the store numbers a revision's rows in 16 bits.
TXN_OPS_CEILING = 1 << 16

# One range read answers at most this many keys per call; the SDK pages beyond it. Bounds the
# memory of a single reply.
RANGE_LIMIT_MAX = 10_000


@frozen
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


@frozen
class Timeouts:
    """Protocol timers, in milliseconds (config file section `[timeouts]`).

    They trade failure-detection speed against false alarms on a loaded machine; tests shorten them.
    """

    # How long the coordinator waits for every vote before aborting. Votes cost one fsync on each
    # replica (~0.2-2 ms); 2 s leaves room for a loaded disk without stalling clients for long.
    prepare_timeout_ms: int = 2000
    # How often the coordinator re-sends a COMMIT that a replica has not acknowledged.
    commit_retry_ms: int = 300
    # How long a replica holds a prepared transaction before asking what became of it, and how often
    # it asks again (the coordinator first, the other replicas too: cooperative termination).
    resolve_after_ms: int = 500
    resolve_interval_ms: int = 500
    # A client request's deadline when the caller gives none.
    request_timeout_ms: int = 10_000
    # A replica serves linearizable reads only while it holds a read lease from the coordinator; the
    # coordinator drops a silent replica from the view only after its lease has surely expired. So
    # this is also how long writes may stall when a replica dies: short enough to stay available,
    # long enough that a loaded machine does not lose leases (replicas renew every quarter of it).
    read_lease_ms: int = 2000
    # How long the coordinator holds new transactions while a caught-up replica enters the view.
    join_timeout_ms: int = 2000


DEFAULT_TIMEOUTS = Timeouts()

# Transaction outcomes a replica remembers (txid -> revision), so it can answer other replicas'
# termination queries; older ones are forgotten and answered UNKNOWN.
OUTCOMES_REMEMBERED_MAX = 100_000

# Client requests whose committed outcome the coordinator remembers, so a retry is answered instead
# of applied twice. A retry of a request older than this many newer commits is treated as new.
CLIENT_OUTCOMES_MAX = 200_000

# Messages in one Peer.Step batch: bounds the size of one RPC and of one replica fsync group.
PEER_BATCH_MAX = 512

# Clocks of two processes may run at slightly different rates: the coordinator waits this much longer
# than a lease (a fraction of it, plus a constant) before treating it as expired.
LEASE_DRIFT_FRACTION = 0.1
LEASE_DRIFT_MS = 20

# Replicas the view never shrinks below: fewer copies than this and writes stop (Unavailable)
# rather than be acknowledged on too few disks.
MIN_REPLICAS = 2

# Client requests held while a replica joins the view; beyond it, new requests fail at once.
FROZEN_REQUESTS_MAX = 10_000

# A watch stream with nothing to send says how far it has covered at least this often, and only while
# its replica holds a read lease: cut off, it would say "nothing new" while commits go on elsewhere.
WATCH_PROGRESS_S = 1.0
# A watch stream silent this long is taken for dead (a frozen replica keeps its connections open) and
# the client resumes it on another replica: the progress interval, a lease wait, and a margin.
WATCH_SILENT_S = 3 * WATCH_PROGRESS_S

# Revisions (and bytes of values) in one catch-up reply; the joiner asks again for the rest.
FETCH_REVISIONS_MAX = 2000
FETCH_BYTES_MAX = 8 * MIB
# Keys in one page of a snapshot (what a joiner gets once the history it misses is compacted).
SNAPSHOT_KEYS_MAX = 1000
