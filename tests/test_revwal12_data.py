"""Review of the WAL kept across a clean close: the ``data`` commands, the checks that read
a stopped broker's files, and ``backup`` on a folder whose clean stop kept its WAL and index
(docs/reliability.md, "What a closed data folder holds")."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.test_wal12_kept import valid_frames, wal_of
from trio_broker._cli._data import run_data
from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_messages import HardState
from trio_broker._storage import DB_FILE, Store
from trio_broker._storage._backup import backup, describe

QUEUE = "Q-AAAAA00001"
MARK = b"revwal12-value-%03d-" + b"x" * 40


def _folder(folder: Path, values: int = 40) -> None:
    store = Store(folder)
    try:
        store.init_identity("B-AAAAA", "G-AAAAA")
        store.apply([CreateQueue(QUEUE)])
        store.apply([AppendMessage(QUEUE, MARK % i, None, None, 1000 + i) for i in range(values)])
        store.save(hard_state=HardState(1, None, 0))
    finally:
        store.close()
    assert valid_frames(wal_of(folder / DB_FILE)) == 1


def _data(action: str, folder: Path) -> int:
    return run_data(argparse.Namespace(action=action, data_dir=folder))


def test_data_check_on_a_kept_wal_says_intact_and_keeps_the_folder_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Catches ``data check`` misreading a folder a clean stop left (the kept frame taken for
    damage, or its own close leaving a WAL the next start misreads)."""
    _folder(tmp_path)
    assert _data("check", tmp_path) == 0
    assert "intact" in capsys.readouterr().out
    assert valid_frames(wal_of(tmp_path / DB_FILE)) == 1
    assert _data("check", tmp_path) == 0
    store = Store(tmp_path)
    try:
        assert store.messages(QUEUE) == [MARK % i for i in range(40)]
    finally:
        store.close()


def test_data_check_still_sees_damage_in_the_file_beside_a_kept_wal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """The kept WAL holds only a copy of the first page: a value damaged in the database file
    after a clean stop is read from the file and reported. Catches a kept WAL that masks the
    file's pages (a restart that left frames of the last generation counting, whose copies
    SQLite would read instead)."""
    _folder(tmp_path)
    path = tmp_path / DB_FILE
    data = bytearray(path.read_bytes())
    at = data.find(MARK % 7)
    assert at > 4096, "the value is not in the database file"
    data[at + 5] ^= 0x20
    path.write_bytes(bytes(data))
    assert _data("check", tmp_path) == 1
    assert "damaged" in capsys.readouterr().err.lower()


def test_data_reset_moves_the_kept_wal_and_index_with_their_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Catches a ``reset`` that leaves the kept WAL (a copy of the old first page) in the
    folder, or moves the database without it: the folder it empties starts a new store
    cleanly and the moved one opens with every value."""
    _folder(tmp_path)
    assert _data("reset", tmp_path) == 0
    capsys.readouterr()
    assert not wal_of(tmp_path / DB_FILE).exists()
    assert not (tmp_path / (DB_FILE + "-shm")).exists()
    (moved,) = tmp_path.glob("damaged-*")
    assert valid_frames(wal_of(moved / DB_FILE)) == 1
    store = Store(moved)
    try:
        assert store.messages(QUEUE) == [MARK % i for i in range(40)]
    finally:
        store.close()
    store = Store(tmp_path)
    try:
        assert store.queue_lengths() == {}
    finally:
        store.close()


def test_a_clean_stops_database_file_alone_is_whole(tmp_path: Path):
    """The database file of a clean stop copied without its WAL (docs/reliability.md: "a
    copy of it alone is whole"), backed up and opened: catches a close that leaves committed
    pages only in the kept WAL (a close that skipped or cut short its checkpoint, counting
    on the kept WAL to carry them)."""
    _folder(tmp_path / "a")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / DB_FILE).write_bytes((tmp_path / "a" / DB_FILE).read_bytes())
    info = backup(alone, tmp_path / "alone.sqlite3")
    assert (info.broker_id, info.queues, info.messages) == ("B-AAAAA", 1, 40)
    assert describe(tmp_path / "alone.sqlite3").messages == 40
    store = Store(alone)
    try:
        assert store.messages(QUEUE) == [MARK % i for i in range(40)]
        assert store._db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    finally:
        store.close()
