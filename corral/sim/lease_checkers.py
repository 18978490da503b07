"""Checkers for client leases (sessions) and sequential keys, over one quiescent run (see `checkers.py`).

8. A lease's end is one revision, everywhere (`check_lease_ends`): every LeaseEndRecord is logged in the same
   write as the commit of that lease's DeleteByLease transaction, each lease ends at most once, and every
   transaction of the coordinator's own is the end of one lease. On every replica, the keys holding the lease
   just before that revision r (the store at r-1) are exactly the keys revision r deletes, and r changes
   nothing else.
9. No orphan ephemeral key (`check_no_orphans`): no put attached to a lease commits at a revision after the
   lease's end (not in the decision log as the model applies it, not in any replica's history), and after
   quiescence every live key attached to a lease holds one that is live in the coordinator's log. With 8,
   no live key holds an ended lease at any revision after its end, on any replica.
10. Sequential names (`check_sequential`): a PutSequential committed at revision r created (version 1,
   create_revision r) exactly `prefix + r` in 20 digits, on every replica; names are unique; no other put ever
   writes a name a sequential put took, before or after it (deleting it is allowed: its owner, or its lease's
   end, may).
11. A lease kept alive is not ended (`check_kept_alive`). Stated on the coordinator's clock, per epoch: the
   coordinator restarts a lease's TTL at a grant, an acknowledged keepalive, and at the start of every epoch
   that finds it in the log (the fresh-TTL rule: a restart must not expire every session). It may begin
   deleting a lease's keys (a DeleteByLease PREPARE) only after a revoke of it in that epoch, or once a whole
   TTL has passed on its clock since the last restart in that epoch. Once a lease began ending in an epoch, no
   keepalive of it is acknowledged in that epoch; once it ended, nothing happens to it any more. This is
   sound under crashes (an epoch's timers start with it, and its memory of keepalives dies with the previous
   one) and under clock skew (one clock: the coordinator's own). The client's consequence is checked too,
   on virtual time: a keepalive (or grant) sent at s and acknowledged means the lease's keys are not deleted
   before s + (ttl - 1) / (1 + skew) unless a revoke was sent by then, since the coordinator processed it
   after s and its clock runs at most 1 + skew times as fast as virtual time (the -1: clocks read whole ms).
   A session may not simply count its TTL from s on its own clock: with skew it could believe its lease
   alive for up to ttl * skew / (1 + skew) after the coordinator deleted its keys.
12. A revoke is answered only once the lease's keys are gone (`check_revokes`): an answered revoke's lease
   ended, logged no later than the answer reached the client.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from corral.model import DeleteByLease, Put, PutSequential, sequential_key
from corral.sim.observation import InvariantViolation, LeaseEnd, Observation, Replay, Row, row


def _ends(obs: Observation) -> dict[int, tuple[LeaseEnd, int]]:
    """Each ended lease -> (its LeaseEnd, the revision of its deletion)."""
    out: dict[int, tuple[LeaseEnd, int]] = {}
    by_revision = {rec.revision: rec for rec in obs.commit_records}
    for end in obs.lease_ends:
        if end.lease in out:
            raise InvariantViolation(
                f"lease {end.lease} ended twice (revisions {out[end.lease][1]} and {end.revisions})"
            )
        mine = [
            r
            for r in end.revisions
            if r in by_revision
            and obs.coordinator_txns.get(by_revision[r].txid) is not None
            and DeleteByLease(end.lease) in obs.coordinator_txns[by_revision[r].txid].on_success
        ]
        if len(mine) != 1:
            raise InvariantViolation(
                f"LeaseEndRecord({end.lease}) logged with revisions {end.revisions}, not with its deletion's commit"
            )
        out[end.lease] = (end, mine[0])
    return out


def check_lease_ends(obs: Observation) -> None:
    ends = _ends(obs)
    ended_at = {revision: lease for lease, (_, revision) in ends.items()}
    for rec in obs.commit_records:
        if not rec.client_id and rec.revision not in ended_at:
            raise InvariantViolation(f"revision {rec.revision} is the coordinator's own but ends no lease")
    for name in sorted(obs.replicas):
        events = obs.changes(name)
        changes: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for event in events:
            changes[event.kv.mod_revision].append((str(event.kind), event.kv.key))
        leases: dict[str, int] = {}  # live key -> its lease, replayed from the history up to each end
        replayed = 0
        for rev, lease in sorted((rev, lease) for lease, (_, rev) in ends.items()):
            while replayed < len(events) and events[replayed].kv.mod_revision < rev:
                kv = events[replayed].kv
                if events[replayed].kind == "put":
                    leases[kv.key] = kv.lease
                else:
                    leases.pop(kv.key, None)
                replayed += 1
            held = sorted(k for k, attached in leases.items() if attached == lease)
            deleted = sorted(changes.get(rev, []))
            if deleted != [("delete", k) for k in sorted(held)]:
                raise InvariantViolation(
                    f"replica={name} lease {lease} ended at revision {rev}: keys holding it just before {held}, "
                    f"but that revision changed {deleted}"
                )


def check_no_orphans(obs: Observation) -> None:
    end_revision = {lease: rev for lease, (_, rev) in _ends(obs).items()}
    for step in Replay(obs):
        for w in step.writes:
            if isinstance(w, Put) and w.lease in end_revision and step.revision > end_revision[w.lease]:
                raise InvariantViolation(
                    f"revision {step.revision} attaches {w.key!r} to lease {w.lease}, which ended at revision "
                    f"{end_revision[w.lease]}: an orphan ephemeral key"
                )
    for name, storage in sorted(obs.replicas.items()):
        for event in obs.changes(name):
            kv = event.kv
            if kv.lease in end_revision and kv.mod_revision > end_revision[kv.lease]:
                raise InvariantViolation(
                    f"replica={name} wrote {kv.key!r} with lease {kv.lease} at revision {kv.mod_revision}, after "
                    f"the lease ended at revision {end_revision[kv.lease]}"
                )
        for kv in storage.store.range(""):
            if kv.lease and kv.lease not in obs.live_leases:
                raise InvariantViolation(
                    f"replica={name} holds {kv.key!r} with lease {kv.lease}, which is not live at the coordinator"
                )


def check_sequential(obs: Observation) -> None:
    created: dict[str, tuple[int, Row]] = {}  # name -> (revision, the row that created it)
    for step in Replay(obs):
        branch = step.txn.on_success if step.succeeded else step.txn.on_failure
        for w in branch:
            if isinstance(w, PutSequential):
                name = sequential_key(w.prefix, step.revision)
                if name in created:
                    raise InvariantViolation(
                        f"sequential name {name!r} taken at revisions {created[name][0]} and {step.revision}"
                    )
                created[name] = (step.revision, ("put", name, w.value, step.revision, step.revision, 1, w.lease))
    for replica in sorted(obs.replicas):
        puts: dict[str, list[Row]] = defaultdict(list)
        for event in obs.changes(replica):
            if event.kv.key in created and event.kind == "put":
                puts[event.kv.key].append(row(event))
        for name, (rev, expected) in sorted(created.items()):
            if puts.get(name) != [expected]:
                raise InvariantViolation(
                    f"replica={replica}: the sequential put at revision {rev} should have created {name!r} "
                    f"({expected}), and nothing else put it; the puts of that name are {puts.get(name)}"
                )


@dataclass(slots=True)
class _Clock:
    """A lease in one coordinator epoch: when its TTL last restarted (the coordinator's clock), and whether
    it has begun ending."""

    restarted_ms: int
    ttl_ms: int
    ending: bool = False


def check_kept_alive(obs: Observation) -> None:
    clocks: dict[tuple[int, int], _Clock] = {}  # (lease, epoch) -> its clock in that epoch
    ended: set[int] = set()
    for step in obs.lease_steps:
        where = f"lease {step.lease} epoch {step.epoch} at {step.local_ms} (t={step.at_ms})"
        if step.lease in ended:
            raise InvariantViolation(f"{where}: {step.kind} after the lease ended")
        key = (step.lease, step.epoch)
        clock = clocks.get(key)
        if step.kind in ("start", "grant", "keepalive"):
            if clock is not None and clock.ending:
                raise InvariantViolation(f"{where}: {step.kind} of a lease that began ending in this epoch")
            if clock is None and step.kind == "keepalive":
                raise InvariantViolation(f"{where}: keepalive of a lease this epoch never had")
            clocks[key] = _Clock(step.local_ms, step.ttl_ms or (clock.ttl_ms if clock else 0))
        elif clock is None:
            raise InvariantViolation(f"{where}: {step.kind} of a lease this epoch never had")
        elif step.kind == "revoke":
            clock.ending = True
        elif step.kind == "delete":
            if not clock.ending and step.local_ms < clock.restarted_ms + clock.ttl_ms:
                raise InvariantViolation(
                    f"{where}: its keys are being deleted, but its TTL of {clock.ttl_ms} ms restarted at "
                    f"{clock.restarted_ms} and nobody revoked it: a lease kept alive is ending"
                )
            clock.ending = True
        else:  # "end"
            ended.add(step.lease)
    _check_sessions_promise(obs)


def _check_sessions_promise(obs: Observation) -> None:
    """The client's consequence of check 11 (see the module docstring), on virtual time."""
    deletes: dict[int, list[int]] = defaultdict(list)
    for step in obs.lease_steps:
        if step.kind == "delete":
            deletes[step.lease].append(step.at_ms)
    revoked: dict[int, int] = {}  # lease -> first time a revoke of it was sent
    for op in obs.lease_history:
        if op.op == "revoke":
            revoked[op.lease] = min(op.call_ms, revoked.get(op.lease, op.call_ms))
    for op in obs.lease_history:
        if op.info is None or op.op == "revoke":
            continue
        lease, ttl = op.info.id, op.info.ttl_ms
        for at in deletes.get(lease, ()):
            if at < op.call_ms or revoked.get(lease, at + 1) <= at:
                continue
            if (at - op.call_ms) * (1 + obs.clock_skew) <= ttl - 1:
                raise InvariantViolation(
                    f"{op.describe()}: the lease's keys were being deleted at t={at}, before its TTL of {ttl} ms "
                    f"could have run out on the coordinator's clock (skew {obs.clock_skew})"
                )


def check_revokes(obs: Observation) -> None:
    ends = _ends(obs)
    for op in obs.lease_history:
        if op.op != "revoke" or op.info is None:
            continue
        end = ends.get(op.lease)
        if end is None or op.ret_ms is None or end[0].at_ms > op.ret_ms:
            raise InvariantViolation(f"{op.describe()} answered, but the lease's end was logged at {end}")


LEASE_CHECKS: tuple[Callable[[Observation], None], ...] = (
    check_lease_ends,
    check_no_orphans,
    check_sequential,
    check_kept_alive,
    check_revokes,
)
