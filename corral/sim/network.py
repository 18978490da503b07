"""The simulator's virtual clock and fake network (DESIGN.md "deterministic simulation").

Clock. `Scheduler` holds a heap of `(time_ms, seq, action)`; running the next action moves virtual time to
its time. Actions at the same time run in the order they were scheduled (`seq`), so a run depends only on
the seed. There is no wall clock, no sleep and no thread anywhere.

Network. Every message goes over a link `(src, dst)`. A link's behaviour is one of two modes, chosen per
seed, and the 2PC cores must be safe under both:
- FIFO (the real transport): a queue per link and at most one batch in flight; when the link is free, all
  queued messages (up to PEER_BATCH_MAX) leave as one batch with one random delay. Order is kept.
- REORDER: the messages of one send are cut into random chunks, each with its own delay; nothing is kept
  in order.

Faults, each drawn from the seeded RNG with the seed's probabilities:
- drop: a batch is lost; the sender may be told (`unreachable`, after an RPC timeout) or not;
- duplicate: a batch is delivered twice (FIFO: a retransmission right after; REORDER: a second copy with
  its own delay); never on links from clients (see `no_dup_from`): TCP does not duplicate a request, and
  the coordinator's retry rule assumes that a request it answered with an error does not come back;
- late: a batch gets an extra long delay, so stale messages arrive after the world moved on;
- ambiguous: a delivered batch is also reported unreachable (its response was lost), as an RPC timeout is;
- cut: a node is partitioned from every other node for an interval; `cut_link` cuts the two links between
  two nodes for an interval (a replica cut off from the coordinator only); `block` cuts one link (scripts);
- down: a batch for a node that is down (crashed) is lost; at send time the sender is told after a short
  delay with probability `report_p` (connection refused), otherwise it just never hears back.

`heal()` stops all of them (no drops, duplicates, late delays, cuts or blocks); messages already in flight
still arrive. A message is never delivered to a node that is down or cut off at its arrival time.

Clocks. Each node reads its own `NodeClock`: the virtual time scaled by a rate close to 1 plus an offset (as
two machines' monotonic clocks), fixed for the node across restarts. Timers the cores ask for are in their own
clock and converted to virtual time; so a lease counted by a replica and the coordinator's idea of it run at
slightly different speeds, which the cores' drift margin must cover.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from corral.core.leases import LeaseInfo
from corral.core.messages import (
    Abort,
    Ack,
    CaughtUp,
    ClientLease,
    ClientReply,
    ClientTxn,
    Commit,
    ErrorInfo,
    FetchReply,
    FetchRequest,
    Join,
    JoinReady,
    LeaseGrant,
    LeaseRequest,
    NotMember,
    Prepare,
    ResolveReply,
    ResolveRequest,
    SnapshotPage,
    SnapshotRequest,
    TxnResult,
    TxnSpec,
    Vote,
)
from corral.frozen import frozen
from corral.limits import PEER_BATCH_MAX
from corral.model import PutSequential
from corral.records import format_txid

Action = Callable[[], None]
Items = tuple[object, ...]
# deliver(src, dst, items); unreachable(src, dst, items, token): the sender's shell learns of a failed send.
DeliverFn = Callable[[str, str, Items], None]
UnreachableFn = Callable[[str, str, Items, int], None]


# -- what travels besides the cores' messages ---------------------------------------------------


@frozen
class ReadRequest:
    """A client's linearizable read at one replica (virtual-time deadline): of one key, or with `prefix`
    of every key starting with `key` (a range read)."""

    request_id: int
    key: str
    deadline_ms: int
    prefix: bool = False


@frozen
class ReadReply:
    request_id: int
    value: bytes | None = None
    error: ErrorInfo | None = None
    kvs: tuple[tuple[str, bytes], ...] = ()  # a range read: (key, value) in key order


@frozen
class LeaseCall:
    """A client's lease request to the coordinator, with its (virtual-time) deadline: as a gRPC call, it is
    never handled once the deadline has passed."""

    request: ClientLease
    deadline_ms: int


def describe(item: object) -> str:
    """One trace fragment for a message, ids first (`txid=e1.4 vote=yes`)."""
    if isinstance(item, Prepare):
        return f"txid={format_txid(item.txid)} prepare {_describe_txn(item.txn)}"
    if isinstance(item, Commit):
        return f"txid={format_txid(item.txid)} commit revision={item.revision}"
    if isinstance(item, Abort):
        return f"txid={format_txid(item.txid)} abort"
    if isinstance(item, Vote):
        reason = f" reason={item.reason.code}" if item.reason else ""
        return f"txid={format_txid(item.txid)} vote={'yes' if item.yes else 'no'} succeeded={item.succeeded}{reason}"
    if isinstance(item, Ack):
        return f"txid={format_txid(item.txid)} ack revision={item.revision}"
    if isinstance(item, ResolveRequest):
        return f"txids={','.join(format_txid(t) for t in item.txids)} resolve"
    if isinstance(item, ResolveReply):
        parts = (f"{format_txid(o.txid)}:{o.kind.name.lower()}@{o.revision}" for o in item.outcomes)
        return f"resolved={','.join(parts)}"
    if isinstance(item, LeaseRequest):
        return f"lease-request at={item.request_ms} applied={item.applied_revision}"
    if isinstance(item, LeaseGrant):
        return f"lease-grant view={item.view} members={','.join(item.members)} request={item.request_ms}"
    if isinstance(item, NotMember):
        return f"not-member view={item.view} members={','.join(item.members)}"
    if isinstance(item, Join):
        return f"join applied={item.applied_revision}"
    if isinstance(item, JoinReady):
        return f"join-ready revision={item.revision} txid_high={format_txid(item.txid_high)}"
    if isinstance(item, CaughtUp):
        return f"caught-up applied={item.applied_revision}"
    if isinstance(item, FetchRequest):
        return f"fetch from={item.from_revision}"
    if isinstance(item, FetchReply):
        if item.error is not None:
            return f"fetch-reply error={item.error.code}"
        revs = ",".join(str(r) for r, _ in item.revisions)
        return f"fetch-reply revisions={revs} through={item.through_revision} complete={item.complete}"
    if isinstance(item, SnapshotRequest):
        return f"snapshot-request revision={item.revision} after={item.after_key!r}"
    if isinstance(item, SnapshotPage):
        if item.error is not None:
            return f"snapshot-page error={item.error.code}"
        return f"snapshot-page revision={item.revision} after={item.after_key!r} keys={len(item.kvs)} more={item.more}"
    if isinstance(item, ClientTxn):
        return f"request={item.request_id} client={item.client_id} seq={item.seq} txn {_describe_txn(item.txn)}"
    if isinstance(item, ClientReply):
        r = item.result
        if isinstance(r, TxnResult):
            what = f"revision={r.revision} succeeded={r.succeeded}"
        elif isinstance(r, LeaseInfo):
            what = f"lease={r.id} ttl={r.ttl_ms} remaining={r.remaining_ms}"
        else:
            what = f"error={r.code}"
        return f"request={item.request_id} reply {what}"
    if isinstance(item, ReadRequest):
        what = "range prefix" if item.prefix else "read key"
        return f"request={item.request_id} {what}={item.key} deadline={item.deadline_ms}"
    if isinstance(item, ReadReply):
        what = f"error={item.error.code}" if item.error else f"value={item.value!r}"
        if item.kvs:
            what = f"keys={','.join(k for k, _ in item.kvs)}"
        return f"request={item.request_id} read-reply {what}"
    if isinstance(item, LeaseCall):
        call = item.request
        return (
            f"request={call.request_id} lease-{call.op} lease={call.lease_id} ttl={call.ttl_ms} "
            f"deadline={item.deadline_ms}"
        )
    return repr(item)


def _describe_txn(txn: TxnSpec) -> str:
    """The keys a transaction names, and the leases it attaches to or deletes, sequential prefixes."""
    out = f"keys={','.join(sorted(txn.keys()))}"
    writes = txn.on_success + txn.on_failure
    prefixes = sorted({w.prefix for w in writes if isinstance(w, PutSequential)})
    if prefixes:
        out += f" sequential={','.join(prefixes)}"
    if txn.leases_attached():
        out += f" attaches={','.join(str(lease) for lease in sorted(txn.leases_attached()))}"
    if txn.leases_deleted():
        out += f" deletes-lease={','.join(str(lease) for lease in txn.leases_deleted())}"
    return out


# -- clock and links ---------------------------------------------------------------------------


class Scheduler:
    """Virtual time: a heap of actions, run one at a time in (time, scheduling order)."""

    def __init__(self) -> None:
        self.now_ms = 0
        self._heap: list[tuple[int, int, Action]] = []
        self._seq = 0

    def at(self, time_ms: int, action: Action) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(time_ms, self.now_ms), self._seq, action))

    def after(self, delay_ms: int, action: Action) -> None:
        self.at(self.now_ms + delay_ms, action)

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def run_one(self) -> None:
        time_ms, _, action = heapq.heappop(self._heap)
        self.now_ms = time_ms
        action()

    def advance_to(self, time_ms: int) -> None:
        """Move the clock forward with nothing happening (a wait that ran out)."""
        self.now_ms = max(self.now_ms, time_ms)


@frozen
class NodeClock:
    """A node's monotonic clock: `offset + floor(virtual time * rate)`; never 0 once offset > 0."""

    offset_ms: int = 0
    rate: float = 1.0

    def local(self, virtual_ms: int) -> int:
        return self.offset_ms + math.floor(virtual_ms * self.rate)

    def virtual(self, local_ms: int) -> int:
        """The first virtual instant at which this clock reads `local_ms` or later."""
        if self.rate == 1.0:
            return max(0, local_ms - self.offset_ms)
        t = max(0, math.ceil((local_ms - self.offset_ms) / self.rate))
        while self.local(t) < local_ms:
            t += 1
        while t > 0 and self.local(t - 1) >= local_ms:
            t -= 1
        return t


