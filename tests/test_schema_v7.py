"""Schema version 7 (``_storage/_schema.py``): the queue rows' key is the queue's number. A
version-6 database (as every broker holds it before this release) opens with every row, its
checksum, stamp and headers, every position and retention mark intact, and everything works
on it after; a version-6 snapshot (from a leader not yet upgraded) is upgraded when received
and installed; a snapshot of a newer version is refused, nothing damaged."""

from __future__ import annotations

from pathlib import Path

import apsw
import orjson
import pytest

from trio_broker._core._commands import (
    AppendBatch,
    ApplyRetention,
    BatchAppended,
    CreateQueue,
    MessageRead,
    ReadNext,
    RetentionPolicy,
    SetRetention,
)
from trio_broker._core._raft_messages import Config, SnapshotMeta
from trio_broker._core._work_commands import (
    DeleteQueue,
    GroupRead,
    JoinGroup,
    Publish,
    ReadRecords,
    Record,
)
from trio_broker._runtime._snapshots import _snapshot_intact
from trio_broker._storage import DB_FILE, StorageDamaged, Store
from trio_broker._storage._integrity import value_checksum
from trio_broker._storage._schema import SCHEMA_VERSION, SchemaTooNew, upgrade

# Ids whose order is not the order they were created in (the upgrade numbers by id).
QUEUES = ("Q-ZZZZZ00001", "Q-AAAAA00002", "Q-MMMMM00003")
C = "C-READER01"


def _value(q: int, seq: int) -> bytes:
    return orjson.dumps({"q": q, "n": seq, "text": f"v6-{q}-{seq:04d}-" + "x" * 40})


def _headers(seq: int) -> str | None:
    return orjson.dumps({"k": f"h{seq}"}).decode() if seq % 3 == 0 else None


