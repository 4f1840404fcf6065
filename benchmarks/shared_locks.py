"""What SQLite's file locks cost a broker of many groups: ``python -m benchmarks.shared_locks``.

A turn of a broker hosting ``--groups`` groups on one shared log (``_storage/_shared_log.py``),
as ``TurnCommitter`` commits it: one shared-log transaction (fsynced) holding every group's
new entry (one APPEND_MESSAGE of a 100-byte value), then each group's own transaction
(``NORMAL``, no fsync) persisting it and applying the entry of the turn before. Two brokers'
worth of files in temporary directories (``--dir``: where), one opened as the broker opens
them and one with ``PRAGMA locking_mode = EXCLUSIVE`` set on every connection before its
first access, alternated in ``--rounds`` rounds of ``--turns`` turns. Prints the CPU of the
thread per turn (``time.thread_time``: an fsync's wait is not counted, its system time is),
median and best. ``--only MODE`` runs one of the two alone, to count its system calls
(``strace -c -f python -m benchmarks.shared_locks --only EXCLUSIVE``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.replica_cost import create_queue
from benchmarks.sqlite_locks import alternate, append_entry
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog
from trio_broker._storage._store import Store

MODES = ("default", "EXCLUSIVE")


class _Broker:
    def __init__(self, base: Path, groups: int, *, exclusive: bool) -> None:
        base.mkdir()
        self.log = SharedLog(base / SHARED_LOG_FILE)
        self.stores = [Store(base / f"g{i}", shared=self.log) for i in range(groups)]
        if exclusive:
            for db in [self.log._db, *(s._db for s in self.stores)]:
                db.execute("PRAGMA locking_mode = EXCLUSIVE")
        self.value = dumps_value("x" * 100)
        for store in self.stores:
            create_queue(store)
        self.index = 1
        self.previous: rm.Entry | None = None

    def turns(self, count: int) -> float:
        started = time.thread_time()
        for _ in range(count):
            self.index += 1
            index = self.index
            entry = append_entry(index, self.value)
            committed = [] if self.previous is None else [self.previous]
            saves = [
                dict(entries=[entry], hard_state=rm.HardState(1, None, index - 1), committed=c)
                for c in [committed] * len(self.stores)
            ]
            with self.log.transaction:
                for store, save in zip(self.stores, saves, strict=True):
                    store.save(stage="journal", **save)
            for store, save in zip(self.stores, saves, strict=True):
                store.save(stage="apply", **save)
            self.previous = entry
        return time.thread_time() - started

    def close(self) -> None:
        for store in self.stores:
            store.close()
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where the stores go (default: tempfile's)")
    parser.add_argument("--only", choices=MODES, help="one mode alone (to count its system calls)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as base:
        brokers = {
            mode: _Broker(Path(base) / mode, args.groups, exclusive=mode == "EXCLUSIVE")
            for mode in MODES
            if args.only in (None, mode)
        }
        try:
            runs = {mode: broker.turns for mode, broker in brokers.items()}
            results = alternate(runs, 5, args.rounds, args.turns)
        finally:
            for broker in brokers.values():
                broker.close()
    print(
        f"CPU per turn of {args.groups} groups (one shared-log commit, then each group's own),"
        f" {args.rounds} rounds of {args.turns} turns"
    )
    for mode, values in results.items():
        print(
            f"  {mode:<10} median {statistics.median(values):9.1f} us"
            f"  best {min(values):9.1f} us  ({', '.join(f'{v:.0f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
