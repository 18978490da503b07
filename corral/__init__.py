"""Corral: a distributed process coordinator.

The public namespace is deliberately thin; everything here is stable API. Internals live in
submodules and may move.
"""

from corral.client import AsyncClient, Client, connect, connect_async
from corral.client.session import Session
from corral.core.snapshot_array import SnapshotArray
from corral.errors import (
    Compacted,
    Conflict,
    CorralError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LeaseExpired,
    NotFound,
    PeerError,
    Unavailable,
)
from corral.model import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Event,
    EventKind,
    KeyValue,
    Put,
    PutSequential,
    sequential_key,
)
from corral.store.mvcc import MVCCStore

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "Compacted",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "Conflict",
    "CorralError",
    "Delete",
    "Event",
    "EventKind",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "KeyValue",
    "LeaseExpired",
    "MVCCStore",
    "NotFound",
    "PeerError",
    "Put",
    "PutSequential",
    "Session",
    "SnapshotArray",
    "Unavailable",
    "__version__",
    "connect",
    "connect_async",
    "sequential_key",
]
