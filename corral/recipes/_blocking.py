"""The bridge that lets each blocking twin run the one async implementation on a blocking `Client`.

`Client` runs an `AsyncClient` on a private event loop in a background thread; the twins submit the
recipe's coroutines to that loop the way `Client` submits the SDK's, so there is one implementation
of every recipe, and sessions' keepalives run on that thread too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from corral.client.session import Session
from corral.client.sync import Client
from corral.errors import InvalidArgument
from corral.recipes._base import DEFAULT_TTL_S
from corral.recipes._holding import close_session

_T = TypeVar("_T")


def run(client: Client, coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a recipe coroutine on the blocking client's event-loop thread and wait for its result (the
    way `Client` wraps `AsyncClient`): one implementation serves both APIs."""
    given: object = client
    if not isinstance(given, Client):
        coro.close()
        raise InvalidArgument(f"client must be a blocking Client, got {type(client).__name__}", field="client")
    running: list[asyncio.Task[Any]] = []

    async def tracked() -> _T:
        task = asyncio.current_task()
        assert task is not None
        running.append(task)
        return await coro

    try:
        return client._run(tracked())
    except BaseException:
        # Interrupted here (Ctrl-C while blocked): stop the work on the loop too, so a lock being
        # acquired is not left to be taken later with nobody to release it. Its cleanup runs there.
        for task in running:
            task.get_loop().call_soon_threadsafe(task.cancel)
        raise


def iterate(client: Client, events: AsyncIterator[_T]) -> Iterator[_T]:
    """A blocking iterator over an async one, each step run on the client's loop; closing it (or
    leaving a `for` loop) closes the async iterator there too."""

    async def step() -> tuple[bool, _T | None]:
        try:
            return True, await anext(events)
        except StopAsyncIteration:
            return False, None

    async def close() -> None:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()

    try:
        while True:
            more, item = run(client, step())
            if not more:
                return
            yield item  # type: ignore[misc]
    finally:
        with contextlib.suppress(RuntimeError):  # the client (and its loop) closed first
            run(client, close())


def open_session(client: Client, ttl: float = DEFAULT_TTL_S) -> Session:
    """A session for the blocking recipes to share (the blocking client has no `session` of its own):
    its keepalive runs on the client's loop thread. Close it with `close_session_sync`."""
    return run(client, client.aio.session(ttl))


def close_session_sync(client: Client, session: Session) -> None:
    """Close a session made by `open_session` (revoking its lease: its keys are deleted)."""
    run(client, close_session(session))
