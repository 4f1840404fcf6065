"""The upgrade from schema version 7 to 8 under failure: a failure in the middle of it (an
error raised between its statements, a power cut at any sync point, a full disk) leaves the
version-7 file as it was, every row readable, and the next start upgrades it whole; a full
disk says so in one line, as the ``node`` command reports a file it cannot upgrade."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import apsw
import pytest

from tests.test_schema_v8 import _stored, _version_7_file
from trio_broker._storage import DB_FILE, StorageDamaged, Store, _schema
from trio_broker._storage._integrity import value_checksum
from trio_broker._storage._schema import SchemaCannotUpgrade
from trio_broker.testing._powerloss import PowerLossVFS

BULK = "Q-BULK0000001"


def _v7_rows(path: Path) -> list[tuple]:
    db = apsw.Connection(str(path))
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (7,)
        return db.execute(
            "SELECT q.queue_id, d.sequence_num, d.appended_ms, d.headers, d.checksum, d.data"
            " FROM queue_data AS d JOIN queues AS q ON q.queue_number = d.queue_number"
            " ORDER BY q.queue_id, d.sequence_num"
        ).fetchall()
    finally:
        db.close()


def _opens_whole(folder: Path, rows: list[tuple]) -> None:
    store = Store(folder)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone() == (8,)
        assert sorted(_stored(store._db)) == sorted(rows)
        assert store.damaged_values(("", 0), 10_000) == ([], None)
    finally:
        store.close()


def test_an_error_in_the_middle_of_the_upgrade_leaves_version_7_whole(tmp_path, monkeypatch):
    """The old table dropped, the new one not yet renamed: an error there (a crash of the
    process, as far as the file can tell) rolls the whole upgrade back."""
    rows = _version_7_file(tmp_path / DB_FILE)
    broken = _schema._V8.replace(
        "DROP TABLE queue_data;", "DROP TABLE queue_data; SELECT * FROM no_such_table;"
    )
    assert broken != _schema._V8
    monkeypatch.setattr(_schema, "_V8", broken)
    with pytest.raises(apsw.SQLError, match="no_such_table"):
        Store(tmp_path)
    assert sorted(_v7_rows(tmp_path / DB_FILE)) == sorted(rows)
    monkeypatch.undo()
    _opens_whole(tmp_path, rows)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_power_cut_at_any_sync_point_of_the_upgrade_leaves_7_or_a_whole_8(tmp_path):
    """Cut at each sync point of a store's first open (the upgrade among them): what the
    disk keeps is the version-7 file with every row, or version 8 with every row; either
    opens whole afterwards."""
    source = tmp_path / "v7"
    source.mkdir()
    rows = _version_7_file(source / DB_FILE)
    counter = PowerLossVFS("powerloss-review-v8-count")
    try:
        shutil.copytree(source, tmp_path / "count")
        Store(tmp_path / "count", vfs=counter.name).close()
        syncs = counter.syncs
    finally:
        counter.unregister()
    assert 2 <= syncs <= 40
    seen = set()
    for k in range(1, syncs + 1):
        folder = tmp_path / f"cut{k}"
        shutil.copytree(source, folder)
        vfs = PowerLossVFS(f"powerloss-review-v8-{k}", cut_at_sync=k)
        try:
            # (the cut comes while it opens, or when it closes)
            with contextlib.suppress(apsw.IOError, StorageDamaged):
                Store(folder, vfs=vfs.name).close()
            assert vfs.dead
            vfs.power_on()
        finally:
            vfs.unregister()
        db = apsw.Connection(str(folder / DB_FILE))
        (version,) = db.execute("PRAGMA user_version").fetchone()
        db.close()
        seen.add(version)
        if version == 7:
            assert sorted(_v7_rows(folder / DB_FILE)) == sorted(rows)
        else:
            assert version == 8
        _opens_whole(folder, rows)
    assert 7 in seen


def test_a_full_disk_during_the_upgrade_says_so_and_keeps_version_7(tmp_path, monkeypatch):
    """The upgrade writes a second copy of the rows: with no room for it SQLite rolls it
    back. The store says why in one line (a :class:`SchemaCannotUpgrade`, which the ``node``
    and ``data`` commands print as an error, not a traceback), and the file is version 7
    with every row; with room, the next start upgrades it."""
    path = tmp_path / DB_FILE
    rows = _version_7_file(path)
    db = apsw.Connection(str(path))
    with db:  # (a queue of 400 messages: pages enough that their copy cannot fit)
        db.execute(
            "INSERT INTO queues (queue_id, length, queue_number) VALUES (?, 400, 11)", (BULK,)
        )
        for seq in range(1, 401):
            data = b"%d" % seq * 100
            checksum = value_checksum(BULK, seq, data, None)
            rows.append((BULK, seq, None, None, checksum, data))
            db.execute(
                "INSERT INTO queue_data (queue_number, sequence_num, checksum, data)"
                " VALUES (11, ?, ?, ?)",
                (seq, checksum, data),
            )
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.close()
    configure = Store._configure

    def little_room(store: Store) -> None:
        configure(store)
        store._db.execute(f"PRAGMA max_page_count = {pages + 1}")

    monkeypatch.setattr(Store, "_configure", little_room)
    with pytest.raises(SchemaCannotUpgrade, match="the disk is full"):
        Store(tmp_path)
    assert sorted(_v7_rows(path)) == sorted(rows)
    monkeypatch.undo()
    _opens_whole(tmp_path, rows)
