"""What a member serves a replica catching up: committed history, or, once that history is compacted,
its whole state page by page. Served by the shell from the store; the core is not involved. Shared by
the replica service and the simulator, so both serve catch-up the same way.
"""

from __future__ import annotations

from corral.core.messages import ErrorInfo, FetchReply, FetchRequest, SnapshotPage, SnapshotRequest
from corral.core.twopc_participant import Membership, Participant
from corral.errors import CorralError, Unavailable
from corral.limits import FETCH_BYTES_MAX, FETCH_REVISIONS_MAX, SNAPSHOT_KEYS_MAX
from corral.store.replica_log import ReplicaStorage


def serve_catch_up(
    core: Participant,
    storage: ReplicaStorage,
    req: FetchRequest | SnapshotRequest,
    *,
    revisions_max: int = FETCH_REVISIONS_MAX,
    bytes_max: int = FETCH_BYTES_MAX,
    keys_max: int = SNAPSHOT_KEYS_MAX,
) -> FetchReply | SnapshotPage:
    """The answer to a catch-up request; only a member's history and state are complete."""
    refused: CorralError | None = None
    if core.membership is not Membership.MEMBER:
        refused = Unavailable(f"{core.node} is not a member of the view; catch up from a member")
    if isinstance(req, SnapshotRequest):
        if refused is None:
            try:
                revision, kvs, more = storage.store.snapshot_page(
                    req.revision, req.after_key, keys_max=keys_max, bytes_max=bytes_max
                )
                return SnapshotPage(revision, req.after_key, tuple(kvs), more)
            except CorralError as err:
                refused = err
        return SnapshotPage(req.revision, req.after_key, (), False, ErrorInfo.of(refused))
    if refused is None:
        try:
            revisions, through, complete = storage.fetch(
                req.from_revision, revisions_max=revisions_max, bytes_max=bytes_max
            )
            return FetchReply(revisions, through, complete)
        except CorralError as err:
            refused = err
    return FetchReply((), 0, False, ErrorInfo.of(refused))
