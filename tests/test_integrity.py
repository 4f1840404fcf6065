"""Checksums on what the store keeps and what brokers send, and what happens to damage
(docs/reliability.md, "Damaged data"): a damaged value is never served, a damaged log entry
never reaches the consensus core, a file that cannot be read stops the start with a report."""

from __future__ import annotations

import logging
from pathlib import Path

import apsw
import orjson
import pytest

from trio_broker._cli import main
from trio_broker._core._commands import (
    AppendMessage,
    CommandRejected,
    CreateQueue,
    MessagesRead,
    ReadBatch,
)
from trio_broker._core._raft_messages import Config, Entry, HardState, Replicate, SnapshotMeta
from trio_broker._core._work_commands import Publish, ReadRecords, Record
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol._consensus import encode_message, message_from_obj
from trio_broker._protocol._entries import encode_payload, entry_checksum, payload_bytes
from trio_broker._runtime._snapshots import _snapshot_intact
from trio_broker._storage import DB_FILE, LogDamage, StorageDamaged, Store
from trio_broker._storage._file_checks import check_snapshot_file
from trio_broker._storage._integrity import value_checksum
from trio_broker._storage._schema import SCHEMA_VERSION, upgrade

Q = "Q-AAAAABBBBB"
C = "C-READER1"


def _value(i: int) -> bytes:
    return orjson.dumps({"n": i, "text": f"value-{i:04d}-" + "abcdefgh" * 8})


def _store_with_values(path: Path, count: int = 20) -> None:
    store = Store(path)
    try:
        store.apply([CreateQueue(Q)])
        store.apply(
            [AppendMessage(Q, _value(i), None, None, 1000 + i) for i in range(1, count + 1)]
        )
    finally:
        store.close()  # the last connection: the WAL is checkpointed into the file


def _alter(path: Path, old: bytes, new: bytes, *, found: int = 1) -> None:
    """Change bytes in place in a stopped broker's database file (same length, wherever they
    are: ``found`` times)."""
    assert len(old) == len(new)
    raw = (path / DB_FILE).read_bytes()
    assert raw.count(old) == found, raw.count(old)
    (path / DB_FILE).write_bytes(raw.replace(old, new))


# -- checksums ------------------------------------------------------------------------------------


def test_an_entry_is_checksummed_once_with_its_bytes():
    entry = Entry(3, 7, AppendMessage(Q, b'{"a":1}'))
    encoded = payload_bytes(entry)
    assert entry.checksum == entry_checksum(3, 7, encoded)
    # The term and index are covered: the same bytes elsewhere in the log check differently.
    assert entry_checksum(3, 8, encoded) != entry.checksum
    assert entry_checksum(4, 7, encoded) != entry.checksum
    assert entry_checksum(3, 7, encoded.replace(b"1", b"2")) != entry.checksum


def test_a_value_checksum_covers_its_place_its_bytes_and_headers():
    base = value_checksum(Q, 5, b"[1]", None)
    assert value_checksum(Q, 6, b"[1]", None) != base
    assert value_checksum("Q-OTHERQUEUE", 5, b"[1]", None) != base
    assert value_checksum(Q, 5, b"[2]", None) != base
    assert value_checksum(Q, 5, b"[1]", '{"k":"v"}') != base


def test_a_replica_refuses_an_entry_changed_on_the_way():
    message = Replicate(
        src="B-AAAAA",
        dst="B-BBBBB",
        term=2,
        cluster_version=1,
        prev_log_index=0,
        prev_log_term=0,
        entries=(Entry(2, 1, AppendMessage(Q, b'{"amount":100}')),),
        leader_commit=0,
    )
    frame = encode_message(message)
    assert message_from_obj(orjson.loads(frame)) == message
    damaged = frame.replace(b'"amount":100', b'"amount":900')
    with pytest.raises(RemoteProtocolError, match=r"log entry 1 .*damaged"):
        message_from_obj(orjson.loads(damaged))
    # A broker of a version before checksums sends none: its entries are taken as they are.
    older = orjson.loads(frame)
    del older["entries"][0]["checksum"]
    decoded = message_from_obj(older)
    assert decoded == message
    assert decoded.entries[0].checksum == entry_checksum(
        2, 1, encode_payload(message.entries[0].payload)
    )


