"""What SQLite writes, reads and syncs per append, by file and by table:
``python -m benchmarks.sqlite_io``.

A store written as a replica's saves write it under the bench's pipelined load: each save
persists ``--entries`` new log entries of ``--appends`` APPEND_MESSAGEs of a 100-byte value to
one queue and applies the entries of the save before it, in one transaction; the log is
compacted every ``--compact-every`` entries, keeping ``--keep`` (as ``compact_bytes`` does
under that load). ``--sequential`` instead writes a leader's sequential append: one entry of
one append, fsynced, then applied in a second transaction at ``NORMAL``.

The store is opened through a counting VFS (a pass-through ``apsw.VFS`` whose files count
``xWrite``, ``xRead``, ``xSync``, ``xLock`` and ``xUnlock``, with their bytes, by file: the
database and its WAL). Each WAL frame's header names the page it carries; at the end the
pages are named by table or index through ``dbstat`` (pages not in any b-tree: the freelist;
a page that compaction freed and another b-tree took counts for the one holding it at the
end). The defaults are the shape of a replica under the bench's pipelined load (a real run's
log: 280 appends per entry, about 3 entries per save, compacted every 600 entries by
``compact_bytes``).
The ``-shm`` wal-index is mapped, not written through the VFS: its ``fcntl`` locks are not
counted here (``strace -c -f`` counts them).

``--pragma "NAME=VALUE"`` (repeatable) sets a pragma on the store's connection after it opens,
to compare a lever against the default. Prints counts per append, the first ``--warm``
saves not counted; ``--plain`` opens the store through SQLite's own VFS (no counts: the CPU of
the thread without the counting's Python).
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._entries import payload_bytes
from trio_broker._storage._store import Store

QUEUE = "Q-0123456789abcdef"


class Counts:
    def __init__(self) -> None:
        self.n: collections.Counter[str] = collections.Counter()
        self.frames: collections.Counter[int] = collections.Counter()
        self.reads: collections.Counter[int] = collections.Counter()
        self.on = False

    def add(self, key: str, amount: int = 1) -> None:
        if self.on:
            self.n[key] += amount


class CountingVFS(apsw.VFS):
    def __init__(self, name: str, counts: Counts) -> None:
        self.name = name
        self.counts = counts
        super().__init__(name, "")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        kind = "temp" if path is None else ("wal" if path.endswith("-wal") else "db")
        return CountingFile(self.counts, kind, name, flags)


class CountingFile(apsw.VFSFile):
    def __init__(self, counts: Counts, kind: str, name: Any, flags: list[int]) -> None:
        super().__init__("", name, flags)
        self.c = counts
        self.kind = kind

    def xWrite(self, data: bytes, offset: int) -> None:
        self.c.add(f"{self.kind} writes")
        self.c.add(f"{self.kind} bytes written", len(data))
        if self.kind == "wal" and len(data) == 24 and self.c.on:
            self.c.frames[int.from_bytes(data[:4], "big")] += 1
        super().xWrite(data, offset)

    def xRead(self, amount: int, offset: int) -> bytes:
        self.c.add(f"{self.kind} reads")
        self.c.add(f"{self.kind} bytes read", amount)
        if self.kind == "db" and amount == 4096 and self.c.on:
            self.c.reads[offset // 4096 + 1] += 1
        return super().xRead(amount, offset)

    def xSync(self, flags: int) -> None:
        self.c.add(f"{self.kind} syncs")
        super().xSync(flags)

    def xLock(self, level: int) -> None:
        self.c.add(f"{self.kind} locks")
        super().xLock(level)

    def xUnlock(self, level: int) -> None:
        self.c.add(f"{self.kind} unlocks")
        super().xUnlock(level)

    def xTruncate(self, newsize: int) -> None:
        self.c.add(f"{self.kind} truncates")
        super().xTruncate(newsize)


def _run(
    args: argparse.Namespace, directory: Path
) -> tuple[Counts, dict[str, int], dict[str, int], float, int]:
    counts = Counts()
    vfs = CountingVFS(f"counting-{os.getpid()}", counts)
    store = Store(directory, vfs=None if args.plain else vfs.name)
    try:
        for pragma in args.pragma:
            store._db.execute(f"PRAGMA {pragma}")
        value = dumps_value("x" * 100)
        create = rm.Entry(1, 1, cmd.CreateQueue(QUEUE))
        store.save(entries=[create], hard_state=rm.HardState(1, None, 0))
        store.save(committed=[create], hard_state=rm.HardState(1, None, 1))
        index = 1
        previous: list[rm.Entry] = []
        appends = 0
        cpu = 0.0
        snapshot_index = 1
        for n in range(args.warm + args.saves):
            counts.on = n >= args.warm
            if args.sequential:
                index += 1
                entry = rm.Entry(1, index, cmd.AppendMessage(QUEUE, value, None, None, index))
                started = time.thread_time()
                store.save(entries=[entry], hard_state=rm.HardState(1, None, index - 1))
                store.save(committed=[entry], hard_state=rm.HardState(1, None, index))
                new = [entry]
            else:
                new = []
                for _ in range(args.entries):
                    index += 1
                    stamp = 1_765_000_000_000 + index
                    group = cmd.CommandGroup(
                        tuple(
                            cmd.AppendMessage(QUEUE, value, None, None, stamp)
                            for _ in range(args.appends)
                        )
                    )
                    new.append(rm.Entry(1, index, group))
                    # the leader's one encoding, as a replica gets it (--runs: APPEND_RUNS)
                    payload_bytes(new[-1], args.runs)
                commit = previous[-1].index if previous else index - len(new)
                started = time.thread_time()
                store.save(
                    entries=new, hard_state=rm.HardState(1, None, commit), committed=previous
                )
                previous = new
            applied = index if args.sequential else index - len(new)
            if applied - snapshot_index >= args.compact_every + args.keep:
                snapshot_index = applied - args.keep
                store.compact(rm.SnapshotMeta(snapshot_index, 1, rm.Config(frozenset({"B-A"}))))
            if counts.on:
                cpu += time.thread_time() - started
                appends += len(new) * (1 if args.sequential else args.appends)
        counts.on = False
        tables: dict[str, int] = collections.Counter()
        pages = dict(store._db.execute("SELECT pageno, name FROM dbstat"))
        for page, frames in counts.frames.items():
            tables[pages.get(page, "(freelist)")] += frames
        read: dict[str, int] = collections.Counter()
        for page, n in counts.reads.items():
            read[pages.get(page, "(freelist)")] += n
        return counts, tables, read, cpu, appends
    finally:
        store.close()
        vfs.unregister()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=280, help="appends per entry")
    parser.add_argument("--entries", type=int, default=3, help="entries per save")
    parser.add_argument("--saves", type=int, default=1500)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--compact-every", type=int, default=600)
    parser.add_argument("--keep", type=int, default=150)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument(
        "--runs", action="store_true", help="groups stored as APPEND_RUNS, not COMMAND_GROUP"
    )
    parser.add_argument("--pragma", action="append", default=[])
    parser.add_argument("--dir", default=None)
    parser.add_argument(
        "--plain", action="store_true", help="SQLite's own VFS: CPU without the counting"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as base:
        counts, tables, read, cpu, appends = _run(args, Path(base))
    saves = args.saves
    print(f"{appends} appends in {saves} saves (pragmas: {args.pragma or 'none'})")
    print(f"  CPU of the thread: {cpu / appends * 1e6:.2f} us per append")
    for key in sorted(counts.n):
        n = counts.n[key]
        print(f"  {key:<22} {n / appends:10.3f} per append {n / saves:10.2f} per save")
    total = sum(tables.values())
    print(f"  WAL frames: {total / saves:.2f} per save, by b-tree:")
    for name, frames in sorted(tables.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<28} {frames / saves:8.2f} per save")
    print("  database pages read, by b-tree:")
    for name, n in sorted(read.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<28} {n / saves:8.2f} per save")


if __name__ == "__main__":
    main()
