"""Seeds of `python -m corral.sim` that once failed, each with a note of the bug it caught.

Format: `(seed, note)`. The note names the broken rule, the mechanism, and where it was fixed; the bug itself
also gets a focused test (tests/core/ for a core, a scripted scenario in tests/sim/ otherwise), because a
seed's schedule depends on the simulator's code too and may stop reaching the bug when the simulator changes.
Keep the seed anyway: it is still a valid run. Replay one with `python -m corral.sim --seed SEED --verbose`.

Checked against the simulator of its time: with the fix reverted, each seed below failed. (The first four
against its first version; the next eight against the version that models views, read leases and rejoining;
the rest against the version with client leases and sequential keys.)

Bugs found without a seed (scripted scenario instead, since random runs rarely line up the faults):
- ReplicaStorage.load dropped the outcomes written since the last trim without counting them as forgotten;
  a restarted replica then refused a transaction it had applied, and a peer in doubt aborted it.
  tests/sim/test_twopc_sim.py test_restarted_replica_still_knows_it_may_have_applied_a_forgotten_commit.
- ReplicaService._range checked the read lease only before waiting for a locked key; a replica dropped
  meanwhile discards the in-doubt transaction holding the lock (it committed without it) and served the
  value it replaced. Fixed in the shell (the lease is checked again when the store is read);
  test_read_waiting_for_a_lock_is_refused_once_its_replica_lost_its_lease.
- The coordinator answered a late yes vote from a dropped replica with ABORT although the commit may have
  ENDed without it (the vote's sibling of _PRESUMED_ABORT below); fixed in Coordinator._on_vote (only
  members get that ABORT); tests/core/test_views.py test_late_yes_from_a_dropped_replica_gets_no_presumed_abort.
"""

from __future__ import annotations

_STALE_ABORT = (
    "participant: a late duplicate PREPARE after END made the replica vote again; the coordinator, which "
    "forgets ended commits, answered ABORT, and the replica recorded the committed txid as aborted, so a "
    "late duplicate COMMIT raised Internal (fixed in Participant._on_decision: an ABORT for a txid this "
    "replica committed, or may have forgotten, is stale and ignored; tests/core "
    "test_stale_abort_after_end_does_not_overwrite_a_commit)"
)

_JOIN_TIMER = (
    "participant: a replica that asked to join and went back to fetching (no member answering) kept its "
    "expired join timer as its wake time, so its shell ticked in a loop at one instant (a spinning CPU in the "
    "real shell; the simulator now reports it). Fixed in Participant._next_wake (the join timer counts only "
    "while joining is the next step); tests/core test_outside_replica_never_asks_to_be_woken_in_the_past"
)
_PRESUMED_ABORT = (
    "participant: a replica cut off from the coordinator voted yes, was dropped, and the commit ENDed without "
    "its ack; healed but not yet told it was outside, it trusted the coordinator's presumed ABORTED and "
    "recorded the committed txid as aborted. Fixed in Participant._on_resolve_reply (the coordinator's "
    "ABORTED is trusted only while the read lease holds: until then the coordinator cannot have dropped it); "
    "tests/core test_member_without_a_lease_does_not_trust_a_presumed_abort"
)
_LATE_FETCH = (
    "participant: the answer to a fetch sent while catching up arrived after the replica rejoined; as a member "
    "it applied the fetched revision, which its prepared transaction held, and the COMMIT then raised Internal. "
    "Fixed in Participant._on_fetch_reply (applied only outside the view); tests/core "
    "test_member_ignores_a_late_fetch_reply"
)
_STALE_CAUGHT_UP = (
    "coordinator: the JoinReady of a timed-out join and of the next one reached the replica together; its "
    "CaughtUp to the older one was logged as an error and refused the join. Fixed in Coordinator._on_caught_up "
    "(a CaughtUp below the held revision answers an earlier JoinReady: ignored); tests/core "
    "test_caught_up_answering_an_earlier_join_ready_is_ignored"
)
_FETCH_LOG = (
    "participant: a fetch refused because the peer had just restarted (not a member yet) was logged as an "
    "error, which the simulator treats as a bug; it is expected and retried. Fixed in "
    "Participant._on_fetch_reply (Unavailable is a warning; other errors, e.g. compacted history, stay errors)"
)
_SHELL_WAKE = (
    "replica shell: a batch holding only FetchRequests stepped no core and set the ticker's wake time to None, "
    "so a member that served a catch-up stopped renewing its lease, was dropped, and never learned it (no "
    "quiescence). Fixed in ReplicaService._process (only a stepped batch sets the wake time; the simulator's "
    "shell mirrors it); tests/sim test_replica_shell_keeps_its_timer_across_a_batch_of_fetches"
)

