"""What a save costs right after a start, against a WAL being reused: ``python -m
benchmarks.wal12_saves``.

A commit whose fsync extends the WAL file costs the kernel more CPU than one that overwrites
frames already written (the size's journal commit; docs/performance-history.md, "A replica's
objects per append, and what its fixed cost per transaction is (eleventh round)"). A store's
WAL grows until its first checkpoint lets it restart; before the WAL was kept across a clean
close (``_storage/_checkpoint.py``, ``keep_wal``), every start grew it again. Per phase, the
thread CPU (``time.thread_time``: the fsync's system time counted, its wait not) of
``--saves`` durable one-entry transactions (mean and median), and how many of them grew the
WAL file:

- ``fresh``: the first saves of a new store (its WAL made at open);
- ``steady``: after 1,500 saves (the WAL restarted by a checkpoint: frames overwritten);
- ``reopened``: the first saves after the store is closed cleanly and opened again.

Two kinds of file: a group's store (``Store.save(entries=[one entry])``, as a replica's
one-entry save) and the broker's shared log (``SharedLog.write`` of one entry, in its own
transaction: its commit and fsync). Run it from two trees to compare them (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.apply_after_ack import _entry
from benchmarks.replica_cost import create_queue
from trio_broker._core import _raft_messages as rm
from trio_broker._storage import Store
from trio_broker._storage._shared_log import SharedLog

Phase = tuple[float, float, int]


def _phase(save: Callable[[int], None], wal: Path, first: int, count: int) -> Phase:
    """The mean and median thread CPU of ``count`` saves (µs), and how many grew the WAL
    file."""
    cpu = time.thread_time
    spent: list[float] = []
    grew = 0
    for index in range(first, first + count):
        size = wal.stat().st_size
        started = cpu()
        save(index)
        spent.append(cpu() - started)
        grew += wal.stat().st_size > size
    return statistics.mean(spent) * 1e6, statistics.median(spent) * 1e6, grew


def _store_phases(directory: str, count: int) -> dict[str, Phase]:
    with tempfile.TemporaryDirectory(dir=directory) as d:
        wal = Path(d) / "broker.sqlite3-wal"
        store = Store(d)
        create_queue(store)
        store.save(entries=[_entry(2)], hard_state=rm.HardState(1, None, 1))

        def save(index: int) -> None:
            store.save(entries=[_entry(index)])

        found = {"fresh": _phase(save, wal, 3, count)}
        _phase(save, wal, 3 + count, 1500)
        found["steady"] = _phase(save, wal, 1503 + count, count)
        store.close()
        store = Store(d)
        found["reopened"] = _phase(save, wal, 1503 + 2 * count, count)
        store.close()
        return found


def _log_phases(directory: str, count: int) -> dict[str, Phase]:
    with tempfile.TemporaryDirectory(dir=directory) as d:
        path = Path(d) / "shared-log.sqlite3"
        wal = Path(d) / "shared-log.sqlite3-wal"
        log = SharedLog(path)

        def save(index: int) -> None:
            with log.transaction:
                log.write("g", None, [_entry(index)], None)

        found = {"fresh": _phase(save, wal, 1, count)}
        _phase(save, wal, 1 + count, 1500)
        found["steady"] = _phase(save, wal, 1501 + count, count)
        log.close()
        log = SharedLog(path)
        found["reopened"] = _phase(save, wal, 1501 + 2 * count, count)
        log.close()
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    print(f"one-entry durable saves, thread CPU µs of {args.saves}, mean / median (grew: saves")
    print(f"that grew the WAL file), {args.runs} runs, in {args.dir}")
    for name, phases in (("store", _store_phases), ("shared log", _log_phases)):
        for run in range(args.runs):
            found = phases(args.dir, args.saves)
            print(
                f"  {name:<10} run {run + 1}: "
                + "  ".join(
                    f"{k} {mean:5.1f} / {median:5.1f} (grew {g:3})"
                    for k, (mean, median, g) in found.items()
                )
            )


if __name__ == "__main__":
    main()
