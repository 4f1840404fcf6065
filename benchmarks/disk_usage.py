"""Bytes on disk per byte stored: ``python -m benchmarks.disk_usage [--size 1024] [--count 5000]``.

Appends ``count`` values of ``size`` bytes to one queue of a fresh store (in groups, as a
leader under load applies them), checkpoints, and prints what the values take: the pages of
the ``queue_data`` table and its index (SQLite's ``dbstat``), and the whole database file,
each divided by the bytes of the values. docs/performance.md ("Bytes on disk") has the figures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from trio_broker._core._commands import AppendMessage, CommandGroup, CreateQueue
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="bytes per value")
    parser.add_argument("--count", type=int, default=5000, help="values appended")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(Path(tmp), args.size, args.count)
    print(
        f"{args.count} values of {args.size} B ({r['value_bytes'] / 1e6:.2f} MB): "
        f"queue_data and its index {r['queue_data_bytes'] / 1e6:.2f} MB "
        f"({r['queue_data_per_byte']:.2f} bytes on disk per byte stored), "
        f"database file {r['file_bytes'] / 1e6:.2f} MB ({r['file_per_byte']:.2f} per byte)"
    )


if __name__ == "__main__":
    main()
