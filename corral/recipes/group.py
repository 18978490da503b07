"""GroupMembership: members join with an ephemeral key that carries a value; anyone can list them
and watch them join and leave.

Keys:
    /corral/groups/<group>/<member>     value = what the member publishes (an address, a load figure),
                                        lease = the member's session

Guarantees:
- A member is listed exactly while its key exists: from `join()` until `leave()`, or until its session
  ends (the process died or was cut off for longer than the TTL), when the coordinator deletes the key;
  watchers then see it leave, within the TTL of its death.
- A member id belongs to one session at a time: joining with an id another live session holds fails
  (FailedPrecondition) instead of silently taking it over.
- `watch()` reports every join, update and leave after its start revision, in order, once each (the
  watch's own guarantee). A member that loses its session is told (`lost`, `on_lost`, `check()`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.client.sync import Client
from corral.errors import FailedPrecondition
from corral.model import Compare, CompareOp, CompareTarget, EventKind, Put
from corral.recipes._base import (
    DEFAULT_TTL_S,
    ROOT,
    as_bytes,
    check_async_client,
    check_name,
    closing,
    events_under,
    retry_conflicts,
)
from corral.recipes._blocking import iterate, run
from corral.recipes._holding import LossGuard, SessionSlot

GROUPS = f"{ROOT}/groups"


@dataclass(frozen=True, slots=True)
class Member:
    """A member as listed: its id, its value, and the revision it joined at."""

    id: str
    value: bytes
    joined_revision: int


class Change(StrEnum):
    JOINED = "joined"
    UPDATED = "updated"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """One change to the group: who, what happened, its value after it (empty when it left), when."""

    change: Change
    member: str
    value: bytes
    revision: int


class GroupMembership:
    """Join, leave, list and watch a group (see the module docstring). One object is one member; it
    opens its own session on `join()` (lease `ttl`) unless `session=` is given."""

    def __init__(
        self, client: AsyncClient, group: str, *, session: Session | None = None, ttl: float = DEFAULT_TTL_S
    ) -> None:
        self._client = check_async_client(client, "BlockingGroupMembership")
        self.group = check_name(group, "group")
        self._base = f"{GROUPS}/{group}/"
        self._slot = SessionSlot(client, session, ttl)
        self._guard = LossGuard(f"membership of group {group!r}")
        self.lost = self._guard.lost
        self.member: str | None = None

    @property
    def session(self) -> Session | None:
        """The session our membership is attached to (None before joining with an own session)."""
        return self._slot.current

    async def join(self, member: str, value: bytes | str = b"") -> int:
        """Join as `member`, publishing `value`; return the revision.

        Raises:
            FailedPrecondition: another live session is a member with this id; or this object has
                joined under another id.
            LeaseExpired: the shared session is lost.
        """
        check_name(member, "member")
        if self.member is not None and self.member != member:
            raise FailedPrecondition(f"group {self.group!r}: this object is member {self.member!r}; leave first")
        session = await self._slot.get()
        key = self._base + member
        new = [Compare(key, CompareTarget.VERSION, CompareOp.EQUAL, 0)]
        ours = [Compare(key, CompareTarget.LEASE, CompareOp.EQUAL, session.lease_id)]
        put = [Put(key, as_bytes(value), session.lease_id)]
        what = f"joining group {self.group!r}"
        result = await retry_conflicts(self._client, lambda: self._client.txn(new, put), what=what)
        if not result.succeeded:
            result = await retry_conflicts(self._client, lambda: self._client.txn(ours, put), what=what)
            if not result.succeeded:
                if self.member is None:
                    await self._slot.done()
                raise FailedPrecondition(
                    f"group {self.group!r} already has a member {member!r} (another session); choose another id"
                )
        self.member = member
        self._guard.start(session)
        return result.revision

    async def leave(self) -> None:
        """Leave the group (a no-op if not a member)."""
        member, self.member = self.member, None
        self._guard.stop()
        if member is None or await self._slot.done():
            return  # revoking our own session deleted the key
        session = self._slot.current
        if session is not None and session.alive:
            key = self._base + member
            await retry_conflicts(self._client, lambda: self._client.delete(key), what=f"leaving {key}")

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback()` (on the event loop) if the session is lost while a member."""
        self._guard.on_lost(callback)

    def check(self) -> None:
        """Raises LeaseExpired if membership was lost with the session."""
        self._guard.check()

    async def members(self) -> dict[str, Member]:
        """The members now, by id."""
        out = {}
        for kv in await self._client.range(self._base):
            member = kv.key[len(self._base) :]
            out[member] = Member(member, kv.value, kv.create_revision)
        return out

    async def watch(
        self, start_revision: int = 0, timeout: float | None = None
    ) -> AsyncGenerator[MembershipEvent, None]:
        """Every join, update and leave from `start_revision` (0: from now) on, in order.

        Raises:
            WaitTimeout: `timeout` seconds passed without a change (None: no limit; the stream ends
                when the caller stops iterating).
            Compacted: `start_revision` is older than the history kept.
        """
        what = f"a change in group {self.group!r}"
        async with closing(events_under(self._client, self._base, start_revision, timeout, what)) as events:
            async for event in events:
                member = event.kv.key[len(self._base) :]
                if event.kind is EventKind.DELETE:
                    yield MembershipEvent(Change.LEFT, member, b"", event.kv.mod_revision)
                else:
                    change = Change.JOINED if event.kv.version == 1 else Change.UPDATED
                    yield MembershipEvent(change, member, event.kv.value, event.kv.mod_revision)


class BlockingGroupMembership:
    """`GroupMembership` for the blocking `Client`."""

    def __init__(self, client: Client, group: str, *, session: Session | None = None, ttl: float = DEFAULT_TTL_S):
        self._client = client
        self._impl = GroupMembership(client.aio, group, session=session, ttl=ttl)

    @property
    def is_lost(self) -> bool:
        return self._impl.lost.is_set()

    def join(self, member: str, value: bytes | str = b"") -> int:
        """See GroupMembership.join."""
        return run(self._client, self._impl.join(member, value))

    def leave(self) -> None:
        run(self._client, self._impl.leave())

    def on_lost(self, callback: Callable[[], object]) -> None:
        """`callback` runs on the client's loop thread: keep it short and thread-safe."""
        self._impl.on_lost(callback)

    def check(self) -> None:
        self._impl.check()

    def members(self) -> dict[str, Member]:
        return run(self._client, self._impl.members())

    def watch(self, start_revision: int = 0, timeout: float | None = None) -> Iterator[MembershipEvent]:
        """See GroupMembership.watch; leave the loop to stop watching."""
        return iterate(self._client, self._impl.watch(start_revision, timeout))
