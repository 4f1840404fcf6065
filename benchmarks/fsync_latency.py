"""What an fsync costs on this machine's disk: ``python -m benchmarks.fsync_latency``.

300 times a 4 KB ``pwrite`` and ``fdatasync`` of one file in a temporary directory (where
``trio_broker bench`` keeps its brokers' data), rewriting 16 blocks and then appending; prints
the wall time's p50 and p99 and the process's CPU per call. Then the same for a SQLite
commit of one 100-byte row in WAL mode, at ``synchronous = FULL`` (one fdatasync of the WAL,
as every acknowledged write pays) and at ``OFF`` (the commit without its sync). docs/performance.md
("What bounds each target now") uses it for the sequential workload.
"""

from __future__ import annotations

import os
import tempfile
import time

import apsw

CALLS = 300
BLOCK = b"x" * 4096


def measure(rewrite: bool) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, CPU µs per call) of CALLS pwrite + fdatasync."""
    with tempfile.TemporaryDirectory() as d:
        fd = os.open(os.path.join(d, "f"), os.O_CREAT | os.O_RDWR)
        try:
            walls = []
            cpu = time.process_time()
            for i in range(CALLS):
                offset = (i % 16 if rewrite else i) * len(BLOCK)
                start = time.perf_counter()
                os.pwrite(fd, BLOCK, offset)
                os.fdatasync(fd)
                walls.append(time.perf_counter() - start)
            cpu = time.process_time() - cpu
        finally:
            os.close(fd)
    walls.sort()
    return walls[CALLS // 2] * 1e3, walls[CALLS * 99 // 100] * 1e3, cpu / CALLS * 1e6


def measure_commit(synchronous: str) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, CPU µs per commit) of CALLS one-row SQLite commits, after a warm-up."""
    with tempfile.TemporaryDirectory() as d:
        db = apsw.Connection(os.path.join(d, "commits.sqlite3"))
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {synchronous}")
            db.execute("CREATE TABLE t (v BLOB)")
            row = (b"x" * 100,)
            for _ in range(100):
                with db:
                    db.execute("INSERT INTO t VALUES (?)", row)
            walls = []
            cpu = time.process_time()
            for _ in range(CALLS):
                start = time.perf_counter()
                with db:
                    db.execute("INSERT INTO t VALUES (?)", row)
                walls.append(time.perf_counter() - start)
            cpu = time.process_time() - cpu
        finally:
            db.close()
    walls.sort()
    return walls[CALLS // 2] * 1e3, walls[CALLS * 99 // 100] * 1e3, cpu / CALLS * 1e6


def main() -> None:
    for rewrite in (True, False):
        p50, p99, cpu = measure(rewrite)
        what = "rewrite 16 blocks" if rewrite else "append"
        print(
            f"{what}: {CALLS} x (4 KB pwrite + fdatasync): wall p50 {p50:.2f} ms,"
            f" p99 {p99:.2f} ms, CPU {cpu:.0f} us each"
        )
    for synchronous in ("FULL", "OFF"):
        p50, p99, cpu = measure_commit(synchronous)
        print(
            f"SQLite WAL commit of one 100-byte row, synchronous={synchronous}: {CALLS} x: wall"
            f" p50 {p50:.2f} ms, p99 {p99:.2f} ms, CPU {cpu:.0f} us each"
        )


if __name__ == "__main__":
    main()
