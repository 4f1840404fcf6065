"""A failed fsync met by a store's or shared log's own close, in a clean stop (its closing
checkpoint syncs the database file): a failed fsync like every other (docs/reliability.md,
"A failed fsync stops the broker"): the mark written and synced, ``StorageFailed`` raised
by the runtime (a bare store raises the error it met, the failure riding on it: its callers
catch ``apsw.Error``), the connection closed writing nothing, the folder's lock released only
once the mark is on disk. The same for a failed open, and any failed open closes without
SQLite's closing checkpoint; a folder so marked is refused by the runtime's storages.
Before: ``Store.close`` released the lock in its ``finally`` and raised the raw
``apsw.IOError``; only the ``node`` command wrote the mark, so a library user embedding the
broker (``open_broker``, ``open_sqlite_storage``, ``Store``) got no mark at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from tests.test_failstop_release import _closed, _lock_free, _set
from trio_broker import StorageFailed
from trio_broker._runtime import open_broker
from trio_broker._storage import Store
from trio_broker._storage._failed import FAILED_FILE, read_marker
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedGroupStorage
from trio_broker._storage._worker import open_sqlite_storage
from trio_broker.testing._powerloss import PowerLossVFS


class _CloseFailsDisk:
    """A power-loss VFS in the fsyncgate model whose first fsync of a file named ``target``
    fails once armed (the closing checkpoint's sync of the database file: nothing else syncs
    that file in these short runs); counts the syncs after the failure."""

    def __init__(self, name: str, target: str) -> None:
        self.vfs = PowerLossVFS(name, drops=True)
        self.vfs.sync_fails = self._fails
        self.vfs.on_sync = self._on_sync
        self.target = target
        self.armed = self.failed = False
        self.syncs_after = 0

    def _on_sync(self) -> None:
        self.syncs_after += self.failed

    def _fails(self, path: str) -> bool:
        if self.armed and path.endswith("/" + self.target):
            self.armed, self.failed = False, True
            return True
        return False


@contextlib.contextmanager
def _disk(name: str, target: str = "broker.sqlite3") -> Iterator[_CloseFailsDisk]:
    disk = _CloseFailsDisk(name, target)
    try:
        yield disk
    finally:
        disk.vfs.unregister()


def _leaves(exc: BaseException) -> list[BaseException]:
    pending, leaves = [exc], []
    while pending:
        e = pending.pop()
        if isinstance(e, BaseExceptionGroup):
            pending.extend(e.exceptions)
        else:
            leaves.append(e)
    return leaves


def _assert_failed_stop(data_dir: Path, disk: _CloseFailsDisk, store: Any) -> None:
    assert disk.failed and disk.syncs_after == 0
    assert read_marker(data_dir) is not None
    assert _closed(store)
    assert (data_dir / "broker.sqlite3-wal").stat().st_size > 0  # (no checkpoint deleted it)
    assert _lock_free(data_dir)


def test_a_stores_close_whose_checkpoint_fsync_fails_marks_the_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "b1"
    with _disk("review-close-store") as disk:
        store = Store(data_dir, vfs=disk.vfs.name)
        store.init_identity("B-AAAAA", "C-AAAAA")
        for n in range(5):
            _set(store, n)
        disk.armed = True
        with pytest.raises(apsw.IOError) as caught:  # (what callers of a store catch)
            store.close()
        failure = StorageFailed.from_error(caught.value)  # (the runtime's: reported, marked)
        assert failure.code == "SQLITE_IOERR_FSYNC" and failure.reported
        assert failure.file == str(data_dir / "broker.sqlite3")
        _assert_failed_stop(data_dir, disk, store)


def test_a_close_that_fails_keeps_the_lock_when_the_mark_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed disk refuses the mark too: the process keeps the lock (``Store.abandon``)."""
    from trio_broker._storage import _failed

    monkeypatch.setattr(_failed, "write_marker", lambda data_dir, failure: None)
    data_dir = tmp_path / "b1"
    with _disk("review-close-nomark") as disk:
        store = Store(data_dir, vfs=disk.vfs.name)
        store.init_identity("B-AAAAA", "C-AAAAA")
        disk.armed = True
        with pytest.raises(apsw.IOError):
            store.close()
        assert disk.failed and _closed(store)
        assert not (data_dir / FAILED_FILE).exists()
        assert not _lock_free(data_dir)
        store._lock.release()