def _version_6_file(path: Path) -> list[tuple]:
    """A version-6 database as this release's predecessor wrote it (its DDL: ``upgrade(db, to=6)``):
    three queues, the first with retention marks and a deleted head; returns its rows of
    ``queue_data`` (queue id, sequence number, stamp, headers, checksum, bytes)."""
    db = apsw.Connection(str(path))
    rows = []
    upgrade(db, to=6)
    with db:
        db.execute("INSERT INTO meta VALUES ('broker_id', 'B-OLDV6'), ('cluster_id', 'G-OLDV6')")
        for q, queue_id in enumerate(QUEUES):
            deleted, length = (4, 12) if q == 0 else (0, 5 + q)
            db.execute(
                "INSERT INTO queues (queue_id, length, deleted_through, undated_through,"
                " last_appended_ms, max_messages) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    queue_id,
                    length,
                    deleted,
                    6 if q == 0 else 0,
                    2000 + length,
                    6 if q == 0 else None,
                ),
            )
            for seq in range(deleted + 1, length + 1):
                data, headers = _value(q, seq), _headers(seq)
                stamp = None if q == 0 and seq <= 6 else 2000 + seq
                checksum = value_checksum(queue_id, seq, data, headers)
                rows.append((queue_id, seq, stamp, headers, checksum, data))
        db.executemany(
            "INSERT INTO queue_data (queue_id, sequence_num, appended_ms, headers, checksum, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("INSERT INTO client_positions VALUES (?, ?, 7)", (C, QUEUES[0]))
        db.execute(
            "INSERT INTO consumer_groups VALUES (?, 'g', 30000, NULL, NULL, 100, 2)", (QUEUES[1],)
        )
    db.close()
    return rows


def _stored(db: apsw.Connection) -> list[tuple]:
    return db.execute(
        "SELECT queue_id, sequence_num, appended_ms, headers, checksum, data FROM queue_data"
        " JOIN queues USING (queue_number) ORDER BY queue_id, sequence_num"
    ).fetchall()


def test_a_version_6_database_upgrades_with_every_row_intact_and_works_after(tmp_path):
    rows = _version_6_file(tmp_path / DB_FILE)
    old = apsw.Connection(str(tmp_path / DB_FILE))
    queues_before = old.execute("SELECT * FROM queues ORDER BY queue_id").fetchall()
    old.close()
    store = Store(tmp_path)
    try:
        db = store._db
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 8
        # Every row, with its stamp, headers and checksum as they were (none recomputed).
        assert _stored(db) == sorted(rows)
        # The queues keep every column; each has a number of its own.
        after = db.execute("SELECT * FROM queues ORDER BY queue_id").fetchall()
        assert [row[:-1] for row in after] == queues_before
        assert sorted(row[-1] for row in after) == [1, 2, 3]
        assert store.positions() == {(C, QUEUES[0]): 7}
        assert store.first_retained() == {QUEUES[0]: 5, QUEUES[1]: 1, QUEUES[2]: 1}
        assert store.identity().broker_id == "B-OLDV6"
        # Reads: a single READ, a batched read with headers, a group's read.
        assert store.apply([ReadNext(C, QUEUES[0])]) == [MessageRead(8, _value(0, 8))]
        (read,) = store.apply([ReadRecords("C-OTHER", QUEUES[2], 3)])
        assert [(d.sequence_num, d.data, d.headers) for d in read.messages] == [
            (seq, _value(2, seq), (("k", "h3"),) if seq == 3 else ()) for seq in (1, 2, 3)
        ]
        (_, leased) = store.apply(
            [JoinGroup(QUEUES[1], "g", None), GroupRead(QUEUES[1], "g", "m", 2, now_ms=10)]
        )
        assert [d.sequence_num for d in leased.messages] == [3, 4]
        # Appends go on from each queue's length, in its own rows; a new queue gets a new number.
        results = store.apply(
            [
                AppendBatch(QUEUES[0], (b"13", b"14"), None, None, 9000),
                CreateQueue("Q-NEW0000004"),
                AppendBatch("Q-NEW0000004", (b"1",), None, None, 9001),
                Publish(QUEUES[2], (Record(b"7", (("a", "b"),)),), appended_ms=9002),
            ]
        )
        assert results[0] == BatchAppended(13, 2) and results[2] == BatchAppended(1, 1)
        assert store.messages(QUEUES[0])[-3:] == [_value(0, 12), b"13", b"14"]
        assert store.messages("Q-NEW0000004") == [b"1"]
        (number,) = db.execute(
            "SELECT queue_number FROM queues WHERE queue_id = 'Q-NEW0000004'"
        ).fetchone()
        assert number == 4
        # Retention by count, over the upgraded rows and the new ones.
        store.apply([SetRetention(QUEUES[0], RetentionPolicy(max_messages=3)), ApplyRetention(0)])
        assert store.first_retained()[QUEUES[0]] == 12
        assert store.messages(QUEUES[0]) == [_value(0, 12), b"13", b"14"]
        assert db.execute(
            "SELECT min(sequence_num) FROM queue_data JOIN queues USING (queue_number)"
            " WHERE queue_id = ?",
            (QUEUES[0],),
        ).fetchone() == (12,)
    finally:
        store.close()


def test_an_upgraded_row_damaged_before_the_upgrade_is_still_found(tmp_path):
    """The upgrade copies checksums, never computes them: a value damaged in a version-6 file
    is not blessed by it."""
    _version_6_file(tmp_path / DB_FILE)
    raw = (tmp_path / DB_FILE).read_bytes()
    assert raw.count(b"v6-1-0004-") == 1
    (tmp_path / DB_FILE).write_bytes(raw.replace(b"v6-1-0004-", b"v6-1-0005-"))
    store = Store(tmp_path)
    try:
        with pytest.raises(StorageDamaged, match="seq 4"):
            store.messages(QUEUES[1])
        assert store.damaged_values(("", 0), 100) == ([(QUEUES[1], 4)], None)
    finally:
        store.close()


def test_a_deleted_queue_leaves_no_row_and_its_number_is_not_taken_again(tmp_path):
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(q) for q in QUEUES])
        store.apply([AppendBatch(q, (b"1", b"2"), None, None, 5) for q in QUEUES])
        db = store._db
        numbers = dict(db.execute("SELECT queue_id, queue_number FROM queues"))
        store.apply([DeleteQueue(QUEUES[1])])
        assert db.execute(
            "SELECT count(*) FROM queue_data WHERE queue_number = ?", (numbers[QUEUES[1]],)
        ).fetchone() == (0,)
        store.apply([CreateQueue(QUEUES[1]), CreateQueue("Q-NEW0000004")])
        (again, new) = (
            db.execute("SELECT queue_number FROM queues WHERE queue_id = ?", (q,)).fetchone()[0]
            for q in (QUEUES[1], "Q-NEW0000004")
        )
        assert {again, new}.isdisjoint(numbers.values()) and again != new
        assert store.messages(QUEUES[1]) == []
        assert store.messages(QUEUES[2]) == [b"1", b"2"]
    finally:
        store.close()


