"""The WAL kept across a clean close (``_storage/_checkpoint.py``, "The WAL is kept"): a
store's and the shared log's WAL file stays after ``close``, restarted (its earlier frames no
longer count), and the next open writes over its blocks instead of growing the file; what the
folder holds opens intact, after a clean close and after a power cut that met a kept WAL."""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import apsw
import pytest

from trio_broker import StorageFailed
from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_messages import Entry, HardState, NoOp
from trio_broker._storage import DB_FILE, Store, _checkpoint
from trio_broker._storage._backup import backup, restore
from trio_broker._storage._checkpoint import checkpoint_on_commit
from trio_broker._storage._failed import read_marker
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog
from trio_broker.testing._powerloss import PowerLossVFS, close_after_cut

WAL_HEADER = 32
QUEUE = "Q-AAAAA00001"
PAGE = 4096


def wal_of(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def valid_frames(wal: Path) -> int:
    """The frames SQLite's recovery would take from ``wal``: those of its header's salts and
    checksums, up to the last commit frame (https://sqlite.org/fileformat2.html, "WAL File
    Format")."""
    data = wal.read_bytes()
    if len(data) < WAL_HEADER:
        return 0
    magic, _, page_size, _, salt1, salt2 = struct.unpack(">6I", data[:24])
    order = ">" if magic & 1 else "<"

    def checksum(block: bytes, s0: int, s1: int) -> tuple[int, int]:
        words = struct.unpack(f"{order}{len(block) // 4}I", block)
        for i in range(0, len(words), 2):
            s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
            s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
        return s0, s1

    s0, s1 = checksum(data[:24], 0, 0)
    if (s0, s1) != struct.unpack(">2I", data[24:32]):
        return 0
    frame, found, committed = WAL_HEADER, 0, 0
    while frame + 24 + page_size <= len(data):
        _, size, f1, f2, c0, c1 = struct.unpack(">6I", data[frame : frame + 24])
        if (f1, f2) != (salt1, salt2):
            break
        s0, s1 = checksum(
            data[frame : frame + 8] + data[frame + 24 : frame + 24 + page_size], s0, s1
        )
        if (s0, s1) != (c0, c1):
            break
        found += 1
        if size:
            committed = found
        frame += 24 + page_size
    return committed


def save_entries(store: Store, first: int, count: int) -> None:
    for index in range(first, first + count):
        store.save(entries=[Entry(1, index, NoOp())], hard_state=HardState(1, None, 0))


def log_indexes(store: Store) -> list[int]:
    return [e.index for e in store.raft_state().entries]


def test_a_clean_close_keeps_the_stores_wal_and_the_next_open_writes_over_it(tmp_path: Path):
    store = Store(tmp_path)
    checkpoint_on_commit(store._db, 50)  # (the WAL restarts every 50 pages: a short test)
    save_entries(store, 1, 120)
    store.close()
    wal = wal_of(tmp_path / DB_FILE)
    assert wal.exists(), "the WAL was deleted at the clean close"
    size = wal.stat().st_size
    assert size > 50 * PAGE
    assert valid_frames(wal) == 1  # restarted: one page after the closing checkpoint

    store = Store(tmp_path)
    try:
        assert log_indexes(store) == list(range(1, 121))
        save_entries(store, 121, 20)  # (about 40 frames, all inside the kept file)
        assert wal.stat().st_size == size
        assert log_indexes(store) == list(range(1, 141))
    finally:
        store.close()
    store = Store(tmp_path)
    try:
        assert log_indexes(store) == list(range(1, 141))
        assert store.log_damage() is None
    finally:
        store.close()


def test_a_clean_close_keeps_the_shared_logs_wal(tmp_path: Path):
    path = tmp_path / SHARED_LOG_FILE
    log = SharedLog(path)
    for seq in range(1, 41):
        with log.transaction:
            log.write("g", None, [Entry(1, seq, NoOp())], None)
    log.close()
    wal = wal_of(path)
    assert wal.exists(), "the shared log's WAL was deleted at the clean close"
    size = wal.stat().st_size
    assert valid_frames(wal) == 1

    log = SharedLog(path)
    try:
        assert [op[0] for op in log.ops_after("g", 0)] == list(range(1, 41))
        with log.transaction:
            log.write("g", None, [Entry(1, 41, NoOp())], None)
        assert wal.stat().st_size == size
    finally:
        log.close()


def test_the_kept_wal_is_bounded_by_its_size_limit(tmp_path: Path, monkeypatch):
    """One large transaction grows the WAL: the closing commit truncates it to the limit."""
    monkeypatch.setattr(_checkpoint, "WAL_SIZE_LIMIT", 64 * 1024)
    store = Store(tmp_path)
    big = [Entry(1, i, NoOp()) for i in range(1, 3001)]
    store.save(entries=big, hard_state=HardState(1, None, 0))
    wal = wal_of(tmp_path / DB_FILE)
    assert wal.stat().st_size > 64 * 1024
    store.close()
    assert wal.exists()
    assert 0 < wal.stat().st_size <= 64 * 1024
    store = Store(tmp_path)
    try:
        assert log_indexes(store) == list(range(1, 3001))
    finally:
        store.close()


@pytest.mark.parametrize("torn", [False, True])
def test_a_power_cut_over_a_kept_wal_keeps_every_acknowledged_save(tmp_path: Path, torn: bool):
    """The kept WAL holds a full earlier generation's frames (checkpointed, of old salts) past
    the new ones: a cut at each sync point of the next run, torn or not, opens with every
    save that returned and nothing damaged."""
    base = tmp_path / "base"
    store = Store(base)
    checkpoint_on_commit(store._db, 60)
    save_entries(store, 1, 100)
    store.close()
    assert valid_frames(wal_of(base / DB_FILE)) == 1
    for cut in range(1, 30, 2):
        folder = tmp_path / f"cut-{cut}"
        shutil.copytree(base, folder)
        vfs = PowerLossVFS(f"wal12-{torn}-{cut}", torn=torn, rng=random.Random(cut))
        try:
            store = Store(folder, vfs=vfs.name)
            vfs.cut_at_sync = vfs.syncs + cut
            acked = 100
            try:
                for index in range(101, 161):
                    store.save(entries=[Entry(1, index, NoOp())], hard_state=HardState(1, None, 0))
                    acked = index
            except apsw.IOError:
                pass
            assert vfs.dead, "the cut never came"
            close_after_cut(store)
            vfs.power_on()
        finally:
            vfs.unregister()
        store = Store(folder)
        try:
            found = log_indexes(store)
            assert found[:acked] == list(range(1, acked + 1)), (cut, found[-3:], acked)
            assert found == list(range(1, len(found) + 1))
            assert store.log_damage() is None
            assert store._db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        finally:
            store.close()


def _store_with_queue(folder: Path, broker: str, values: int) -> None:
    store = Store(folder)
    try:
        store.init_identity(broker, "G-" + broker[2:])
        store.apply([CreateQueue(QUEUE)])
        store.apply([AppendMessage(QUEUE, b"%d" % i, None, None, 1000 + i) for i in range(values)])
        store.save(hard_state=HardState(1, None, 0))
    finally:
        store.close()


def test_a_backup_of_a_closed_folder_with_its_kept_wal_and_a_restore_beside_a_stale_one(
    tmp_path: Path,
):
    """``backup`` reads a stopped broker's folder whatever its kept WAL holds; ``restore``
    into a folder holding a WAL of no database (its database file removed by hand) drops
    that WAL, whose first page would otherwise be applied to the restored file."""
    _store_with_queue(tmp_path / "a", "B-AAAAA", 30)
    assert valid_frames(wal_of(tmp_path / "a" / DB_FILE)) == 1
    info = backup(tmp_path / "a", tmp_path / "a.sqlite3")
    assert (info.broker_id, info.queues, info.messages) == ("B-AAAAA", 1, 30)

    _store_with_queue(tmp_path / "b", "B-BBBBB", 5)
    (tmp_path / "b" / DB_FILE).unlink()  # (its kept WAL left behind)
    assert valid_frames(wal_of(tmp_path / "b" / DB_FILE)) == 1
    restored = restore(tmp_path / "a.sqlite3", tmp_path / "b", "B-RSTR1")
    assert (restored.broker_id, restored.cluster_id, restored.messages) == (
        "B-RSTR1",
        "G-AAAAA",
        30,
    )
    store = Store(tmp_path / "b")
    try:
        assert store.messages(QUEUE) == [b"%d" % i for i in range(30)]
    finally:
        store.close()


def test_a_failed_fsync_of_the_closing_restart_marks_the_folder(tmp_path: Path, monkeypatch):
    """The commit that restarts the WAL at a clean close is one more fsync of the WAL: one
    that fails is reported as the closing checkpoint's is (the mark written, the error raised,
    nothing more written or synced); the database file was synced by that checkpoint."""
    failing = {"armed": False, "failed": 0, "after": 0}

    def fails(path: str) -> bool:
        if failing["armed"] and path.endswith("-wal"):
            failing["armed"] = False
            failing["failed"] += 1
            return True
        return False

    def on_sync() -> None:
        failing["after"] += bool(failing["failed"])

    restart = _checkpoint._restart_wal

    def armed_restart(db: apsw.Connection, frames: int, copied: int) -> None:
        failing["armed"] = True
        restart(db, frames, copied)

    monkeypatch.setattr(_checkpoint, "_restart_wal", armed_restart)
    vfs = PowerLossVFS("wal12-restart-fails", drops=True)
    vfs.sync_fails, vfs.on_sync = fails, on_sync
    try:
        store = Store(tmp_path, vfs=vfs.name)
        save_entries(store, 1, 10)
        with pytest.raises(apsw.IOError) as caught:
            store.close()
        failure = StorageFailed.from_error(caught.value)
        assert failure.code == "SQLITE_IOERR_FSYNC" and failure.reported
        assert failing["failed"] == 1 and failing["after"] == 0
        assert read_marker(tmp_path) is not None
    finally:
        vfs.unregister()
