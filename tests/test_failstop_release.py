"""What a broker whose disk failed a write leaves behind in its process (docs/reliability.md,
"A failed fsync stops the broker"): its SQLite connections closed without writing a byte (no
checkpoint, the WAL kept), the data folder's lock released as the broker's run ends once the
mark is on disk (a library user's process can then report, reset, start again), and the
operators' tools that must not trust the folder (``data trust-log``, ``backup``) refusing it
or leaving it untouched.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import apsw
import pytest
import trio

from trio_broker import StorageFailed
from trio_broker._cli._main import main as cli_main
from trio_broker._runtime import open_broker
from trio_broker._storage import Store
from trio_broker._storage._backup import backup
from trio_broker._storage._failed import FAILED_FILE, read_marker, write_marker
from trio_broker._storage._files import LOCK_FILE, DataDirInUse, DirLock
from trio_broker._storage._shared_log import SharedGroupStorage
from trio_broker._storage._worker import open_sqlite_storage


def _files(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` by its path: its bytes' digest and its mtime (the ``-shm``
    wal-index aside: SQLite maps it, and the next open rebuilds it from the WAL; and the
    lock's file, which whoever takes the lock writes its pid into)."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.endswith("-shm") and path.name != LOCK_FILE
    }


def _closed(store: Any) -> bool:
    try:
        store._db.execute("SELECT 1")
    except apsw.ConnectionClosedError:
        return True
    return False


def _lock_free(folder: Path) -> bool:
    try:
        lock = DirLock(folder)
    except DataDirInUse:
        return False
    lock.release()
    return True


def _set(store: Store, n: int) -> None:
    """One committed transaction."""
    with store._db:
        store._set_meta({f"k{n}": n})


def crashed_store(data_dir: Path) -> Path:
    """``data_dir`` holding a store as a crash leaves it: five commits in its WAL, the
    connection gone without its closing checkpoint, the lock released."""
    store = Store(data_dir)
    store.init_identity("B-AAAAA", "C-AAAAA")
    for n in range(5):
        _set(store, n)
    store._db.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    store._db.close()
    store._lock.release()
    return data_dir


def _failure(folder: Path) -> StorageFailed:
    return StorageFailed(str(folder / "broker.sqlite3"), "disk I/O error", "SQLITE_IOERR_FSYNC")


@pytest.mark.parametrize("marked", [True, False])
async def test_a_failed_stores_connection_closes_and_no_byte_of_the_folder_changes(
    tmp_path: Path, marked: bool
) -> None:
    """The store's worker fails with commits still in the WAL. Leaving its run closes the
    connection (before: left open, to be closed when the process ended or the store was
    collected, by SQLite's close, whose checkpoint copies the WAL into the database file,
    syncs it and deletes the WAL): no file of the folder changes, then or when the store is
    collected. The lock is released once the mark is on disk; without it (the failed disk
    refused the mark too) the process keeps it, so that nothing in it opens the folder."""
    data_dir = tmp_path / "b1"
    async with open_sqlite_storage(data_dir) as (worker, store):
        for n in range(5):  # (commits left in the WAL: a closing checkpoint would move them)
            await worker.run(store.init_identity, f"B-{n}", "C-AAAAA")
            await worker.run(_set, store, n)
        if marked:
            assert write_marker(data_dir, _failure(data_dir)) is not None
        worker.fail(_failure(data_dir))
        before = _files(data_dir)
        assert (data_dir / "broker.sqlite3-wal").stat().st_size > 0
    assert _closed(store)
    assert _files(data_dir) == before
    assert _lock_free(data_dir) is marked
    del store
    gc.collect()
    assert _files(data_dir) == before
    assert (read_marker(data_dir) is not None) is marked  # (a marked folder stays refused)


async def test_a_failed_shared_storages_stores_and_log_close_writing_nothing(
    tmp_path: Path,
) -> None:
    """The same for a broker's extra groups (their stores and the shared log on one worker):
    every connection closed without a write, each group folder's lock released once the mark
    is in the broker's folder (before: each close was refused by the failed worker and raised,
    leaving the connections open and the locks held)."""
    broker_dir = tmp_path / "b1"
    paths = [broker_dir / "groups" / name for name in ("G-AAAAA", "G-BBBBB")]
    (broker_dir / "groups").mkdir(parents=True)
    shared = SharedGroupStorage()
    stores = []
    async with contextlib.AsyncExitStack() as stack:
        for path in paths:
            worker, store = await stack.enter_async_context(shared(path.name, path))
            await worker.run(store.init_identity, "B-AAAAA", "C-AAAAA")
            stores.append(store)
        log = shared._log
        assert write_marker(broker_dir, _failure(paths[0])) is not None
        worker.fail(_failure(paths[0]))
        before = _files(broker_dir)
    assert all(_closed(store) for store in stores) and _closed(log)
    assert _files(broker_dir) == before
    assert all(_lock_free(path) for path in paths)


class _FailingDisk:
    """A broker's real SQLite storage (``open_sqlite_storage``) on a power-loss VFS in the
    fsyncgate model whose ``armed`` fsync fails; counts the syncs after it."""

    def __init__(self, name: str) -> None:
        from trio_broker.testing._powerloss import PowerLossVFS

        self.vfs = PowerLossVFS(name, drops=True)
        self.vfs.sync_fails = self._fails
        self.vfs.on_sync = self._on_sync
        self.armed = False
        self.failed = False
        self.syncs_after = 0
        self.store: Any = None

    def _on_sync(self) -> None:
        self.syncs_after += self.failed

    def _fails(self, path: str) -> bool:
        if self.armed:
            self.armed, self.failed = False, True
            return True
        return False

    @contextlib.asynccontextmanager
    async def storage(self, data_dir: Path) -> AsyncIterator[tuple[Any, Any]]:
        async with open_sqlite_storage(data_dir, vfs=self.vfs.name) as (worker, store):
            self.store = store
            yield worker, store


async def test_a_library_user_can_reset_the_folder_in_the_same_process_after_the_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trio app embeds a broker, whose fsync fails: ``open_broker`` raises StorageFailed,
    and by then its store is closed without a sync and the folder's lock released (before:
    held until the process ended, so the same process's ``data reset`` found the folder in
    use). A start in the process is refused by the mark, not by the lock; the reset moves
    the files aside and a broker starts on the emptied folder."""
    from tests.test_failed_fsync import _append, _config
    from tests.wire import create_queue

    disk = _FailingDisk("failstop-release-broker")
    data_dir = tmp_path / "b1"
    try:
        with pytest.raises(BaseException) as caught:
            async with open_broker(_config(data_dir), storage=disk.storage) as broker:
                queue_id = await create_queue(broker.port)
                assert (await _append(broker.port, queue_id, "v0"))["status"] == "success"
                disk.armed = True
                with trio.fail_after(10):
                    with contextlib.suppress(Exception):
                        await _append(broker.port, queue_id, "v1")
                    await trio.sleep_forever()  # (until the failure ends the broker)
        failures = [caught.value]
        while isinstance(failures[-1], BaseExceptionGroup):
            failures.extend(failures.pop().exceptions)
        assert any(isinstance(exc, StorageFailed) for exc in failures), repr(caught.value)
        assert disk.failed and disk.syncs_after == 0
        assert _closed(disk.store)
        assert (data_dir / "broker.sqlite3-wal").exists()  # (kept: no closing checkpoint)
        with pytest.raises(StorageFailed):  # (the mark, not DataDirInUse)
            async with open_broker(_config(data_dir)):
                pytest.fail("started on a folder whose disk failed a fsync")
        assert cli_main(["data", "reset", "--data-dir", str(data_dir)]) == 0, (
            capsys.readouterr().err
        )
        assert not (data_dir / FAILED_FILE).exists()
        async with open_broker(_config(data_dir)) as broker:
            assert broker.broker_id
    finally:
        disk.vfs.unregister()