def test_a_version_6_snapshot_is_upgraded_when_received_and_installed(tmp_path):
    """A leader not yet upgraded sends a version-6 file: the replica upgrades it (as it
    upgrades its own file), checks it and installs it."""
    snapshot = tmp_path / "incoming.sqlite3"
    rows = _version_6_file(snapshot)
    assert _snapshot_intact(str(snapshot))
    check = apsw.Connection(str(snapshot))
    assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    check.close()
    replica = Store(tmp_path / "replica")
    try:
        replica.apply([CreateQueue("Q-GONE000009")])
        meta = SnapshotMeta(40, 3, Config(frozenset({"B-AAAAA"})))
        replica.save(snapshot=(meta, str(snapshot)))
        assert _stored(replica._db) == sorted(rows)
        assert replica.positions() == {(C, QUEUES[0]): 7}
        assert replica.apply([ReadNext(C, QUEUES[0])]) == [MessageRead(8, _value(0, 8))]
        assert replica.apply([AppendBatch(QUEUES[2], (b"x",), None, None, 1)]) == [
            BatchAppended(8, 1)
        ]
    finally:
        replica.close()


def test_a_snapshot_of_a_newer_version_is_refused_and_nothing_changes(tmp_path, caplog):
    leader = Store(tmp_path / "leader")
    try:
        leader.apply([CreateQueue(QUEUES[0]), AppendBatch(QUEUES[0], (b"new",), None, None, 1)])
        snapshot = tmp_path / "incoming.sqlite3"
        leader.write_snapshot(str(snapshot))
    finally:
        leader.close()
    newer = apsw.Connection(str(snapshot))
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.close()
    before = snapshot.read_bytes()
    assert not _snapshot_intact(str(snapshot))
    assert "snapshot.too_new" in caplog.text
    assert snapshot.read_bytes() == before
    replica = Store(tmp_path / "replica")
    try:
        replica.apply([CreateQueue(QUEUES[1]), AppendBatch(QUEUES[1], (b"mine",), None, None, 1)])
        meta = SnapshotMeta(40, 3, Config(frozenset({"B-AAAAA"})))
        with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}"):
            replica.save(snapshot=(meta, str(snapshot)))
        assert replica.messages(QUEUES[1]) == [b"mine"]
        assert replica.queue_lengths() == {QUEUES[1]: 1}
    finally:
        replica.close()


def _retype_a_value(path: Path, queue_id: str, seq: int) -> None:
    """Damage a version-6 file as a flipped bit in a record's header does: one value of
    ``queue_data.data`` stored as TEXT in its STRICT table (``PRAGMA quick_check``: "non-BLOB
    value in queue_data.data")."""
    db = apsw.Connection(str(path))
    (sql,) = db.execute("SELECT sql FROM sqlite_schema WHERE name = 'queue_data'").fetchone()
    loose = sql.replace(") STRICT", ")")
    for text in (loose, None):
        with db:
            db.execute("PRAGMA writable_schema = ON")
            db.execute("UPDATE sqlite_schema SET sql = ? WHERE name = 'queue_data'", (text or sql,))
            db.execute("PRAGMA writable_schema = OFF")
        db.close()
        db = apsw.Connection(str(path))
        if text is not None:
            db.execute(
                "UPDATE queue_data SET data = CAST(data AS TEXT)"
                " WHERE queue_id = ? AND sequence_num = ?",
                (queue_id, seq),
            )
    db.close()


def test_a_version_6_snapshot_with_a_value_of_the_wrong_type_is_dropped_not_raised(
    tmp_path, caplog
):
    """A damaged snapshot is logged and dropped (docs/reliability.md, "Damaged data"), as the
    version-6 check dropped this one ("a snapshot value does not match its checksum"): the
    upgrade's copy into a STRICT table must not turn it into an error that ends the fetch
    task, and with it the driver."""
    snapshot = tmp_path / "incoming.sqlite3"
    _version_6_file(snapshot)
    _retype_a_value(snapshot, QUEUES[1], 3)
    assert not _snapshot_intact(str(snapshot))
    assert "snapshot.damaged" in caplog.text


