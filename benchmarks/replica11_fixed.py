"""What a replica's one-entry save costs, by part: ``python -m benchmarks.replica11_fixed``.

A replica's transaction that persists one small entry (the sequential workload's, or the
fixed part of any save) costs about 120 to 150 µs of thread CPU here. This splits it:

- save: ``Store.save(entries=[entry])`` on a store in a temporary directory (``--dir``: where;
  the bench keeps its data in the system's temporary directory), at ``synchronous = FULL`` as
  a broker runs it, first while its WAL grows (each commit appends to the file), then once the
  first automatic checkpoint has let the WAL restart (each commit overwrites frames already
  written: the steady state);
- the same save at ``synchronous = OFF``: SQLite's and our Python's part, no fsync;
- raw: ``pwrite`` of 1, 4 and 16 pages of 4 KiB then ``fdatasync``, overwriting a file's
  allocated blocks or appending to it, and the same writes without the sync: the kernel's part.

Thread CPU (``time.thread_time``: the fsync's system time counted, its wait not), medians of
``--saves`` saves or ``--writes`` writes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from benchmarks.apply_after_ack import _entry
from benchmarks.replica_cost import queue_store
from trio_broker._core import _raft_messages as rm

PAGE = b"x" * 4096


def _median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def _saves(directory: str, count: int, sync: str) -> tuple[float, float]:
    """Median CPU of ``count`` one-entry saves while the WAL grows, then of ``count`` more
    after the WAL restarted (``sync``: the ``synchronous`` setting)."""
    cpu = time.thread_time
    with tempfile.TemporaryDirectory(dir=directory) as d, queue_store(d) as store:
        store.save(entries=[_entry(2)], hard_state=rm.HardState(1, None, 1))
        if sync != "FULL":
            store._db.execute(f"PRAGMA synchronous = {sync}")
        wal = os.path.join(d, next(f for f in os.listdir(d) if f.endswith("-wal")))
        growing: list[float] = []
        reused: list[float] = []
        index = 3
        while len(reused) < count and index < 20 * count:
            size = os.path.getsize(wal)
            started = cpu()
            store.save(entries=[_entry(index)])
            spent = cpu() - started
            index += 1
            grew = os.path.getsize(wal) > size
            if grew and len(growing) < count:
                growing.append(spent)
            elif not grew and growing:
                reused.append(spent)
        return _median_us(growing), _median_us(reused) if reused else float("nan")


def _raw(directory: str, pages: int, writes: int, *, append: bool, sync: bool) -> float:
    cpu = time.thread_time
    with tempfile.TemporaryDirectory(dir=directory) as d:
        fd = os.open(os.path.join(d, "f"), os.O_RDWR | os.O_CREAT)
        try:
            span = 256 * 4096
            if not append:
                os.pwrite(fd, PAGE * 256, 0)
                os.fsync(fd)
            offset = 0
            spent: list[float] = []
            for _ in range(writes):
                started = cpu()
                for _ in range(pages):
                    os.pwrite(fd, PAGE, offset if append else offset % span)
                    offset += 4096
                if sync:
                    os.fdatasync(fd)
                spent.append(cpu() - started)
            return _median_us(spent)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=600)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    print(f"a one-entry save, thread CPU µs, median of {args.saves} (in {args.dir})")
    for sync in ("FULL", "OFF"):
        growing, reused = _saves(args.dir, args.saves, sync)
        print(f"  synchronous = {sync:<4}  WAL growing {growing:7.1f}  WAL reused {reused:7.1f}")
    print(f"pwrite of N pages then fdatasync, thread CPU µs, median of {args.writes}")
    shapes: list[tuple[str, Callable[[int], float]]] = [
        ("overwrite", lambda n: _raw(args.dir, n, args.writes, append=False, sync=True)),
        ("append", lambda n: _raw(args.dir, n, args.writes, append=True, sync=True)),
        ("overwrite, no sync", lambda n: _raw(args.dir, n, args.writes, append=False, sync=False)),
    ]
    for name, run in shapes:
        print(f"  {name:<20}" + "".join(f"  {n:2} pages {run(n):7.1f}" for n in (1, 4, 16)))


if __name__ == "__main__":
    main()
