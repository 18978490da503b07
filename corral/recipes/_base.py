"""What every recipe shares: names and key layout, deadlines, Conflict retries, waiting on a watch.
(Sessions and holders are in `_holding`, the blocking bridge in `_blocking`.)

Recipes use only the public client API (`AsyncClient`, `Session`, the model's writes and compares),
so everything here is what an application could write itself; it is kept in one place so that every
recipe waits, retries and gives up the same way.

Waiting without missing anything: a recipe reads some keys, decides it must wait, then watches for
the change that lets it go on. A change made between the read and the start of the watch must not be
lost, so every watch starts at a revision no later than the state the read reflected: one past the
largest `mod_revision` the read returned (a change after the read has a larger revision), or one past
a revision the recipe itself wrote before reading. The replica locks a key (and a sequential prefix)
while a transaction on it is prepared, and a read waits for such locks, so a read after a write of
revision R reflects every change to the keys read up to R. Starting a little early only replays
changes the read already reflected; the recipe re-reads after every wake-up, so that is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.client.sync import Client
from corral.errors import Compacted, Conflict, CorralError, Internal, InvalidArgument
from corral.model import SEQUENTIAL_DIGITS, Event, KeyValue

_T = TypeVar("_T")

# Every recipe key lives under this root, so `corral range /corral/` shows all coordination state
# and an application's own keys cannot collide with it.
ROOT = "/corral"

# The TTL of a session a recipe opens for itself. A dead holder blocks the others for up to this
# long; a live one must renew within it (3 renewals per TTL), so a stall of the client process
# longer than this loses the lock. 10 s is ZooKeeper's customary session timeout.
DEFAULT_TTL_S = 10.0

# A wait gives up after this long unless told otherwise: far longer than any healthy hand-off (a
# dead holder's lease ends within its TTL), short enough that a stuck program reports instead of
# hanging silently. Pass `timeout=None` to wait without a deadline.
WAIT_TIMEOUT_S = 60.0

# Retrying a write that lost a first-wins race (Conflict) or a compare: full jitter from a small base
# (the competing transaction is usually decided within a few milliseconds) up to a cap that keeps a
# retry loop from sleeping through a quiet moment. The loop itself ends at the client's deadline.
RETRY_BACKOFF_BASE_S = 0.002
RETRY_BACKOFF_CAP_S = 0.1

# A name becomes one path segment of a key: no "/" (so one recipe's keys cannot fall under
# another's prefix), and short enough to leave room for the recipe's own suffixes.
NAME_CHARS_MAX = 256

_SEQUENTIAL_SUFFIX = re.compile(rf"[0-9]{{{SEQUENTIAL_DIGITS}}}")
_rng = random.Random()


class WaitTimeout(CorralError, TimeoutError):
    """A recipe's wait ended at its deadline without the condition it waited for (a lock still held,
    a barrier not reached, no queue item). Nothing was changed on the way out; waiting again is safe.
    It is also a `TimeoutError`, so code that catches timeouts generally catches it."""

    code: ClassVar[str] = "wait_timeout"
    retryable: ClassVar[bool] = True
    http_status: ClassVar[int] = 408

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_timeout, (self.message, self.details))


def _rebuild_timeout(message: str, details: dict[str, Any]) -> WaitTimeout:
    return WaitTimeout(message, **details)


def check_name(name: object, what: str = "name") -> str:
    """Return `name` if it can be one path segment of a recipe key.

    Raises:
        InvalidArgument: not a non-empty str, over NAME_CHARS_MAX characters, or containing "/" or NUL.
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} must be a non-empty str, got {name!r}", field=what)
    if "/" in name or "\x00" in name:
        raise InvalidArgument(f"{what} {name!r} contains '/' or NUL; a {what} is one path segment", field=what)
    if len(name) > NAME_CHARS_MAX:
        raise InvalidArgument(f"{what} is {len(name)} characters; the limit is {NAME_CHARS_MAX}", field=what)
    return name


def check_async_client(client: object, twin: str) -> AsyncClient:
    """Raises InvalidArgument (naming the blocking twin) unless `client` is an AsyncClient."""
    if not isinstance(client, AsyncClient):
        hint = f"; with a blocking Client use {twin}" if isinstance(client, Client) else ""
        raise InvalidArgument(f"client must be an AsyncClient, got {type(client).__name__}{hint}", field="client")
    return client


def as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def sequence_of(key: str, prefix: str) -> int | None:
    """The commit revision a sequential key under `prefix` is named by, or None if `key` is not one."""
    suffix = key[len(prefix) :]
    if not key.startswith(prefix) or not _SEQUENTIAL_SUFFIX.fullmatch(suffix):
        return None
    return int(suffix)


def floor_of(kvs: list[KeyValue], *known: int) -> int:
    """The highest revision a read of `kvs` certainly reflects (see the module docstring)."""
    return max([kv.mod_revision for kv in kvs] + list(known) + [0])


# -- deadlines ---------------------------------------------------------------------------------------


class Deadline:
    """A point in (monotonic) time after which a wait gives up; None means no deadline."""

    def __init__(self, timeout: float | None, what: str) -> None:
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise InvalidArgument(f"timeout must be None or seconds >= 0, got {timeout!r}", field="timeout")
        self.timeout = timeout
        self.what = what
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def error(self) -> WaitTimeout:
        return WaitTimeout(f"waited {self.timeout} s for {self.what}; giving up", waited_s=self.timeout)

    def check(self) -> None:
        """Raises WaitTimeout if the deadline has passed."""
        if self.expired():
            raise self.error()


