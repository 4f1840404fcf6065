"""Review of the WAL kept across a clean close: power cuts in the close sequence, a close
under a reader, a stale ``-shm``, a WAL without its database, a full disk at the restart
commit, and the files' sizes over many open/close cycles (docs/reliability.md, "What a
closed data folder holds")."""

from __future__ import annotations

import contextlib
import random
import shutil
from pathlib import Path
from typing import Any

import apsw
import pytest

from tests.test_wal12_kept import log_indexes, save_entries, valid_frames, wal_of
from trio_broker._core._raft_messages import Entry, NoOp
from trio_broker._storage import DB_FILE, Store, _checkpoint
from trio_broker._storage._checkpoint import (
    WAL_SIZE_LIMIT,
    checkpoint_on_commit,
    close_unwritten,
)
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog
from trio_broker.testing._powerloss import PowerLossVFS, close_after_cut


def _check(folder: Path, saved: int) -> None:
    store = Store(folder)
    try:
        assert log_indexes(store) == list(range(1, saved + 1))
        assert store.log_damage() is None
        assert store._db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    finally:
        store.close()


def _syncs_of_close(tmp_path: Path) -> tuple[int, int]:
    """The sync points before and during a clean close of a store with 70 saves."""
    vfs = PowerLossVFS("revwal12-count")
    try:
        store = Store(tmp_path / "count", vfs=vfs.name)
        checkpoint_on_commit(store._db, 50)
        save_entries(store, 1, 70)
        before = vfs.syncs
        store.close()
        return before, vfs.syncs - before
    finally:
        vfs.unregister()


@pytest.mark.parametrize("torn", [False, True])
def test_a_power_cut_at_every_sync_point_of_the_close_keeps_every_save(tmp_path: Path, torn: bool):
    """Catches a close sequence whose restart commit (or SQLite's own close after it) can
    leave a WAL whose recovery loses or damages checkpointed data: e.g. a restart that
    rewrote the WAL header before the database file was synced, or a kept frame of a
    generation that still counts over pages the checkpoint changed."""
    before, during = _syncs_of_close(tmp_path)
    assert during >= 2  # (the checkpoint's syncs and the restart commit's)
    for cut in range(1, during + 1):
        folder = tmp_path / f"cut-{cut}"
        vfs = PowerLossVFS(f"revwal12-{torn}-{cut}", torn=torn, rng=random.Random(cut))
        try:
            store = Store(folder, vfs=vfs.name)
            checkpoint_on_commit(store._db, 50)
            save_entries(store, 1, 70)
            assert vfs.syncs == before
            vfs.cut_at_sync = before + cut
            with contextlib.suppress(apsw.Error):
                store.close()
            assert vfs.dead, ("the cut never came", cut)
            close_after_cut(store)
            vfs.power_on()
        finally:
            vfs.unregister()
        _check(folder, 70)


def test_a_crash_image_at_every_sync_point_of_the_close_and_after_it(tmp_path: Path):
    """The folder as a power cut would leave it at each sync point of the close (before the
    sync takes effect) and after the close: catches a close whose last steps (SQLite's
    close after the restart commit) leave the kept WAL and database inconsistent."""
    vfs = PowerLossVFS("revwal12-images")
    images: list[Path] = []
    folder = tmp_path / "live"
    try:
        store = Store(folder, vfs=vfs.name)
        checkpoint_on_commit(store._db, 50)
        save_entries(store, 1, 70)

        def image() -> None:
            dest = tmp_path / f"image-{len(images)}"
            vfs.crash_image(folder, dest)
            images.append(dest)

        vfs.on_sync = image
        store.close()
        vfs.on_sync = None
        image()  # (after the close: what the next start finds)
    finally:
        vfs.unregister()
    assert len(images) >= 3
    for dest in images:
        (dest / "LOCK").unlink(missing_ok=True)
        _check(dest, 70)
    assert valid_frames(wal_of(folder / DB_FILE)) == 1


