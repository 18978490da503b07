"""Converters between protobuf messages and Corral's model/core dataclasses.

Decoding validates: a malformed or hostile message becomes `InvalidArgument` (from the model's
constructors), never a half-built object. Errors cross the wire as `Error(code, message, details)`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from corral.core.messages import (
    Abort,
    Ack,
    CaughtUp,
    Commit,
    ErrorInfo,
    FetchReply,
    FetchRequest,
    Join,
    JoinReady,
    LeaseGrant,
    LeaseRequest,
    Message,
    NotMember,
    Outcome,
    OutcomeKind,
    Prepare,
    ResolveReply,
    ResolveRequest,
    SnapshotPage,
    SnapshotRequest,
    TxnSpec,
    Vote,
)
from corral.errors import CorralError, InvalidArgument
from corral.model import (
    Compare,
    CompareTarget,
    Delete,
    DeleteByLease,
    Event,
    EventKind,
    KeyValue,
    Put,
    PutSequential,
    TxnWrite,
    Write,
)
from corral.rpc import corral_pb2 as pb

# -- data -------------------------------------------------------------------------------------


def kv_to_pb(kv: KeyValue) -> pb.KeyValue:
    return pb.KeyValue(
        key=kv.key,
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )


def kv_from_pb(m: pb.KeyValue) -> KeyValue:
    return KeyValue(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def event_to_pb(event: Event, *, with_prev: bool = False) -> pb.WatchEvent:
    out = pb.WatchEvent(type=event.kind.value, kv=kv_to_pb(event.kv))
    if with_prev and event.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_to_pb(event.prev_kv))
    return out


def event_from_pb(m: pb.WatchEvent) -> Event:
    prev = kv_from_pb(m.prev_kv) if m.HasField("prev_kv") else None
    return Event(EventKind(m.type), kv_from_pb(m.kv), prev)


def write_to_pb(w: TxnWrite) -> pb.Write:
    if isinstance(w, Put):
        return pb.Write(put=pb.PutOp(key=w.key, value=w.value, lease=w.lease))
    if isinstance(w, Delete):
        return pb.Write(delete=pb.DeleteOp(key=w.key))
    if isinstance(w, PutSequential):
        return pb.Write(put_sequential=pb.PutSequentialOp(prefix=w.prefix, value=w.value, lease=w.lease))
    return pb.Write(delete_lease=pb.DeleteByLeaseOp(lease=w.lease))


def write_from_pb(m: pb.Write) -> TxnWrite:
    which = m.WhichOneof("op")
    if which == "put":
        return Put(m.put.key, m.put.value, m.put.lease)
    if which == "delete":
        return Delete(m.delete.key)
    if which == "put_sequential":
        return PutSequential(m.put_sequential.prefix, m.put_sequential.value, m.put_sequential.lease)
    if which == "delete_lease":
        return DeleteByLease(m.delete_lease.lease)
    raise InvalidArgument("a write must be a put, a delete or a sequential put; this one is empty")


def stored_write_from_pb(m: pb.Write) -> Write:
    """A write of committed history (catch-up): only puts and deletes exist there."""
    w = write_from_pb(m)
    if not isinstance(w, (Put, Delete)):
        raise InvalidArgument(f"committed history holds puts and deletes, not {type(w).__name__}")
    return w


def compare_to_pb(c: Compare) -> pb.Compare:
    if c.target is CompareTarget.VALUE:
        assert isinstance(c.operand, bytes)
        return pb.Compare(key=c.key, target=c.target.value, op=c.op.value, value=c.operand)
    assert isinstance(c.operand, int)
    return pb.Compare(key=c.key, target=c.target.value, op=c.op.value, number=c.operand)


def compare_from_pb(m: pb.Compare) -> Compare:
    operand: bytes | int = m.value if m.WhichOneof("operand") == "value" else m.number
    if m.target == CompareTarget.VALUE.value and m.WhichOneof("operand") != "value":
        operand = b""
    return Compare(m.key, m.target, m.op, operand)  # type: ignore[arg-type]  # validated by Compare


def txn_to_pb(t: TxnSpec) -> pb.Txn:
    return pb.Txn(
        compares=[compare_to_pb(c) for c in t.compares],
        on_success=[write_to_pb(w) for w in t.on_success],
        on_failure=[write_to_pb(w) for w in t.on_failure],
    )


def txn_from_pb(m: pb.Txn) -> TxnSpec:
    return TxnSpec(
        tuple(compare_from_pb(c) for c in m.compares),
        tuple(write_from_pb(w) for w in m.on_success),
        tuple(write_from_pb(w) for w in m.on_failure),
    )


# -- errors -----------------------------------------------------------------------------------


def error_to_pb(err: CorralError | ErrorInfo) -> pb.Error:
    info = err if isinstance(err, ErrorInfo) else ErrorInfo.of(err)
    return pb.Error(code=info.code, message=info.message, details_json=json.dumps(dict(info.details), default=str))


def error_from_pb(m: pb.Error) -> ErrorInfo:
    details: dict[str, Any] = {}
    if m.details_json:
        try:
            loaded = json.loads(m.details_json)
            if isinstance(loaded, dict):
                details = loaded
        except ValueError:
            details = {"raw": m.details_json}
    return ErrorInfo(m.code, m.message, details)


def raise_if_error(m: pb.Error) -> None:
    """Raise the typed error a response carries, if any."""
    if m.code:
        raise error_from_pb(m).to_error()


# -- peer messages -----------------------------------------------------------------------------


def revisions_to_pb(revisions: tuple[tuple[int, tuple[Write, ...]], ...]) -> list[pb.RevisionWrites]:
    return [pb.RevisionWrites(revision=r, writes=[write_to_pb(w) for w in ws]) for r, ws in revisions]


def message_to_pb(msg: Message) -> pb.PeerMessage:
    """One core message as its protobuf form (every kind of `Message` has a field in PeerMessage)."""
    if isinstance(msg, Prepare):
        return pb.PeerMessage(
            prepare=pb.Prepare(txid=msg.txid, txn=txn_to_pb(msg.txn), participants=list(msg.participants))
        )
    if isinstance(msg, Commit):
        return pb.PeerMessage(commit=pb.Commit(txid=msg.txid, revision=msg.revision))
    if isinstance(msg, Abort):
        return pb.PeerMessage(abort=pb.Abort(txid=msg.txid))
    if isinstance(msg, Vote):
        vote = pb.Vote(txid=msg.txid, yes=msg.yes, succeeded=msg.succeeded, digest=msg.digest)
        if msg.reason is not None:
            vote.reason.CopyFrom(error_to_pb(msg.reason))
        return pb.PeerMessage(vote=vote)
    if isinstance(msg, Ack):
        return pb.PeerMessage(ack=pb.Ack(txid=msg.txid, revision=msg.revision))
    if isinstance(msg, ResolveRequest):
        return pb.PeerMessage(resolve_request=pb.ResolveRequest(txids=list(msg.txids)))
    if isinstance(msg, ResolveReply):
        outcomes = [pb.Outcome(txid=o.txid, kind=int(o.kind), revision=o.revision) for o in msg.outcomes]  # type: ignore[arg-type]
        return pb.PeerMessage(resolve_reply=pb.ResolveReply(outcomes=outcomes))
    if isinstance(msg, LeaseRequest):
        return pb.PeerMessage(
            lease_request=pb.LeaseRequest(request_ms=msg.request_ms, applied_revision=msg.applied_revision)
        )
    if isinstance(msg, LeaseGrant):
        grant = pb.LeaseGrant(
            view=msg.view, members=list(msg.members), lease_ms=msg.lease_ms, request_ms=msg.request_ms
        )
        return pb.PeerMessage(lease_grant=grant)
    if isinstance(msg, NotMember):
        return pb.PeerMessage(not_member=pb.NotMember(view=msg.view, members=list(msg.members)))
    if isinstance(msg, Join):
        return pb.PeerMessage(join=pb.Join(applied_revision=msg.applied_revision))
    if isinstance(msg, JoinReady):
        return pb.PeerMessage(join_ready=pb.JoinReady(revision=msg.revision, txid_high=msg.txid_high))
    if isinstance(msg, CaughtUp):
        return pb.PeerMessage(caught_up=pb.CaughtUp(applied_revision=msg.applied_revision))
    if isinstance(msg, FetchRequest):
        return pb.PeerMessage(fetch_request=pb.FetchRequest(from_revision=msg.from_revision))
    if isinstance(msg, SnapshotRequest):
        return pb.PeerMessage(snapshot_request=pb.SnapshotRequest(revision=msg.revision, after_key=msg.after_key))
    if isinstance(msg, SnapshotPage):
        page = pb.SnapshotPage(
            revision=msg.revision, after_key=msg.after_key, kvs=[kv_to_pb(kv) for kv in msg.kvs], more=msg.more
        )
        if msg.error is not None:
            page.error.CopyFrom(error_to_pb(msg.error))
        return pb.PeerMessage(snapshot_page=page)
    reply = pb.FetchReply(
        revisions=revisions_to_pb(msg.revisions), through_revision=msg.through_revision, complete=msg.complete
    )
    if msg.error is not None:
        reply.error.CopyFrom(error_to_pb(msg.error))
    return pb.PeerMessage(fetch_reply=reply)


def message_from_pb(m: pb.PeerMessage) -> Message:
    which = m.WhichOneof("msg")
    if which == "prepare":
        return Prepare(m.prepare.txid, txn_from_pb(m.prepare.txn), tuple(m.prepare.participants))
    if which == "commit":
        return Commit(m.commit.txid, m.commit.revision)
    if which == "abort":
        return Abort(m.abort.txid)
    if which == "vote":
        reason = error_from_pb(m.vote.reason) if m.vote.HasField("reason") else None
        return Vote(m.vote.txid, m.vote.yes, m.vote.succeeded, reason, m.vote.digest)
    if which == "ack":
        return Ack(m.ack.txid, m.ack.revision)
    if which == "resolve_request":
        return ResolveRequest(tuple(m.resolve_request.txids))
    if which == "resolve_reply":
        return ResolveReply(tuple(Outcome(o.txid, OutcomeKind(o.kind), o.revision) for o in m.resolve_reply.outcomes))
    if which == "lease_request":
        return LeaseRequest(m.lease_request.request_ms, m.lease_request.applied_revision)
    if which == "lease_grant":
        g = m.lease_grant
        return LeaseGrant(g.view, tuple(g.members), g.lease_ms, g.request_ms)
    if which == "not_member":
        return NotMember(m.not_member.view, tuple(m.not_member.members))
    if which == "join":
        return Join(m.join.applied_revision)
    if which == "join_ready":
        return JoinReady(m.join_ready.revision, m.join_ready.txid_high)
    if which == "caught_up":
        return CaughtUp(m.caught_up.applied_revision)
    if which == "fetch_request":
        return FetchRequest(m.fetch_request.from_revision)
    if which == "fetch_reply":
        f = m.fetch_reply
        revisions = tuple((r.revision, tuple(stored_write_from_pb(w) for w in r.writes)) for r in f.revisions)
        error = error_from_pb(f.error) if f.HasField("error") else None
        return FetchReply(revisions, f.through_revision, f.complete, error)
    if which == "snapshot_request":
        return SnapshotRequest(m.snapshot_request.revision, m.snapshot_request.after_key)
    if which == "snapshot_page":
        sp = m.snapshot_page
        error = error_from_pb(sp.error) if sp.HasField("error") else None
        return SnapshotPage(sp.revision, sp.after_key, tuple(kv_from_pb(kv) for kv in sp.kvs), sp.more, error)
    raise InvalidArgument("empty peer message")


def batch_to_pb(src: str, msgs: Iterable[Message]) -> pb.Batch:
    return pb.Batch(src=src, messages=[message_to_pb(m) for m in msgs])


def batch_from_pb(m: pb.Batch) -> list[Message]:
    return [message_from_pb(x) for x in m.messages]
