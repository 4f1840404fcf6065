"""How long a replica's batch saves hold their thread with the checkpoint inline (as now) or
run by a second connection on a thread of its own (a prototype, not the product's):
``python -m benchmarks.batch14_checkpoint_wall``.

Each save is a replica's Ready under the bench's batch appends (``benchmarks.batch_store``'s
entries: one new entry of ``--batches`` APPEND_BATCHes of 100 values persisted, the one before
applied, one transaction at ``FULL``), ``--saves`` of them after ``--warm``, a new store per
round in a temporary folder. ``inline``: the store as it is (``_checkpoint.checkpoint_hook``
runs a PASSIVE checkpoint inside the commit that crosses 1,000 WAL frames, on the saving
thread: the event loop, for a save in the loop's step). ``thread``: that hook replaced by one
that only wakes a thread, which runs the same PASSIVE checkpoint through its own connection to
the file while the saves go on (what SQLite allows in WAL mode: a checkpointer beside the
writer). The writer restarts the WAL only when a checkpoint copied every frame before its
next transaction began, which saves back to back never let the thread's do: past twice the
threshold the hook checkpoints inline, as now, so that the WAL stays bounded (without that
bound it grew to 145 MB in 300 saves).

Printed per round: the saves' wall time per save (median, 99th percentile, largest: how long
each holds the thread that makes it), the saving thread's CPU per value, the process's CPU per
value (both threads), and the checkpoints run. ``--rounds`` alternates the two.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
from typing import Any

import apsw

from trio_broker._core import _raft_messages as rm
from trio_broker._storage._checkpoint import close_unwritten

from .batch14_save_parts import _opened
from .batch_store import _entry

wal_bytes = [0]
"""The WAL's size at the end of the last round."""


class _Checkpointer:
    """The prototype: a second connection and a thread that checkpoints when woken."""

    def __init__(self, path: str, pages: int) -> None:
        self.db = apsw.Connection(path)
        self.db.setbusytimeout(5000)
        self.pages = pages
        self.due = threading.Event()
        self.stopping = False
        self.runs = 0
        self.inline = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def hook(self, db: Any, name: str, frames: int) -> int:
        if frames >= 2 * self.pages:
            # (the WAL restarts only once a checkpoint copied every frame between two writes:
            # with saves back to back the thread's never does, so the frames it left are
            # copied here, inline, past twice the threshold)
            with contextlib.suppress(apsw.BusyError):
                db.wal_checkpoint(name, apsw.SQLITE_CHECKPOINT_PASSIVE)
            self.inline += 1
        elif frames >= self.pages:
            self.due.set()
        return apsw.SQLITE_OK

    def _run(self) -> None:
        while True:
            self.due.wait()
            self.due.clear()
            if self.stopping:
                return
            self.db.wal_checkpoint("main", apsw.SQLITE_CHECKPOINT_PASSIVE)
            self.runs += 1

    def close(self) -> None:
        self.stopping = True
        self.due.set()
        self.thread.join()
        close_unwritten(self.db)


def _round(background: bool, args: argparse.Namespace) -> tuple[list[float], float, float, int]:
    walls: list[float] = []
    thread_ns = 0
    wal_bytes[0] = 0
    with tempfile.TemporaryDirectory() as directory:
        store = _opened(directory)
        checkpointer = None
        counted = [0]
        if background:
            checkpointer = _Checkpointer(store._db.filename, 1000)
            store._db.set_wal_hook(checkpointer.hook)
        else:
            inline = store._db

            def hook(_db: Any, name: str, frames: int) -> int:
                if frames >= 1000:
                    inline.wal_checkpoint(name, apsw.SQLITE_CHECKPOINT_PASSIVE)
                    counted[0] += 1
                return apsw.SQLITE_OK

            store._db.set_wal_hook(hook)
        try:
            entries = [_entry(i, args.batches, 100) for i in range(2, args.saves + 2)]
            process = 0.0
            for n, entry in enumerate(entries):
                if n == args.warm:
                    process = time.process_time()
                committed = [entries[n - 1]] if n else []
                hs = rm.HardState(1, None, entry.index - 1)
                wall = time.perf_counter()
                began = time.thread_time_ns()
                store.save(entries=[entry], hard_state=hs, committed=committed)
                if n >= args.warm:
                    thread_ns += time.thread_time_ns() - began
                    walls.append(time.perf_counter() - wall)
            if checkpointer is not None:
                checkpointer.close()  # (its last checkpoint's CPU counted too)
            process = time.process_time() - process
            wal_bytes[0] = os.path.getsize(store._db.filename + "-wal")
        finally:
            if checkpointer is not None and not checkpointer.stopping:
                checkpointer.close()
            store.close()
    values = (args.saves - args.warm) * args.batches * 100
    runs = checkpointer.runs if checkpointer is not None else counted[0]
    if checkpointer is not None:
        print(f"  (of them inline, past twice the threshold: {checkpointer.inline})")
    return walls, thread_ns / values, process * 1e9 / values, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=19)
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for round_ in range(args.rounds):
        for name, background in (("inline", False), ("thread", True)):
            walls, thread_ns, process_ns, runs = _round(background, args)
            walls.sort()
            print(
                f"round {round_ + 1} {name:6}: a save holds its thread"
                f" {statistics.median(walls) * 1e3:.1f} ms (p99"
                f" {walls[int(len(walls) * 0.99)] * 1e3:.1f}, largest {walls[-1] * 1e3:.1f});"
                f" CPU per value: the saving thread {thread_ns:.0f} ns, the process"
                f" {process_ns:.0f} ns; {runs} checkpoints, the WAL"
                f" {wal_bytes[0] / 1e6:.1f} MB at the end",
                flush=True,
            )


if __name__ == "__main__":
    main()
