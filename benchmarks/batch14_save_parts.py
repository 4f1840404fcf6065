"""A batch save's parts per value, and the leader's two transactions against a replica's one:
``python -m benchmarks.batch14_save_parts``.

Each save is one entry of the bench's batch appends (``--batches`` APPEND_BATCHes of
``--values`` 100-byte values to one queue), as ``benchmarks.batch_store`` makes them. Thread
CPU (``time.thread_time_ns``: the fsync's wait not counted) per value, summed over
``--saves`` saves after ``--warm``, every round a new store in a temporary folder:

- ``parts``: a replica's save (entry N persisted, entry N - 1 applied, one transaction at
  ``FULL``), statement by statement as ``Store.save`` runs them: the log row, the apply
  (``apply_command``: the queue's update and the rows' ``insert_plain``), the metadata rows,
  the ``COMMIT`` (its WAL writes and ``fdatasync``), and the checkpoint, run by a WAL hook of
  its own right after the ``COMMIT`` that crosses ``--pages`` frames, timed apart (what
  ``_checkpoint.checkpoint_hook`` does inside that ``COMMIT``);
- ``replica``: ``Store.save(entries=[N], committed=[N - 1])``, as a replica's Ready;
- ``leader``: ``Store.save(entries=[N])`` (``FULL``) then ``Store.save(committed=[N - 1])``
  (``NORMAL``), the leader's persist and its apply (docs/performance.md, "What bounds each
  target now": its save on the storage thread, its apply in the loop's step).

``--rounds`` alternates the shapes; every round's figures are printed, then the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import apsw

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._entries import stored_entry
from trio_broker._storage._checkpoint import checkpoint_hook
from trio_broker._storage._queue_sql import apply_command
from trio_broker._storage._store import Store

from .batch_store import QUEUE, _entry

_PARTS = ("log row", "apply", "meta", "commit", "checkpoint")


CHUNK = 0


def _opened(directory: str) -> Store:
    store = Store(directory)
    if CHUNK:
        import ctypes

        size = ctypes.c_int(CHUNK)
        store._db.file_control("main", apsw.SQLITE_FCNTL_CHUNK_SIZE, ctypes.addressof(size))
    create = rm.Entry(1, 1, cmd.CreateQueue(QUEUE))
    store.save(entries=[create], hard_state=rm.HardState(1, None, 0))
    store.save(committed=[create], hard_state=rm.HardState(1, None, 1))
    return store


def _parts(args: argparse.Namespace) -> dict[str, float]:
    """ns of thread CPU per value, by part, of a replica's saves written out."""
    spent = dict.fromkeys(_PARTS, 0)
    with tempfile.TemporaryDirectory() as directory:
        store = _opened(directory)
        db = store._db
        frames = [0]

        def hook(_db: Any, _name: str, count: int) -> int:
            frames[0] = count
            return apsw.SQLITE_OK

        db.set_wal_hook(hook)
        try:
            entries = [_entry(i, args.batches, args.values) for i in range(2, args.saves + 2)]
            for n, entry in enumerate(entries):
                previous = entries[n - 1] if n else None
                clock = [time.thread_time_ns()]
                took: dict[str, int] = {}

                def mark(part: str, clock: list[int] = clock, took: dict[str, int] = took) -> None:
                    now = time.thread_time_ns()
                    took[part] = now - clock[0]
                    clock[0] = now

                db.execute("BEGIN")
                db.executemany(
                    "INSERT OR REPLACE INTO raft_log (log_index, term, payload, checksum)"
                    " VALUES (?, ?, ?, ?)",
                    [(entry.index, entry.term, *stored_entry(entry))],
                )
                mark("log row")
                if previous is not None:
                    apply_command(db, previous.payload)
                mark("apply")
                store._set_meta({"applied_index": entry.index - 1, "raft_commit": entry.index - 1})
                mark("meta")
                db.execute("COMMIT")
                mark("commit")
                if frames[0] >= args.pages:
                    db.wal_checkpoint("main", apsw.SQLITE_CHECKPOINT_PASSIVE)
                    frames[0] = 0
                mark("checkpoint")
                if n >= args.warm:
                    for part, ns in took.items():
                        spent[part] += ns
        finally:
            store.close()
    values = (args.saves - args.warm) * args.batches * args.values
    return {part: ns / values for part, ns in spent.items()}


def _shape(leader: bool, args: argparse.Namespace, durable_only: bool = False) -> float:
    """ns of thread CPU per value of the replica's one save per entry, or the leader's two
    (``durable_only``: its checkpoints only in the persist's commits, at ``FULL``)."""
    spent = 0
    with tempfile.TemporaryDirectory() as directory:
        store = _opened(directory)
        allowed = [True]
        if durable_only:
            inner = checkpoint_hook(args.pages)

            def hook(db: Any, name: str, frames: int) -> int:
                return inner(db, name, frames) if allowed[0] else apsw.SQLITE_OK

            store._db.set_wal_hook(hook)
        try:
            entries = [_entry(i, args.batches, args.values) for i in range(2, args.saves + 2)]
            for n, entry in enumerate(entries):
                committed = [entries[n - 1]] if n else []
                hs = rm.HardState(1, None, entry.index - 1)
                began = time.thread_time_ns()
                if leader:
                    store.save(entries=[entry], hard_state=hs)
                    allowed[0] = False
                    store.save(committed=committed, hard_state=hs)
                    allowed[0] = True
                else:
                    store.save(entries=[entry], hard_state=hs, committed=committed)
                if n >= args.warm:
                    spent += time.thread_time_ns() - began
        finally:
            store.close()
    return spent / ((args.saves - args.warm) * args.batches * args.values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=19, help="APPEND_BATCHes per entry")
    parser.add_argument("--values", type=int, default=100, help="values per APPEND_BATCH")
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--pages", type=int, default=1000, help="WAL frames per checkpoint")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=0)
    args = parser.parse_args()
    global CHUNK
    CHUNK = args.chunk
    shapes: dict[str, Callable[[], Any]] = {
        "parts": lambda: _parts(args),
        "replica": lambda: _shape(False, args),
        "leader": lambda: _shape(True, args),
        "leader, checkpoints at FULL": lambda: _shape(True, args, durable_only=True),
    }
    figures: dict[str, list[Any]] = {name: [] for name in shapes}
    for round_ in range(args.rounds):
        for name, run in shapes.items():
            figures[name].append(run())
        parts = figures["parts"][-1]
        print(
            f"round {round_ + 1}: replica {figures['replica'][-1]:.0f}, leader"
            f" {figures['leader'][-1]:.0f}, its checkpoints at FULL only"
            f" {figures['leader, checkpoints at FULL'][-1]:.0f} ns per value; parts "
            + ", ".join(f"{p} {parts[p]:.0f}" for p in _PARTS)
            + f" (sum {sum(parts.values()):.0f})",
            flush=True,
        )
    print("medians, ns of thread CPU per value:")
    print(f"  replica's save {statistics.median(figures['replica']):.0f}")
    print(f"  leader's two   {statistics.median(figures['leader']):.0f}")
    full = statistics.median(figures["leader, checkpoints at FULL"])
    print(f"  leader's two, checkpoints at FULL only {full:.0f}")
    for part in _PARTS:
        print(f"  {part:14} {statistics.median(p[part] for p in figures['parts']):.0f}")


if __name__ == "__main__":
    main()
