"""A broker's storage work per value under batch appends, checkpoints and compactions
included: ``python -m benchmarks.batch_store``.

Each save is what a replica's Ready does under the bench's batch appends: one new
COMMAND_GROUP entry of ``--batches`` APPEND_BATCHes of ``--values`` 100-byte values to one
queue (a stamp each) persisted, and the entry of the save before applied, in one transaction
(``Store.save``, fsync on, as in the broker). Every ``--compact-every`` entries the log is
compacted, keeping the newest ``--keep`` (``Store.compact``, as the snapshot room does).

Unlike ``benchmarks.replica_cost`` (a median per frame), this is the thread's CPU
(``time.thread_time``: user and system time, the fsync's wait not counted) summed over every
save and compaction after ``--warm`` saves, divided by the values saved: SQLite's automatic
checkpoints (one every ``wal_autocheckpoint`` pages, about every ninth save of this shape) and
the compactions' deletes are in it. ``--pragma NAME=VALUE`` (repeatable) sets a pragma on the
store's connection after it opens; ``--page-size`` creates the file with that page size.
``--checkpoint-every N`` turns the automatic checkpoint off and runs a passive one by hand
every N saves, timed apart (about every ninth save of this shape is what 1,000 pages give).
``--rounds`` alternates the settings given by ``--compare`` (``A;B``: two ``;``-separated
lists of ``NAME=VALUE``, ``page_size`` among them) and prints every round.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._entries import payload_bytes
from trio_broker._storage._store import Store

QUEUE = "Q-0123456789abcdef"


def _entry(index: int, batches: int, values: int) -> rm.Entry:
    value = dumps_value("x" * 100)
    stamp = 1_765_000_000_000 + index * batches
    group = cmd.CommandGroup(
        tuple(
            cmd.AppendBatch(QUEUE, (value,) * values, None, None, stamp + i) for i in range(batches)
        )
    )
    entry = rm.Entry(1, index, group)
    payload_bytes(entry)  # (the leader's one encoding, as a replica receives it)
    return entry


def _open(directory: str, settings: dict[str, str]) -> Store:
    page_size = settings.get("page_size")
    if page_size is not None:
        import apsw

        from trio_broker._storage._files import DB_FILE

        db = apsw.Connection(f"{directory}/{DB_FILE}")
        db.execute(f"PRAGMA page_size = {int(page_size)}")
        db.execute("VACUUM")
        db.close()
    store = Store(directory)
    for name, value in settings.items():
        if name != "page_size":
            store._db.execute(f"PRAGMA {name} = {value}")
    return store


def run(settings: dict[str, str], args: Any) -> float:
    """Microseconds of the thread's CPU per value saved and applied (with
    ``--checkpoint-every``, also prints the checkpoints' share of it)."""
    with tempfile.TemporaryDirectory() as d:
        store = _open(d, settings)
        try:
            create = rm.Entry(1, 1, cmd.CreateQueue(QUEUE))
            store.save(entries=[create], hard_state=rm.HardState(1, None, 0))
            store.save(committed=[create], hard_state=rm.HardState(1, None, 1))
            entries = [_entry(i, args.batches, args.values) for i in range(2, args.saves + 2)]
            previous: rm.Entry | None = None
            spent = checkpoints = 0.0
            if args.checkpoint_every:
                store._db.execute("PRAGMA wal_autocheckpoint = 0")
            for n, entry in enumerate(entries):
                committed = [previous] if previous is not None else []
                hs = rm.HardState(1, None, entry.index - 1)
                started = time.thread_time()
                store.save(entries=[entry], hard_state=hs, committed=committed)
                if entry.index % args.compact_every == 0:
                    through = entry.index - 1 - args.keep
                    store.compact(rm.SnapshotMeta(through, 1, rm.Config(("B-A",))))
                took = time.thread_time() - started
                if args.checkpoint_every and n % args.checkpoint_every == 0:
                    began = time.thread_time()
                    store._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    checkpoint = time.thread_time() - began
                    took += checkpoint
                    if n >= args.warm:
                        checkpoints += checkpoint
                if n >= args.warm:
                    spent += took
                previous = entry
        finally:
            store.close()
    if args.checkpoint_every:
        print(f"  checkpoints: {checkpoints / spent:.0%} of the thread's CPU")
    return spent / ((args.saves - args.warm) * args.batches * args.values) * 1e6


def _settings(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=19, help="APPEND_BATCHes per entry")
    parser.add_argument("--values", type=int, default=100, help="values per APPEND_BATCH")
    parser.add_argument("--saves", type=int, default=300)
    parser.add_argument("--warm", type=int, default=30)
    parser.add_argument("--compact-every", type=int, default=64)
    parser.add_argument("--keep", type=int, default=16)
    parser.add_argument("--pragma", action="append", default=[])
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="saves between checkpoints run by hand and timed apart (0: SQLite's automatic ones)",
    )
    parser.add_argument("--page-size", type=int, default=None)
    parser.add_argument("--compare", default=None, help="A;B settings, alternated")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.compare is None:
        settings = _settings(",".join(args.pragma))
        if args.page_size:
            settings["page_size"] = str(args.page_size)
        print(f"{run(settings, args):.3f} us per value ({settings or 'defaults'})")
        return
    a, b = (_settings(s) for s in args.compare.split(";"))
    for round_ in range(args.rounds):
        print(
            f"round {round_ + 1}: A {run(a, args):.3f}  B {run(b, args):.3f} us per value",
            flush=True,
        )


if __name__ == "__main__":
    main()