async def test_open_sqlite_storages_close_that_fails_marks_the_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "b1"
    with _disk("review-close-worker") as disk:
        with pytest.raises(BaseException) as caught:
            async with open_sqlite_storage(data_dir, vfs=disk.vfs.name) as (worker, store):
                await worker.run(store.init_identity, "B-AAAAA", "C-AAAAA")
                for n in range(5):
                    await worker.run(_set, store, n)
                disk.armed = True
        assert any(isinstance(e, StorageFailed) for e in _leaves(caught.value)), caught.value
        _assert_failed_stop(data_dir, disk, store)


async def test_an_embedded_brokers_clean_stop_whose_fsync_fails_marks_the_folder(
    tmp_path: Path,
) -> None:
    """``open_broker`` (a library user's broker): its clean stop's closing checkpoint fails."""
    from tests.test_failed_fsync import _append, _config
    from tests.wire import create_queue

    data_dir = tmp_path / "b1"
    with _disk("review-close-broker") as disk:
        held: list[Any] = []

        @contextlib.asynccontextmanager
        async def storage(folder: Path) -> AsyncIterator[tuple[Any, Any]]:
            async with open_sqlite_storage(folder, vfs=disk.vfs.name) as (worker, store):
                held.append(store)
                yield worker, store

        with pytest.raises(BaseException) as caught:
            async with open_broker(_config(data_dir), storage=storage) as broker:
                queue_id = await create_queue(broker.port)
                for n in range(3):
                    assert (await _append(broker.port, queue_id, f"v{n}"))["status"] == "success"
                disk.armed = True
        assert any(isinstance(e, StorageFailed) for e in _leaves(caught.value)), caught.value
        _assert_failed_stop(data_dir, disk, held[0])
        with pytest.raises(StorageFailed):
            async with open_broker(_config(data_dir)):
                pytest.fail("started on a folder whose disk failed a fsync")


async def test_the_shared_logs_close_that_fails_marks_the_brokers_folder(
    tmp_path: Path,
) -> None:
    """The groups' shared log closes last (its stores closed cleanly); its checkpoint's fsync
    fails: the mark goes into the broker's folder, its error is raised with the failure on it."""
    broker_dir = tmp_path / "b1"
    (broker_dir / "groups").mkdir(parents=True)
    with _disk("review-close-shared", SHARED_LOG_FILE) as disk:
        shared = SharedGroupStorage(vfs=disk.vfs.name)
        with pytest.raises(BaseException) as caught:
            async with shared("G-AAAAA", broker_dir / "groups" / "G-AAAAA") as (worker, store):
                await worker.run(store.init_identity, "B-AAAAA", "C-AAAAA")
                log = shared._log
                disk.armed = True
        assert any(isinstance(e, StorageFailed) for e in _leaves(caught.value)), caught.value
        assert disk.failed and disk.syncs_after == 0
        assert read_marker(broker_dir) is not None
        assert _closed(log) and _closed(store)


async def test_a_groups_stores_close_that_fails_marks_the_brokers_folder(tmp_path: Path) -> None:
    """A group's store (``groups/G-AAAAA``) fails its closing checkpoint's fsync: the mark goes
    into the broker's folder, the group folder's lock is released after it, and the shared
    log, closed next on the now failed worker, is abandoned without a write."""
    broker_dir = tmp_path / "b1"
    group_dir = broker_dir / "groups" / "G-AAAAA"
    (broker_dir / "groups").mkdir(parents=True)
    with _disk("review-close-group") as disk:
        shared = SharedGroupStorage(vfs=disk.vfs.name)
        with pytest.raises(BaseException) as caught:
            async with shared("G-AAAAA", group_dir) as (worker, store):
                await worker.run(store.init_identity, "B-AAAAA", "C-AAAAA")
                for n in range(5):
                    await worker.run(_set, store, n)
                log = shared._log
                disk.armed = True
        assert any(isinstance(e, StorageFailed) for e in _leaves(caught.value)), caught.value
        assert disk.failed and disk.syncs_after == 0
        assert read_marker(broker_dir) is not None
        assert _closed(log) and _closed(store)
        assert _lock_free(group_dir)


