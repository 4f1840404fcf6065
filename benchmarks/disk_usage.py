"""Bytes on disk per byte stored: ``python -m benchmarks.disk_usage [--size 1024] [--count 5000]``.

With ``--timing``, also the store's own time per message (``synchronous = OFF``, so that it is
the CPU and the page writes, not the fsyncs): appends in groups of 64, ``READ_BATCH`` of 64,
single ``READ``s (each its own transaction); best of 5 runs.

Appends ``count`` values of ``size`` bytes to one queue of a fresh store (in groups, as a
leader under load applies them), checkpoints, and prints what the values take: the pages of
the ``queue_data`` table and its index (SQLite's ``dbstat``), and the whole database file,
each divided by the bytes of the values. docs/performance.md ("Bytes on disk") has the figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from trio_broker._core._commands import (
    AppendMessage,
    CommandGroup,
    CreateQueue,
    ReadBatch,
    ReadNext,
)
from trio_broker._storage import DB_FILE, Store

QUEUE = "Q-DISKUSAGE1"


def measure(directory: Path, size: int, count: int, group: int = 64) -> dict[str, float]:
    store = Store(directory)
    try:
        store.apply([CreateQueue(QUEUE)])
        body = b'"' + b"x" * (size - 2) + b'"'  # a JSON string value of `size` bytes
        for first in range(0, count, group):
            n = min(group, count - first)
            store.apply(
                [CommandGroup(tuple(AppendMessage(QUEUE, body, None, None, 1) for _ in range(n)))]
            )
        db = store._db
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        names = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_schema WHERE tbl_name = 'queue_data'"
            )
        ]
        table = sum(
            db.execute(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ?", (n,)
            ).fetchone()[0]
            for n in names
        )
    finally:
        store.close()
    stored = size * count
    return {
        "value_bytes": stored,
        "queue_data_bytes": table,
        "file_bytes": (directory / DB_FILE).stat().st_size,
        "queue_data_per_byte": table / stored,
        "file_per_byte": (directory / DB_FILE).stat().st_size / stored,
    }


def timing(directory: Path, size: int, groups: int = 200) -> tuple[float, float, float]:
    """Microseconds per message: appended in groups of 64, read in batches of 64, read alone."""
    store = Store(directory)
    try:
        store.apply([CreateQueue(QUEUE)])
        store._db.execute("PRAGMA synchronous = OFF")
        body = b'"' + b"x" * (size - 2) + b'"'
        group = CommandGroup(tuple(AppendMessage(QUEUE, body, None, None, 1) for _ in range(64)))
        start = time.perf_counter()
        for _ in range(groups):
            store.apply([group])
        append = (time.perf_counter() - start) / (groups * 64)
        start = time.perf_counter()
        for _ in range(groups):
            store.apply([ReadBatch("C-BENCH1", QUEUE, 64)])
        batch = (time.perf_counter() - start) / (groups * 64)
        start = time.perf_counter()
        for _ in range(groups * 10):
            store.apply([ReadNext("C-BENCH2", QUEUE)])
        single = (time.perf_counter() - start) / (groups * 10)
    finally:
        store.close()
    return append * 1e6, batch * 1e6, single * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="bytes per value")
    parser.add_argument("--count", type=int, default=5000, help="values appended")
    parser.add_argument("--timing", action="store_true", help="also time the store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(Path(tmp), args.size, args.count)
    print(
        f"{args.count} values of {args.size} B ({r['value_bytes'] / 1e6:.2f} MB): "
        f"queue_data and its index {r['queue_data_bytes'] / 1e6:.2f} MB "
        f"({r['queue_data_per_byte']:.2f} bytes on disk per byte stored), "
        f"database file {r['file_bytes'] / 1e6:.2f} MB ({r['file_per_byte']:.2f} per byte)"
    )
    if args.timing:
        runs = []
        for _ in range(5):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(timing(Path(tmp), args.size))
        append, batch, single = (min(r[i] for r in runs) for i in range(3))
        print(
            f"store time per message: append (groups of 64) {append:.1f} us, "
            f"READ_BATCH of 64 {batch:.1f} us, single READ {single:.1f} us"
        )


if __name__ == "__main__":
    main()
