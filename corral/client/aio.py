"""The asyncio client: writes to the coordinator, reads from a random replica, typed errors.

Safe retries (DESIGN.md "Client retries"): every write carries this client's id and a fresh sequence
number; when an attempt fails in transport (connection lost, coordinator restarting) the same
(client_id, seq) is sent again until the deadline, and the coordinator answers a retry of a committed
write from its memory instead of applying it twice. `Unavailable(outcome_unknown=True)` is raised only
when the deadline passes after an attempt that may have reached the coordinator.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path

import grpc

from corral.client.session import Session
from corral.client.streams import CallStream, StreamBroken
from corral.client.wire_call import WireCall
from corral.config import ClusterConfig, find_config
from corral.core.leases import LeaseInfo
from corral.core.messages import TxnSpec
from corral.errors import CorralError, InvalidArgument, Unavailable
from corral.frozen import frozen
from corral.limits import DEFAULT_LIMITS, WATCH_SILENT_S, Limits
from corral.model import (
    Compare,
    Delete,
    Event,
    KeyValue,
    Put,
    PutSequential,
    TxnWrite,
    sequential_key,
    validate_key,
    validate_prefix,
)
from corral.rpc import corral_pb2 as pb
from corral.rpc import corral_pb2_grpc as pb_grpc
from corral.rpc.convert import error_from_pb, event_from_pb, kv_from_pb, raise_if_error, txn_to_pb
from corral.rpc.framing import RANGES_GREETING, TXNS_GREETING

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
# Backoff between attempts after a transport failure: grows to the cap, with full jitter.
RETRY_BACKOFF_BASE_S = 0.02
RETRY_BACKOFF_CAP_S = 0.5
# A read not answered within this long is also sent to the next replica (a read changes nothing, so
# the first answer wins): a frozen replica (SIGSTOP, a stalled VM) keeps its connection open and would
# hold the read to its deadline. A live replica answers far sooner, unless the key is locked by a
# prepared transaction, and then the other replica waits for the same decision.
READ_HEDGE_S = 1.0
# A replica that left a read unanswered that long is asked last, for this long.
READ_SUSPECT_S = 10.0
_Reads = dict[asyncio.Future[pb.RangeResponse], str]  # the attempts of one read under way -> their replica
_TRANSPORT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)


@frozen
class TxnResponse:
    """A committed transaction: its revision, and whether its compares held (on_success ran)."""

    succeeded: bool
    revision: int


@frozen
class NodeStatus:
    name: str
    role: str
    address: str
    up: bool
    revision: int = 0
    digest: str = ""
    pid: int = 0
    epoch: int = 0
    prepared: int = 0
    locked_keys: int = 0
    uptime_s: float = 0.0
    view: int = 0
    view_members: tuple[str, ...] = ()
    membership: str = ""  # replica: member | outside | unknown
    lease_valid: bool = False  # replica: serving linearizable reads
    joining: str = ""  # coordinator: a replica being added to the view
    fsyncs: int = 0  # since the node started: group commit makes these far fewer than commits
    batches_received: int = 0  # peer batches since the node started
    messages_received: int = 0  # protocol messages in those batches
    reads_served: int = 0  # replica: reads answered since it started
    watches_open: int = 0  # replica: watch streams it serves now
    error: str = ""


@frozen
class Endpoints:
    coordinator: str
    replicas: tuple[str, ...]
    nodes: tuple[tuple[str, str, str], ...]  # (name, role, address)
    limits: Limits = DEFAULT_LIMITS
    # (address, wire address) of nodes whose wire the client may use for its call streams; a node
    # not named here is called over gRPC.
    wires: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, config: ClusterConfig) -> Endpoints:
        return cls(
            config.coordinator.address,
            tuple(r.address for r in config.replicas),
            tuple((n.name, n.role, n.address) for n in config.nodes.values()),
            config.limits,
            tuple((n.address, n.peer_address) for n in config.nodes.values()),
        )

    def wire_of(self, address: str) -> str | None:
        return next((wire for a, wire in self.wires if a == address), None)


def _value(value: bytes | str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise InvalidArgument(f"value must be bytes or str, got {type(value).__name__}", field="value")


def _is_transport(err: grpc.aio.AioRpcError) -> bool:
    return err.code() in _TRANSPORT_CODES


def _never_sent(err: grpc.aio.AioRpcError) -> bool:
    """True when the request certainly did not reach the server (no connection was ever made)."""
    details = (err.details() or "").lower()
    return err.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "connection refused" in details
    )


class AsyncClient:
    """See the module docstring. Create with `corral.connect_async(...)`."""

    def __init__(self, endpoints: Endpoints, *, timeout: float = DEFAULT_TIMEOUT_S, client_id: str | None = None):
        self.endpoints = endpoints
        self.timeout = timeout
        self.client_id = client_id or uuid.uuid4().hex
        self._seq = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._rng = random.Random()
        self._writes: CallStream[pb.TxnRequest, pb.TxnResponse] = CallStream(
            self._open_writes,
            lambda i, request, ms: pb.TxnCall(id=i, request=request, timeout_ms=ms),
            lambda calls: pb.TxnCalls(calls=calls),
        )
        self._reads: dict[str, CallStream[pb.RangeRequest, pb.RangeResponse]] = {}
        self._suspects: dict[str, float] = {}  # replica -> when it last left a read unanswered (READ_HEDGE_S)

    # -- plumbing ------------------------------------------------------------------------------

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        return channel

    def _open_writes(self) -> WireCall | grpc.aio.StreamStreamCall[pb.TxnCalls, pb.TxnReturns]:
        address = self.endpoints.coordinator
        wire = self.endpoints.wire_of(address)
        if wire is not None:
            return WireCall(wire, TXNS_GREETING, pb.TxnReturns.FromString, self.timeout)
        return pb_grpc.ClientStub(self._channel(address)).Txns()  # type: ignore[call-arg]

    def _open_reads(self, address: str) -> WireCall | grpc.aio.StreamStreamCall[pb.RangeCalls, pb.RangeReturns]:
        wire = self.endpoints.wire_of(address)
        if wire is not None:
            return WireCall(wire, RANGES_GREETING, pb.RangeReturns.FromString, self.timeout)
        return pb_grpc.ClientStub(self._channel(address)).Ranges()  # type: ignore[call-arg]

    def _read_stream(self, address: str) -> CallStream[pb.RangeRequest, pb.RangeResponse]:
        stream = self._reads.get(address)
        if stream is None:
            stream = self._reads[address] = CallStream(
                lambda: self._open_reads(address),
                lambda i, request, ms: pb.RangeCall(id=i, request=request, timeout_ms=ms),
                lambda calls: pb.RangeCalls(calls=calls),
            )
        return stream

    async def close(self) -> None:
        await self._writes.close()
        for stream in self._reads.values():
            await stream.close()
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(grace=None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _deadline(self, timeout: float | None) -> float:
        t = self.timeout if timeout is None else timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or t <= 0:
            raise InvalidArgument(f"timeout must be a positive number of seconds, got {t!r}", field="timeout")
        return time.monotonic() + t

    def _backoff(self, attempt: int) -> float:
        return self._rng.uniform(0, min(RETRY_BACKOFF_CAP_S, RETRY_BACKOFF_BASE_S * 2**attempt))

    # -- writes --------------------------------------------------------------------------------

    async def txn(
        self,
        compares: Sequence[Compare] = (),
        on_success: Sequence[TxnWrite] = (),
        on_failure: Sequence[TxnWrite] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResponse:
        """Atomically: if every compare holds, apply on_success, else on_failure.

        Writes the cluster could not apply for a passing reason (a replica down before the view drops
        it, a replica joining) are retried with the same request id until the deadline.

        Raises:
            InvalidArgument: a malformed transaction (nothing is written).
            Conflict: another in-flight transaction touches one of its keys and arrived first.
            Unavailable: no success before the deadline; `outcome_unknown` says whether the write may
                still have been applied.
        """
        spec = TxnSpec(tuple(compares), tuple(on_success), tuple(on_failure))
        for item in (*spec.compares, *spec.on_success, *spec.on_failure):
            if not isinstance(item, Compare | Put | Delete | PutSequential):
                raise InvalidArgument(
                    f"transaction items must be Compare, Put, Delete or PutSequential, got {type(item).__name__}"
                )
        spec.validate(self.endpoints.limits)
        deadline = self._deadline(timeout)
        self._seq += 1
        request = pb.TxnRequest(client_id=self.client_id, seq=self._seq, txn=txn_to_pb(spec))
        maybe_sent = False
        attempt = 0
        last_reason = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = f" (last: {last_reason})" if last_reason else ""
                raise Unavailable(
                    "the coordinator did not answer before the deadline"
                    + ("; the write may or may not have been applied" if maybe_sent else "; nothing was applied")
                    + why,
                    outcome_unknown=maybe_sent,
                )
            try:
                response = await self._writes.call(request, remaining)
            except StreamBroken as err:
                if err.code not in _TRANSPORT_CODES:
                    raise Unavailable(f"coordinator RPC failed: {err}") from None
                maybe_sent = maybe_sent or err.sent
                await asyncio.sleep(min(self._backoff(attempt), max(0.0, deadline - time.monotonic())))
                attempt += 1
                continue
            if response.error.code:
                err_info = error_from_pb(response.error)
                if err_info.code != Unavailable.code:
                    raise err_info.to_error()
                if err_info.details.get("outcome_unknown"):
                    maybe_sent = True  # the coordinator itself timed out: ask again with the same seq
                # Not applied (a replica unreachable, votes late, a replica joining): the cluster is
                # changing its view; try again until the deadline, then report the last reason.
                last_reason = err_info.message
                pause = min(self._backoff(attempt), max(0.0, deadline - time.monotonic()))
                if deadline - time.monotonic() <= pause:
                    raise err_info.to_error()
                await asyncio.sleep(pause)
                attempt += 1
                continue
            return TxnResponse(response.succeeded, response.revision)

    async def put(self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None) -> int:
        """Store `value` under `key`; return the revision of the write."""
        return (await self.txn(on_success=[Put(key, _value(value), lease)], timeout=timeout)).revision

    async def put_sequential(
        self, prefix: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None
    ) -> tuple[str, int]:
        """Create a key under `prefix` named by its commit revision; return (key, revision).

        Keys created this way are unique and sort in commit order (the suffix is the zero-padded
        revision), which is what queues and locks without herd effect are built on.
        """
        result = await self.txn(on_success=[PutSequential(prefix, _value(value), lease)], timeout=timeout)
        return sequential_key(prefix, result.revision), result.revision

    async def delete(self, key: str, *, timeout: float | None = None) -> int:
        """Delete `key` (a no-op write if it is missing); return the revision of the write."""
        return (await self.txn(on_success=[Delete(key)], timeout=timeout)).revision

    # -- reads ---------------------------------------------------------------------------------

    async def _read(self, request: pb.RangeRequest, timeout: float | None) -> pb.RangeResponse:
        """A read from a random replica; one that cannot answer (down, or no read lease) sends it to
        the next, until the deadline, and one silent for READ_HEDGE_S has the next asked as well. A key
        in doubt keeps a replica waiting to the deadline, so its refusal is what the caller sees."""
        deadline = self._deadline(timeout)
        last: CorralError | None = None
        running: _Reads = {}
        order: list[str] = []
        rounds = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise last or Unavailable("no replica answered the read before the deadline")
                if not running and not order:  # every replica failed just now: back off, then again
                    if rounds:
                        await asyncio.sleep(min(self._backoff(rounds - 1), remaining))
                    order = self._read_order()
                    rounds += 1
                    continue
                if not running:
                    self._start_read(running, order.pop(0), request, remaining)
                wait_s = min(READ_HEDGE_S, remaining) if order else remaining
                done, _ = await asyncio.wait(running, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    now = time.monotonic()
                    for address in running.values():
                        self._suspects[address] = now
                    if order:
                        self._start_read(running, order.pop(0), request, deadline - now)
                    continue
                for attempt in done:
                    address = running.pop(attempt)
                    try:
                        response = attempt.result()
                    except StreamBroken as err:
                        if err.code not in _TRANSPORT_CODES:
                            raise Unavailable(f"replica {address} failed: {err}") from None
                        if last is None or not last.details.get("replica"):  # a replica's own reason says more
                            last = Unavailable(f"no replica answered the read before the deadline ({address}: {err})")
                        continue
                    self._suspects.pop(address, None)
                    if response.error.code:
                        failure = error_from_pb(response.error).to_error()
                        if not isinstance(failure, Unavailable):
                            raise failure
                        last = failure
                        continue
                    return response
        finally:
            for attempt in running:  # answered elsewhere first: abandoned (a failure is read, not logged)
                if attempt.done() and not attempt.cancelled():
                    attempt.exception()
                attempt.cancel()

    def _start_read(self, running: _Reads, address: str, request: pb.RangeRequest, timeout_s: float) -> None:
        running[self._read_stream(address).start(request, timeout_s)] = address

    def _read_order(self) -> list[str]:
        """The replicas in random order, those that left a read unanswered lately (READ_SUSPECT_S) last."""
        replicas = list(self.endpoints.replicas)
        self._rng.shuffle(replicas)
        since = time.monotonic() - READ_SUSPECT_S
        return sorted(replicas, key=lambda address: self._suspects.get(address, since) > since)

    async def get(
        self, key: str, *, revision: int = 0, serializable: bool = False, timeout: float | None = None
    ) -> KeyValue | None:
        """The key's current value (or at `revision`), or None if it does not exist.

        Raises:
            Unavailable: the key is in doubt (a prepared transaction's outcome is not known) past
                the deadline, or no replica answered.
            Compacted: `revision` is older than the oldest kept.
        """
        validate_key(key)
        response = await self._read(pb.RangeRequest(key=key, revision=revision, serializable=serializable), timeout)
        return kv_from_pb(response.kvs[0]) if response.kvs else None

    async def range(
        self,
        prefix: str,
        *,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        timeout: float | None = None,
    ) -> list[KeyValue]:
        """Every key starting with `prefix`, in key order (at most `limit`, 0 for the server's cap)."""
        validate_prefix(prefix)
        request = pb.RangeRequest(key=prefix, prefix=True, revision=revision, limit=limit, serializable=serializable)
        response = await self._read(request, timeout)
        return [kv_from_pb(kv) for kv in response.kvs]

    # -- leases and sessions ------------------------------------------------------------------------

    async def _lease_call(self, method: str, request: object, timeout: float | None) -> LeaseInfo:
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable("the coordinator did not answer the lease request before the deadline")
            stub = pb_grpc.ClientStub(self._channel(self.endpoints.coordinator))
            try:
                reply = await getattr(stub, method)(request, timeout=remaining)
            except grpc.aio.AioRpcError as err:
                if not _is_transport(err):
                    raise Unavailable(f"coordinator RPC failed: {err.code().name}: {err.details()}") from None
                await asyncio.sleep(min(self._backoff(attempt), max(0.0, deadline - time.monotonic())))
                attempt += 1
                continue
            raise_if_error(reply.error)
            return LeaseInfo(reply.id, reply.ttl_ms, reply.remaining_ms)

    async def lease_grant(self, ttl: float, *, timeout: float | None = None) -> LeaseInfo:
        """A new lease of `ttl` seconds; keep it alive (or use `session`) or it expires with its keys."""
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise InvalidArgument(f"ttl must be a number of seconds, got {ttl!r}", field="ttl")
        return await self._lease_call("LeaseGrant", pb.LeaseGrantRequest(ttl_ms=round(ttl * 1000)), timeout)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """End a lease now: every key attached to it is deleted (in one transaction) before this returns.

        Raises:
            NotFound: no such lease (or it already ended).
        """
        await self._lease_call("LeaseRevoke", pb.LeaseIdRequest(id=lease_id), timeout)

    async def lease_time_to_live(self, lease_id: int, *, timeout: float | None = None) -> LeaseInfo:
        """The lease's granted TTL and the milliseconds it has left.

        Raises:
            NotFound: no such lease (or it already ended).
        """
        return await self._lease_call("LeaseTimeToLive", pb.LeaseIdRequest(id=lease_id), timeout)

    async def lease_keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> LeaseInfo:
        """Renew a lease once (the CLI's `lease keepalive`; programs use `session`).

        Raises:
            LeaseExpired: the lease has ended.
        """
        deadline = self._deadline(timeout)
        stub = pb_grpc.ClientStub(self._channel(self.endpoints.coordinator))

        async def one() -> AsyncIterator[pb.LeaseIdRequest]:
            yield pb.LeaseIdRequest(id=lease_id)

        call = stub.LeaseKeepAlive(one(), timeout=max(0.001, deadline - time.monotonic()))
        try:
            async for reply in call:
                raise_if_error(reply.error)
                return LeaseInfo(reply.id, reply.ttl_ms, reply.remaining_ms)
        except grpc.aio.AioRpcError as err:
            raise Unavailable(f"keepalive failed: {err.code().name}: {err.details()}") from None
        raise Unavailable("the coordinator closed the keepalive stream without an answer")

    async def session(self, ttl: float = 10.0, *, timeout: float | None = None) -> Session:
        """A lease kept alive in the background until `close()`; tells you when it is lost."""
        info = await self.lease_grant(ttl, timeout=timeout)
        return Session(self, info.id, info.ttl_ms / 1000)

    # -- watches ------------------------------------------------------------------------------------

    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0, prev_kv: bool = False
    ) -> AsyncGenerator[Event, None]:
        """Every change to `key` (or every key under it, with `prefix`) from `start_revision` (0: from
        now), in revision order, with no gaps and no duplicates. If the replica serving it fails, is
        cut off from the coordinator (it ends the stream) or freezes (silent for WATCH_SILENT_S), the
        watch resumes on another one from the next revision, by itself.

        Raises:
            Compacted: `start_revision` is older than the oldest revision kept (see its
                `compact_revision`: start from there).
        """
        (validate_prefix if prefix else validate_key)(key)
        if start_revision == 0:
            # Pin "now" to a revision, so a resume after an early failure cannot skip anything.
            start_revision = (await self._read(pb.RangeRequest(key=key, prefix=prefix, limit=1), None)).revision + 1
        next_revision = start_revision
        attempt = 0
        while True:
            for address in self._read_order():
                stub = pb_grpc.ClientStub(self._channel(address))
                request = pb.WatchRequest(key=key, prefix=prefix, start_revision=next_revision, prev_kv=prev_kv)
                call = stub.Watch(request)
                try:
                    while True:
                        try:
                            response = await asyncio.wait_for(call.read(), WATCH_SILENT_S)
                        except TimeoutError:  # no progress report in time: a frozen replica keeps its connection open
                            self._suspects[address] = time.monotonic()
                            break
                        if not isinstance(response, pb.WatchResponse) or response.error.code == Unavailable.code:
                            break  # ended (EOF), or no read lease there: another replica carries on
                        raise_if_error(response.error)
                        for event in response.events:
                            yield event_from_pb(event)
                        next_revision = max(next_revision, response.revision + 1)
                        attempt = 0
                except grpc.aio.AioRpcError as err:
                    if not _is_transport(err):
                        raise Unavailable(f"watch on {address} failed: {err.code().name}: {err.details()}") from None
                finally:
                    call.cancel()
            await asyncio.sleep(self._backoff(attempt))  # every replica failed just now: back off
            attempt += 1

    async def compact(self, revision: int, *, timeout: float = 10.0) -> None:
        """Forget history below `revision` on every replica (reads and watches before it get
        Compacted). A replica that is down is skipped; compact again once it is back. The replicas
        compact at once, each after it has applied `revision` (a revision none reaches is refused)."""

        async def one(name: str, address: str) -> pb.CompactResponse | None:
            try:
                return await pb_grpc.AdminStub(self._channel(address)).Compact(
                    pb.CompactRequest(revision=revision), timeout=timeout
                )
            except grpc.aio.AioRpcError:
                log.warning("compact: %s (%s) did not answer; skipped", name, address)
                return None

        replicas = [(name, address) for name, role, address in self.endpoints.nodes if role == "replica"]
        for reply in await asyncio.gather(*(one(name, address) for name, address in replicas)):
            if reply is not None:
                raise_if_error(reply.error)

    # -- administration --------------------------------------------------------------------------

    async def status(self, *, timeout: float = 2.0) -> list[NodeStatus]:
        """Every node's status; a node that does not answer within `timeout` is reported down."""

        async def one(name: str, role: str, address: str) -> NodeStatus:
            try:
                s = await pb_grpc.AdminStub(self._channel(address)).Status(pb.StatusRequest(), timeout=timeout)
            except grpc.aio.AioRpcError as err:
                return NodeStatus(name, role, address, False, error=err.code().name)
            return NodeStatus(
                name,
                role,
                address,
                True,
                s.revision,
                s.digest,
                s.pid,
                s.epoch,
                s.prepared,
                s.locked_keys,
                s.uptime_s,
                s.view,
                tuple(s.view_members),
                s.membership,
                s.lease_valid,
                s.joining,
                s.fsyncs,
                s.batches_received,
                s.messages_received,
                s.reads_served,
                s.watches_open,
            )

        return list(await asyncio.gather(*(one(*n) for n in self.endpoints.nodes)))

    async def set_failpoint(self, node: str, name: str, action: str, *, timeout: float = 5.0) -> None:
        """Arm (or with action "off", clear) a failpoint on one node (testing only)."""
        address = dict((n, a) for n, _, a in self.endpoints.nodes).get(node)
        if address is None:
            known = ", ".join(n for n, _, _ in self.endpoints.nodes)
            raise InvalidArgument(f"no node named {node!r}; nodes are {known}", field="node")
        response = await pb_grpc.AdminStub(self._channel(address)).SetFailpoint(
            pb.FailpointRequest(name=name, action=action), timeout=timeout
        )
        raise_if_error(response.error)


async def discover(address: str, *, timeout: float = 5.0) -> Endpoints:
    """Endpoints of the cluster whose coordinator listens at `address` (asks it for the members)."""
    async with grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        try:
            status = await pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise Unavailable(f"cannot reach a coordinator at {address}: {err.code().name}") from None
    members = tuple((m.name, m.role, m.address) for m in status.members)
    replicas = tuple(a for _, role, a in members if role == "replica")
    if status.role != "coordinator" or not replicas:
        raise InvalidArgument(f"{address} is a {status.role or 'unknown node'}, not a coordinator; give its address")
    # The coordinator names its members by the addresses it knows; the one it was reached at stands for it.
    wires = tuple(
        (address if m.role == "coordinator" else m.address, m.wire_address) for m in status.members if m.wire_address
    )
    return Endpoints(address, replicas, members, wires=wires)


def resolve_endpoints_from_path(cluster: str | Path | None) -> Endpoints | None:
    """Endpoints from a config path (or the default lookup); None if `cluster` is an address."""
    if cluster is not None:
        text = str(cluster)
        looks_like_address = ":" in text and not Path(text).exists() and not text.endswith(".toml")
        if looks_like_address:
            return None
    return Endpoints.from_config(ClusterConfig.load(find_config(cluster)))


async def connect_async(
    cluster: str | Path | None = None, *, timeout: float = DEFAULT_TIMEOUT_S, client_id: str | None = None
) -> AsyncClient:
    """An async client for the cluster: a path to corral.toml (or its folder), a coordinator address
    `host:port`, or None for the CLI's lookup (`$CORRAL_CLUSTER`, then ./corral-data/corral.toml).

    Raises:
        NotFound: no config file where one was expected.
        Unavailable: a coordinator address that does not answer.
    """
    endpoints = resolve_endpoints_from_path(cluster)
    if endpoints is None:
        endpoints = await discover(str(cluster), timeout=timeout)
    return AsyncClient(endpoints, timeout=timeout, client_id=client_id)
