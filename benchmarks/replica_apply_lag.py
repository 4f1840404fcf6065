"""A replica's transactions in the sequential workload, its apply at once or in fours:
``python -m benchmarks.replica_apply_lag [--rounds N] [--lag K] [--group G]``.

Each REPLICATE of the sequential workload carries one entry and the commit of the entry
before. With ``--group G``, each entry is a COMMAND_GROUP of G appends instead (100
connections x 1 in flight: a cycle's lone APPENDs, 5 to 95 of them, median about 44), and the
figures are per append (the save's CPU divided by G).

Two stores in a temporary directory (fsync on, as in a broker), fed the same appends
alternately:

- at once: each save writes entry N, the commit index N-1 and applies N-1, one durable
  transaction (as every replica did before ``RaftNode.apply_lag``);
- lag K: a save writes entry N alone until K committed entries wait, then writes it with
  their apply (and the commit index, which the applied index stands for).

Per append, median and mean over the rounds: the thread's CPU (``time.thread_time``: the
fsync's system time counted, its wait not), the wall time (the fsync's wait in it: noisy on
a shared disk), and the WAL frames written per transaction (4 KiB pages, each written and
synced; counted with SQLite's WAL hook, which takes over automatic checkpoints here: the
WAL only grows during the run). The lagging store's saves are then shown apart (the entry
alone; the entry with the apply of what waited), and the first of two replicas'
acknowledgements estimated from them, both replicas applying on one entry or taking turns.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

from benchmarks.apply_after_ack import _entry
from benchmarks.replica_cost import _frame, queue_store
from trio_broker._core import _raft_messages as rm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=800)
    parser.add_argument("--lag", type=int, default=4)
    parser.add_argument("--group", type=int, default=0, help="appends per entry (0: lone)")
    args = parser.parse_args()
    per = max(1, args.group)

    def entry_at(index: int) -> rm.Entry:
        return _frame(index, args.group, 0)[1] if args.group else _entry(index)

    cpu, wall = time.thread_time, time.perf_counter
    ways = ("at once", f"lag {args.lag}")
    seen: dict[str, list[tuple[float, float, int]]] = {way: [] for way in ways}
    split: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
    with (
        tempfile.TemporaryDirectory() as d1,
        queue_store(d1) as once,
        tempfile.TemporaryDirectory() as d2,
        queue_store(d2) as lagged,
    ):
        frames = {ways[0]: [0, 0], ways[1]: [0, 0]}  # (WAL pages now, at the last commit)

        def hook_for(way: str):  # type: ignore[no-untyped-def]
            def hook(db: object, name: str, pages: int) -> int:
                frames[way][0] = pages
                return 0

            return hook

        once._db.set_wal_hook(hook_for(ways[0]))
        lagged._db.set_wal_hook(hook_for(ways[1]))
        previous = entry_at(2)
        for store in (once, lagged):
            store.save(entries=[previous], hard_state=rm.HardState(1, None, 1))
        waiting: list[rm.Entry] = []
        for n in range(args.rounds + 20):
            entry = entry_at(3 + n)
            waiting.append(previous)
            for way in ways if n % 2 else ways[::-1]:
                applies = False
                started, began = cpu(), wall()
                if way == ways[0]:
                    once.save(
                        entries=[entry],
                        hard_state=rm.HardState(1, None, previous.index),
                        committed=[previous],
                    )
                elif len(waiting) >= args.lag:
                    applies = True
                    lagged.save(
                        entries=[entry],
                        hard_state=rm.HardState(1, None, previous.index),
                        committed=waiting,
                    )
                    waiting = []
                else:
                    lagged.save(entries=[entry])
                spent, took = cpu() - started, wall() - began
                now, last = frames[way]
                frames[way][1] = now
                if n >= 20:
                    seen[way].append((spent / per, took / per, now - last))
                    if way == ways[1]:
                        split[applies].append((spent / per, took / per, now - last))
            previous = entry
    shape = f"groups of {args.group}" if args.group else "sequential"
    print(f"a replica's save per append ({shape}), {args.rounds} rounds (µs; WAL frames per save)")
    print(
        f"  {'':<22} {'CPU p50':>8} {'CPU mean':>9} {'wall p50':>9} {'wall p90':>9} {'frames':>7}"
    )
    named = {f"{ways[1]}: entry alone": split[False], f"{ways[1]}: applies": split[True]}
    for way, rows in {**seen, **named}.items():
        cpus, walls, written = zip(*rows, strict=True)
        p90 = sorted(walls)[len(walls) * 9 // 10]
        print(
            f"  {way:<22} {statistics.median(cpus) * 1e6:8.1f} {statistics.mean(cpus) * 1e6:9.1f}"
            f" {statistics.median(walls) * 1e6:9.0f} {p90 * 1e6:9.0f}"
            f" {statistics.mean(written):7.2f}"
        )
    _turns(args.lag, [w for _, w, _ in split[False]], [w for _, w, _ in split[True]])


def _turns(lag: int, alone: list[float], applies: list[float]) -> None:
    """What the leader waits for, estimated from these saves' wall times: the first of two
    replicas' saves (the other acknowledgement is not on the path), drawn independently,
    over ``lag`` entries. Both replicas apply on the same entry (one entry in ``lag`` draws
    two applying saves), or they take turns (two entries in ``lag`` draw one of each: turns
    half the lag apart, as docs/performance-history.md's "Replicas take turns applying
    (tenth round)" tried). The fsync's noise is shared by the two replicas of a real cluster (one
    disk), and on two cores the CPU too: an estimate of the best case, not a figure. The
    timeline (``benchmarks.sequential_timeline``) shows what a real cluster does."""
    if not alone or not applies:
        return
    rng = random.Random(1)
    together: list[float] = []
    turns: list[float] = []
    for _ in range(4000):
        for k in range(lag):
            a, b = rng.choice(alone), rng.choice(alone)
            together.append(min(rng.choice(applies), rng.choice(applies)) if k == 0 else min(a, b))
            turns.append(min(rng.choice(applies), b) if k in (0, lag // 2) else min(a, b))
    print("the first of two replicas' saves, estimated (wall µs)")
    print(f"  {'':<24} {'p50':>6} {'p90':>7} {'mean':>7}")
    for name, rows in (("both apply on one entry", together), ("turns", turns)):
        rows.sort()
        print(
            f"  {name:<24} {rows[len(rows) // 2] * 1e6:6.0f} {rows[len(rows) * 9 // 10] * 1e6:7.0f}"
            f" {statistics.mean(rows) * 1e6:7.0f}"
        )


if __name__ == "__main__":
    main()