def backoff(attempt: int) -> float:
    return _rng.uniform(0, min(RETRY_BACKOFF_CAP_S, RETRY_BACKOFF_BASE_S * 2**attempt))


async def retry_conflicts(client: AsyncClient, write: Callable[[], Awaitable[_T]], *, what: str) -> _T:
    """Run `write` until it does not lose a first-wins race (Conflict), within the client's deadline.

    A Conflict means another transaction on the same key was in flight and nothing was applied, so
    running the same write again is safe. The bound is the client's request timeout.

    Raises:
        Conflict: still conflicting when the client's timeout has passed.
    """
    deadline = time.monotonic() + client.timeout
    attempt = 0
    while True:
        try:
            return await write()
        except Conflict:
            if time.monotonic() >= deadline:
                raise Conflict(f"{what}: still conflicting after {client.timeout} s; retry later") from None
        await asyncio.sleep(backoff(attempt))  # backoff before retrying a lost race
        attempt += 1


async def fence_revision(client: AsyncClient) -> int:
    """A revision committed now: an empty transaction, for a wait that has read nothing to start
    from (see the module docstring). It costs one 2PC round but touches no key."""
    return (await client.txn()).revision


async def read_with_floor(client: AsyncClient, prefix: str) -> tuple[list[KeyValue], int]:
    """The keys under `prefix`, and a revision a watch for what comes after this read may start
    after: the newest `mod_revision` read or, when the read found nothing, a fence fixed *before*
    reading again (a fence after an empty read would skip a change made in between)."""
    kvs = await client.range(prefix)
    if kvs:
        return kvs, floor_of(kvs)
    fence = await fence_revision(client)
    kvs = await client.range(prefix)
    return kvs, floor_of(kvs, fence)


# -- waiting -------------------------------------------------------------------------------------------


async def wait_event(
    client: AsyncClient,
    key: str,
    *,
    prefix: bool = False,
    after: int,
    deadline: Deadline,
    session: Session | None = None,
    stop: Callable[[Event], bool],
    on_event: Callable[[Event], object] | None = None,
) -> Event:
    """Watch `key` (or every key under it) from revision `after + 1` until an event satisfies `stop`.

    Every event received is passed to `on_event` first (recipes count wake-ups with it). The watch
    is closed on the way out, whatever happens.

    Raises:
        WaitTimeout: the deadline passed first.
        LeaseExpired: `session` was lost first (its keys are gone).
        Compacted: history from `after + 1` is gone; the caller re-reads and starts later.
    """

    async def watch() -> Event:
        async with closing(client.watch(key, prefix=prefix, start_revision=after + 1)) as events:
            async for event in events:
                if on_event is not None:
                    on_event(event)
                if stop(event):
                    return event
        raise Internal("a watch ended without an error")  # the SDK's watch never ends by itself

    return await race(watch(), deadline=deadline, session=session)


class Rewatcher:
    """The waits of one read-then-watch loop. Each watch starts after what the loop just read, but never
    below the oldest revision the replicas still keep: a watch whose start was compacted ends the wait
    (None), the loop reads again, and its next watch starts at the oldest revision kept."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._compacted = 0  # the watch may start after this revision, no earlier

    async def wait(
        self,
        key: str,
        *,
        prefix: bool = False,
        after: int,
        deadline: Deadline,
        session: Session | None = None,
        stop: Callable[[Event], bool],
        on_event: Callable[[Event], object] | None = None,
    ) -> Event | None:
        """`wait_event` from `after` (or the oldest kept revision); None when history was compacted."""
        try:
            return await wait_event(
                self._client,
                key,
                prefix=prefix,
                after=max(after, self._compacted),
                deadline=deadline,
                session=session,
                stop=stop,
                on_event=on_event,
            )
        except Compacted as err:
            self._compacted = err.compact_revision - 1
            return None


@contextlib.asynccontextmanager
async def closing(events: AsyncIterator[_T]) -> AsyncIterator[AsyncIterator[_T]]:
    """Close a watch (its gRPC stream) when the block ends, however it ends."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def events_under(
    client: AsyncClient, prefix: str, start_revision: int, timeout: float | None, what: str
) -> AsyncIterator[Event]:
    """Every change under `prefix` from `start_revision` (0: from now), each within `timeout` seconds of
    the one before (None: no limit); the watch closes when the caller stops iterating.

    Raises:
        WaitTimeout: `timeout` seconds passed without a change (`what` names what was awaited).
        Compacted: `start_revision` is older than the history kept.
    """
    async with closing(client.watch(prefix, prefix=True, start_revision=start_revision)) as events:
        while True:
            yield await race(anext(events), deadline=Deadline(timeout, what), session=None)


async def race(work: Awaitable[_T], *, deadline: Deadline, session: Session | None) -> _T:
    """Await `work`, unless the deadline passes or the session is lost first (then cancel it).

    Raises:
        WaitTimeout: the deadline passed first.
        LeaseExpired: `session` was lost first.
    """
    task = asyncio.ensure_future(work)
    lost = asyncio.ensure_future(session.lost.wait()) if session is not None else None
    waiting: list[asyncio.Future[Any]] = [task] if lost is None else [task, lost]
    try:
        done, _ = await asyncio.wait(waiting, timeout=deadline.remaining(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in waiting:
            fut.cancel()
        # Let the cancelled watch close its stream before we go on (or propagate our own cancel).
        await asyncio.gather(*waiting, return_exceptions=True)
    if task in done and not task.cancelled():
        return task.result()
    if session is not None:
        session.check()
    raise deadline.error()
