"""Sessions: a lease kept alive in the background, and the news when it is lost.

A session grants a lease and renews it over one keepalive stream every ttl/3. Keys written with the
session's lease vanish together when the session ends: closed (the lease is revoked), or lost (the
process died or was cut off longer than the TTL, so the coordinator expired the lease). A session
that could not renew within its TTL, or heard that its lease is gone, is *lost*: `lost` is set and
the `on_lost` callbacks run, so a lock holder learns it no longer holds the lock (ZooKeeper's and
etcd's users ask for exactly this; kazoo's silent session loss is the complaint).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc

from corral.errors import LeaseExpired, NotFound
from corral.rpc import corral_pb2 as pb
from corral.rpc import corral_pb2_grpc as pb_grpc
from corral.rpc.convert import error_from_pb

if TYPE_CHECKING:
    from corral.client.aio import AsyncClient

log = logging.getLogger(__name__)

# Renew this many times per TTL: two renewals may be lost before the lease is in danger.
RENEWALS_PER_TTL = 3
# How long `close` waits for the keepalive task to finish before going on without it.
CLOSE_WAIT_S = 2.0


class Session:
    """A lease with a background keepalive. Create with `AsyncClient.session(ttl)`; close it."""

    def __init__(self, client: AsyncClient, lease_id: int, ttl_s: float) -> None:
        self.client = client
        self.lease_id = lease_id
        self.ttl_s = ttl_s
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._callbacks: list[Callable[[Session], object]] = []
        self._renewed_at = time.monotonic()
        self._closed = False
        self._call: grpc.aio.StreamStreamCall[pb.LeaseIdRequest, pb.LeaseReply] | None = None
        self._task = asyncio.get_running_loop().create_task(self._keepalive(), name=f"session-{lease_id}")

    def on_lost(self, callback: Callable[[Session], object]) -> None:
        """Call `callback(session)` when the session is lost (at once if it already is)."""
        if self.lost.is_set():
            callback(self)
        else:
            self._callbacks.append(callback)

    def remove_on_lost(self, callback: Callable[[Session], object]) -> None:
        """Forget a callback registered with `on_lost` (a holder that released what it held)."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and not self._closed

    def check(self) -> None:
        """Raises LeaseExpired if the session is lost (recipes call it before acting as a holder)."""
        if self.lost.is_set():
            raise LeaseExpired(f"session lease {self.lease_id} is lost: {self.lost_reason}", lease=self.lease_id)

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        log.warning("lease=%d session lost: %s", self.lease_id, reason)
        self.lost.set()
        for callback in self._callbacks:
            try:
                callback(self)
            except Exception:  # a bad callback must not hide the loss from the others
                log.exception("lease=%d on_lost callback failed", self.lease_id)

    async def _requests(self, sent: deque[float]) -> AsyncIterator[pb.LeaseIdRequest]:
        interval = self.ttl_s / RENEWALS_PER_TTL
        while True:
            sent.append(time.monotonic())
            yield pb.LeaseIdRequest(id=self.lease_id)
            await asyncio.sleep(interval)  # the renewal schedule itself, not a synchronisation

    async def _keepalive(self) -> None:
        """Renew until closed. A renewal counts from when its request was *sent* (replies come in
        order), which is before the coordinator restarted the TTL: so this side always gives the
        lease up no later than the coordinator expires it. A stream that hangs (the coordinator is
        stopped) is read with a deadline at the TTL, so silence is noticed too."""
        while not self._closed:
            sent: deque[float] = deque()
            stub = pb_grpc.ClientStub(self.client._channel(self.client.endpoints.coordinator))
            call = self._call = stub.LeaseKeepAlive(self._requests(sent))
            try:
                while True:
                    remaining = self._renewed_at + self.ttl_s - time.monotonic()
                    if remaining <= 0:
                        self._lose(f"no renewal for {self.ttl_s:.1f} s (the TTL); the coordinator has expired it")
                        return
                    try:
                        reply = await asyncio.wait_for(call.read(), remaining)
                    except TimeoutError:
                        continue  # the loop's check above declares the loss
                    if not isinstance(reply, pb.LeaseReply):
                        break  # end of stream
                    asked_at = sent.popleft() if sent else time.monotonic()
                    if reply.error.code:
                        err = error_from_pb(reply.error)
                        if err.code in (LeaseExpired.code, "not_found"):
                            self._lose(err.message)
                            return
                        continue  # a passing failure (coordinator deadline): the next renewal may work
                    self._renewed_at = max(self._renewed_at, asked_at)
            except grpc.aio.AioRpcError as err:
                log.debug("lease=%d keepalive stream broke: %s", self.lease_id, err.code().name)
            finally:
                call.cancel()
            await asyncio.sleep(min(0.2, self.ttl_s / 10))  # back off before reconnecting

    async def close(self, *, revoke: bool = True) -> None:
        """Stop renewing; with `revoke`, end the lease now (its keys are deleted)."""
        if self._closed:
            return
        self._closed = True
        # End the stream first: a grpc aio read() that is cancelled while its call is still open
        # can wait forever for the cancellation to land (seen: a CLI that never exited).
        if self._call is not None:
            self._call.cancel()
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=CLOSE_WAIT_S)
        if revoke and not self.lost.is_set():
            # The lease may have ended before we noticed (NotFound): then there is nothing to revoke.
            with contextlib.suppress(LeaseExpired, NotFound):
                await self.client.lease_revoke(self.lease_id)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
