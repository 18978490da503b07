"""Group commit for SQLite: commit without fsync, then one fsync of the WAL covers every commit before it.

SQLite in WAL mode with `synchronous=NORMAL` writes a transaction's frames to the `-wal` file at
COMMIT but does not fsync them; `synchronous=FULL` fsyncs at every COMMIT, on the caller's thread.
Here the service commits with NORMAL (microseconds, on the event loop), notes the commit, and asks
for it to be made durable (`request`, or `wait_durable`): one fsync of the WAL file, run at the start
of the next loop iteration, makes every commit noted before it durable, so the commits of every
message read in one iteration share it. While one fsync runs, later commits queue for the next one.
That is FULL's guarantee (nothing is acknowledged before it is on disk) at a fraction of the fsyncs.

What waits for an fsync is called back in the same iteration, as soon as it ends (`subscribe`): the
releaser's sends and answers leave without a task switch. At one client, the task that ran the fsync
and the one woken after it cost the put path about two loop iterations on each node; the WAL file
is also kept open (SQLite only removes it when the database closes), not opened for each fsync.

Where the fsync runs adapts to the disk: while fsyncs are fast (a moving average under
INLINE_FSYNC_MAX_MS) it runs on the event loop itself, because handing it to a thread and back costs
more than it takes (measured here: a 0.3 ms fsync, a 0.3 ms round trip through the thread pool; inline
gave a lower p50 at one client and more puts/s at 64). A slow disk moves it to a worker thread, so
the loop keeps serving while the disk works.

Some commits need not be durable soon, only before someone is told (a replica's applied COMMIT: if
it is lost in a crash, the replica finds the transaction prepared again and asks for the outcome,
which the coordinator keeps until acked). Their waiters pass `lazy=True`: their fsync is left for up
to LAZY_FSYNC_DELAY_S to the next waiter that needs one now, so at one client a replica fsyncs once
per write (its PREPARE) instead of twice, and the COMMIT's fsync no longer delays the next PREPARE.

A frame fsynced in the WAL is recovered by SQLite after a crash exactly as if FULL had synced it;
checkpoints (which copy the WAL into the database file) fsync on their own in NORMAL mode.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

# Run the fsync on the event loop while it averages under this; above, on a worker thread.
INLINE_FSYNC_MAX_MS = 2.0
# The longest a lazy request waits for another request's fsync before one is run for it.
LAZY_FSYNC_DELAY_S = 0.005
# Weight of the newest fsync in the moving average of fsync times.
_FSYNC_EWMA_WEIGHT = 0.2


class WalSync:
    """Deferred, grouped fsync of one SQLite database's WAL (see the module docstring)."""

    def __init__(self, db_path: str | Path) -> None:
        self.wal_path = Path(f"{db_path}-wal")
        self._noted = 0  # ticket of the newest commit
        self._durable = 0  # every ticket up to this one is on disk
        self._wanted = 0  # the newest ticket an fsync has been asked for
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._subscribers: list[tuple[Callable[[], None], Callable[[OSError], None]]] = []
        self._soon: asyncio.Handle | None = None  # an fsync due at the start of the next iteration
        self._thread: asyncio.Task[None] | None = None  # an fsync running on a worker thread
        self._later: asyncio.TimerHandle | None = None  # a lazy request's deadline
        self._fd: int | None = None
        self._failure: OSError | None = None
        self.fsyncs = 0  # for metrics and tests
        self.fsync_ms_avg = 0.0

    def note_commit(self) -> int:
        """Call right after a NORMAL-mode COMMIT; returns the ticket to wait on."""
        self._noted += 1
        return self._noted

    @property
    def durable(self) -> int:
        return self._durable

    def subscribe(self, on_durable: Callable[[], None], on_failure: Callable[[OSError], None]) -> None:
        """Call `on_durable()` as each fsync ends (`durable` then says how far), in the same loop
        iteration; `on_failure(err)` if one fails (nothing more can be promised durable)."""
        self._subscribers.append((on_durable, on_failure))

    def request(self, ticket: int, *, lazy: bool = False) -> None:
        """Have commit `ticket` (and every earlier one) made durable: by an fsync at the start of the
        next loop iteration, or, `lazy`, by another request's within LAZY_FSYNC_DELAY_S (or its own)."""
        if ticket <= self._durable:
            return
        self._wanted = max(self._wanted, ticket)
        if not lazy:
            self.hurry()
        elif self._later is None and self._soon is None and self._thread is None:
            self._later = asyncio.get_running_loop().call_later(LAZY_FSYNC_DELAY_S, self.hurry)

    async def wait_durable(self, ticket: int, *, lazy: bool = False) -> None:
        """Return once the commit with this ticket (and every earlier one) is on disk (`request`)."""
        if self._failure is not None:
            raise self._failure
        if ticket <= self._durable:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((ticket, fut))
        self.request(ticket, lazy=lazy)
        await fut

    def hurry(self) -> None:
        """Start an fsync for what was asked, at the start of the next loop iteration (a no-op while
        one is due or running: what is asked meanwhile gets the next)."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._failure is not None:  # a later fsync may "succeed" with the data lost: never again
            return
        if self._wanted > self._durable and self._soon is None and self._thread is None:
            self._soon = asyncio.get_running_loop().call_soon(self._sync)

    def close(self) -> None:
        """Stop syncing and close the WAL file (before or after its database closes)."""
        for handle in (self._soon, self._later, self._thread):
            if handle is not None:
                handle.cancel()
        self._soon = self._later = self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _fsync(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.wal_path, os.O_RDONLY)
        os.fsync(self._fd)

    def _sync(self) -> None:
        self._soon = None
        target = self._noted
        started = time.perf_counter()
        if self.fsync_ms_avg > INLINE_FSYNC_MAX_MS:
            self._thread = asyncio.get_running_loop().create_task(self._sync_on_thread(target, started))
            return
        try:
            self._fsync()
        except OSError as err:
            self._failed(err)
            return
        self._synced(target, started)

    async def _sync_on_thread(self, target: int, started: float) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._fsync)
        except OSError as err:
            self._thread = None
            self._failed(err)
            return
        self._thread = None
        self._synced(target, started)
        self.hurry()  # what was asked while the thread synced (a lazy request too: the disk is slow)

    def _synced(self, target: int, started: float) -> None:
        took_ms = (time.perf_counter() - started) * 1000
        self.fsync_ms_avg += _FSYNC_EWMA_WEIGHT * (took_ms - self.fsync_ms_avg)
        self.fsyncs += 1
        self._durable = max(self._durable, target)
        if self._waiters:
            still = []
            for ticket, fut in self._waiters:
                if ticket > self._durable:
                    still.append((ticket, fut))
                elif not fut.done():
                    fut.set_result(None)
            self._waiters = still
        for on_durable, _ in self._subscribers:
            on_durable()

    def _failed(self, err: OSError) -> None:
        # The disk failed us: nothing more can be promised durable. Fail every waiter; the services
        # treat this as fatal (fail-stop) rather than acknowledge on a broken disk.
        self._failure = err
        waiters, self._waiters = self._waiters, []
        for _, fut in waiters:
            if not fut.done():
                fut.set_exception(err)
        for _, on_failure in self._subscribers:
            on_failure(err)
