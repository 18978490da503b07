"""What every node service shares: the clock, the timer that ticks its core, fail-stop, deadlines.

Fail-stop: a core raising `Internal` has found a bug or a broken invariant; continuing could give two
answers for one transaction. The process exits at once (status 70) and recovers from its log when
restarted, which is the path every crash already takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from corral.config import ClusterConfig, NodeConfig
from corral.core.messages import Message
from corral.errors import CorralError, Internal, Unavailable
from corral.rpc import corral_pb2 as pb
from corral.rpc.bundles import drain
from corral.rpc.convert import batch_to_pb, error_to_pb
from corral.services.failpoints import Failpoints
from corral.store.durability import WalSync

EXIT_INTERNAL = 70
# Longest sleep of the ticker: bounds how late a timer fires if a wake-up was missed.
TICK_MAX_S = 0.05

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.monotonic() * 1000)


Context = grpc.aio.ServicerContext[Any, Any]


# A server gives up this much before the caller's deadline, so its reason (say, "key in doubt")
# reaches the caller instead of a bare DEADLINE_EXCEEDED.
DEADLINE_MARGIN_S = 0.05


def deadline_s(context: Context, default_ms: int) -> float:
    """Seconds this server may spend: the caller's deadline less a margin (the default without one)."""
    remaining: float | None = context.time_remaining()  # None without a deadline (stubs say float)
    if remaining is None:
        return default_ms / 1000
    return max(0.0, float(remaining) - min(DEADLINE_MARGIN_S, float(remaining) / 10))


def fail_stop(node: str, err: BaseException) -> None:
    log.critical("node=%s stopping after an internal error: %s", node, err, exc_info=err)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_INTERNAL)


class Ticker:
    """Calls `tick()` when the core's wake time comes (and at least every TICK_MAX_S)."""

    def __init__(self, node: str, tick: Callable[[], None]) -> None:
        self.node = node
        self._tick = tick
        self.wake_at_ms: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ticker-{self.node}")

    def wake_at(self, when_ms: int | None) -> None:
        """The core's next timer, as returned by its latest step (a core reports its global minimum)."""
        self.wake_at_ms = when_ms

    async def _run(self) -> None:
        while True:
            wait_ms = TICK_MAX_S * 1000 if self.wake_at_ms is None else self.wake_at_ms - now_ms()
            await asyncio.sleep(max(0.0, min(wait_ms / 1000, TICK_MAX_S)))
            if self.wake_at_ms is not None and now_ms() >= self.wake_at_ms:
                self.wake_at_ms = None
                try:
                    self._tick()
                except Internal as err:
                    fail_stop(self.node, err)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Releaser:
    """Carries out effect groups in the order the core produced them, each once its records are durable.

    A group that persisted nothing still waits for the groups before it: a PREPARE must not overtake
    the COMMIT the core emitted earlier on the same link. Many groups usually share one fsync. The
    groups an fsync makes durable are carried out as it ends, in the same loop iteration (WalSync).
    """

    def __init__(self, node: str, wal: WalSync) -> None:
        self.node = node
        self.wal = wal
        self._queue: deque[tuple[int, Callable[[], None]]] = deque()
        wal.subscribe(self._drain, self._disk_failed)

    def release(self, ticket: int, action: Callable[[], None], *, lazy: bool = False) -> None:
        """Run `action` once commit `ticket` (0: none) is durable and every earlier group has run.
        `lazy`: the action may wait a little for an fsync that another group needs (WalSync)."""
        if not self._queue and ticket <= self.wal.durable:
            action()
            return
        self._queue.append((ticket, action))
        if ticket:
            self.wal.request(ticket, lazy=lazy)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _drain(self) -> None:
        queue, durable = self._queue, self.wal.durable
        while queue and queue[0][0] <= durable:
            _, action = queue.popleft()
            try:
                action()
            except Exception as err:  # an action that failed leaves its peers and clients unanswered
                fail_stop(self.node, err)

    def _disk_failed(self, err: OSError) -> None:
        fail_stop(self.node, err)


