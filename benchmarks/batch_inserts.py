"""Every broker's inserts of appended values, per row: ``python -m benchmarks.batch_inserts``.

What each broker's apply does with the values of the bench's batch appends and pipelined
appends, on one thread with real SQLite (a store in a temporary directory), each in a
transaction rolled back so that every round inserts the same rows:

- ``insert_plain``: a run of ``--batches`` APPEND_BATCHes of 100 values of 100 bytes in
  ``--stamps`` stretches of one stamp each (the bench's entries: about 18 batches, 1.75
  stamps), as ``_batch_run`` inserts them, one ``insert_plain`` per stretch;
- ``_batch_run``: the same batches applied as a run (the queue's ``SELECT`` and ``UPDATE``,
  the results), the apply of one entry of batch appends;
- ``insert_stamped``: a run of 256 values with a stamp per 16 (pipelined appends' runs).

Each figure is thread CPU (``time.thread_time_ns``) per row, the median and the lowest of
``--rounds``, the three alternated within a round. To compare two trees, run it from outside
both checkouts with ``PYTHONPATH`` set to an export of each, alternately
(docs/performance-history.md, "Batch appends per message (eighth round)").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._storage import _append_sql
from trio_broker._storage._integrity import insert_plain, insert_stamped
from trio_broker._storage._store import Store

QUEUE = "Q-0123456789abcdef"
STAMP = 1_765_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=18)
    parser.add_argument("--stamps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--first", type=int, default=1_000_001, help="the first row's number")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        store = Store(directory)
        try:
            create = rm.Entry(1, 1, cmd.CreateQueue(QUEUE))
            store.save(entries=[create], hard_state=rm.HardState(1, None, 0))
            store.save(committed=[create], hard_state=rm.HardState(1, None, 1))
            _measure(store, args)
        finally:
            store.close()


def _measure(store: Store, args: argparse.Namespace) -> None:
    db = store._db
    (number,) = db.execute(
        "SELECT queue_number FROM queues WHERE queue_id = ?", (QUEUE,)
    ).fetchone()
    # (the queue's length set so that the run's rows take the numbers from --first)
    db.execute("UPDATE queues SET length = ? WHERE queue_id = ?", (args.first - 1, QUEUE))
    batches = [
        tuple(dumps_value(f"{b:04d}-{n:02d}-" + "x" * 92) for n in range(100))
        for b in range(args.batches)
    ]
    per_stamp = -(-args.batches // args.stamps)
    stretches = [
        [v for batch in batches[i : i + per_stamp] for v in batch]
        for i in range(0, args.batches, per_stamp)
    ]
    commands = [
        cmd.AppendBatch(QUEUE, batch, None, None, STAMP + i // per_stamp)
        for i, batch in enumerate(batches)
    ]
    rows = 100 * args.batches
    pipelined = [dumps_value(f"{n:03d}-" + "x" * 96) for n in range(256)]
    stamps = [STAMP + n // 16 for n in range(256)]

    def plain() -> None:
        at = args.first
        for i, data in enumerate(stretches):
            insert_plain(db, QUEUE, at, data, STAMP + i, number=number)
            at += len(data)

    def batch_run() -> None:
        _append_sql._batch_run(db, commands)

    def stamped() -> None:
        insert_stamped(db, QUEUE, args.first, pipelined, stamps, number=number)

    pieces: dict[str, tuple[Callable[[], None], int]] = {
        "insert_plain, batch appends' run": (plain, rows),
        "_batch_run, the run's apply": (batch_run, rows),
        "insert_stamped, a pipelined run of 256": (stamped, 256),
    }
    spent: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(args.rounds):
        for name, (run, count) in pieces.items():
            db.execute("BEGIN")
            began = time.thread_time_ns()
            run()
            spent[name].append((time.thread_time_ns() - began) / count)
            db.execute("ROLLBACK")
    print(f"thread CPU per row, median (lowest) of {args.rounds} rounds")
    for name, figures in spent.items():
        print(f"  {name:40} {statistics.median(figures):6.0f} ns ({min(figures):.0f})")


if __name__ == "__main__":
    main()
