"""A single READ's CPU on the leader's request path and in its apply, each on its own.

    python -m benchmarks.read_path [--rounds N]

1. The request path, server side only: :mod:`benchmarks.connection_path` with the original
   contract's READ instead of an APPEND (32 connections x 16 in flight, one client id; the
   stand-in driver settles each READ with a 100-byte message, so each answer is a message
   frame): the server's CPU per READ (framing, decoding, the READ's command, the outbox, the
   answer's frame, the socket calls), best of ``--rounds``.
2. The apply: ``apply_command`` of one group of 32 readers x 16 READs (runs of one reader,
   as a leader groups one receive of each connection) on a queue of 10,000 100-byte values,
   in a transaction rolled back after each measure (store in /dev/shm when there is one),
   thread CPU per READ, best of 9, as the leader (values read and checked) and where nobody
   waits (a replica: no value read).

3. The checks (``--checks``): a run of stored values checked against their checksums as the
   read paths check them, on one thread: ``_intact_run`` (``read_values``' check, the single
   READs' runs and batched reads) of rows already read, and ``intact_columns`` (a batched
   READ's read and check of 1,000 rows, SQLite included), thread CPU per row, median.

docs/performance-history.md, "Single READs: the leader's request path", gives its figures;
docs/performance-history.md, "A replica's CPU per append (ninth round)", the checks'.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from typing import Any

import trio

from benchmarks import connection_path
from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._core import _commands as cmd
from trio_broker._storage import Store
from trio_broker._storage._queue_sql import apply_command

QUEUE = "Q-AAAAABBBBB"
VALUE = b'"' + b"x" * 100 + b'"'


async def _settle_reads(self: Any) -> None:
    """The stand-in driver's loop, each READ settled with the next message."""
    while True:
        await self._wake.wait()
        self._wake = trio.Event()
        await trio.lowlevel.checkpoint()  # let other connections' requests join
        waiting, self.waiting = self.waiting, []
        for group in waiting:
            for index in range(len(group.results)):
                self.sequence += 1
                group.set(index, cmd.MessageRead(self.sequence, VALUE))


def request_path(rounds: int, per_connection: int) -> list[float]:
    connection_path.APPEND = {"operation": "READ", "queue_name": QUEUE, "client_id": "C-00001"}
    connection_path._Driver.run = _settle_reads  # type: ignore[method-assign]
    return [trio.run(connection_path._run, 32, 16, per_connection) for _ in range(rounds)]


def apply(readers: int = 32, run: int = 16) -> tuple[float, float]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as path:
        store = Store(path)
        try:
            store.apply([cmd.CreateQueue(QUEUE)])
            for _ in range(20):
                store.apply([cmd.AppendBatch(QUEUE, (VALUE,) * 500)])
            db = store._db
            group = cmd.CommandGroup(
                tuple(cmd.ReadNext(f"C-{r:05d}", QUEUE) for r in range(readers) for _ in range(run))
            )

            def best(unchecked: list[Any] | None) -> float:
                times = []
                for _ in range(9):
                    db.execute("SAVEPOINT measured")
                    started = time.thread_time()
                    for _ in range(10):
                        apply_command(db, group, hold=True, unchecked=unchecked)
                    times.append(time.thread_time() - started)
                    db.execute("ROLLBACK TO measured")
                    db.execute("RELEASE measured")
                return min(times) / (10 * len(group.commands)) * 1e6

            return best(None), best([])
        finally:
            store.close()


def checks(rounds: int = 301) -> dict[str, float]:
    """Part 3: thread CPU per row (ns), median of ``rounds``, of each read path's check."""
    from trio_broker._storage._integrity import _intact_run, value_checksum
    from trio_broker._storage._read_columns import intact_columns

    def median_ns(f: Any, rows: int) -> float:
        times = []
        for _ in range(rounds):
            started = time.thread_time()
            for _ in range(max(1, 1000 // rows)):
                f()
            times.append(time.thread_time() - started)
        times.sort()
        return times[len(times) // 2] / (max(1, 1000 // rows) * rows) * 1e9

    out = {}
    for count in (1, 16, 100, 1000):
        rows = [
            (s, VALUE, None, value_checksum(QUEUE, s, VALUE, None))
            for s in range(5000, 5000 + count)
        ]
        out[f"_intact_run of {count}"] = median_ns(lambda: _intact_run(QUEUE, 5000, rows), count)  # noqa: B023
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as path:
        store = Store(path)
        try:
            store.apply([cmd.CreateQueue(QUEUE)])
            for _ in range(20):
                store.apply([cmd.AppendBatch(QUEUE, (VALUE,) * 500)])
            db = store._db
            out["intact_columns of 1000 (read too)"] = median_ns(
                lambda: intact_columns(db, QUEUE, 5000, 5999), 1000
            )
        finally:
            store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000, help="per connection")
    parser.add_argument("--checks", action="store_true", help="part 3 only: the checks")
    args = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    if args.checks:
        for name, ns in checks().items():
            print(f"{name:<36} {ns:7.1f} ns per row")
        return
    runs = request_path(args.rounds, args.requests)
    print(
        f"request path, 32 connections x 16 READs in flight: {min(runs):.2f} us of server CPU "
        f"per READ (best of {args.rounds}; all: {' '.join(f'{r:.2f}' for r in runs)})"
    )
    leader, replica = apply()
    print(
        f"apply, 32 readers x 16 READs in one group: {leader:.2f} us per READ as the leader, "
        f"{replica:.2f} us where nobody waits"
    )


if __name__ == "__main__":
    main()