@frozen
class NetConfig:
    """One seed's network behaviour (see the module docstring)."""

    fifo: bool = True
    delay_min_ms: int = 1
    delay_max_ms: int = 5
    drop_p: float = 0.0
    dup_p: float = 0.0
    late_p: float = 0.0
    late_max_ms: int = 0
    ambiguous_p: float = 0.0
    report_p: float = 1.0
    # How long a sender waits before it calls a lost batch unreachable (its RPC deadline).
    rpc_timeout_ms: int = 20

    def calm(self) -> NetConfig:
        """The same links with every fault switched off (after healing)."""
        return replace(self, drop_p=0.0, dup_p=0.0, late_p=0.0, ambiguous_p=0.0)


@dataclass(slots=True)
class _Link:
    queue: deque[object] = field(default_factory=deque)
    busy: bool = False
    token: int = 0  # the sender's incarnation that queued the messages


@dataclass(slots=True)
class NetStats:
    batches: int = 0
    dropped: int = 0
    duplicated: int = 0
    late: int = 0
    lost_down: int = 0
    reported: int = 0


class Network:
    """See the module docstring."""

    def __init__(
        self,
        sched: Scheduler,
        rng: random.Random,
        cfg: NetConfig,
        *,
        deliver: DeliverFn,
        unreachable: UnreachableFn,
        is_up: Callable[[str], bool],
        no_dup_from: Callable[[str], bool],
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.sched = sched
        self.rng = rng
        self.cfg = cfg
        self._deliver = deliver
        self._unreachable = unreachable
        self._is_up = is_up
        self._no_dup_from = no_dup_from
        self._trace = trace
        self._links: dict[tuple[str, str], _Link] = {}
        self._cut_until: dict[str, int] = {}
        self._link_cut_until: dict[tuple[str, str], int] = {}  # both directions of a cut link
        self._blocked: set[tuple[str, str]] = set()
        self.stats = NetStats()

    # -- faults --------------------------------------------------------------------------------

    def cut(self, node: str, until_ms: int) -> None:
        """Partition `node` from everyone until `until_ms`."""
        self._cut_until[node] = max(until_ms, self._cut_until.get(node, 0))

    def cut_link(self, a: str, b: str, until_ms: int) -> None:
        """Cut the links between `a` and `b`, both ways, until `until_ms`; both still reach everyone else."""
        for link in ((a, b), (b, a)):
            self._link_cut_until[link] = max(until_ms, self._link_cut_until.get(link, 0))

    def block(self, src: str, dst: str) -> None:
        self._blocked.add((src, dst))

    def unblock(self, src: str, dst: str) -> None:
        self._blocked.discard((src, dst))

    def heal(self) -> None:
        self.cfg = self.cfg.calm()
        self._cut_until.clear()
        self._link_cut_until.clear()
        self._blocked.clear()

    def is_cut(self, node: str) -> bool:
        return self._cut_until.get(node, -1) > self.sched.now_ms

    def reachable(self, src: str, dst: str) -> bool:
        if not self._is_up(dst):
            return False
        now = self.sched.now_ms
        cut = self._cut_until
        if cut and (cut.get(src, -1) > now or cut.get(dst, -1) > now):
            return False
        link = (src, dst)
        return link not in self._blocked and self._link_cut_until.get(link, -1) <= now

    def forget_sender(self, src: str) -> None:
        """`src` crashed: messages queued in its memory are gone (batches on the wire still arrive)."""
        for (s, _), link in self._links.items():
            if s == src:
                link.queue.clear()

    # -- sending -------------------------------------------------------------------------------

    def send(self, src: str, dst: str, items: Sequence[object], token: int = 0) -> None:
        """Hand `items` to the link src -> dst; `token` comes back with an unreachable report."""
        if not items:
            return
        if self.cfg.fifo:
            link = self._links.setdefault((src, dst), _Link())
            link.queue.extend(items)
            link.token = token
            if not link.busy:
                self._dispatch_fifo(src, dst, link)
            return
        rest = list(items)
        while rest:
            n = self.rng.randint(1, len(rest))
            self._launch(src, dst, tuple(rest[:n]), token, None)
            rest = rest[n:]

    def _dispatch_fifo(self, src: str, dst: str, link: _Link) -> None:
        batch = tuple(link.queue.popleft() for _ in range(min(len(link.queue), PEER_BATCH_MAX)))
        link.busy = True
        self._launch(src, dst, batch, link.token, link)

    def _free(self, src: str, dst: str, link: _Link | None) -> None:
        if link is None:
            return
        link.busy = False
        if link.queue:
            self._dispatch_fifo(src, dst, link)

    def _launch(self, src: str, dst: str, batch: Items, token: int, link: _Link | None) -> None:
        """Decide one batch's fate now; schedule its arrival, loss and reports."""
        cfg, rng = self.cfg, self.rng
        self.stats.batches += 1
        if not self._is_up(dst) and not self.is_cut(src):
            # Connection refused: the sender learns quickly, or (its shell timing out instead) not at all.
            self.stats.lost_down += 1
            delay = rng.randint(1, 3)
            if rng.random() < cfg.report_p:
                self._report(src, dst, batch, token, delay)
            self.sched.after(delay, lambda: self._free(src, dst, link))
            return
        if not self.reachable(src, dst) or rng.random() < cfg.drop_p:
            self.stats.dropped += 1
            self._note(f"net drop src={src} dst={dst} n={len(batch)}")
            if rng.random() < cfg.report_p:
                self._report(src, dst, batch, token, cfg.rpc_timeout_ms)
            self.sched.after(cfg.rpc_timeout_ms, lambda: self._free(src, dst, link))
            return
        delay = rng.randint(cfg.delay_min_ms, cfg.delay_max_ms)
        if cfg.late_p and rng.random() < cfg.late_p:
            self.stats.late += 1
            delay += rng.randint(1, cfg.late_max_ms)
        copies = 1
        if cfg.dup_p and not self._no_dup_from(src) and rng.random() < cfg.dup_p:
            self.stats.duplicated += 1
            copies = 2
        ambiguous = cfg.ambiguous_p and rng.random() < cfg.ambiguous_p
        if link is not None:
            self.sched.after(delay, lambda: self._arrive_fifo(src, dst, batch, copies, link))
        else:
            self.sched.after(delay, lambda: self._arrive(src, dst, batch))
            if copies == 2:
                extra = rng.randint(cfg.delay_min_ms, cfg.delay_max_ms + cfg.late_max_ms)
                self.sched.after(extra, lambda: self._arrive(src, dst, batch))
        if ambiguous:
            self._report(src, dst, batch, token, delay + cfg.rpc_timeout_ms)

    def _arrive_fifo(self, src: str, dst: str, batch: Items, copies: int, link: _Link) -> None:
        for _ in range(copies):
            self._arrive(src, dst, batch)
        self._free(src, dst, link)

    def _arrive(self, src: str, dst: str, batch: Items) -> None:
        if not self.reachable(src, dst):
            self.stats.lost_down += 1
            self._note(f"net lost src={src} dst={dst} n={len(batch)} (down or cut off at arrival)")
            return
        self._deliver(src, dst, batch)

    def _report(self, src: str, dst: str, batch: Items, token: int, delay: int) -> None:
        self.stats.reported += 1
        self.sched.after(delay, lambda: self._unreachable(src, dst, batch, token))

    def _note(self, line: str) -> None:
        if self._trace is not None:
            self._trace(line)
