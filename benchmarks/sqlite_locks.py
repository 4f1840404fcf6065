"""What SQLite's file locks cost a sequential append: ``python -m benchmarks.sqlite_locks``.

A leader's sequential append is two transactions on its store (``Store.save`` of the new
entry with the term: fsynced; then the apply of the entry, committed at ``NORMAL``), each
taking and releasing SQLite's WAL locks with ``fcntl`` system calls (about 12 per append,
docs/performance.md, "One client, one append at a time"). This runs that pair of
transactions on two stores in temporary directories (``--dir``: where; the bench keeps its
data in the system's temporary directory), one at SQLite's default locking mode and one at
``EXCLUSIVE`` (the locks taken once and held: no ``fcntl`` per transaction), alternated in
rounds, and prints the CPU of the thread per append (``time.thread_time``: an fsync's wait is
not counted, its system time is), the median and best of ``--rounds`` rounds of ``--appends``.
``EXCLUSIVE`` is not what a broker may run with (``trio_broker backup`` reads a running
broker's database from another process): the difference is what the locks cost at most.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.replica_cost import QUEUE, create_queue
from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._storage._store import Store


def append_entry(index: int, value: bytes) -> rm.Entry:
    """The entry at ``index`` of a term-1 log that appends ``value`` to ``QUEUE``."""
    return rm.Entry(1, index, cmd.AppendMessage(QUEUE, value, None, None, index))


def alternate(
    runs: dict[str, Callable[[int], float]], warm_up: int, rounds: int, count: int
) -> dict[str, list[float]]:
    """Each of ``runs`` (a call doing ``count`` operations and returning the CPU seconds they
    took) warmed up once, then alternated in ``rounds`` rounds: the µs per operation of each
    round, by name."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(warm_up)
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(run(count) / count * 1e6)
    return results


class _Leader:
    """A store written as a leader's sequential appends write it."""

    def __init__(self, directory: Path, *, exclusive: bool) -> None:
        self.store = Store(directory)
        if exclusive:
            self.store._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        create_queue(self.store)
        self.index = 1
        self.value = dumps_value("x" * 100)

    def appends(self, count: int) -> float:
        """CPU seconds of this thread for ``count`` appends."""
        store = self.store
        started = time.thread_time()
        for _ in range(count):
            self.index += 1
            index = self.index
            entry = append_entry(index, self.value)
            store.save(entries=[entry], hard_state=rm.HardState(1, None, index - 1))
            store.save(committed=[entry], hard_state=rm.HardState(1, None, index))
        return time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the stores go (default: tempfile's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as base:
        leaders = {
            mode: _Leader(Path(base) / mode, exclusive=mode == "EXCLUSIVE")
            for mode in ("default", "EXCLUSIVE")
        }
        try:
            runs = {mode: leader.appends for mode, leader in leaders.items()}
            results = alternate(runs, 20, args.rounds, args.appends)
        finally:
            for leader in leaders.values():
                leader.store.close()
    print(
        f"CPU per sequential append (the leader's two transactions), {args.appends} x "
        f"{args.rounds} rounds, µs:"
    )
    for mode, figures in results.items():
        print(
            f"  locking_mode {mode:<10} median {statistics.median(figures):7.1f}"
            f"  best {min(figures):7.1f}  rounds {' / '.join(f'{f:.1f}' for f in figures)}"
        )


if __name__ == "__main__":
    main()