# -- values ---------------------------------------------------------------------------------------


def test_a_damaged_value_is_never_served(tmp_path, caplog):
    _store_with_values(tmp_path)
    _alter(tmp_path, b"value-0007-", b"value-0008-")
    store = Store(tmp_path)  # the file is well formed: it opens
    try:
        with caplog.at_level(logging.ERROR, logger="trio_broker"):
            (first,) = store.apply([ReadBatch(C, Q, 5)])
            (second,) = store.apply([ReadBatch(C, Q, 5)])
        assert isinstance(first, MessagesRead)
        assert list(first.messages) == [(i, _value(i)) for i in range(1, 6)]
        # Messages 6..10 include the damaged 7: the read is refused, and the position stays.
        assert isinstance(second, CommandRejected) and second.code == "UNAVAILABLE"
        assert DB_FILE in second.message and "queue_data" in second.message
        assert "seq 7" in second.message
        assert store.positions()[(C, Q)] == 5
        (line,) = [r for r in caplog.records if getattr(r, "event", None) == "storage.damaged"]
        assert line.fields["where"] == f"queue {Q} seq 7"
        # What is intact is still served, before and after the damaged message.
        (again,) = store.apply([ReadBatch("C-OTHER01", Q, 6)])
        assert list(again.messages) == [(i, _value(i)) for i in range(1, 7)]
        with pytest.raises(StorageDamaged, match="seq 7"):
            store.messages(Q)
    finally:
        store.close()


def test_a_damaged_value_read_through_a_work_command_is_refused(tmp_path):
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(Q)])
        (published,) = store.apply(
            [Publish(Q, tuple(Record(_value(i), (("k", "v"),)) for i in range(1, 4)))]
        )
        assert published.first_sequence_num == 1
    finally:
        store.close()
    _alter(tmp_path, b"value-0002-", b"value-0009-")
    store = Store(tmp_path)
    try:
        (result,) = store.apply([ReadRecords(C, Q, 10)])
        assert isinstance(result, CommandRejected) and result.code == "UNAVAILABLE"
        assert "seq 2" in result.message
        (one,) = store.apply([ReadRecords(C, Q, 1)])
        assert [d.data for d in one.messages] == [_value(1)]
    finally:
        store.close()


def test_a_value_that_lost_its_row_is_not_skipped(tmp_path):
    """A missing row inside the retained range (a lost write) is damage, not the end of data."""
    _store_with_values(tmp_path, 5)
    db = apsw.Connection(str(tmp_path / DB_FILE))
    db.execute("DELETE FROM queue_data WHERE sequence_num = 3")
    db.close()
    store = Store(tmp_path)
    try:
        (result,) = store.apply([ReadBatch(C, Q, 5)])
        assert isinstance(result, CommandRejected) and "seq 3" in result.message
        assert "missing" in result.message
    finally:
        store.close()


# -- the log --------------------------------------------------------------------------------------


def _store_with_log(path: Path, count: int = 6) -> list[Entry]:
    entries = [Entry(1, i, AppendMessage(Q, _value(i))) for i in range(1, count + 1)]
    store = Store(path)
    try:
        store.bootstrap(Config(frozenset({"B-AAAAA"})))
        store.save(hard_state=HardState(1, "B-AAAAA", 0), entries=entries)
        assert store.log_damage() is None
    finally:
        store.close()
    return entries


def test_a_damaged_log_entry_is_reported_and_never_handed_to_the_core(tmp_path):
    entries = _store_with_log(tmp_path)
    store = Store(tmp_path)
    try:
        assert store.raft_state().entries == entries
    finally:
        store.close()
    _alter(tmp_path, b"value-0004-", b"value-0005-")
    store = Store(tmp_path)
    try:
        assert store.log_damage() == LogDamage(first_damaged=4, last_index=6)
        # The core gets the log before the damage, and what it had: it recovers from there.
        state = store.raft_state()
        assert state.entries == entries[:3] and state.damage == (4, 6)
    finally:
        store.close()