def test_a_version_6_snapshot_row_whose_queue_id_is_damaged_is_refused_not_dropped(
    tmp_path, caplog
):
    """Version 6 refused this snapshot (the row's checksum covers its queue id); the upgrade
    keys rows by their queue's number and skips a row of no queue, so the check after it
    would have passed a snapshot short of an acknowledged message."""
    snapshot = tmp_path / "incoming.sqlite3"
    _version_6_file(snapshot)
    db = apsw.Connection(str(snapshot))
    db.execute(
        "UPDATE queue_data SET queue_id = 'Q-MMMMM00013' WHERE queue_id = ? AND sequence_num = 2",
        (QUEUES[2],),
    )
    db.close()
    assert not _snapshot_intact(str(snapshot))
    assert "snapshot.damaged" in caplog.text and "Q-MMMMM00013 seq 2" in caplog.text


def test_the_last_queues_number_is_taken_again_once_deleted_with_none_of_its_rows(tmp_path):
    """Numbers are the largest a live queue holds plus one (``_schema.NEXT_QUEUE_NUMBER``):
    deleting the queue made last frees its number, which is safe only because DELETE_QUEUE
    deletes its rows in the same transaction."""
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(QUEUES[0]), CreateQueue(QUEUES[1])])
        store.apply([AppendBatch(QUEUES[1], (b"old1", b"old2"), None, None, 5)])
        store.apply([DeleteQueue(QUEUES[1])])
        store.close()
        store = Store(tmp_path)
        store.apply([CreateQueue(QUEUES[2])])
        db = store._db
        assert dict(db.execute("SELECT queue_id, queue_number FROM queues")) == {
            QUEUES[0]: 1,
            QUEUES[2]: 2,
        }
        assert store.messages(QUEUES[2]) == []
        assert store.apply([AppendBatch(QUEUES[2], (b"new",), None, None, 6)]) == [
            BatchAppended(1, 1)
        ]
        assert store.messages(QUEUES[2]) == [b"new"]
    finally:
        store.close()


def test_a_version_6_snapshot_that_cannot_be_upgraded_for_lack_of_space_is_dropped(
    tmp_path, caplog
):
    """The upgrade on receipt writes a second copy of ``queue_data`` into the received file:
    on a full disk that is SQLite's ``FullError``, which must leave as a dropped snapshot
    (fetched again at the leader's next offer), as a fetch that runs out of space does,
    never as an error out of the fetch task, which ends the driver (a broker out of space
    stays up: docs/operations.md)."""
    from tests.test_disk_full import fill, small_tmpfs

    with small_tmpfs(tmp_path / "small", 2) as where:
        snapshot = where / "incoming.sqlite3"
        _version_6_file(snapshot)
        db = apsw.Connection(str(snapshot))
        with db:
            db.executemany(
                "INSERT INTO queue_data (queue_id, sequence_num, checksum, data)"
                " VALUES (?, ?, ?, ?)",
                [
                    (QUEUES[1], seq, value_checksum(QUEUES[1], seq, b"z" * 200, None), b"z" * 200)
                    for seq in range(100, 2100)
                ],
            )
            db.execute("UPDATE queues SET length = 2099 WHERE queue_id = ?", (QUEUES[1],))
        db.close()
        fill(where, leave=200_000)
        assert not _snapshot_intact(str(snapshot))
        assert "snapshot.not_installed" in caplog.text


def test_a_restart_deletes_what_an_interrupted_receive_time_upgrade_left(tmp_path):
    """Upgrading a received snapshot writes it through SQLite's rollback journal (the file
    ``VACUUM INTO`` makes is not in WAL mode): a crash meanwhile leaves
    ``incoming-<id>.sqlite3-journal`` beside the file. A restart deletes every snapshot file
    it finds; it must delete their journals with them, or each such crash leaves one behind."""
    from trio_broker._runtime._config import BrokerConfig
    from trio_broker._runtime._snapshots import Snapshots

    folder = tmp_path / "snapshots"
    folder.mkdir()
    for name in ("incoming-1a2b.sqlite3", "incoming-1a2b.sqlite3-journal", "9f8e.sqlite3"):
        (folder / name).write_bytes(b"left")
    Snapshots(None, BrokerConfig(data_dir=str(tmp_path)), None, None)  # type: ignore[arg-type]
    assert list(folder.iterdir()) == []