def test_a_close_under_a_reader_restarts_nothing_and_the_next_start_has_everything(
    tmp_path: Path,
):
    """A reader (a backup, a ``data`` command, the integrity checker) holds a snapshot: the
    closing checkpoint cannot copy the frames after it, so the WAL must not restart (a new
    generation would drop frames not yet in the database file; SQLite itself refuses to
    restart under a reader, and ``_restart_wal`` does not try). Catches a close that drops or
    invalidates those frames (the later saves lost at the next open), and a kept WAL the
    next start misreads (the folder copied while the reader still held it, as a crash
    would leave it, and after the reader closed)."""
    store = Store(tmp_path / "live")
    save_entries(store, 1, 20)
    reader = apsw.Connection(str(tmp_path / "live" / DB_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
        save_entries(store, 21, 30)
        store.close()
        wal = wal_of(tmp_path / "live" / DB_FILE)
        assert valid_frames(wal) > 1, "the WAL restarted under a reader"
        shutil.copytree(tmp_path / "live", tmp_path / "crash")
        reader.execute("COMMIT")
    finally:
        reader.close()
    (tmp_path / "crash" / "LOCK").unlink(missing_ok=True)
    _check(tmp_path / "crash", 50)
    _check(tmp_path / "live", 50)
    # (that start's close had no reader: the WAL restarted again)
    assert valid_frames(wal_of(tmp_path / "live" / DB_FILE)) == 1


def test_a_kept_wal_beside_a_stale_shm_opens_with_every_save(tmp_path: Path):
    """The ``-shm`` left from a moment the WAL held many frames of the same generation,
    beside the WAL the clean close kept: catches a start that trusts the stale index (its
    mxFrame past the one valid frame) instead of rebuilding it from the WAL."""
    folder = tmp_path / "live"
    store = Store(folder)
    checkpoint_on_commit(store._db, 10_000)  # (no checkpoint: many frames in the index)
    save_entries(store, 1, 60)
    stale = tmp_path / "stale-shm"
    shutil.copyfile(folder / (DB_FILE + "-shm"), stale)
    save_entries(store, 61, 10)
    store.close()
    assert valid_frames(wal_of(folder / DB_FILE)) == 1
    shutil.copyfile(stale, folder / (DB_FILE + "-shm"))
    _check(folder, 70)


def test_a_kept_wal_without_its_database_is_not_applied_to_a_new_one(tmp_path: Path):
    """The database file removed by hand, its kept WAL left: the next start makes a new
    empty store. Catches the kept frame (the old file's first page, its schema and page
    count) applied to the new file: SQLite drops a WAL beside an empty database file."""
    store = Store(tmp_path)
    save_entries(store, 1, 30)
    store.close()
    assert valid_frames(wal_of(tmp_path / DB_FILE)) == 1
    (tmp_path / DB_FILE).unlink()
    store = Store(tmp_path)
    try:
        assert log_indexes(store) == []
        assert store._db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        save_entries(store, 1, 3)
    finally:
        store.close()
    _check(tmp_path, 3)


class _FullVFS(apsw.VFS):
    """The default VFS, whose writes to a ``-wal`` fail with ``SQLITE_FULL`` while armed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.armed = False
        self.failed = 0
        super().__init__(name, "")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        return _FullFile(self, name, flags)


class _FullFile(apsw.VFSFile):
    def __init__(self, vfs: _FullVFS, name: Any, flags: list[int]) -> None:
        self.vfs = vfs
        self.path = name if isinstance(name, str) else name.filename()
        super().__init__("", name, flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        if self.vfs.armed and self.path.endswith("-wal"):
            self.vfs.failed += 1
            raise apsw.FullError("no room")
        super().xWrite(data, offset)


def test_a_full_disk_at_the_restart_commit_loses_nothing(tmp_path: Path, monkeypatch, caplog):
    """The restart commit needs one frame written into the WAL: on a full disk it fails.
    Catches a close that then loses or damages data (the checkpointed file is whole, the
    failed commit rolled back), or one that leaves a WAL the next start misreads, or one
    that says nothing of it."""
    vfs = _FullVFS("revwal12-full")
    restart = _checkpoint._restart_wal

    def armed_restart(db: apsw.Connection, frames: int, copied: int) -> None:
        vfs.armed = True
        try:
            restart(db, frames, copied)
        finally:
            vfs.armed = False

    monkeypatch.setattr(_checkpoint, "_restart_wal", armed_restart)
    try:
        store = Store(tmp_path, vfs=vfs.name)
        checkpoint_on_commit(store._db, 50)
        save_entries(store, 1, 70)
        try:
            store.close()
        except apsw.FullError:
            pass  # (a clear error is fine too; nothing may be lost either way)
        finally:
            store._lock.release()
        assert vfs.failed >= 1, "the restart commit wrote nothing into the WAL"
        told = [r for r in caplog.records if "storage.close_checkpoint_incomplete" in r.message]
        assert len(told) == 1 and told[0].levelname == "WARNING", caplog.text
    finally:
        vfs.unregister()
    _check(tmp_path, 70)


def test_the_shared_logs_kept_wal_is_truncated_after_a_large_transaction(
    tmp_path: Path, monkeypatch
):
    """One large transaction of the shared log grows its WAL past ``journal_size_limit``:
    catches a shared log whose close keeps that size for good (the limit not set on its
    connection, or reset to -1 before the restart commit truncates)."""
    monkeypatch.setattr(_checkpoint, "WAL_SIZE_LIMIT", 64 * 1024)
    path = tmp_path / SHARED_LOG_FILE
    log = SharedLog(path)
    with log.transaction:
        log.write("g", None, [Entry(1, i, NoOp()) for i in range(1, 3001)], None)
    assert wal_of(path).stat().st_size > 64 * 1024
    log.close()
    assert 0 < wal_of(path).stat().st_size <= 64 * 1024
    assert valid_frames(wal_of(path)) == 1
    log = SharedLog(path)
    try:
        indexes = [entry[0] for op in log.ops_after("g", 0) for entry in op[3]]
        assert indexes == list(range(1, 3001))
        assert log._db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    finally:
        log.close()


def test_twenty_open_close_cycles_keep_the_store_and_shared_log_bounded(tmp_path: Path):
    """A store and a shared log (two groups' logs) opened, written and closed 20 times:
    catches a kept WAL that grows at each start (a start appending after the kept frame
    instead of writing over the kept blocks, a restart that never happens) and a database
    file that grows for it."""
    log_path = tmp_path / "groups" / SHARED_LOG_FILE
    log_path.parent.mkdir()
    sizes: list[tuple[int, int, int, int]] = []
    for cycle in range(20):
        store = Store(tmp_path / "store")
        log = SharedLog(log_path)
        try:
            save_entries(store, cycle * 5 + 1, 5)
            with log.transaction:
                log.write("g1", None, [Entry(1, cycle + 1, NoOp())], None)
                log.write("g2", None, [Entry(1, cycle + 1, NoOp())], None)
        finally:
            log.close()
            store.close()
        store_db = tmp_path / "store" / DB_FILE
        sizes.append(
            (
                store_db.stat().st_size,
                wal_of(store_db).stat().st_size,
                log_path.stat().st_size,
                wal_of(log_path).stat().st_size,
            )
        )
        assert valid_frames(wal_of(store_db)) == 1
        assert valid_frames(wal_of(log_path)) == 1
    # (the first cycles create the tables; from then on the WALs keep their size)
    assert sizes[19][1] == sizes[5][1] and sizes[19][3] == sizes[5][3], sizes
    assert all(s[1] <= WAL_SIZE_LIMIT and s[3] <= WAL_SIZE_LIMIT for s in sizes)
    _check(tmp_path / "store", 100)
    log = SharedLog(log_path)
    try:
        for group in ("g1", "g2"):
            indexes = [entry[0] for op in log.ops_after(group, 0) for entry in op[3]]
            assert indexes == list(range(1, 21))
    finally:
        log.close()


def _shared_log_saves(log: SharedLog, count: int) -> None:
    for seq in range(1, count + 1):
        with log.transaction:
            log.write("g", None, [Entry(1, seq, NoOp())], None)


def test_a_power_cut_at_every_sync_point_of_the_shared_logs_close(tmp_path: Path):
    """The shared log closes as a store does (its checkpoint, the restart commit, SQLite's
    close): catches a shared log whose close sequence can lose a committed group's save at
    a cut (its restart before the database file was synced, a WAL left to misread)."""
    (tmp_path / "count").mkdir()
    vfs = PowerLossVFS("revwal12-log-count")
    try:
        log = SharedLog(tmp_path / "count" / SHARED_LOG_FILE, vfs=vfs.name)
        _shared_log_saves(log, 30)
        before = vfs.syncs
        log.close()
        during = vfs.syncs - before
    finally:
        vfs.unregister()
    assert during >= 2
    for cut in range(1, during + 1):
        path = tmp_path / f"cut-{cut}" / SHARED_LOG_FILE
        path.parent.mkdir()
        vfs = PowerLossVFS(f"revwal12-log-{cut}", torn=bool(cut % 2), rng=random.Random(cut))
        try:
            log = SharedLog(path, vfs=vfs.name)
            _shared_log_saves(log, 30)
            assert vfs.syncs == before
            vfs.cut_at_sync = before + cut
            with contextlib.suppress(apsw.Error):
                log.close()
            assert vfs.dead, ("the cut never came", cut)
            close_unwritten(log._db)
            vfs.power_on()
        finally:
            vfs.unregister()
        log = SharedLog(path)
        try:
            indexes = [entry[0] for op in log.ops_after("g", 0) for entry in op[3]]
            assert indexes == list(range(1, 31)), cut
            assert log._db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        finally:
            log.close()
