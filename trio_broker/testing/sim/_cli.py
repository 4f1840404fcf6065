"""The command line: replay one seed, or run a swarm of seeds."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time

from .._sim_mutants import MUTANTS, TARGETED_MUTANTS
from ._balancer import SPREAD_MUTANTS
from ._params import DEFAULT_LIVENESS_STEPS, DEFAULT_SAFETY_STEPS
from ._run import Simulation, run_swarm

COLUMNS_STATS = (
    "columns_receives",
    "columns_appends",
    "columns_groups",
    "columns_committed",
    "columns_groups_refused",
    "columns_refused_at_receive",
    "columns_refused",
    "columns_requeued",
    "columns_acked",
)
"""The counts of the leaders' columns path the swarm's summary sums (``_nodes``)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_broker.testing.sim", description=sys.modules[__package__].__doc__
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seed", type=int, help="replay one seed, printing its parameters")
    group.add_argument("--seeds", type=int, help="run this many seeds (a swarm)")
    parser.add_argument("--first", type=int, default=0, help="first seed of the swarm")
    parser.add_argument("--jobs", type=int, default=multiprocessing.cpu_count())
    parser.add_argument(
        "--mutant",
        choices=sorted([*MUTANTS, *TARGETED_MUTANTS, *SPREAD_MUTANTS]),
        help="run a deliberately broken core (or leadership balancer: spread_*)",
    )
    parser.add_argument("--safety-steps", type=int, default=DEFAULT_SAFETY_STEPS)
    parser.add_argument("--liveness-steps", type=int, default=DEFAULT_LIVENESS_STEPS)
    parser.add_argument("--trace", action="store_true", help="print every event of --seed")
    parser.add_argument(
        "--wire",
        choices=["on", "off"],
        help="brokers' messages encoded on the wire (on) or not (off) in every seed; "
        "by default each seed's own choice",
    )
    args = parser.parse_args(argv)
    wire = None if args.wire is None else args.wire == "on"

    if args.seed is not None:
        sim = Simulation(
            args.seed,
            mutant=args.mutant,
            safety_steps=args.safety_steps,
            liveness_steps=args.liveness_steps,
            log=print if args.trace else None,
            wire=wire,
        )
        print(f"seed {args.seed}" + (f" (mutant {args.mutant})" if args.mutant else ""))
        print("fault parameters:")
        print(sim.p.describe())
        r = sim.run()
        print("summary: " + ", ".join(f"{k}={v}" for k, v in r.stats.items()))
        print(f"trace hash: {r.trace_hash}")
        if r.ok:
            print("ok")
            return 0
        print(f"FAILED: {r.error}")
        print(f"replay: {r.replay_command()}")
        return 1

    start = time.perf_counter()
    results = run_swarm(
        range(args.first, args.first + args.seeds),
        mutant=args.mutant,
        jobs=args.jobs,
        safety_steps=args.safety_steps,
        liveness_steps=args.liveness_steps,
        wire=wire,
    )
    elapsed = time.perf_counter() - start
    steps = sum(r.steps for r in results)
    failures = [r for r in results if not r.ok]
    for r in failures:
        first_line = (r.error or "").splitlines()[0]
        print(f"seed {r.seed} FAILED: {first_line}")
        print(f"  replay: {r.replay_command()}")
    columns = {k: sum(r.stats.get(k, 0) for r in results) for k in COLUMNS_STATS}
    if columns["columns_receives"]:
        # The leaders' columns path (``_nodes._receive_columns``), over the swarm.
        print("columns: " + ", ".join(f"{k[8:]}={v}" for k, v in columns.items()))
    print(
        f"{len(results)} seeds, {len(failures)} failed, {elapsed:.1f}s, "
        f"{len(results) / elapsed:.1f} seeds/s, {steps / elapsed:,.0f} steps/s "
        f"({args.jobs} jobs)"
    )
    return 1 if failures else 0