def test_a_log_entry_lost_in_the_middle_is_damage(tmp_path):
    _store_with_log(tmp_path)
    db = apsw.Connection(str(tmp_path / DB_FILE))
    db.execute("DELETE FROM raft_log WHERE log_index = 2")
    db.close()
    store = Store(tmp_path)
    try:
        assert store.log_damage() == LogDamage(first_damaged=2, last_index=6)
        state = store.raft_state()
        assert [e.index for e in state.entries] == [1] and state.damage == (2, 6)
    finally:
        store.close()


# -- files that do not open -----------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_reported(tmp_path):
    _store_with_values(tmp_path)
    # (the WAL a clean close keeps holds a copy of the first page, which SQLite would read
    # instead of the file's: the file alone is what is checked here)
    (tmp_path / (DB_FILE + "-wal")).unlink()
    raw = bytearray((tmp_path / DB_FILE).read_bytes())
    raw[0:16] = b"not a database!!"
    (tmp_path / DB_FILE).write_bytes(bytes(raw))
    with pytest.raises(StorageDamaged) as caught:
        Store(tmp_path)
    report = caught.value.report(str(tmp_path))
    assert str(tmp_path / DB_FILE) in report
    assert f"data reset --data-dir {tmp_path}" in report
    assert "backup" in report
    # The directory lock was let go: the files can be moved aside.
    assert main(["data", "reset", "--data-dir", str(tmp_path)]) == 0
    assert not (tmp_path / DB_FILE).exists()


def test_a_broken_btree_fails_the_integrity_check_at_open(tmp_path):
    _store_with_values(tmp_path, 200)
    raw = bytearray((tmp_path / DB_FILE).read_bytes())
    page = 4096
    # Damage the cell pointers of every leaf page of queue_data after the first few pages.
    damaged = 0
    for start in range(page * 4, len(raw), page):
        if raw[start] == 0x0D:  # a table leaf page
            raw[start + 8 : start + 24] = bytes(16)
            damaged += 1
    assert damaged > 0
    (tmp_path / DB_FILE).write_bytes(bytes(raw))
    with pytest.raises(StorageDamaged, match=r"integrity check|malformed") as caught:
        Store(tmp_path)
    assert caught.value.file == str(tmp_path / DB_FILE)


# -- snapshots ------------------------------------------------------------------------------------


def test_a_damaged_snapshot_value_is_not_installed(tmp_path):
    leader = tmp_path / "leader"
    _store_with_values(leader)
    snapshot = tmp_path / "snapshot.sqlite3"
    store = Store(leader)
    try:
        store.write_snapshot(str(snapshot))
    finally:
        store.close()
    check_snapshot_file(str(snapshot))  # intact as written
    raw = snapshot.read_bytes()
    assert raw.count(b"value-0003-") == 1
    snapshot.write_bytes(raw.replace(b"value-0003-", b"value-0006-"))
    # A replica checks the file it fetched before its core hears of it, and drops it.
    with pytest.raises(StorageDamaged, match="seq 3"):
        check_snapshot_file(str(snapshot))
    assert not _snapshot_intact(str(snapshot))
    # And the install itself checks again: nothing damaged is copied in.
    replica = Store(tmp_path / "replica")
    try:
        meta = SnapshotMeta(5, 1, Config(frozenset({"B-AAAAA"})))
        with pytest.raises(StorageDamaged, match="seq 3"):
            replica.save(snapshot=(meta, str(snapshot)))
        assert replica.queue_lengths() == {}  # nothing of it was kept
    finally:
        replica.close()


# -- the upgrade from version 5 -------------------------------------------------------------------


