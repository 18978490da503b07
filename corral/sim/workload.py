"""The simulated cluster's clients: the random workload and the operations scenario tests script.

Model. A client runs one operation at a time on KEYS: put, delete, compare-and-set, a two-key txn, or a
linearizable read of one key at a random live replica. A write carries (client_id, seq) and goes to the
coordinator; on timeout it is retried with the same seq, at most `attempts_max` attempts, then its outcome is
unknown. An error reply means "not applied", except Unavailable(outcome_unknown), which ends the attempt like a
timeout. A read fails with the replica's error (no read lease, key in doubt: known outcome, nothing observed);
without a reply by its deadline plus READ_SLACK_MS its outcome is unknown. Every operation is recorded in
`history` (an `OpRecord`) for the checkers. Session clients (`sessions.py`) add lease requests, recorded in
`lease_history` (a `LeaseOpRecord`): sent as a `LeaseCall` with a deadline, answered or given up on at it.

Clients live on the virtual clock (`Scheduler`) and the fake network; they know nothing of the nodes except
their names, and which replicas are up (a client's load balancer skips a replica that refuses connections).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from corral.core.leases import LeaseInfo
from corral.core.messages import ClientLease, ClientReply, ClientTxn, ErrorInfo, TxnResult, TxnSpec
from corral.model import Compare, CompareOp, CompareTarget, Delete, Put
from corral.sim.network import LeaseCall, Network, ReadReply, ReadRequest, Scheduler
from corral.sim.observation import LeaseOp, LeaseOpRecord, OpKind, OpRecord

COORD = "c"
KEYS = ("k0", "k1", "k2")  # few keys: conflicts, locked reads and compares that matter

# -- bounds (each keeps one run small enough for 1,000 seeds in well under a minute) ----------------------
ATTEMPTS_MAX = 3  # a write's attempts before its outcome is declared unknown (the SDK's retry bound)
THINK_MS_MAX = 20  # a client's pause between operations (at least 1 ms: the checker needs ret < next call)
BACKOFF_MS_MAX = 20  # a client's pause before retrying a timed-out write
READ_SLACK_MS = 60  # how long past a read's deadline its client still waits for the reply
READ_P = 0.3  # share of reads in the random workload: enough to catch a stale replica, few enough to write

Status = Literal["ok", "failed", "unknown"]


@dataclass(slots=True)
class _Client:
    name: str
    ops_left: int
    scripted: bool
    seq: int = 0
    op: OpRecord | None = None
    attempts: int = 0
    attempts_max: int = ATTEMPTS_MAX
    attempts_over: int = 0  # the last request id whose attempt ended without an answer
    on_done: Callable[[], None] | None = None  # what a session client does after each operation


class Workload:
    """See the module docstring."""

    def __init__(
        self,
        sched: Scheduler,
        net: Network,
        rng: random.Random,
        *,
        replicas: Sequence[str],
        live_replicas: Callable[[], list[str]],
        attempt_timeout_ms: int,
        read_timeout_ms: int,
        note: Callable[[str], None],
    ) -> None:
        self.sched = sched
        self.net = net
        self.rng = rng
        self.replicas = tuple(replicas)
        self._live = live_replicas
        self.attempt_timeout_ms = attempt_timeout_ms
        self.read_timeout_ms = read_timeout_ms
        self.note = note
        self.clients: dict[str, _Client] = {}
        self.history: list[OpRecord] = []
        self.reply_to: dict[int, str] = {}  # request id -> client
        self.lease_history: list[LeaseOpRecord] = []
        self.revision_seen = 0  # the newest revision any client was told of (session clients guess names by it)
        self._request_id = 0
        self._open = 0  # operations not finished (random ones not begun yet included)
        self._written: dict[str, list[bytes]] = {k: [] for k in KEYS}
        self._lease_calls: dict[int, tuple[LeaseOpRecord, Callable[[LeaseOpRecord], None]]] = {}

    @property
    def now(self) -> int:
        return self.sched.now_ms

    def start_random(self, clients: int, ops_range: tuple[int, int]) -> None:
        for i in range(clients):
            client = self._client(f"cl{i + 1}", scripted=False)
            client.ops_left = self.rng.randint(*ops_range)
            self._open += client.ops_left
            self.sched.at(self.rng.randint(0, THINK_MS_MAX), functools.partial(self._next_op, client))

    def done(self) -> bool:
        """Every operation finished (ok, failed or unknown)."""
        return self._open == 0

    def open_ops(self, n: int) -> None:
        """`n` more operations to wait for (a session client's that are not in `history` count too)."""
        self._open += n

    def written(self, key: str, value: bytes) -> None:
        """A value written to `key` (compare-and-set operations expect recent ones)."""
        self._written[key].append(value)

    def idle(self, name: str) -> bool:
        """The client `name` runs no operation (or does not exist yet)."""
        return name not in self.clients or self.clients[name].op is None

    def client(self, name: str) -> _Client:
        """The client `name`, idle (created on first use, as a random client: see `_Client.on_done`)."""
        return self._client(name, scripted=False)

    # -- scripted operations -------------------------------------------------------------------------

    def submit(
        self, txn: TxnSpec, *, client: str = "cl1", kind: OpKind = "txn", value: bytes | None = None, attempts: int = 1
    ) -> OpRecord:
        """A client sends a write now, trying at most `attempts` times; the record fills in as it completes."""
        cl = self._client(client, scripted=True)
        cl.seq += 1
        op = OpRecord(client, kind, tuple(sorted(txn.keys())), self.now, seq=cl.seq, txn=txn, value=value)
        self._begin(cl, op, attempts_max=attempts)
        return op

    def put(self, key: str, value: bytes, *, client: str = "cl1", attempts: int = 1, lease: int = 0) -> OpRecord:
        txn = TxnSpec(on_success=(Put(key, value, lease),))
        return self.submit(txn, client=client, kind="put", value=value, attempts=attempts)

    def read(
        self, key: str, *, replica: str, client: str = "rd1", timeout_ms: int | None = None, prefix: bool = False
    ) -> OpRecord:
        """A client reads `key` (with `prefix`: every key under it) at `replica` now (deadline: `timeout_ms`,
        default the config's)."""
        cl = self._client(client, scripted=True)
        op = OpRecord(client, "range" if prefix else "get", (key,), self.now, replica=replica)
        self._begin(cl, op, read_timeout_ms=timeout_ms)
        return op

    def lease_request(
        self,
        client: str,
        op: LeaseOp,
        *,
        lease: int = 0,
        ttl_ms: int = 0,
        timeout_ms: int,
        then: Callable[[LeaseOpRecord], None] | None = None,
    ) -> LeaseOpRecord:
        """`client` sends a lease request now; `then(record)` runs once it is answered or `timeout_ms` passed
        (a lease request is not retried: a session sends the next keepalive, or grants anew)."""
        self.clients.setdefault(client, _Client(client, 0, scripted=True))  # lease requests run beside operations
        self._request_id += 1
        rid = self._request_id
        self.reply_to[rid] = client
        rec = LeaseOpRecord(client, op, lease, ttl_ms, self.now, rid)
        self.lease_history.append(rec)
        self._lease_calls[rid] = (rec, then or (lambda _: None))
        deadline = self.now + timeout_ms
        self.net.send(client, COORD, [LeaseCall(ClientLease(rid, op, lease, ttl_ms), deadline)])
        self.sched.at(deadline, lambda: self._lease_answered(rid, None))
        return rec

    def _lease_answered(self, rid: int, result: LeaseInfo | ErrorInfo | None) -> None:
        found = self._lease_calls.pop(rid, None)
        if found is None:
            return  # answered already, or given up on
        rec, then = found
        rec.ret_ms = self.now
        if isinstance(result, LeaseInfo):
            rec.status, rec.info = "ok", result
            rec.lease = result.id
        elif result is None or result.details.get("outcome_unknown"):
            rec.status, rec.ret_ms = "unknown", None
        else:
            rec.status, rec.error = "failed", result
        self.note(f"client={rec.client} end {rec.describe()}")
        then(rec)

    # -- the network's callback ----------------------------------------------------------------------

    def receive(self, name: str, item: object) -> None:
        cl = self.clients[name]
        op = cl.op
        rid = item.request_id if isinstance(item, ClientReply | ReadReply) else -1
        if isinstance(item, ClientReply) and rid in self._lease_calls:
            if isinstance(item.result, TxnResult):
                raise AssertionError(f"a lease request was answered with {item.result}")
            self._lease_answered(rid, item.result)
            return
        if op is None or rid not in op.request_ids:
            return  # a late answer to an operation already given up on
        if isinstance(item, ReadReply):
            op.output, op.error, op.kvs = item.value, item.error, item.kvs
            self._finish(cl, op, "failed" if item.error else "ok")
        elif isinstance(item, ClientReply):
            if isinstance(item.result, TxnResult):
                op.result = item.result
                self.revision_seen = max(self.revision_seen, item.result.revision)
                self._finish(cl, op, "ok")
            elif not isinstance(item.result, ErrorInfo):
                raise AssertionError(f"a write was answered with {item.result}")
            elif item.result.details.get("outcome_unknown"):
                self._attempt_over(cl, op, rid)
            elif rid == op.request_ids[-1]:
                # "Not applied": an earlier attempt passed its deadline before this one was sent, so it
                # was either decided already (then this one would have got its outcome) or never runs.
                op.error = item.result
                self._finish(cl, op, "failed")

    # -- operations ----------------------------------------------------------------------------------

    def _client(self, name: str, *, scripted: bool) -> _Client:
        client = self.clients.setdefault(name, _Client(name, 0, scripted))
        assert client.op is None, f"client {name} is busy with {client.op}"
        return client

    def _next_op(self, cl: _Client) -> None:
        if cl.ops_left <= 0:
            return
        cl.ops_left -= 1
        rng = self.rng
        key, other = rng.sample(KEYS, 2)
        roll = rng.random()
        if roll < READ_P:
            self._begin(cl, OpRecord(cl.name, "get", (key,), self.now, replica=self.random_replica()))
            return
        cl.seq += 1
        value = f"{cl.name}.{cl.seq}".encode()
        op = OpRecord(cl.name, "put", (key,), self.now, cl.seq, TxnSpec(on_success=(Put(key, value),)), value)
        if roll < 0.55:
            pass  # the put above
        elif roll < 0.65:
            op.kind, op.value, op.txn = "delete", None, TxnSpec(on_success=(Delete(key),))
        elif roll < 0.85:
            op.kind, op.expected = "cas", rng.choice(self._written[key][-3:] or [b"never-written"])
            cmp = Compare(key, CompareTarget.VALUE, CompareOp.EQUAL, op.expected)
            op.txn = TxnSpec(compares=(cmp,), on_success=(Put(key, value),))
        else:
            op.kind, op.keys = "txn", tuple(sorted((key, other)))
            op.txn = TxnSpec(on_success=(Put(key, value), Put(other, value)))
        for k in op.keys if op.value is not None else ():
            self._written[k].append(value)
        self._begin(cl, op)

    def random_replica(self) -> str:
        """A live replica, as a client's load balancer picks one (any, if none is up)."""
        return self.rng.choice(self._live() or list(self.replicas))

    def begin(self, cl: _Client, op: OpRecord) -> None:
        """Start a session client's operation (counted already, by `open_ops`)."""
        self._begin(cl, op)

    def _begin(
        self, cl: _Client, op: OpRecord, *, read_timeout_ms: int | None = None, attempts_max: int = ATTEMPTS_MAX
    ) -> None:
        if cl.scripted:
            self._open += 1
        cl.op, cl.attempts, cl.attempts_max = op, 0, attempts_max
        self.history.append(op)
        self.note(f"client={cl.name} begin {op.describe()}")
        if op.kind not in ("get", "range"):
            self._send_attempt(cl, op)
            return
        rid = self._new_request(cl, op)
        deadline = self.now + (read_timeout_ms or self.read_timeout_ms)
        self.net.send(cl.name, op.replica, [ReadRequest(rid, op.keys[0], deadline, prefix=op.kind == "range")])
        self.sched.at(deadline + READ_SLACK_MS, lambda: self._finish(cl, op, "unknown") if cl.op is op else None)

    def _new_request(self, cl: _Client, op: OpRecord) -> int:
        self._request_id += 1
        self.reply_to[self._request_id] = cl.name
        op.request_ids.append(self._request_id)
        return self._request_id

    def _send_attempt(self, cl: _Client, op: OpRecord) -> None:
        if cl.op is not op:
            return
        assert op.txn is not None
        cl.attempts += 1
        rid = self._new_request(cl, op)
        deadline = self.now + self.attempt_timeout_ms
        self.net.send(cl.name, COORD, [ClientTxn(rid, cl.name, op.seq, op.txn, deadline)])
        self.sched.at(deadline, lambda: self._attempt_over(cl, op, rid))

    def _attempt_over(self, cl: _Client, op: OpRecord, rid: int) -> None:
        """The attempt timed out, or the coordinator said its outcome is unknown: retry, or give up."""
        if cl.op is not op or op.request_ids[-1] != rid or cl.attempts_over == rid:
            return
        cl.attempts_over = rid
        if cl.attempts < cl.attempts_max:
            self.note(f"client={cl.name} request={rid} outcome unknown; retrying seq={op.seq}")
            self.sched.after(self.rng.randint(1, BACKOFF_MS_MAX), lambda: self._send_attempt(cl, op))
        else:
            self._finish(cl, op, "unknown")

    def _finish(self, cl: _Client, op: OpRecord, status: Status) -> None:
        op.status = status
        op.ret_ms = None if status == "unknown" else self.now
        cl.op = None
        self._open -= 1
        self.note(f"client={cl.name} end {op.describe()}")
        if cl.on_done is not None:
            cl.on_done()
        elif not cl.scripted:
            self.sched.after(self.rng.randint(1, THINK_MS_MAX), lambda: self._next_op(cl))
