"""LeaderElection: candidates queue as ephemeral sequential keys; the first is the leader.

Keys:
    /corral/elections/<name>/<seq>      a candidate: value = what it proclaims (e.g. its address),
                                        lease = its session

Guarantees:
- At most one leader at a time: the leader is the candidate whose key is first; a candidate leads
  once every earlier key is gone. It waits only on its predecessor (no herd effect), exactly as a
  Lock waiter does (an election is a Lock whose holder publishes a value).
- A leader that dies is replaced within its session's TTL: its key goes with its lease, which wakes
  the next candidate. A leader whose session is lost is told (`lost`, `on_lost`, `check()`) no later
  than the coordinator deletes its key, so it can stop acting as leader before another starts.
- `campaign()` returns the term: the leader key's revision, strictly increasing across leaders, to
  be passed along as a fencing token.
- `observe()` yields the leader each time it changes (None while there is none), each from a fresh
  linearizable read, so it never reports a leader that was not, at that moment, the leader; under
  fast changes it may skip intermediate leaders, never reorder them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.client.sync import Client
from corral.errors import FailedPrecondition, LeaseExpired
from corral.model import Compare, CompareOp, CompareTarget, Event, EventKind, Put
from corral.recipes._base import (
    DEFAULT_TTL_S,
    ROOT,
    WAIT_TIMEOUT_S,
    Deadline,
    Rewatcher,
    as_bytes,
    check_async_client,
    check_name,
    read_with_floor,
    retry_conflicts,
)
from corral.recipes._blocking import iterate, run
from corral.recipes._holding import LossGuard
from corral.recipes._queued import Entry, QueuedLock, predecessor, queue_of

ELECTIONS = f"{ROOT}/elections"


@dataclass(frozen=True, slots=True)
class Leader:
    """The leader as everyone sees it: its key, its proclaimed value, and its term (fencing token)."""

    key: str
    value: bytes
    term: int

    @classmethod
    def of(cls, entry: Entry) -> Leader:
        return cls(entry.key, entry.value, entry.revision)


class LeaderElection:
    """Campaign, lead, resign, observe (see the module docstring).

    Each campaign opens its own session (lease `ttl`) unless `session=` is given, and revokes it on
    `resign()`.
    """

    def __init__(
        self, client: AsyncClient, name: str, *, session: Session | None = None, ttl: float = DEFAULT_TTL_S
    ) -> None:
        self._client = check_async_client(client, "BlockingLeaderElection")
        self._base = f"{ELECTIONS}/{check_name(name)}/"
        self._name = name
        self._session = session
        self._ttl = ttl
        self._candidate: QueuedLock | None = None
        self._guard = LossGuard(f"leadership of {name!r}")
        # Set when the session is lost while we lead (cleared by the next campaign).
        self.lost = self._guard.lost
        # Watch events received while waiting to lead, over all campaigns (see Lock.wakeups).
        self.wakeups = 0

    @property
    def is_leader(self) -> bool:
        return self._candidate is not None and self._candidate.held and not self.lost.is_set()

    @property
    def term(self) -> int | None:
        """Our term while we lead (the fencing token), else None."""
        return self._candidate.token if self.is_leader and self._candidate is not None else None

    async def campaign(self, value: bytes | str, timeout: float | None = WAIT_TIMEOUT_S) -> int:
        """Stand as a candidate with `value`, and return once leader: the term (fencing token).

        Raises:
            WaitTimeout: not leader by the deadline (the candidacy is withdrawn).
            LeaseExpired: the session was lost while waiting.
            FailedPrecondition: already campaigning or leading with this object.
        """
        if self._candidate is not None:
            raise FailedPrecondition(f"election {self._name!r}: already campaigning or leading; resign first")
        candidate = self._candidate = QueuedLock(
            self._client,
            self._base,
            "",
            ("",),
            predecessor,
            session=self._session,
            ttl=self._ttl,
            value=as_bytes(value),
            what=f"leadership of {self._name!r}",
        )
        try:
            term = await candidate.acquire(timeout)
        except BaseException:
            self._candidate = None
            raise
        finally:
            self.wakeups += candidate.wakeups
        assert candidate.session is not None
        self._guard.start(candidate.session)
        return term

    async def proclaim(self, value: bytes | str) -> None:
        """Change the value we publish as leader, keeping the term.

        Raises:
            FailedPrecondition: not the leader.
            LeaseExpired: our key is gone (the session was lost).
        """
        candidate = self._candidate
        if candidate is None or not candidate.held or candidate.key is None or candidate.session is None:
            raise FailedPrecondition(f"election {self._name!r}: proclaim needs leadership; campaign first")
        key, term, lease = candidate.key, candidate.token or 0, candidate.session.lease_id
        ours = [Compare(key, CompareTarget.CREATE_REVISION, CompareOp.EQUAL, term)]
        result = await retry_conflicts(
            self._client,
            lambda: self._client.txn(ours, [Put(key, as_bytes(value), lease)]),
            what=f"proclaiming in {self._name!r}",
        )
        if not result.succeeded:
            raise LeaseExpired(f"election {self._name!r}: our key {key} is gone; we no longer lead")

    async def resign(self) -> None:
        """Stop leading (or withdraw the candidacy): the next candidate takes over. A no-op otherwise."""
        candidate, self._candidate = self._candidate, None
        self._guard.stop()
        if candidate is not None:
            await candidate.release()

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call `callback()` (on the event loop) if the session is lost while leading."""
        self._guard.on_lost(callback)

    def check(self) -> None:
        """Raises LeaseExpired if leadership was lost with the session (call it before acting as leader)."""
        self._guard.check()

    async def candidates(self) -> list[Entry]:
        """Every candidate now, the leader first."""
        return queue_of(await self._client.range(self._base), self._base, ("",))

    async def leader(self) -> Leader | None:
        """The leader now, or None if there is no candidate."""
        queue = await self.candidates()
        return Leader.of(queue[0]) if queue else None

    async def observe(self, timeout: float | None = None) -> AsyncGenerator[Leader | None, None]:
        """Yield the leader now, then again each time it changes (a new leader, none, or a new value).

        Raises:
            WaitTimeout: `timeout` seconds passed without a change (None: wait for ever; the
                stream ends when the caller stops iterating).
        """
        last: Leader | str | None = "nothing yet"
        rewatch = Rewatcher(self._client)
        while True:
            kvs, floor = await read_with_floor(self._client, self._base)  # floor: before yielding
            queue = queue_of(kvs, self._base, ("",))
            current = Leader.of(queue[0]) if queue else None
            if current != last:
                yield current
                last = current

            def changes_leader(event: Event, current: Leader | None = current) -> bool:
                if current is None:
                    return event.kind is EventKind.PUT
                return event.kv.key == current.key  # our leader resigned, died or proclaimed

            await rewatch.wait(
                self._base,
                prefix=True,
                after=floor,
                deadline=Deadline(timeout, f"a change of leader in {self._name!r}"),
                stop=changes_leader,
            )


