"""`python -m corral.sim`: sweep seeds of the 2PC cluster simulation, or replay one with its trace.

    python -m corral.sim --seeds 1000 [--start 0]   # run seeds start..start+999; print each failure
    python -m corral.sim --seed 1234 --verbose      # replay one run; print its trace line by line

Exit status: 0 when every run passed, 1 when any failed (each failure prints its replay command).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from corral.sim.cluster import SimCluster, SimFailure


def run_seed(seed: int, *, verbose: bool = False) -> SimFailure | None:
    """Run one seed; return its failure, if any. With `verbose`, print its trace first."""
    sim = SimCluster(seed, trace=verbose)
    failure: SimFailure | None = None
    try:
        sim.run()
    except SimFailure as err:
        failure = err
    if verbose:
        print(f"seed {seed}: {sim.cfg}")
        for line in sim.trace or ():
            print(line)
        ops = [op.status for op in sim.history]
        kept = sum(1 for op in sim.workload.lease_history if op.op == "keepalive" and op.info is not None)
        print(
            f"seed {seed}: {len(ops)} operations ({ops.count('ok')} ok, {ops.count('failed')} failed, "
            f"{ops.count('unknown')} unknown), {len(sim.commit_records)} commits, {sim.crash_count} crashes, "
            f"{sim.rec.view_changes} view changes, {len(sim.served_reads)} linearizable reads served, "
            f"{len(sim.rec.lease_ends)} leases ended ({kept} renewals acknowledged), "
            f"net {sim.net.stats}, virtual time {sim.now} ms"
        )
    return failure


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.sim", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seeds", type=int, help="how many seeds to sweep")
    group.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument("--start", type=int, default=0, help="first seed of a sweep (default 0)")
    parser.add_argument("--verbose", action="store_true", help="print the trace of a replayed seed")
    args = parser.parse_args(argv)
    if args.seed is not None:
        failure = run_seed(args.seed, verbose=args.verbose)
        print(failure if failure else f"seed {args.seed}: ok")
        return 1 if failure else 0
    started = time.monotonic()  # reporting only; the simulation itself never reads a clock
    failures = 0
    for seed in range(args.start, args.start + args.seeds):
        failure = run_seed(seed)
        if failure is not None:
            failures += 1
            print(failure, flush=True)
    elapsed = time.monotonic() - started
    last = args.start + args.seeds - 1
    print(f"{args.seeds - failures}/{args.seeds} seeds passed in {elapsed:.1f} s (seeds {args.start}..{last})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