def _fsync_fails(data_dir: Path) -> None:
    from trio_broker._storage._failed import FsyncFailed

    raise FsyncFailed(5, f"fsync of {data_dir} failed: Input/output error")


async def test_an_embedded_brokers_open_whose_fsync_fails_marks_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's open syncs its new files; that fsync fails under ``open_broker`` (no
    ``node`` command to mark it): the mark is written, StorageFailed raised, the lock free
    (before: a raw FsyncFailed, no mark, the lock released: a later start trusted the folder)."""
    from tests.test_failed_fsync import _config
    from trio_broker._storage import _store

    data_dir = tmp_path / "b1"
    monkeypatch.setattr(_store, "sync_new_files", _fsync_fails)
    with pytest.raises(BaseException) as caught:
        async with open_broker(_config(data_dir)):
            pytest.fail("started although its open failed")
    assert any(isinstance(e, StorageFailed) for e in _leaves(caught.value)), caught.value
    assert read_marker(data_dir) is not None
    assert _lock_free(data_dir)


def test_the_shared_logs_open_whose_fsync_fails_marks_the_brokers_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared log's open syncs its file; that fsync fails: the connection closes without
    a checkpoint (before: a plain close, whose checkpoint wrote and synced the file and
    deleted the WAL), the mark goes into the broker's folder, StorageFailed is raised."""
    from trio_broker._storage import _shared_log

    broker_dir = tmp_path / "b1"
    (broker_dir / "groups").mkdir(parents=True)
    monkeypatch.setattr(_shared_log, "fsync_path", _fsync_fails)
    with pytest.raises(OSError) as caught:
        _shared_log.SharedLog(broker_dir / "groups" / SHARED_LOG_FILE)
    assert StorageFailed.from_error(caught.value).reported
    assert read_marker(broker_dir) is not None
    assert (broker_dir / "groups" / (SHARED_LOG_FILE + "-wal")).stat().st_size > 0


def test_an_open_that_finds_damage_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open that fails for another reason than a lost write (here the log's check finds
    damage) closes without SQLite's closing checkpoint too (before: a plain close, whose
    checkpoint copied the WAL into the damaged file, synced it with no hook to stop on a
    failed fsync, and deleted the WAL the operator's ``data check``/``reset`` expects)."""
    from tests.test_failstop_release import _files, crashed_store
    from trio_broker._storage import StorageDamaged, _store

    data_dir = crashed_store(tmp_path / "b1")
    before = _files(data_dir)

    def damaged(*args: Any) -> None:
        raise StorageDamaged(str(data_dir / "broker.sqlite3"), "raft_log", "1", "bad sum")

    monkeypatch.setattr(_store, "check_log", damaged)
    with pytest.raises(StorageDamaged):
        Store(data_dir)
    assert (data_dir / "broker.sqlite3-wal").stat().st_size > 0
    assert _files(data_dir) == before
    assert _lock_free(data_dir)


async def test_a_group_opened_again_after_the_failure_is_refused(tmp_path: Path) -> None:
    """The shared storage failed and its last group left: its folders' locks are free (the
    mark is on disk) and the next open would start a fresh storage thread and shared log.
    A group opened again in the process is refused by the mark (before: it opened its store
    and wrote the failed folder), as the broker's own storage is."""
    from tests.test_failstop_release import _failure
    from trio_broker._storage._failed import write_marker

    broker_dir = tmp_path / "b1"
    group_dir = broker_dir / "groups" / "G-AAAAA"
    (broker_dir / "groups").mkdir(parents=True)
    shared = SharedGroupStorage()
    async with shared("G-AAAAA", group_dir) as (worker, store):
        await worker.run(store.init_identity, "B-AAAAA", "C-AAAAA")
        assert write_marker(broker_dir, _failure(group_dir)) is not None
        worker.fail(_failure(group_dir))
    assert _lock_free(group_dir)
    wal = group_dir / "broker.sqlite3-wal"
    before = wal.read_bytes()
    with pytest.raises(StorageFailed):
        async with shared("G-AAAAA", group_dir):
            pytest.fail("opened a group of a folder whose disk failed a write")
    assert wal.read_bytes() == before
    with pytest.raises(StorageFailed):
        async with open_sqlite_storage(broker_dir):
            pytest.fail("opened a folder whose disk failed a write")
