"""Converters between protobuf messages and Corral's model/core dataclasses.

Encoders fill messages in place (`..._into(out, x)`): with the upb runtime, a message built from
keyword arguments copies each submessage passed in, and a PREPARE built that way cost 8.8 µs against
3.0 µs filled in place (measured here). Decoders read each submessage once: every attribute access
of a submessage builds a new wrapper.

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


def kv_into(out: pb.KeyValue, kv: KeyValue) -> None:
    out.key = kv.key
    out.value = kv.value
    out.create_revision = kv.create_revision
    out.mod_revision = kv.mod_revision
    out.version = kv.version
    if kv.lease:
        out.lease = kv.lease


def kv_to_pb(kv: KeyValue) -> pb.KeyValue:
    out = pb.KeyValue()
    kv_into(out, kv)
    return out


def kv_from_pb(m: pb.KeyValue) -> KeyValue:
    return KeyValue(m.key, m.value, m.create_revision, m.mod_revision, m.version, m.lease)


def event_to_pb(event: Event, *, with_prev: bool = False) -> pb.WatchEvent:
    out = pb.WatchEvent(type=event.kind.value)
    kv_into(out.kv, event.kv)
    if with_prev and event.prev_kv is not None:
        kv_into(out.prev_kv, event.prev_kv)
    return out


def event_from_pb(m: pb.WatchEvent) -> Event:
    prev = kv_from_pb(m.prev_kv) if m.HasField("prev_kv") else None
    return Event(EventKind(m.type), kv_from_pb(m.kv), prev)


def _value_into(out: pb.PutOp | pb.PutSequentialOp, w: Put | PutSequential) -> None:
    out.value = w.value
    if w.lease:
        out.lease = w.lease


def write_into(out: pb.Write, w: TxnWrite) -> None:
    if isinstance(w, Put):
        out.put.key = w.key
        _value_into(out.put, w)
    elif isinstance(w, Delete):
        out.delete.key = w.key
    elif isinstance(w, PutSequential):
        out.put_sequential.prefix = w.prefix
        _value_into(out.put_sequential, w)
    else:
        out.delete_lease.lease = w.lease


def write_to_pb(w: TxnWrite) -> pb.Write:
    out = pb.Write()
    write_into(out, w)
    return out


def write_from_pb(m: pb.Write) -> TxnWrite:
    which = m.WhichOneof("op")
    if which == "put":
        put = m.put  # each access of a submessage builds a new wrapper: once
        return Put(put.key, put.value, put.lease)
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


def compare_into(out: pb.Compare, c: Compare) -> None:
    out.key = c.key
    out.target = c.target.value
    out.op = c.op.value
    if c.target is CompareTarget.VALUE:
        assert isinstance(c.operand, bytes)
        out.value = c.operand
    else:
        assert isinstance(c.operand, int)
        out.number = c.operand


def compare_to_pb(c: Compare) -> pb.Compare:
    out = pb.Compare()
    compare_into(out, c)
    return out


def compare_from_pb(m: pb.Compare) -> Compare:
    operand: bytes | int = m.value if m.WhichOneof("operand") == "value" else m.number
    if m.target == CompareTarget.VALUE.value and m.WhichOneof("operand") != "value":
        operand = b""
    return Compare(m.key, m.target, m.op, operand)  # type: ignore[arg-type]  # validated by Compare


def txn_into(out: pb.Txn, t: TxnSpec) -> None:
    for c in t.compares:
        compare_into(out.compares.add(), c)
    for w in t.on_success:
        write_into(out.on_success.add(), w)
    for w in t.on_failure:
        write_into(out.on_failure.add(), w)


def txn_to_pb(t: TxnSpec) -> pb.Txn:
    out = pb.Txn()
    txn_into(out, t)
    return out


def txn_from_pb(m: pb.Txn) -> TxnSpec:
    # Iterating an empty repeated field costs more than testing it (most transactions leave two empty).
    compares, on_success, on_failure = m.compares, m.on_success, m.on_failure
    return TxnSpec(
        tuple(map(compare_from_pb, compares)) if compares else (),
        tuple(map(write_from_pb, on_success)) if on_success else (),
        tuple(map(write_from_pb, on_failure)) if on_failure else (),
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


def message_to_pb(msg: Message) -> pb.PeerMessage:
    """One core message as its protobuf form (every kind of `Message` has a field in PeerMessage)."""
    out = pb.PeerMessage()
    if isinstance(msg, Prepare):
        prepare = out.prepare
        prepare.txid = msg.txid
        txn_into(prepare.txn, msg.txn)
        prepare.participants.extend(msg.participants)
        return out
    if isinstance(msg, Commit):
        commit = out.commit
        commit.txid = msg.txid
        commit.revision = msg.revision
        return out
    if isinstance(msg, Abort):
        out.abort.txid = msg.txid
        return out
    if isinstance(msg, Vote):
        vote = out.vote
        vote.txid = msg.txid
        vote.yes = msg.yes
        vote.succeeded = msg.succeeded
        vote.digest = msg.digest
        if msg.reason is not None:
            vote.reason.CopyFrom(error_to_pb(msg.reason))
        return out
    if isinstance(msg, Ack):
        ack = out.ack
        ack.txid = msg.txid
        ack.revision = msg.revision
        return out
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
        page = out.snapshot_page
        page.revision = msg.revision
        page.after_key = msg.after_key
        for kv in msg.kvs:
            kv_into(page.kvs.add(), kv)
        page.more = msg.more
        if msg.error is not None:
            page.error.CopyFrom(error_to_pb(msg.error))
        return out
    reply = out.fetch_reply
    for revision, writes in msg.revisions:
        at = reply.revisions.add()
        at.revision = revision
        for w in writes:
            write_into(at.writes.add(), w)
    reply.through_revision = msg.through_revision
    reply.complete = msg.complete
    if msg.error is not None:
        reply.error.CopyFrom(error_to_pb(msg.error))
    return out


def message_from_pb(m: pb.PeerMessage) -> Message:
    which = m.WhichOneof("msg")
    if which == "prepare":
        p = m.prepare  # each access of a submessage builds a new wrapper: once
        return Prepare(p.txid, txn_from_pb(p.txn), tuple(p.participants))
    if which == "commit":
        c = m.commit
        return Commit(c.txid, c.revision)
    if which == "abort":
        return Abort(m.abort.txid)
    if which == "vote":
        v = m.vote
        reason = error_from_pb(v.reason) if v.HasField("reason") else None
        return Vote(v.txid, v.yes, v.succeeded, reason, v.digest)
    if which == "ack":
        a = m.ack
        return Ack(a.txid, a.revision)
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
    return list(map(message_from_pb, m.messages))
