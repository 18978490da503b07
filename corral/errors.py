"""Typed errors shared by every layer of Corral.

One root, `CorralError`. Each leaf knows whether retrying can help (`retryable`), which HTTP status
it maps to, and a stable machine-readable `code` that travels over gRPC and HTTP unchanged, so a
client can rebuild the same exception class on the other side (`from_code`).

Three families are kept apart, because the reader acts differently on each:
- the caller's mistake (`InvalidArgument`, `NotFound`, `Compacted`, ...): fix the request;
- the system's state (`Conflict`, `Unavailable`): retry, usually after a short wait;
- a Corral bug (`Internal`): nothing the caller did; the message says to report it.

Messages start lower case and name the field, the value seen, the limit and the fix.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CorralError(Exception):
    """Root of every error Corral raises on purpose."""

    code: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used by the HTTP API and the CLI's --json output."""
        out: dict[str, Any] = {"error": self.code, "message": self.message, "retryable": self.retryable}
        if self.details:
            out["details"] = self.details
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep details across pickling (multiprocessing hands errors between processes).
        return (_rebuild, (self.code, self.message, self.details))


class InvalidArgument(CorralError):
    """The request itself is wrong (bad key, oversized value, wrong type); fix it and send it again."""

    code = "invalid_argument"
    http_status = 400


class NotFound(CorralError):
    """The thing named (a key, a snapshot id, a job, a lease) does not exist."""

    code = "not_found"
    http_status = 404


class Compacted(CorralError):
    """The revision asked for is older than the oldest one the store still keeps."""

    code = "compacted"
    http_status = 410

    def __init__(self, message: str, *, compact_revision: int, **details: Any) -> None:
        super().__init__(message, compact_revision=compact_revision, **details)
        self.compact_revision = compact_revision


class Conflict(CorralError):
    """Another in-flight transaction touches the same key and arrived first; retry after it ends."""

    code = "conflict"
    retryable = True
    http_status = 409


class Unavailable(CorralError):
    """Not enough of the cluster answered in time. `outcome_unknown` says a write may have applied."""

    code = "unavailable"
    retryable = True
    http_status = 503

    def __init__(self, message: str, *, outcome_unknown: bool = False, **details: Any) -> None:
        super().__init__(message, outcome_unknown=outcome_unknown, **details)
        self.outcome_unknown = outcome_unknown


class LeaseExpired(CorralError):
    """The lease (session) is gone: its ephemeral keys were deleted and its locks released."""

    code = "lease_expired"
    http_status = 410


class FailedPrecondition(CorralError):
    """The system is not in a state where this request makes sense (for example, a wrong node role)."""

    code = "failed_precondition"
    http_status = 409


class PeerError(CorralError):
    """Another Corral process broke the protocol (an unexpected message, a vote that disagrees)."""

    code = "peer_error"
    http_status = 502


class Internal(CorralError):
    """A bug in Corral. The message says so; the caller did nothing wrong."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(f"{message} (this is a bug in Corral; please report it with the node's log)", **details)


_BY_CODE: dict[str, type[CorralError]] = {
    cls.code: cls
    for cls in (
        CorralError,
        InvalidArgument,
        NotFound,
        Compacted,
        Conflict,
        Unavailable,
        LeaseExpired,
        FailedPrecondition,
        PeerError,
        Internal,
    )
}


def from_code(code: str, message: str, details: dict[str, Any] | None = None) -> CorralError:
    """Rebuild the typed error a peer sent as (code, message, details)."""
    details = dict(details or {})
    cls = _BY_CODE.get(code, CorralError)
    err = CorralError.__new__(cls)
    CorralError.__init__(err, message, **details)
    if isinstance(err, Compacted):
        err.compact_revision = int(details.get("compact_revision", 0))
    if isinstance(err, Unavailable):
        err.outcome_unknown = bool(details.get("outcome_unknown", False))
    return err


def _rebuild(code: str, message: str, details: dict[str, Any]) -> CorralError:
    return from_code(code, message, details)
