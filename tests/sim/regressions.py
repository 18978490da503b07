"""Seeds of `python -m corral.sim` that once failed, each with a note of the bug it caught.

Format: `(seed, note)`. The note names the broken rule, the mechanism, and where it was fixed; the bug itself
also gets a focused test (tests/core/ for a core, a scripted scenario in tests/sim/ otherwise), because a
seed's schedule depends on the simulator's code too and may stop reaching the bug when the simulator changes.
Keep the seed anyway: it is still a valid run. Replay one with `python -m corral.sim --seed SEED --verbose`.

Checked against the simulator as of its first version: with the fix reverted, each seed below fails.

Bugs found without a seed (scripted scenario instead, since random runs rarely line up the faults):
- ReplicaStorage.load dropped the outcomes written since the last trim without counting them as forgotten;
  a restarted replica then refused a transaction it had applied, and a peer in doubt aborted it.
  tests/sim/test_twopc_sim.py test_restarted_replica_still_knows_it_may_have_applied_a_forgotten_commit.
"""

from __future__ import annotations

_STALE_ABORT = (
    "participant: a late duplicate PREPARE after END made the replica vote again; the coordinator, which "
    "forgets ended commits, answered ABORT, and the replica recorded the committed txid as aborted, so a "
    "late duplicate COMMIT raised Internal (fixed in Participant._on_decision: an ABORT for a txid this "
    "replica committed, or may have forgotten, is stale and ignored; tests/core "
    "test_stale_abort_after_end_does_not_overwrite_a_commit)"
)

REGRESSIONS: list[tuple[int, str]] = [
    (115, _STALE_ABORT),
    (225, _STALE_ABORT),
    (325, _STALE_ABORT),
    (976, _STALE_ABORT),
]