_LEASE_RETRY_SPIN = (
    "coordinator: a lease's deletion that aborted is retried commit_retry_ms later, but its retry time stayed "
    "in Coordinator._lease_retry_ms after the retry started (and passed unnoticed while a join held it), so it "
    "was the core's wake time in the past and the shell's ticker spun. Fixed in "
    "Coordinator._progress_lease_ends (a due retry time is dropped); tests/core "
    "test_a_retried_lease_deletion_never_asks_to_be_woken_in_the_past and "
    "test_a_lease_deletion_held_by_a_join_never_asks_to_be_woken_in_the_past"
)
_REJOIN_ORDER = (
    "participant: a member heard COMMIT(revision r) before r-1 (it waits for order), then learned it is outside; "
    "the member it fetched from had not applied r-1 either and answered complete, so it counted itself level "
    "and waited forever for the decided commit to leave _prepared: it never asked to join (no quiescence). "
    "Fixed in Participant._progress_rejoin (a decided revision above the applied one means not level: fetch "
    "on); tests/core test_outside_replica_with_a_commit_waiting_for_order_keeps_fetching. First found as seed "
    "162 while the workload was being built; 6664 fails with the final one"
)
_SEQUENTIAL_MUTUAL = (
    "participant: a sequential put was prepared while a prepared compare held one of the names it may take "
    "(locks were one-way: only reads and compares waited for sequential puts). The put committed first and "
    "created the name: the compare's outcome no longer held at its own revision (270, 471: committed wrongly) "
    "or replicas that evaluated it on either side disagreed (581). Fixed in Participant._on_prepare (a "
    "sequential put votes no while a prepared transaction holds a name it may create); tests/core "
    "test_sequential_put_votes_no_while_a_prepared_transaction_holds_a_name_it_may_take. First found as seed "
    "2876 while the workload was being built"
)

_JOIN_TIMER_SPIN = (
    "participant: an outside replica asked to join, then a duplicated fetch was answered again, first 'level' "
    "and then Compacted (the member had compacted meanwhile); it began a snapshot, and its next wake time "
    "still counted the Join's timer, which passed while the snapshot was under way: the shell ticked in a "
    "loop at one instant. Fixed in Participant._next_wake (the Join's timer counts only while joining is the "
    "next step, _join_is_next; since then core/rejoin.py keeps only the next step's timer) and _on_fetch_reply "
    "(an error answering an older fetch is ignored too); tests/core: "
    "test_a_snapshot_begun_after_asking_to_join_leaves_no_past_timer, "
    "test_an_error_answering_an_older_fetch_is_ignored and test_rejoin.py. "
    "Found by a sweep of seeds 7,000,000-7,019,999"
)

_SNAPSHOT_HISTORY = (
    "store: a replica that installed a member's snapshot at revision r took r as its compaction point, so it "
    "served catch-up fetches from r itself; but a snapshot holds the state at r, not r's changes (a key "
    "deleted at r has no row), so a replica fetching from r heard 'no changes' there, skipped the delete and "
    "diverged (check_replicas_equal). Fixed in MVCCStore (history_from: changes from r + 1 after a snapshot); "
    "tests/store test_history_served_from_a_snapshot_starts_after_its_revision. Found by a sweep of seeds "
    "7,100,000-7,125,891"
)

_SNAPSHOT_CHAIN = (
    "simulator: every replica installed a snapshot in turn (r2 of r3 at 8, r1 of r2 at 9, r3 of r1 at 10, "
    "after a compaction of r3 at 6), so no replica kept history of its own up to the snapshots and the "
    "checkers, which looked for one that had, stopped with StopIteration. Not a bug in Corral: history may "
    "go with a snapshot as with a compaction. The simulator now archives a replica's history before a "
    "snapshot replaces its store, and observation.replica_history takes the revisions a replica got by "
    "snapshot from whichever replica holds them. Found by a sweep of seeds 7,095,670-7,139,933"
)

_LATE_LAST_PAGE = (
    "simulator: a late last page of a snapshot already installed reached r1 while the replicas holding the "
    "revision it had got by that snapshot were down; the simulator archived r1's history for every last page "
    "and could not rebuild it then (InvariantViolation: no replica holds revision 5). It now archives only "
    "for the last page of the snapshot under way, and keeps the archive it has when the holders are down. "
    "Found by a sweep of seeds 7,144,317-7,185,387, which ran on the first version of the archive (971a43b)"
)

REGRESSIONS: list[tuple[int, str]] = [
    (115, _STALE_ABORT),
    (225, _STALE_ABORT),
    (325, _STALE_ABORT),
    (976, _STALE_ABORT),
    (303, _JOIN_TIMER),
    (569, _PRESUMED_ABORT),
    (619, _PRESUMED_ABORT),
    (937, _LATE_FETCH),
    (21965, _STALE_CAUGHT_UP),
    (80, _FETCH_LOG),
    (11, _SHELL_WAKE),
    (45, _SHELL_WAKE),
    (19, _LEASE_RETRY_SPIN),
    (4, _LEASE_RETRY_SPIN),
    (6664, _REJOIN_ORDER),
    (270, _SEQUENTIAL_MUTUAL),
    (471, _SEQUENTIAL_MUTUAL),
    (581, _SEQUENTIAL_MUTUAL),
    (7012185, _JOIN_TIMER_SPIN),
    (7122095, _SNAPSHOT_HISTORY),
    (7139933, _SNAPSHOT_CHAIN),
    (7185387, _LATE_LAST_PAGE),
]
