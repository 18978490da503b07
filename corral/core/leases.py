"""The lease table: client sessions with a TTL, kept alive by the client, ended by expiry or revoke.

A lease:
    granted (LeaseRecord forced) ──keepalive──▶ TTL restarts
        ──expired or revoked──▶ ENDING: no new key may attach to it; once no in-flight transaction
           attaches a key to it, the coordinator deletes every key holding it in one transaction
        ──that transaction commits──▶ ENDED (LeaseEndRecord with the commit), forgotten

Rules:
- Only grants and ends are logged: expiry times live in memory, so a coordinator restart gives every
  live lease a fresh TTL (a restart must not expire every session).
- A lease id is never reused: it packs the coordinator's epoch above a counter.
- Keys attach to a lease only through a transaction that the coordinator checked the lease was live
  for; a lease starts ending only after no such transaction is in flight, so no key is left behind.

This module does no I/O and reads no clock.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from corral.errors import CorralError, Internal, InvalidArgument, LeaseExpired, NotFound
from corral.frozen import frozen

LeaseId = int
_COUNTER_BITS = 32

# A lease shorter than this would expire between two keepalives on a loaded machine; longer than the
# maximum is a mistake (use a key without a lease for something permanent).
LEASE_TTL_MIN_MS = 100
LEASE_TTL_MAX_MS = 30 * 24 * 3600 * 1000


@dataclass(slots=True)
class Lease:
    id: LeaseId
    ttl_ms: int
    expires_at_ms: int
    ending: bool = False
    waiters: list[int] = field(default_factory=list)  # revoke requests answered when the keys are gone

    def remaining_ms(self, now_ms: int) -> int:
        return max(0, self.expires_at_ms - now_ms)


@frozen
class LeaseInfo:
    """A lease as clients see it: its id, granted TTL and time left (0 once ended)."""

    id: LeaseId
    ttl_ms: int
    remaining_ms: int


def check_ttl(ttl_ms: object) -> int:
    """Raises InvalidArgument unless `ttl_ms` is an int within the allowed range."""
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int):
        raise InvalidArgument(f"ttl must be an int number of milliseconds, got {ttl_ms!r}", field="ttl")
    if not LEASE_TTL_MIN_MS <= ttl_ms <= LEASE_TTL_MAX_MS:
        raise InvalidArgument(
            f"ttl is {ttl_ms} ms; use {LEASE_TTL_MIN_MS} ms to {LEASE_TTL_MAX_MS // 86_400_000} days", field="ttl"
        )
    return ttl_ms


class LeaseTable:
    """See the module docstring."""

    def __init__(self, epoch: int, granted: tuple[tuple[LeaseId, int], ...], now_ms: int) -> None:
        self._epoch = epoch
        self._counter = 0
        self._leases: dict[LeaseId, Lease] = {lid: Lease(lid, ttl, now_ms + ttl) for lid, ttl in granted}
        # (expires_at_ms, id), lazily cleaned: an entry counts only while it is the lease's expiry.
        self._expiries: list[tuple[int, LeaseId]] = [(lease.expires_at_ms, lease.id) for lease in self._leases.values()]
        heapq.heapify(self._expiries)
        self._ending: dict[LeaseId, Lease] = {}  # ending leases, so finding them scans nothing

    def __len__(self) -> int:
        return len(self._leases)

    def grant(self, ttl_ms: int, now_ms: int) -> Lease:
        self._counter += 1
        lease = Lease((self._epoch << _COUNTER_BITS) | self._counter, ttl_ms, now_ms + ttl_ms)
        self._leases[lease.id] = lease
        heapq.heappush(self._expiries, (lease.expires_at_ms, lease.id))
        return lease

    def get(self, lease_id: LeaseId) -> Lease | None:
        return self._leases.get(lease_id)

    def live(self, lease_id: LeaseId) -> bool:
        lease = self._leases.get(lease_id)
        return lease is not None and not lease.ending

    def keepalive(self, lease_id: LeaseId, now_ms: int) -> Lease | None:
        """Restart the lease's TTL; None if it is gone or ending."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.ending:
            return None
        lease.expires_at_ms = now_ms + lease.ttl_ms
        heapq.heappush(self._expiries, (lease.expires_at_ms, lease.id))
        return lease

    def expire(self, now_ms: int) -> list[Lease]:
        """Mark every lease whose TTL ran out as ending; return them."""
        out = []
        while (head := self._next()) is not None and head.expires_at_ms <= now_ms:
            heapq.heappop(self._expiries)
            self.mark_ending(head)
            out.append(head)
        return out

    def mark_ending(self, lease: Lease) -> None:
        """No key may attach to it any more; its keys are to be deleted."""
        lease.ending = True
        self._ending[lease.id] = lease

    def _next(self) -> Lease | None:
        """The live lease that expires first (dropping heap entries that no longer count)."""
        while self._expiries:
            expires, lease_id = self._expiries[0]
            lease = self._leases.get(lease_id)
            if lease is not None and not lease.ending and lease.expires_at_ms == expires:
                return lease
            heapq.heappop(self._expiries)
        return None

    def ending(self) -> list[Lease]:
        return list(self._ending.values())

    def end(self, lease_id: LeaseId) -> Lease | None:
        self._ending.pop(lease_id, None)
        return self._leases.pop(lease_id, None)

    def request(
        self, op: str, lease_id: int, ttl_ms: int, request_id: int, now_ms: int
    ) -> LeaseInfo | CorralError | None:
        """A client's lease request: grant, keepalive, ttl or revoke. The answer, or None for a revoke
        (answered once the lease's keys are deleted: `request_id` joins its waiters).

        Raises:
            Internal: an unknown operation (the shell only sends these four).
        """
        if op == "grant":
            try:
                ttl = check_ttl(ttl_ms)
            except InvalidArgument as err:
                return err
            lease = self.grant(ttl, now_ms)
            return LeaseInfo(lease.id, lease.ttl_ms, lease.ttl_ms)
        if op == "keepalive":
            kept = self.keepalive(lease_id, now_ms)
            if kept is None:
                return LeaseExpired(
                    f"lease {lease_id} has expired or was revoked; its keys are deleted", lease=lease_id
                )
            return LeaseInfo(kept.id, kept.ttl_ms, kept.ttl_ms)
        if op not in ("ttl", "revoke"):
            raise Internal(f"unknown lease operation {op!r}")
        found = self.get(lease_id)
        if found is None:
            return NotFound(f"lease {lease_id} does not exist (or has ended)", lease=lease_id)
        if op == "ttl":
            return LeaseInfo(found.id, found.ttl_ms, 0 if found.ending else found.remaining_ms(now_ms))
        self.mark_ending(found)
        found.waiters.append(request_id)
        return None

    def next_expiry_ms(self) -> int | None:
        head = self._next()
        return head.expires_at_ms if head is not None else None
