"""A replica outside the view finding its way back in: which request it sends next, and when.

    OUTSIDE ──fetch from a member until level with it (snapshot pages instead, once every member
           has compacted the history it misses)──▶
    level, nothing held in doubt ──Join──▶ (the coordinator holds new writes) ──JoinReady(revision)──▶
    fetch up to that revision ──CaughtUp──▶ (the coordinator admits it) ──LeaseGrant──▶ MEMBER

Which step is next, and when its request last went out, is worked out in one place (`_next`):
`progress` sends the request once it is due, and `wake_ms` says when that will be. So the only timer
a replica has here is its next step's, and the timer always moves when the step is taken. Two bugs
came from keeping them apart: a timer left from a step no longer next, once past, had the shell tick
in a loop at one instant (seeds 303 and 7012185).

What catching up applies (fetched revisions, snapshot pages) and what a rejoin must settle first (the
transactions held in doubt) belong to the participant, twopc_participant.py. No I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from corral.core.messages import (
    CaughtUp,
    EffectsBuilder,
    Envelope,
    FetchRequest,
    Join,
    Message,
    NodeName,
    SnapshotRequest,
)
from corral.frozen import frozen
from corral.limits import Timeouts


class Step(enum.Enum):
    SNAPSHOT = "snapshot"  # ask the member for the next page of its state
    FETCH = "fetch"  # ask a member for the revisions after the ones applied here
    SETTLE = "settle"  # wait for what is held in doubt to resolve (and be discarded); no request
    CAUGHT_UP = "caught up"  # tell the coordinator the revision it holds writes at is applied here
    JOIN = "join"  # ask the coordinator to join


@dataclass(slots=True)
class Snapshot:
    """A member's whole state, page by page: the member, the state's revision (0: not known yet),
    the last key received, when the last page was asked for."""

    peer: NodeName
    revision: int = 0
    after_key: str = ""
    sent_ms: int | None = None


@frozen
class Standing:
    """What the next step depends on, from the participant: the members to ask, the revision applied
    here, whether a commit decided above it waits for order, whether anything is still in doubt."""

    members: tuple[NodeName, ...]
    applied: int
    decided: bool
    prepared: bool


class Rejoin:
    """See the module docstring."""

    def __init__(self, coordinator: NodeName, timeouts: Timeouts) -> None:
        self.coordinator = coordinator
        self.timeouts = timeouts
        self.join_target: int | None = None  # the revision the coordinator holds writes at (None: not asked yet)
        self.level_with_peer = False  # the last fetch answer said nothing more was committed there
        self.fetch_from = 0  # the first revision the last fetch asked for
        self.fetch_sent_ms: int | None = None
        self.join_sent_ms: int | None = None  # the last Join or CaughtUp
        self.snapshot: Snapshot | None = None
        # Where members said their history starts (a fetch answered Compacted): a fetch from below that
        # asks another member. It only moves up (compactions, snapshots installed), so it stays true.
        self.history_from: dict[NodeName, int] = {}

    def joined(self) -> None:
        """A member again (or still): nothing more to do here."""
        self.snapshot = None
        self.join_target = None
        self.join_sent_ms = None

    def left(self) -> None:
        """Just found outside the view: start by fetching."""
        self.level_with_peer = False
        self.fetch_sent_ms = None

    def join_ready(self, revision: int) -> None:
        """The coordinator holds writes at `revision`: fetch up to it (at once), then report."""
        self.join_target = revision
        self.fetch_sent_ms = None

    def answers_last_fetch(self, applied: int) -> bool:
        """A fetch was answered: whether the answer is to the last request (an older one's answer,
        error included, is ignored: seed 7012185). Either way the next fetch may go out at once."""
        self.fetch_sent_ms = None
        return self.fetch_from == applied + 1

    def fetch_compacted(self, src: NodeName, history_from: int, members: Sequence[NodeName]) -> bool:
        """`src` keeps history only from `history_from` on, past what the last fetch asked for: whether
        every member is known to, so only a snapshot will do. Until then fetches ask the others: one
        that installed a snapshot serves history only after it, while another may still hold all of it,
        and a whole state costs far more than the revisions missed (seed 7139933 chained three)."""
        self.history_from[src] = max(self.history_from.get(src, 0), history_from, self.fetch_from + 1)
        return not self._may_serve(members)

    def _may_serve(self, members: Sequence[NodeName]) -> list[NodeName]:
        """The members not known to have compacted the history the next fetch asks for."""
        return [m for m in members if self.history_from.get(m, 0) <= self.fetch_from]

    def restart_snapshot(self, failed: NodeName, members: Sequence[NodeName], now_ms: int) -> None:
        """A new snapshot, from the start, from another member than the one that failed."""
        others = [m for m in members if m != failed] or list(members) or [failed]
        self.snapshot = Snapshot(others[now_ms % len(others)])

    def unreachable(self, dst: NodeName, msgs: Sequence[Message], members: Sequence[NodeName], now_ms: int) -> None:
        if any(isinstance(m, FetchRequest) for m in msgs):
            self.fetch_sent_ms = None  # ask another member at the next tick
        snap = self.snapshot
        if snap is not None and snap.peer == dst and any(isinstance(m, SnapshotRequest) for m in msgs):
            self.restart_snapshot(dst, members, now_ms)

    def progress(self, out: EffectsBuilder, s: Standing, now_ms: int) -> None:
        """Send the next step's request if it is due (never sent, or its interval has passed)."""
        step, sent_ms, interval_ms = self._next(s)
        if step is Step.SETTLE or (sent_ms is not None and now_ms - sent_ms < interval_ms):
            return
        if step is Step.SNAPSHOT:
            snap = self.snapshot
            assert snap is not None
            snap.sent_ms = now_ms
            out.send.append(Envelope(snap.peer, SnapshotRequest(snap.revision, snap.after_key)))
        elif step is Step.FETCH:
            self.fetch_from = s.applied + 1
            askable = self._may_serve(s.members) or s.members
            peer = askable[(s.applied + now_ms) % len(askable)]
            self.fetch_sent_ms = now_ms
            out.send.append(Envelope(peer, FetchRequest(self.fetch_from)))
        elif step is Step.CAUGHT_UP:
            out.send.append(Envelope(self.coordinator, CaughtUp(s.applied)))
            self.join_target = None
            self.join_sent_ms = now_ms
        else:
            self.join_sent_ms = now_ms
            self.level_with_peer = False  # fetch again before the next Join, should this one fail
            out.send.append(Envelope(self.coordinator, Join(s.applied)))

    def wake_ms(self, s: Standing) -> int | None:
        """When the next step's request is due again, if it has gone out (a step never taken is taken
        by the `progress` that made it next, or at the next tick)."""
        step, sent_ms, interval_ms = self._next(s)
        if step is Step.SETTLE or sent_ms is None:
            return None
        return sent_ms + interval_ms

    def _next(self, s: Standing) -> tuple[Step, int | None, int]:
        """The next step, when its request last went out (None: not yet), and its retry interval."""
        if self.snapshot is not None:
            return Step.SNAPSHOT, self.snapshot.sent_ms, self.timeouts.resolve_interval_ms
        target = self.join_target
        # A commit decided above what we applied (waiting for order) is history a member has or will have:
        # whatever a peer's last answer said, we are not level until we have it (seed 6664).
        behind = (target is not None and s.applied < target) or s.decided
        if (target is None and not self.level_with_peer) or behind:
            return Step.FETCH, self.fetch_sent_ms, self.timeouts.resolve_interval_ms
        if s.prepared:
            return Step.SETTLE, None, 0  # transactions still in doubt from before resolve (and are discarded) first
        if target is not None:
            return Step.CAUGHT_UP, None, 0
        return Step.JOIN, self.join_sent_ms, self.timeouts.join_timeout_ms
