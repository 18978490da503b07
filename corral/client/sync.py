"""The blocking client: the async client driven on a private event loop in a background thread.

One implementation of the protocol logic (retries, deadlines, replica choice) serves both APIs; the
cost is a thread hop per call (tens of microseconds), small next to a network round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from corral.client.aio import DEFAULT_TIMEOUT_S, AsyncClient, NodeStatus, TxnResponse, connect_async
from corral.core.leases import LeaseInfo
from corral.model import Compare, Event, KeyValue, TxnWrite

_T = TypeVar("_T")

# Closing waits this long for the loop's last tasks (gRPC's, of cancelled calls) to finish.
SETTLE_TIMEOUT_S = 5.0


class Client:
    """Blocking Corral client. Create with `corral.connect(...)`; close it (or use `with`)."""

    def __init__(
        self, cluster: str | Path | None = None, *, timeout: float = DEFAULT_TIMEOUT_S, client_id: str | None = None
    ):
        # asyncio's own loop, not uvloop as the nodes run: after a uvloop loop closes, the calling
        # program's writes to a pipe can come back short (see corral/eventloop.py); seen as
        # `corral get KEY | slow-reader` cut at 64 KiB. A library must not do that to its caller.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="corral-client", daemon=True)
        self._thread.start()
        try:
            self._aio: AsyncClient = self._run(connect_async(cluster, timeout=timeout, client_id=client_id))
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine of this client's `aio` on its loop and wait for it (cancelled if the waiting
        thread is interrupted)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    _run = run

    @property
    def client_id(self) -> str:
        return self._aio.client_id

    @property
    def aio(self) -> AsyncClient:
        """The underlying async client (for use on this client's own loop only)."""
        return self._aio

    def put(self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None) -> int:
        """Store `value` under `key`; return the revision of the write. See AsyncClient.txn for errors."""
        return self._run(self._aio.put(key, value, lease=lease, timeout=timeout))

    def put_sequential(
        self, prefix: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None
    ) -> tuple[str, int]:
        """Create a key under `prefix` named by its commit revision; return (key, revision)."""
        return self._run(self._aio.put_sequential(prefix, value, lease=lease, timeout=timeout))

    def lease_grant(self, ttl: float, *, timeout: float | None = None) -> LeaseInfo:
        """A new lease of `ttl` seconds (keep it alive, or its keys are deleted when it expires).
        `timeout` (default: the client's) bounds the wait: Unavailable after it, as for writes."""
        return self._run(self._aio.lease_grant(ttl, timeout=timeout))

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """End a lease now; its keys are deleted before this returns. NotFound if it already ended."""
        self._run(self._aio.lease_revoke(lease_id, timeout=timeout))

    def lease_time_to_live(self, lease_id: int, *, timeout: float | None = None) -> LeaseInfo:
        """The lease's granted TTL and the milliseconds it has left. NotFound if it already ended."""
        return self._run(self._aio.lease_time_to_live(lease_id, timeout=timeout))

    def compact(self, revision: int, *, timeout: float = 10.0) -> None:
        """Forget history below `revision` on every replica (`timeout` per replica; one that does
        not answer in time is skipped)."""
        self._run(self._aio.compact(revision, timeout=timeout))

    def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0, prev_kv: bool = False
    ) -> Iterator[Event]:
        """Blocking iteration over `AsyncClient.watch` (stop it by leaving the loop)."""
        agen = self._aio.watch(key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv)

        async def next_event() -> Event:
            return await anext(agen)

        try:
            while True:
                try:
                    yield self._run(next_event())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def delete(self, key: str, *, timeout: float | None = None) -> int:
        """Delete `key`; return the revision of the write."""
        return self._run(self._aio.delete(key, timeout=timeout))

    def get(
        self, key: str, *, revision: int = 0, serializable: bool = False, timeout: float | None = None
    ) -> KeyValue | None:
        """The key's value now (or at `revision`), or None. See AsyncClient.get for errors."""
        return self._run(self._aio.get(key, revision=revision, serializable=serializable, timeout=timeout))

    def range(
        self,
        prefix: str,
        *,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        timeout: float | None = None,
    ) -> list[KeyValue]:
        """Every key starting with `prefix`, in key order."""
        return self._run(
            self._aio.range(prefix, revision=revision, limit=limit, serializable=serializable, timeout=timeout)
        )

    def txn(
        self,
        compares: Sequence[Compare] = (),
        on_success: Sequence[TxnWrite] = (),
        on_failure: Sequence[TxnWrite] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResponse:
        """Atomically: if every compare holds, apply on_success, else on_failure."""
        return self._run(self._aio.txn(compares, on_success, on_failure, timeout=timeout))

    def status(self, *, timeout: float = 2.0) -> list[NodeStatus]:
        """Every node's status (down nodes included, marked down)."""
        return self._run(self._aio.status(timeout=timeout))

    def set_failpoint(self, node: str, name: str, action: str, *, timeout: float = 5.0) -> None:
        """Arm or clear a failpoint on a node (testing only)."""
        self._run(self._aio.set_failpoint(node, name, action, timeout=timeout))

    def _stop_loop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_settle(), self._loop).result(timeout=SETTLE_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._aio.close())
        self._stop_loop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _settle() -> None:
    """Cancel and await what is left on the loop (gRPC's own tasks for cancelled calls finish a little
    after the call): closing a loop with a pending task prints "Task was destroyed but it is pending!"."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def connect(
    cluster: str | Path | None = None, *, timeout: float = DEFAULT_TIMEOUT_S, client_id: str | None = None
) -> Client:
    """A blocking client: `cluster` is a path to corral.toml (or its folder), a coordinator address
    `host:port`, or None for the default lookup ($CORRAL_CLUSTER, then ./corral-data/corral.toml)."""
    return Client(cluster, timeout=timeout, client_id=client_id)
