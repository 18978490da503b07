"""What the simulated shells see of the nodes, kept for the checkers (`observation.py`).

The coordinator's shell hands every step here: the events it stepped with their effects (which lease
requests were answered how, which transactions were prepared, which deletions of a lease's keys began), and
every forced write (decisions and when they were logged, view changes, lease ends with the commits logged in
the same write). Replicas' shells hand their records; reads served are appended by the cluster. Nothing here
reads a core's memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from corral.core.leases import LeaseInfo
from corral.core.messages import ClientLease, Commit, Effects, Envelope, ErrorInfo, Event, Prepare, TxnSpec
from corral.records import CommitRecord, LeaseEndRecord, Record, TxId, ViewRecord
from corral.sim.observation import Archive, LeaseEnd, LeaseStep, LeaseStepKind, Observation, ServedRead
from corral.sim.workload import COORD, Workload
from corral.store.replica_log import ReplicaStorage


class Recorder:
    """See the module docstring."""

    def __init__(self, replicas: Sequence[str], note: Callable[[str], None]) -> None:
        self.note = note
        self.commit_records: list[CommitRecord] = []
        self.commits_sent: dict[TxId, set[int]] = {}
        self.replica_records: dict[str, list[Record]] = {n: [] for n in replicas}
        self.served_reads: list[ServedRead] = []
        self.view_members: tuple[str, ...] = tuple(replicas)  # the coordinator's durable view (all, before its first)
        self.decided_revision = 0  # the newest revision in the coordinator's log
        self.view_changes = 0  # ViewRecords the coordinator wrote (the first view included)
        self.coordinator_txns: dict[TxId, TxnSpec] = {}  # every transaction the coordinator prepared
        self.commit_times: dict[int, int] = {}  # revision -> virtual time its decision was logged
        self.lease_ends: list[LeaseEnd] = []
        self.lease_steps: list[LeaseStep] = []
        self.archives: dict[str, Archive] = {}  # each replica's history kept before a compaction or snapshot

    def coordinator_started(self, epoch: int, leases: Sequence[tuple[int, int]], local_ms: int, at_ms: int) -> None:
        """A new epoch found `leases` (id, ttl) live in its log: each one's TTL starts now."""
        for lease, ttl in leases:
            self.lease_steps.append(LeaseStep(epoch, local_ms, at_ms, lease, "start", ttl))

    def coordinator_step(self, events: Sequence[Event], eff: Effects, epoch: int, local_ms: int, at_ms: int) -> None:
        """One step of the coordinator (before its records are written): its lease requests, its PREPAREs."""
        answers = {r.request_id: r.result for r in eff.reply}
        for ev in events:
            if not isinstance(ev, ClientLease):
                continue
            answer = answers.get(ev.request_id)
            if ev.op in ("grant", "keepalive") and isinstance(answer, LeaseInfo):
                kind: LeaseStepKind = "grant" if ev.op == "grant" else "keepalive"
                self.lease_steps.append(LeaseStep(epoch, local_ms, at_ms, answer.id, kind, answer.ttl_ms))
            elif ev.op == "revoke" and not isinstance(answer, ErrorInfo):  # the lease existed: it ends now
                self.lease_steps.append(LeaseStep(epoch, local_ms, at_ms, ev.lease_id, "revoke"))
        for env in eff.send:
            msg = env.msg
            if isinstance(msg, Prepare) and msg.txid not in self.coordinator_txns:
                self.coordinator_txns[msg.txid] = msg.txn
                for lease in msg.txn.leases_deleted():
                    self.lease_steps.append(LeaseStep(epoch, local_ms, at_ms, lease, "delete"))

    def coordinator_wrote(self, forced: Sequence[Record], epoch: int, local_ms: int, at_ms: int) -> None:
        """The coordinator's forced write of one step is durable."""
        revisions = tuple(r.revision for r in forced if isinstance(r, CommitRecord))
        for rec in forced:
            if isinstance(rec, CommitRecord):
                self.commit_records.append(rec)
                self.commit_times[rec.revision] = at_ms
                self.decided_revision = max(self.decided_revision, rec.revision)
            elif isinstance(rec, LeaseEndRecord):
                self.lease_ends.append(LeaseEnd(rec.lease_id, revisions, at_ms))
                self.lease_steps.append(LeaseStep(epoch, local_ms, at_ms, rec.lease_id, "end"))
            elif isinstance(rec, ViewRecord):
                self.view_members = rec.members
                self.view_changes += 1
                self.note(f"node={COORD} view={rec.view} members={','.join(rec.members)}")

    def sent(self, envelopes: Sequence[Envelope]) -> None:
        for env in envelopes:
            if isinstance(env.msg, Commit):
                self.commits_sent.setdefault(env.msg.txid, set()).add(env.msg.revision)

    def observation(
        self,
        seed: int,
        last_revision: int,
        *,
        replicas: Mapping[str, ReplicaStorage],
        workload: Workload,
        live_leases: frozenset[int],
        clock_skew: float,
    ) -> Observation:
        """Everything recorded, with the clients' histories and the quiescent stores, for the checkers."""
        return Observation(
            seed,
            last_revision,
            self.commit_records,
            self.commits_sent,
            self.replica_records,
            replicas,
            workload.history,
            self.served_reads,
            self.coordinator_txns,
            self.commit_times,
            self.lease_ends,
            self.lease_steps,
            workload.lease_history,
            live_leases,
            clock_skew,
            self.archives,
        )