class BlockingLeaderElection:
    """`LeaderElection` for the blocking `Client`."""

    def __init__(self, client: Client, name: str, *, session: Session | None = None, ttl: float = DEFAULT_TTL_S):
        self._client = client
        self._impl = LeaderElection(client.aio, name, session=session, ttl=ttl)

    @property
    def is_leader(self) -> bool:
        return self._impl.is_leader

    @property
    def term(self) -> int | None:
        return self._impl.term

    @property
    def is_lost(self) -> bool:
        return self._impl.lost.is_set()

    @property
    def wakeups(self) -> int:
        return self._impl.wakeups

    def campaign(self, value: bytes | str, timeout: float | None = WAIT_TIMEOUT_S) -> int:
        """See LeaderElection.campaign."""
        return run(self._client, self._impl.campaign(value, timeout))

    def proclaim(self, value: bytes | str) -> None:
        run(self._client, self._impl.proclaim(value))

    def resign(self) -> None:
        run(self._client, self._impl.resign())

    def on_lost(self, callback: Callable[[], object]) -> None:
        """`callback` runs on the client's loop thread: keep it short and thread-safe."""
        self._impl.on_lost(callback)

    def check(self) -> None:
        self._impl.check()

    def leader(self) -> Leader | None:
        return run(self._client, self._impl.leader())

    def candidates(self) -> list[Entry]:
        return run(self._client, self._impl.candidates())

    def observe(self, timeout: float | None = None) -> Iterator[Leader | None]:
        """See LeaderElection.observe; leave the loop to stop watching."""
        return iterate(self._client, self._impl.observe(timeout))
