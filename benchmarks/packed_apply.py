"""What every broker's apply of batch appends costs per value, the queue rows' statements and
their commit only: ``python -m benchmarks.packed_apply``.

Each round opens a store in a fresh directory and applies, ``--groups`` times, a
COMMAND_GROUP of ``--batches`` stamped APPEND_BATCHes of ``--values`` 100-byte values to one
queue (the bench's batch appends: 19 of 100 per entry) in one transaction (``Store.apply``,
fsync on, as in a broker), then one retention pass every ``--retain-every`` groups that
keeps the newest ``--keep`` values (the rows' deletes). Prints the thread's CPU
(``time.thread_time``: the fsync's wait not counted) per value after ``--warm`` groups, the
median of ``--rounds`` rounds. No log rows, no decode: only what the rows' layout changes
(schema version 7 against 8: docs/performance-history.md, "The queue rows' packed key, schema
version 8 (tenth round)"). Runs on any tree with ``Store`` and these commands: run it with
each tree first on ``PYTHONPATH``, alternated.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from trio_broker._core import _commands as cmd
from trio_broker._protocol._codec import dumps_value
from trio_broker._storage._store import Store

QUEUE = "Q-0123456789abcdef"


def run(args: argparse.Namespace) -> float:
    value = dumps_value("x" * 100)
    spent = 0.0
    with tempfile.TemporaryDirectory() as d:
        store = Store(d)
        try:
            policy = cmd.RetentionPolicy(max_messages=args.keep)
            store.apply([cmd.CreateQueue(QUEUE), cmd.SetRetention(QUEUE, policy)])
            stamp = 1_765_000_000_000
            for n in range(args.groups):
                group = cmd.CommandGroup(
                    tuple(
                        cmd.AppendBatch(QUEUE, (value,) * args.values, None, None, stamp + n)
                        for _ in range(args.batches)
                    )
                )
                started = time.thread_time()
                store.apply([group])
                if n % args.retain_every == 0:
                    store.apply([cmd.ApplyRetention(stamp + n)])
                if n >= args.warm:
                    spent += time.thread_time() - started
        finally:
            store.close()
    return spent / ((args.groups - args.warm) * args.batches * args.values) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=19)
    parser.add_argument("--values", type=int, default=100)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--retain-every", type=int, default=8)
    parser.add_argument("--keep", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures = [run(args) for _ in range(args.rounds)]
    print(
        f"median {statistics.median(figures):.3f} us per value ("
        + ", ".join(f"{f:.3f}" for f in figures)
        + ")"
    )


if __name__ == "__main__":
    main()
