"""A run's results on a replica and on a leader: ``python -m benchmarks.replica11_results``.

The apply of a group of plain appends to one queue (the bench's pipelined shape: ``--appends``
appends a group, a new stamp every ``--receive``; 100 connections x 1: ``--appends 47
--receive 20``), then what each broker does with its results:

- replica: the views told of the group (``applied_group`` over the broker's callbacks, as
  ``benchmarks.replica_cost`` builds them): nothing else reads a replica's results;
- leader: the same, and every result read once (a leader answers each append).

Each on a store in a temporary directory, inside a transaction rolled back after each round
(no fsync: the statements' and the results' CPU alone), thread CPU per append
(``time.thread_time``), the median of ``--rounds`` rounds after a warm-up, each of ``--repeat``
applies. Run it on two trees (``PYTHONPATH=A``, ``PYTHONPATH=B``) alternately to compare them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import weakref

from benchmarks.replica_cost import QUEUE, queue_store
from trio_broker._core import _commands as cmd
from trio_broker._protocol._codec import dumps_value
from trio_broker._runtime._applied import OnAppliedGroup, applied_group, applied_views
from trio_broker._runtime._reads import Exhausted
from trio_broker._storage._queue_sql import apply_command


def views_told() -> OnAppliedGroup:
    """What a broker's apply tells of a group: ``applied_group`` over the reads' exhausted
    tracker and the views by type, with nothing waiting (the benchmarks' views)."""
    exhausted = Exhausted()
    by_type = applied_views(lambda p, r: None, weakref.WeakValueDictionary(), lambda q: None)

    def noted(command: object, result: object) -> None:
        exhausted.note(command, result)
        by_type(command, result)

    return applied_group(noted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=239)
    parser.add_argument("--receive", type=int, default=85)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    count = args.appends
    value = dumps_value("x" * 100)
    told = views_told()
    figures: dict[str, list[float]] = {"replica": [], "leader": []}
    with tempfile.TemporaryDirectory() as d, queue_store(d) as store:
        db = store._db
        stamp = 1_765_000_000_000
        for round_ in range(args.rounds + 10):
            for role in ("replica", "leader") if round_ % 2 else ("leader", "replica"):
                groups = []
                for _ in range(args.repeat):
                    groups.append(
                        cmd.CommandGroup(
                            tuple(
                                cmd.AppendMessage(
                                    QUEUE, value, None, None, stamp + i // args.receive
                                )
                                for i in range(count)
                            )
                        )
                    )
                    stamp += count
                db.execute("BEGIN")
                started = time.thread_time()
                for group in groups:
                    result = apply_command(db, group)
                    told(group.commands, result.results)
                    if role == "leader":
                        for _ in result.results:
                            pass
                spent = time.thread_time() - started
                db.execute("ROLLBACK")
                if round_ >= 10:
                    figures[role].append(spent / (count * args.repeat))
    print(
        f"a group of {count} appends (a stamp every {args.receive}): apply and results, "
        f"µs per append, thread CPU, median of {args.rounds}"
    )
    for role, values in figures.items():
        print(f"  {role:<8} {statistics.median(values) * 1e6:6.3f}")


if __name__ == "__main__":
    main()
