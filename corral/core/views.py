"""The coordinator's view: which replicas vote on new transactions and may hold read leases.

    member ──no lease request for lease_ms (+ drift margin) since the last grant──▶ dropped
           (only while more than `min_replicas` members remain; never below)
    outside ──Join──▶ JOINING (one replica at a time) ──JoinReady, the joiner catches up,
           CaughtUp──▶ member (ViewRecord forced)

Rules:
- A member's read lease counts, on the replica, from when it asked; here, from when the grant was
  sent, plus a drift margin. So a replica cut off from the coordinator stops serving linearizable
  reads before it is dropped from the view and writes go on without it.
- The view never shrinks below `min_replicas`: writes stop instead (they cannot get the vote).
- Members are kept in configuration order; every change is a new, higher view number, logged
  (ViewRecord) before anyone acts on it.

What the coordinator decides with its transactions' state (when a join may proceed, what a dropped
member no longer holds up) stays in twopc_coordinator.py. This module does no I/O and reads no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.core.messages import LeaseGrant, LeaseRequest, Message, NodeName, NotMember
from corral.limits import LEASE_DRIFT_FRACTION, LEASE_DRIFT_MS, Timeouts
from corral.records import ViewRecord


@dataclass(slots=True)
class Joining:
    replica: NodeName
    deadline_ms: int
    ready_sent: bool = False


class ViewKeeper:
    """See the module docstring."""

    def __init__(
        self,
        replicas: tuple[NodeName, ...],
        view: int,
        members: tuple[NodeName, ...],
        *,
        timeouts: Timeouts,
        min_replicas: int,
    ) -> None:
        self.replicas = replicas
        self.timeouts = timeouts
        self.min_replicas = max(1, min(min_replicas, len(replicas)))
        # A brand-new cluster's view is every configured replica.
        self.view = view
        self.members: tuple[NodeName, ...] = members if view else replicas
        self.granted_ms: dict[NodeName, int] = {}
        self.joining: Joining | None = None

    def start(self, now_ms: int) -> list[ViewRecord]:
        """Members may hold leases granted by the previous incarnation: treat each as granted now.
        A brand-new cluster logs its first view."""
        self.granted_ms = dict.fromkeys(self.members, now_ms)
        if self.view:
            return []
        self.view = 1
        return [ViewRecord(self.view, self.members)]

    def expiry_ms(self, granted_ms: int) -> int:
        lease = self.timeouts.read_lease_ms
        return granted_ms + lease + int(lease * LEASE_DRIFT_FRACTION) + LEASE_DRIFT_MS

    def on_lease_request(self, src: NodeName, req: LeaseRequest, now_ms: int) -> Message | None:
        """A member gets its lease renewed; a replica outside the view is told to catch up."""
        if src in self.members:
            self.granted_ms[src] = now_ms
            return LeaseGrant(self.view, self.members, self.timeouts.read_lease_ms, req.request_ms)
        if src in self.replicas:
            return NotMember(self.view, self.members)
        return None

    def drop_expired(self, now_ms: int) -> list[tuple[NodeName, int, ViewRecord]]:
        """Drop every member whose lease has surely expired (never below min_replicas); return
        (member, ms since its last grant, the new view) for each."""
        dropped = []
        for member in list(self.members):
            granted = self.granted_ms.get(member, now_ms)
            if now_ms < self.expiry_ms(granted) or len(self.members) <= self.min_replicas:
                continue
            dropped.append((member, now_ms - granted, self._set(tuple(m for m in self.members if m != member))))
        return dropped

    def admit(self, replica: NodeName, now_ms: int) -> ViewRecord:
        """The caught-up joiner enters the view."""
        record = self._set((*self.members, replica))
        self.granted_ms[replica] = now_ms
        return record

    def membership_notice(self, replica: NodeName, now_ms: int) -> LeaseGrant:
        """Tells a (re)joined member it is one, with no read lease of its own (request 0): it holds
        none until it asks."""
        self.granted_ms[replica] = now_ms
        return LeaseGrant(self.view, self.members, self.timeouts.read_lease_ms, 0)

    def next_wake(self) -> list[int]:
        times: list[int] = []
        if len(self.members) > self.min_replicas:
            times.extend(self.expiry_ms(self.granted_ms.get(m, 0)) for m in self.members)
        if self.joining is not None:
            times.append(self.joining.deadline_ms)
        return times

    def check_invariants(self) -> None:
        assert len(self.members) >= self.min_replicas or self.view == 0
        assert set(self.members) <= set(self.replicas)
        if self.joining is not None:
            assert self.joining.replica not in self.members

    def _set(self, members: tuple[NodeName, ...]) -> ViewRecord:
        self.view += 1
        self.members = tuple(r for r in self.replicas if r in members)  # configuration order
        return ViewRecord(self.view, self.members)