def test_trust_log_refuses_a_folder_marked_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``data trust-log`` on a folder whose disk failed a write refuses it as ``data check``
    and ``backup`` do (status 1, the report): trusting the log its disk kept would let the
    broker vote on a log that may lack acknowledged writes. Before: it accepted the log."""
    data_dir = tmp_path / "b1"
    store = Store(data_dir)
    store.init_identity("B-AAAAA", "C-AAAAA")
    with store._db:
        store._set_meta({"raft_unverified": 1, "boot_id": "an-earlier-boot"})
    store.close()
    assert write_marker(data_dir, _failure(data_dir)) is not None
    assert cli_main(["data", "trust-log", "--data-dir", str(data_dir)]) == 1
    captured = capsys.readouterr()
    assert "SQLITE_IOERR_FSYNC" in captured.err and "data reset" in captured.err
    assert "Traceback" not in captured.err and "accepted" not in captured.out
    store = Store(data_dir)
    try:
        assert store.get_meta("raft_unverified") == 1  # (left as it was)
        assert store.get_meta("boot_id") == "an-earlier-boot"
    finally:
        store.close()


def test_a_backup_writes_nothing_to_a_stopped_brokers_files(tmp_path: Path) -> None:
    """A backup of a broker that stopped without a closing checkpoint (a crash: commits in
    its WAL) leaves the database file and the WAL as they were (before: its read-write
    connection was the last to close the database, and SQLite's closing checkpoint wrote and
    synced the database file, with no hook to stop on a failed fsync, and deleted the WAL)."""
    data_dir = crashed_store(tmp_path / "b1")
    before = _files(data_dir)
    assert (data_dir / "broker.sqlite3-wal").stat().st_size > 0
    info = backup(data_dir, tmp_path / "copy.sqlite3")
    assert info.broker_id == "B-AAAAA"
    assert _files(data_dir) == before


def test_an_open_whose_fsync_fails_closes_writing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's open syncs its new files after creating the schema (commits in the WAL);
    that fsync fails: the open's connection closes without SQLite's checkpoint, so the WAL
    is kept and the database file is not written (before: a plain close, the last one, which
    checkpointed the WAL into the file, synced it and deleted the WAL)."""
    from trio_broker._storage import _store
    from trio_broker._storage._failed import FsyncFailed

    def failing_sync(data_dir: Path) -> None:
        before.update(_files(data_dir))
        raise FsyncFailed(5, f"fsync of {data_dir} failed: Input/output error")

    before: dict[str, tuple[str, int]] = {}
    monkeypatch.setattr(_store, "sync_new_files", failing_sync)
    data_dir = tmp_path / "b1"
    with pytest.raises(FsyncFailed):  # (reported as any failed fsync: marked)
        Store(data_dir)
    assert (data_dir / "broker.sqlite3-wal").stat().st_size > 0
    assert read_marker(data_dir) is not None
    (data_dir / FAILED_FILE).unlink()
    assert _files(data_dir) == before
