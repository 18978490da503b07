"""Rejoining (core/rejoin.py), driven through the participant by random conversations.

The property: a tick never leaves the next wake-up at or before its own instant. If it did, the shell
would tick again at once, and again (a node spinning a core): seeds 303 and 7012185 were two ways
into that, each a timer kept for a rejoin step that was no longer next. Here the network answers
any request sent so far, late, twice or with an error, the coordinator says JoinReady or grants a
lease at random, and what the replica held in doubt resolves at random.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from corral.core.messages import (
    Effects,
    ErrorInfo,
    Event,
    FetchReply,
    FetchRequest,
    JoinReady,
    LeaseGrant,
    NotMember,
    Outcome,
    OutcomeKind,
    Received,
    ResolveReply,
    SnapshotPage,
    SnapshotRequest,
    Tick,
    Unreachable,
)
from corral.core.twopc_participant import Membership, Participant
from corral.errors import Compacted, Unavailable
from corral.model import KeyValue, Put
from corral.records import ParticipantDisk, PreparedRecord, make_txid
from tests.core.test_views import T  # resolve interval 30 ms, join timeout 500 ms

MEMBERS = ("r1", "r2")
IN_DOUBT = make_txid(1, 7)

# What happens next: (kind, a number choosing which request it answers or how, ms to wait before it).
KINDS = {  # kind: weight (ticks and fetch answers most: rejoining is mostly those)
    "tick": 6,
    "fetch-level": 3,
    "fetch-ahead": 2,
    "fetch-compacted": 3,
    "fetch-unavailable": 1,
    "snapshot-page": 2,
    "snapshot-last": 2,
    "snapshot-behind": 1,
    "snapshot-error": 1,
    "unreachable": 1,
    "join-ready": 2,
    "lease-grant": 1,
    "not-member": 1,
    "resolved": 1,
}
# What happens next: (kind, a number choosing which request it answers or how, ms to wait before it).
actions = st.lists(
    st.tuples(
        st.sampled_from([kind for kind, weight in KINDS.items() for _ in range(weight)]),
        st.integers(0, 7),
        st.sampled_from([0, 1, 15, 29, 30, 31, 100, 250, 499, 500, 501]),  # around the timers' intervals
    ),
    max_size=40,
)


class _Conversation:
    def __init__(self, in_doubt: bool) -> None:
        prepared = (PreparedRecord(IN_DOUBT, (Put("k", b"v"),), True, frozenset({"k"}), ("r1", "r2", "r3")),)
        disk = ParticipantDisk(applied_revision=5, prepared=prepared if in_doubt else ())
        self.p = Participant("r3", "c", ("r1", "r2", "r3"), disk, timeouts=T)
        self.now = 0
        self.sent: list[tuple[str, object]] = []  # every request to a member so far, oldest first
        self.view = 2

    def step(self, event: Event) -> Effects:
        eff = self.p.step(event, self.now)
        self.p.check_invariants()
        self.sent.extend((e.dst, e.msg) for e in eff.send if isinstance(e.msg, (FetchRequest, SnapshotRequest)))
        return eff

    def pick(self, kind: type, choice: int) -> tuple[str, object] | None:
        """A request of `kind` sent so far: the latest one, or (choice > 3) an older one."""
        of_kind = [(dst, m) for dst, m in self.sent if isinstance(m, kind)]
        if not of_kind:
            return None
        return of_kind[-1] if choice <= 3 else of_kind[-1 - choice % len(of_kind)]


@settings(max_examples=1000, deadline=None)
@given(in_doubt=st.booleans(), script=actions)
@example(  # seed 7012185: a fetch answered level twice, then Compacted, after the Join went out
    in_doubt=False,
    script=[("tick", 0, 0), ("fetch-level", 0, 0), ("fetch-level", 0, 0), ("fetch-compacted", 0, 0), ("tick", 0, 500)],
)
def test_a_tick_never_leaves_a_wake_time_at_or_before_itself(
    in_doubt: bool, script: list[tuple[str, int, int]]
) -> None:
    c = _Conversation(in_doubt)
    c.step(Received("c", NotMember(c.view, MEMBERS)))
    assert c.p.membership is Membership.OUTSIDE
    applied = c.p.applied_revision
    for kind, choice, wait in script:
        c.now += wait
        applied = c.p.applied_revision
        if kind == "tick":
            eff = c.step(Tick())
            assert eff.wake_at_ms is None or eff.wake_at_ms > c.now, (c.now, eff.wake_at_ms)
        elif kind.startswith("fetch-"):
            asked = c.pick(FetchRequest, choice)
            if asked is None:
                continue
            src = asked[0]
            if kind == "fetch-level":
                reply = FetchReply((), applied, True)
            elif kind == "fetch-ahead":
                reply = FetchReply(
                    ((applied + 1, (Put(f"a{applied}", b"v"),)),), applied + 1 + choice % 2, choice % 2 == 0
                )
            elif kind == "fetch-compacted":
                reply = FetchReply((), 0, False, ErrorInfo.of(Compacted("compacted", compact_revision=applied + 3)))
            else:
                reply = FetchReply((), 0, False, ErrorInfo.of(Unavailable("not a member")))
            c.step(Received(src, reply))
        elif kind.startswith("snapshot-"):
            asked = c.pick(SnapshotRequest, choice)
            if asked is None:
                continue
            src, req = asked
            assert isinstance(req, SnapshotRequest)
            revision = req.revision or applied + 4
            kv = (KeyValue(f"s{choice}", b"v", revision, revision, 1),)
            if kind == "snapshot-page":
                page = SnapshotPage(revision, req.after_key, kv, True)
            elif kind == "snapshot-last":
                page = SnapshotPage(revision, req.after_key, kv, False)
            elif kind == "snapshot-behind":
                page = SnapshotPage(applied, req.after_key, (), False)
            else:
                page = SnapshotPage(revision, req.after_key, (), False, ErrorInfo.of(Unavailable("not a member")))
            c.step(Received(src, page))
        elif kind == "unreachable":
            asked = c.pick(FetchRequest if choice % 2 else SnapshotRequest, 0)
            if asked is not None:
                c.step(Unreachable(asked[0], (asked[1],)))  # type: ignore[arg-type]
        elif kind == "join-ready":
            c.step(Received("c", JoinReady(applied + choice % 3, make_txid(1, 9))))
        elif kind == "lease-grant":
            c.step(Received("c", LeaseGrant(c.view, ("r1", "r2", "r3"), T.read_lease_ms, c.now)))
        elif kind == "not-member":
            c.view += 1
            c.step(Received("c", NotMember(c.view, MEMBERS)))
        else:
            outcome = (
                Outcome(IN_DOUBT, OutcomeKind.ABORTED)
                if choice % 2
                else Outcome(IN_DOUBT, OutcomeKind.COMMITTED, applied + 1)
            )
            c.step(Received("r1", ResolveReply((outcome,))))
