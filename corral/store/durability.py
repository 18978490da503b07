"""Group commit for SQLite: commit without fsync, then one fsync of the WAL covers every commit before it.

SQLite in WAL mode with `synchronous=NORMAL` writes a transaction's frames to the `-wal` file at
COMMIT but does not fsync them; `synchronous=FULL` fsyncs at every COMMIT, on the caller's thread.
Here the service commits with NORMAL (microseconds, on the event loop), notes the commit, and awaits
`wait_durable(ticket)`: a single background fsync of the WAL file, run on a worker thread, makes every
commit noted before it started durable. While one fsync runs, later commits queue for the next one.
That is FULL's guarantee (nothing is acknowledged before it is on disk) at a fraction of the fsyncs.

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
from pathlib import Path

# Run the fsync on the event loop while it averages under this; above, on a worker thread.
INLINE_FSYNC_MAX_MS = 2.0
# The longest a lazy waiter waits for another waiter's fsync before one is run for it.
LAZY_FSYNC_DELAY_S = 0.005
# Weight of the newest fsync in the moving average of fsync times.
_FSYNC_EWMA_WEIGHT = 0.2


class WalSync:
    """Deferred, grouped fsync of one SQLite database's WAL (see the module docstring)."""

    def __init__(self, db_path: str | Path) -> None:
        self.wal_path = Path(f"{db_path}-wal")
        self._noted = 0  # ticket of the newest commit
        self._durable = 0  # every ticket up to this one is on disk
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._later: asyncio.TimerHandle | None = None
        self.fsyncs = 0  # for metrics and tests
        self.fsync_ms_avg = 0.0

    def note_commit(self) -> int:
        """Call right after a NORMAL-mode COMMIT; returns the ticket to wait on."""
        self._noted += 1
        return self._noted

    @property
    def durable(self) -> int:
        return self._durable

    async def wait_durable(self, ticket: int, *, lazy: bool = False) -> None:
        """Return once the commit with this ticket (and every earlier one) is on disk. `lazy`: no
        hurry, another waiter's fsync may cover it (at most LAZY_FSYNC_DELAY_S later)."""
        if ticket <= self._durable:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((ticket, fut))
        if not lazy:
            self.hurry()
        elif self._later is None:
            self._later = asyncio.get_running_loop().call_later(LAZY_FSYNC_DELAY_S, self.hurry)
        await fut

    def hurry(self) -> None:
        """Start an fsync for the waiters now (a no-op while one runs: it loops while any wait)."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._waiters and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="wal-fsync")

    def _fsync(self) -> None:
        fd = os.open(self.wal_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            target = self._noted
            try:
                started = time.perf_counter()
                if self.fsync_ms_avg <= INLINE_FSYNC_MAX_MS:
                    self._fsync()
                else:
                    await loop.run_in_executor(None, self._fsync)
                took_ms = (time.perf_counter() - started) * 1000
                self.fsync_ms_avg += _FSYNC_EWMA_WEIGHT * (took_ms - self.fsync_ms_avg)
            except OSError as err:
                # The disk failed us: nothing more can be promised durable. Fail every waiter; the
                # service treats this as fatal (fail-stop) rather than acknowledge on a broken disk.
                waiters, self._waiters = self._waiters, []
                for _, fut in waiters:
                    if not fut.done():
                        fut.set_exception(err)
                return
            self.fsyncs += 1
            self._durable = max(self._durable, target)
            still = []
            for ticket, fut in self._waiters:
                if ticket <= self._durable:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((ticket, fut))
            self._waiters = still
