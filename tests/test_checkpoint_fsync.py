"""A failed fsync inside the automatic checkpoint stops the broker too (docs/reliability.md,
"A failed fsync stops the broker").

SQLite's own automatic checkpoint drops its errors: the commit that ran it succeeds. Ours
(:mod:`trio_broker._storage._checkpoint`) turns a lost-writes error of that checkpoint into the
commit's error, so the storage job fails with ``SQLITE_IOERR_FSYNC`` and the worker refuses
every later job. The disk is a :class:`PowerLossVFS` in the fsyncgate model (``drops=True``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import apsw
import pytest

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_messages import Config, Entry, HardState
from trio_broker._storage._checkpoint import checkpoint_on_commit
from trio_broker._storage._failed import StorageFailed, lost_writes
from trio_broker._storage._store import Store
from trio_broker._storage._worker import open_storage_worker
from trio_broker.testing._powerloss import PowerLossVFS

BROKER = "a"
CONFIG = Config(frozenset({BROKER}))
QUEUE = "q"
PAGES = 8
"""A small checkpoint threshold: a checkpoint every few saves."""


class Leader:
    """A single-node leader's store, saved to as the driver does: durable appends (``FULL``),
    then their apply (``NORMAL``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.bootstrap(CONFIG)
        state = store.raft_state()
        self.last = state.entries[-1].index if state.entries else state.snapshot_index
        self.hard = HardState(1, BROKER, 0)
        self.store.save(hard_state=self.hard)
        self.apply(self.append([CreateQueue(QUEUE)]))

    def append(self, payloads: list) -> list[Entry]:
        entries = [Entry(1, self.last + 1 + i, p) for i, p in enumerate(payloads)]
        self.store.save(hard_state=self.hard, entries=entries)
        self.last = entries[-1].index
        return entries

    def apply(self, entries: list[Entry]) -> None:
        self.hard = HardState(1, BROKER, entries[-1].index)
        self.store.save(hard_state=self.hard, committed=entries)

    def appends(self, n: int) -> list[Entry]:
        return self.append([AppendMessage(QUEUE, b'"%d"' % i, appended_ms=i) for i in range(n)])


class FailingDisk:
    """Fails the next sync of a file whose name ``fail`` accepts, once armed."""

    def __init__(self, name: str) -> None:
        self.vfs = PowerLossVFS(name, drops=True)
        self.vfs.sync_fails = self._fails
        self.fail: str | None = None
        """``"db"``: the database file's next sync (only a checkpoint syncs it in WAL mode);
        ``"wal"``: the WAL's next sync."""
        self.failed = 0

    def _fails(self, path: str) -> bool:
        if self.fail is None or path.endswith("-wal") != (self.fail == "wal"):
            return False
        self.fail = None
        self.failed += 1
        return True


@pytest.mark.parametrize("file", ["db", "wal"])
async def test_a_failed_fsync_inside_the_automatic_checkpoint_fails_the_worker(
    tmp_path: Path, file: str
) -> None:
    """The database file's sync after the frames were copied (``db``, after durable appends),
    or the WAL's sync before they are (``wal``, in an apply-only commit at ``NORMAL``, which
    does not sync the WAL itself: its only WAL sync is the checkpoint's): the save that ran
    the checkpoint fails with ``SQLITE_IOERR_FSYNC`` and the worker fails (before: the commit
    succeeded and the broker went on acknowledging over writes the disk may have dropped)."""
    disk = FailingDisk(f"checkpoint-fsync-{file}")
    try:
        async with open_storage_worker() as worker:
            store = await worker.run(functools.partial(Store, tmp_path, vfs=disk.vfs.name))
            await worker.run(checkpoint_on_commit, store._db, PAGES)
            leader = await worker.run(Leader, store)
            error: BaseException | None = None
            for _ in range(100):  # (a checkpoint every few saves: the first one fails)
                entries = await worker.run(leader.appends, 3)
                disk.fail = file
                try:
                    await worker.run(leader.apply, entries)
                    if file == "db":
                        await worker.run(leader.appends, 3)
                except apsw.Error as exc:
                    error = exc
                    break
                disk.fail = None
            assert disk.failed == 1
            assert isinstance(error, apsw.IOError), error
            assert error.extendedresult == apsw.SQLITE_IOERR_FSYNC
            # SQLite's own report of the committing statement, not the Python exception the
            # test's VFS raised: apsw hands that to the caller even when SQLite drops the
            # error (as its automatic checkpoint does), while a real disk's failed fsync
            # reaches the broker only through SQLite's result code.
            assert not str(error).startswith("injected"), error
            assert lost_writes(error)
            assert worker.failed is not None and worker.failed.code == "SQLITE_IOERR_FSYNC"
            with pytest.raises(StorageFailed):
                await worker.run(leader.appends, 1)
        # (a failed store is never closed: the process ends, the power with it)
        disk.vfs.cut()
        store.close()
    finally:
        disk.vfs.unregister()


def test_the_wal_stays_bounded_by_our_checkpoint(tmp_path: Path) -> None:
    """A store's connection checkpoints through our hook (SQLite's automatic checkpoint is
    replaced: ``wal_autocheckpoint`` reads 0) at SQLite's threshold, 1,000 pages: after ~3
    thresholds' worth of commits the WAL holds no more than one threshold plus a save."""
    store = Store(tmp_path)
    try:
        (autocheckpoint,) = store._db.execute("PRAGMA wal_autocheckpoint").fetchone()
        assert autocheckpoint == 0
        (page,) = store._db.execute("PRAGMA page_size").fetchone()
        leader = Leader(store)
        big = b'"' + b"x" * 4000 + b'"'
        for _ in range(60):  # (about 50 pages a save, ~3,000 pages in all)
            leader.apply(leader.append([AppendMessage(QUEUE, big, appended_ms=1)] * 40))
        wal = tmp_path / (Path(store._db.filename).name + "-wal")
        assert 0 < wal.stat().st_size <= (1000 + 120) * (page + 24) + 32
    finally:
        store.close()
