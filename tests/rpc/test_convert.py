"""Every peer message and client transaction survives encoding and decoding unchanged.

The encoders fill protobuf messages in place (field by field, skipping defaults), so a field left
unset or a oneof left unmarked would lose data silently; this round trip would show it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corral import model
from corral.core import messages as m
from corral.rpc import corral_pb2 as pb
from corral.rpc.convert import event_from_pb, event_to_pb, message_from_pb, txn_from_pb, txn_to_pb
from corral.services.wire import message_bytes

keys = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), min_size=1, max_size=12)
values = st.binary(max_size=40)
leases = st.integers(0, 2**62)
ids = st.integers(0, 2**63)
revisions = st.integers(0, 2**62)
names = st.text(min_size=1, max_size=8, alphabet="abcdefghij-0123456789")

puts = st.builds(model.Put, keys, values, leases)
deletes = st.builds(model.Delete, keys)
stored_writes = st.one_of(puts, deletes)
writes = st.one_of(
    puts,
    deletes,
    st.builds(model.PutSequential, keys, values, leases),
    st.builds(model.DeleteByLease, st.integers(1, 2**62)),
)
compares = st.one_of(
    st.builds(model.Compare, keys, st.just(model.CompareTarget.VALUE), st.sampled_from(model.CompareOp), values),
    st.builds(
        model.Compare,
        keys,
        st.sampled_from([t for t in model.CompareTarget if t is not model.CompareTarget.VALUE]),
        st.sampled_from(model.CompareOp),
        st.integers(0, 2**62),
    ),
)
txns = st.builds(
    m.TxnSpec,
    st.lists(compares, max_size=3).map(tuple),
    st.lists(writes, max_size=3).map(tuple),
    st.lists(writes, max_size=3).map(tuple),
)
errors = st.builds(
    m.ErrorInfo, st.sampled_from(["UNAVAILABLE", "INVALID_ARGUMENT"]), st.text(max_size=20), st.just({"key": "k"})
)
kvs = st.builds(model.KeyValue, keys, values, revisions, revisions, revisions, leases)
messages: st.SearchStrategy[m.Message] = st.one_of(
    st.builds(m.Prepare, ids, txns, st.lists(names, max_size=3).map(tuple)),
    st.builds(m.Commit, ids, revisions),
    st.builds(m.Abort, ids),
    st.builds(m.Vote, ids, st.booleans(), st.booleans(), st.none() | errors, st.text(max_size=16)),
    st.builds(m.Ack, ids, revisions),
    st.builds(m.ResolveRequest, st.lists(ids, max_size=4).map(tuple)),
    st.builds(
        m.ResolveReply,
        st.lists(st.builds(m.Outcome, ids, st.sampled_from(m.OutcomeKind), revisions), max_size=3).map(tuple),
    ),
    st.builds(m.LeaseRequest, revisions, revisions),
    st.builds(m.LeaseGrant, revisions, st.lists(names, max_size=3).map(tuple), revisions, revisions),
    st.builds(m.NotMember, revisions, st.lists(names, max_size=3).map(tuple)),
    st.builds(m.Join, revisions),
    st.builds(m.JoinReady, revisions, ids),
    st.builds(m.CaughtUp, revisions),
    st.builds(m.FetchRequest, revisions),
    st.builds(
        m.FetchReply,
        st.lists(st.tuples(revisions, st.lists(stored_writes, max_size=3).map(tuple)), max_size=3).map(tuple),
        revisions,
        st.booleans(),
        st.none() | errors,
    ),
    st.builds(m.SnapshotRequest, revisions, st.text(max_size=8)),
    st.builds(
        m.SnapshotPage,
        revisions,
        st.text(max_size=8),
        st.lists(kvs, max_size=3).map(tuple),
        st.booleans(),
        st.none() | errors,
    ),
)


@given(messages)
def test_every_peer_message_round_trips(msg: m.Message) -> None:
    assert message_from_pb(pb.PeerMessage.FromString(message_bytes(msg))) == msg


@given(txns)
def test_a_client_transaction_round_trips(txn: m.TxnSpec) -> None:
    assert txn_from_pb(pb.Txn.FromString(txn_to_pb(txn).SerializeToString())) == txn


@given(st.sampled_from(model.EventKind), kvs, st.none() | kvs, st.booleans())
def test_a_watch_event_round_trips(
    kind: model.EventKind, kv: model.KeyValue, prev: model.KeyValue | None, with_prev: bool
) -> None:
    event = model.Event(kind, kv, prev)
    decoded = event_from_pb(pb.WatchEvent.FromString(event_to_pb(event, with_prev=with_prev).SerializeToString()))
    assert decoded == model.Event(kind, kv, prev if with_prev else None)
