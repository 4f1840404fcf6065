"""The per-commit cost of our automatic checkpoint's WAL hook (``_storage/_checkpoint.py``)
against SQLite's own: ``python -m benchmarks.wal_hook_cost [--rounds N] [--commits N]``.

Two WAL databases in a temporary directory, ``synchronous = OFF`` (no fsync: the hook's cost
is CPU, and an fsync's noise would hide it), each committing one small autocommit INSERT at a
time, alternately per round (A B A B ...):

- sqlite: SQLite's automatic checkpoint (its default WAL hook, in C);
- ours: :func:`~trio_broker._storage._checkpoint.checkpoint_on_commit`'s hook (a Python call
  from SQLite after every commit).

``--pages`` is the checkpoint threshold of both: by default far above the run's WAL, so no
checkpoint is ever due and the difference is the hook's call alone (``--pages 1000``:
SQLite's default, checkpoints included). Then the hook alone, called a million times from
Python below its threshold (its body; SQLite's C-to-Python call of it comes on top). Reported
per commit, per round and as the median: the thread's CPU (``time.thread_time``), so other
work on the machine counts little.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import apsw

from trio_broker._storage._checkpoint import checkpoint_hook, checkpoint_on_commit


def _open(path: Path, ours: bool, pages: int) -> apsw.Connection:
    db = apsw.Connection(str(path))
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    if ours:
        checkpoint_on_commit(db, pages)
    else:
        db.execute(f"PRAGMA wal_autocheckpoint = {pages}")
    return db


def _run(db: apsw.Connection, start: int, commits: int) -> float:
    insert = "INSERT INTO t (k, v) VALUES (?, ?)"
    value = b"x" * 32
    begin = time.thread_time()
    for k in range(start, start + commits):
        db.execute(insert, (k, value))
    return (time.thread_time() - begin) / commits * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--commits", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=1 << 30)
    args = parser.parse_args()
    ways = ("sqlite", "ours")
    seen: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {way: _open(Path(tmp) / f"{way}.db", way == "ours", args.pages) for way in ways}
        for way in ways:  # (warm up)
            _run(dbs[way], 0, 1000)
        for r in range(args.rounds):
            start = 1000 + r * args.commits
            for way in ways if r % 2 == 0 else reversed(ways):
                seen[way].append(_run(dbs[way], start, args.commits))
            print(f"round {r}: " + ", ".join(f"{w} {seen[w][-1]:.3f}" for w in ways))
        for db in dbs.values():
            db.close()
    a, b = (statistics.median(seen[w]) for w in ways)
    hook, n = checkpoint_hook(args.pages), 1_000_000
    begin = time.thread_time()
    for _ in range(n):
        hook(None, "main", 1)
    alone = (time.thread_time() - begin) / n * 1e6
    print(
        f"median µs CPU per commit: sqlite {a:.3f}, ours {b:.3f}, "
        f"difference {b - a:+.3f} (pages {args.pages}); our hook alone, called from Python "
        f"below its threshold: {alone:.3f}"
    )


if __name__ == "__main__":
    main()