def test_a_version_5_database_opens_with_every_value_and_entry_checksummed(tmp_path):
    db = apsw.Connection(str(tmp_path / DB_FILE))
    entries = [Entry(1, i, AppendMessage(Q, _value(i))) for i in (1, 2, 3)]
    upgrade(db, to=5)
    with db:
        db.execute("INSERT INTO meta VALUES ('broker_id', 'B-OLDV5'), ('cluster_id', 'G-OLDV5')")
        db.execute("INSERT INTO queues (queue_id, length) VALUES (?, 3)", (Q,))
        for i in (1, 2, 3):
            db.execute(
                "INSERT INTO queue_data (queue_id, sequence_num, data, appended_ms, headers)"
                " VALUES (?, ?, ?, ?, ?)",
                (Q, i, _value(i), 100 + i, '{"k":"v"}' if i == 2 else None),
            )
        db.executemany(
            "INSERT INTO raft_log (log_index, term, payload) VALUES (?, ?, ?)",
            [(e.index, e.term, encode_payload(e.payload)) for e in entries],
        )
    db.close()
    store = Store(tmp_path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 8
        assert store.log_damage() is None
        assert store.raft_state().entries == entries
        assert store.messages(Q) == [_value(i) for i in (1, 2, 3)]
        (read,) = store.apply([ReadRecords(C, Q, 3)])
        assert [(d.sequence_num, d.data, d.headers) for d in read.messages] == [
            (1, _value(1), ()),
            (2, _value(2), (("k", "v"),)),
            (3, _value(3), ()),
        ]
        # The upgraded rows are checked like new ones.
        (n,) = store._db.execute(
            "SELECT count(*) FROM queue_data WHERE checksum IS NOT NULL"
        ).fetchone()
        assert n == 3
    finally:
        store.close()
    # In queue_data, raft_log and the pages the old tables left free (versions 6 and 7 each
    # copied queue_data).
    _alter(tmp_path, b"value-0001-", b"value-0002-", found=4)
    store = Store(tmp_path)
    try:
        assert store.log_damage() == LogDamage(first_damaged=1, last_index=3)
        with pytest.raises(StorageDamaged, match="seq 1"):
            store.messages(Q)
    finally:
        store.close()


# -- data check / data reset ----------------------------------------------------------------------


def test_data_check_and_reset(tmp_path, capsys):
    _store_with_values(tmp_path)
    assert main(["data", "check", "--data-dir", str(tmp_path)]) == 0
    assert "intact" in capsys.readouterr().out
    _alter(tmp_path, b"value-0011-", b"value-0012-")
    assert main(["data", "check", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "seq 11" in err and "data reset" in err
    lock = Store(tmp_path)  # a running broker holds the directory: reset refuses
    try:
        assert main(["data", "reset", "--data-dir", str(tmp_path)]) == 1
        assert "in use" in capsys.readouterr().err
    finally:
        lock.close()
    assert (tmp_path / DB_FILE).exists()
    assert main(["data", "reset", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (aside,) = tmp_path.glob("damaged-*")
    assert (aside / DB_FILE).exists() and not (tmp_path / DB_FILE).exists()
    assert str(aside) in out and "--seed" in out
    # The files moved aside are the damaged ones, whole: nothing was deleted or rewritten.
    assert b"value-0012-" in (aside / DB_FILE).read_bytes()


def test_a_damaged_backup_is_not_restored(tmp_path):
    from trio_broker._storage._backup import BackupError, backup, restore

    _store_with_values(tmp_path / "data")
    store = Store(tmp_path / "data")
    try:
        store.init_identity("B-AAAAA", "G-AAAAA")
    finally:
        store.close()
    backup(tmp_path / "data", tmp_path / "backup.sqlite3")
    raw = (tmp_path / "backup.sqlite3").read_bytes()
    assert raw.count(b"value-0005-") == 1
    (tmp_path / "backup.sqlite3").write_bytes(raw.replace(b"value-0005-", b"value-0004-"))
    with pytest.raises(BackupError, match=r"damaged.*seq 5"):
        restore(tmp_path / "backup.sqlite3", tmp_path / "restored", "B-RESTO")
    assert not (tmp_path / "restored" / DB_FILE).exists()


def test_once_the_damaged_rows_are_truncated_the_log_is_read_whole_again(tmp_path):
    """The recovering core's first write deletes the damaged suffix; what a leader gives back
    afterwards is read as written (a driver restart must not cut it again)."""
    entries = _store_with_log(tmp_path)
    _alter(tmp_path, b"value-0004-", b"value-0005-")
    store = Store(tmp_path)
    try:
        assert store.raft_state().damage == (4, 6)
        store.save(truncate_from=4)  # (the core's first Ready after the damage)
        store.save(entries=entries[3:])  # what the leader gave back
        state = store.raft_state()
        assert state.entries == entries and state.damage is None
        assert store.log_damage() is None
    finally:
        store.close()
