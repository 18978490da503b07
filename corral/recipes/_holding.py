"""Sessions a recipe acts under, and telling a holder that its session (so its hold) was lost.

A recipe either shares a caller's session (never closed here) or opens one of its own per holding and
revokes it when done: revoking deletes every key of the lease in one transaction, so an own session
makes release a single write and leaves nothing behind if the process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.errors import InvalidArgument, LeaseExpired, NotFound
from corral.recipes._base import WAIT_TIMEOUT_S

log = logging.getLogger(__name__)


class SessionSlot:
    """The session a recipe acts under: the caller's (shared, never closed here) or one the recipe
    opens on first use with `ttl` and closes when done (revoking it deletes the recipe's keys in
    one transaction)."""

    def __init__(self, client: AsyncClient, session: Session | None, ttl: float) -> None:
        if session is not None and not isinstance(session, Session):
            raise InvalidArgument(f"session must be a Session, got {type(session).__name__}", field="session")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
            raise InvalidArgument(f"ttl must be a positive number of seconds, got {ttl!r}", field="ttl")
        self.client = client
        self.shared = session
        self.ttl = float(ttl)
        self.owned: Session | None = None

    @property
    def current(self) -> Session | None:
        return self.shared or self.owned

    async def get(self) -> Session:
        """The session to use now; a new owned one if there is none (or the last one was lost).

        Raises:
            LeaseExpired: the shared session is lost.
        """
        if self.shared is not None:
            self.shared.check()
            return self.shared
        if self.owned is None or not self.owned.alive:
            if self.owned is not None:
                await close_session(self.owned)
            self.owned = await self.client.session(self.ttl)
        return self.owned

    async def done(self) -> bool:
        """Close an owned session (revoking its lease, so its keys are deleted); True if there was one."""
        owned, self.owned = self.owned, None
        if owned is None:
            return False
        await close_session(owned)
        return True


async def close_session(session: Session) -> None:
    """Close a session whose lease may already have ended on the coordinator.

    `Session.close` revokes the lease and lets only LeaseExpired through silently; a lease that the
    coordinator already ended (expired before this side noticed) answers NotFound, which means the
    same thing here: the lease and its keys are gone.
    """
    with contextlib.suppress(NotFound, LeaseExpired):
        await session.close()


class LossGuard:
    """Tells a holder (of a lock, a permit, a leadership) that its session was lost while it held:
    `lost` is set and the `on_lost` callbacks run, and `check()` raises from then on. One task per
    holding, cancelled on release, so a long-lived shared session does not collect callbacks."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.lost = asyncio.Event()
        self._callbacks: list[Callable[[], object]] = []
        self._task: asyncio.Task[None] | None = None
        self._session: Session | None = None

    def start(self, session: Session) -> None:
        self.stop()
        self.lost.clear()
        self._session = session
        self._task = asyncio.get_running_loop().create_task(self._guard(session), name=f"guard {self.what}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def watching(self) -> Session | None:
        """The session being guarded now (None when stopped)."""
        return self._session if self._task is not None else None

    async def _guard(self, session: Session) -> None:
        await session.lost.wait()
        log.warning("%s: the session was lost while holding; its keys are gone", self.what)
        self.lost.set()
        for callback in self._callbacks:
            try:
                callback()
            except Exception:  # one bad callback must not hide the loss from the others
                log.exception("%s: on_lost callback failed", self.what)

    def on_lost(self, callback: Callable[[], object]) -> None:
        self._callbacks.append(callback)

    def check(self) -> None:
        """Raises LeaseExpired if the session was lost while holding."""
        if self.lost.is_set():
            reason = self._session.lost_reason if self._session is not None else "session lost"
            raise LeaseExpired(f"{self.what} was lost with its session: {reason}")


class HeldAsync:
    """`async with holder:` acquires (giving the fencing token) and releases; for the async holders."""

    async def acquire(self, timeout: float | None = WAIT_TIMEOUT_S) -> int:
        raise NotImplementedError

    async def release(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()


class Held:
    """`with holder:` acquires (giving the fencing token) and releases; for the blocking holders."""

    def acquire(self, timeout: float | None = WAIT_TIMEOUT_S) -> int:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