_Call = TypeVar("_Call")
_Return = TypeVar("_Return")


async def answer_calls(
    requests: AsyncIterator[Any], handle: Callable[[_Call], Awaitable[_Return]]
) -> AsyncIterator[list[_Return]]:
    """The body of a multiplexed call stream (`Client.Ranges`): each call of each message (`.calls`) is
    handled on its own as it arrives, and its answer (which carries the call's id) is sent as soon as it
    is ready, with the others ready by then (`answers_of`)."""
    answers: asyncio.Queue[_Return | None] = asyncio.Queue()
    running: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def one(call: _Call) -> None:
        answers.put_nowait(await handle(call))

    async def pump() -> None:
        try:
            async for message in requests:
                for call in message.calls:
                    task = loop.create_task(one(call))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            answers.put_nowait(None)

    pumping = loop.create_task(pump())
    try:
        async for bundle in answers_of(answers):
            yield bundle
    finally:
        pumping.cancel()
        for task in running:
            task.cancel()


async def answers_of(answers: asyncio.Queue[_Return | None]) -> AsyncIterator[list[_Return]]:
    """Bundles of the answers in `answers` (each: what was ready together), until None."""
    while (first := await answers.get()) is not None:
        bundle, ended = drain(first, answers)  # type: ignore[type-var]  # answers are messages
        yield bundle
        if ended:
            return


def call_timeout_s(timeout_ms: int, default_ms: int) -> float:
    """A multiplexed call's own deadline, less the margin (see deadline_s)."""
    if not timeout_ms:
        return default_ms / 1000
    return max(0.0, timeout_ms / 1000 - min(DEADLINE_MARGIN_S, timeout_ms / 10_000))


class PeerEndpoint:
    """The Peer and Admin handlers every node serves the same way; a service supplies `_inbound`
    (step a batch, return the future of its answer), `node`, `config` and `faults`."""

    node: NodeConfig
    config: ClusterConfig
    faults: Failpoints
    # Shown by Status: how many messages share a batch (group commit at work).
    batches_received = 0
    messages_received = 0

    def _step_batch(self, batch: pb.Batch, on_ready: Callable[[], None] | None = None) -> asyncio.Future[list[Message]]:
        """Step a batch from a peer now; return the future of its answer (`on_ready()` runs as soon
        as it is set)."""
        raise NotImplementedError

    async def _inbound(self, batch: pb.Batch) -> asyncio.Future[list[Message]]:
        """`_step_batch`, after whatever a failpoint at the batch's arrival does (it may wait)."""
        return self._step_batch(batch)

    async def counted(self, batch: pb.Batch) -> asyncio.Future[list[Message]]:
        """Step a batch from a peer (see `_inbound`), counted for Status."""
        self._count(batch)
        return await self._inbound(batch)

    def step_now(self, batch: pb.Batch, on_ready: Callable[[], None]) -> asyncio.Future[list[Message]] | None:
        """`counted` without a task switch, for the peer wire: step the batch in the caller's loop
        iteration. None while a failpoint is armed (one may delay or refuse the batch): use `counted`."""
        if self.faults.any_armed:
            return None
        self._count(batch)
        return self._step_batch(batch, on_ready)

    def _count(self, batch: pb.Batch) -> None:
        self.batches_received += 1
        self.messages_received += len(batch.messages)

    async def Step(self, request: pb.Batch, context: Context) -> pb.Batch:
        try:
            answer = await self.counted(request)
        except Unavailable as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, err.message)
        except CorralError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, err.message)
        return batch_to_pb(self.node.name, await answer)

    async def SetFailpoint(self, request: pb.FailpointRequest, context: Context) -> pb.FailpointResponse:
        try:
            self.faults.set(request.name, request.action)
        except CorralError as err:
            return pb.FailpointResponse(error=error_to_pb(err))
        return pb.FailpointResponse()

    def members_pb(self) -> list[pb.Member]:
        return [
            pb.Member(name=n.name, role=n.role, address=n.address, wire_address=n.peer_address)
            for n in self.config.nodes.values()
        ]
