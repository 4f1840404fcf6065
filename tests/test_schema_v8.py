"""Schema version 8 (``_storage/_schema.py``): the queue rows' key is packed into the rowid
(the queue's number times 2**44 plus the sequence number), with no index beside the table. A
version-7 database (as every broker holds it before this release) opens with every row, its
checksum, stamp and headers intact, and everything works on it after; a version-7 snapshot
is upgraded when received and installed; the bounds of the packing (2**44 - 1 sequence
numbers a queue, 2**19 - 1 queues at once) are refusals decided by replicated state alone,
the same applied alone or in a run, and a file past them is refused, untouched."""

from __future__ import annotations

from pathlib import Path

import apsw
import orjson
import pytest

from trio_broker._core._commands import (
    AppendBatch,
    AppendMessage,
    ApplyRetention,
    BatchAppended,
    CommandGroup,
    CommandRejected,
    CreateQueue,
    MessageAppended,
    MessageRead,
    QueueCreated,
    ReadNext,
    RetentionPolicy,
    SetRetention,
)
from trio_broker._core._raft_messages import Config, SnapshotMeta
from trio_broker._core._work_commands import (
    CreateNamedQueue,
    DeleteQueue,
    GroupNack,
    GroupRead,
    GroupSettings,
    JoinGroup,
    Publish,
    ReadRecords,
    Record,
)
from trio_broker._runtime._snapshots import _snapshot_intact
from trio_broker._storage import DB_FILE, StorageDamaged, Store, _schema
from trio_broker._storage._integrity import value_checksum
from trio_broker._storage._schema import (
    MAX_QUEUE_NUMBER,
    MAX_SEQUENCE,
    QUEUE_SPAN,
    SCHEMA_VERSION,
    SchemaCannotUpgrade,
    upgrade,
)

# Ids whose order is not their numbers' (version 7 numbered by id at its upgrade, then by
# creation), numbers with a gap (a queue deleted in between).
QUEUES = {"Q-ZZZZZ00001": 5, "Q-AAAAA00002": 2, "Q-MMMMM00003": 9}
C = "C-READER01"


def _value(q: str, seq: int) -> bytes:
    return orjson.dumps({"q": q, "n": seq, "text": f"v7-{q}-{seq:04d}-" + "x" * 40})


def _headers(seq: int) -> str | None:
    return orjson.dumps({"k": f"h{seq}"}).decode() if seq % 3 == 0 else None


def _version_7_file(path: Path, numbers: dict[str, int] = QUEUES, top: int = 0) -> list[tuple]:
    """A version-7 database as this release's predecessor wrote it (its DDL: ``upgrade(db,
    to=7)``, its rows keyed by ``(queue_number, sequence_num)``): three queues, the first with
    retention marks, a deleted head and undated messages; ``top`` more messages at the end of
    the last queue's numbers, from ``MAX_SEQUENCE - top + 1``. Returns its rows (queue id,
    sequence number, stamp, headers, checksum, bytes)."""
    db = apsw.Connection(str(path))
    rows: list[tuple] = []
    upgrade(db, to=7)
    with db:
        db.execute("INSERT INTO meta VALUES ('broker_id', 'B-OLDV7'), ('cluster_id', 'G-OLDV7')")
        for q, (queue_id, number) in enumerate(numbers.items()):
            deleted, length = (4, 12) if q == 0 else (0, 5 + q)
            seqs = list(range(deleted + 1, length + 1))
            if top and q == len(numbers) - 1:
                deleted, length = MAX_SEQUENCE - top, MAX_SEQUENCE
                seqs = list(range(deleted + 1, length + 1))
            db.execute(
                "INSERT INTO queues (queue_id, length, deleted_through, undated_through,"
                " last_appended_ms, max_messages, queue_number) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    queue_id,
                    length,
                    deleted,
                    6 if q == 0 else 0,
                    9000,
                    6 if q == 0 else None,
                    number,
                ),
            )
            for seq in seqs:
                data, headers = _value(queue_id, seq), _headers(seq)
                stamp = None if q == 0 and seq <= 6 else 2000 + seq % 1000
                checksum = value_checksum(queue_id, seq, data, headers)
                rows.append((queue_id, seq, stamp, headers, checksum, data))
                db.execute(
                    "INSERT INTO queue_data (queue_number, sequence_num, appended_ms, headers,"
                    " checksum, data) VALUES (?, ?, ?, ?, ?, ?)",
                    (number, seq, stamp, headers, checksum, data),
                )
        db.execute("INSERT INTO client_positions VALUES (?, 'Q-ZZZZZ00001', 7)", (C,))
        db.execute(
            "INSERT INTO consumer_groups VALUES ('Q-AAAAA00002', 'g', 30000, NULL, NULL, 100, 2)"
        )
    db.close()
    return rows


def _stored(db: apsw.Connection) -> list[tuple]:
    return db.execute(
        "SELECT q.queue_id, d.key - (q.queue_number << 44), d.appended_ms, d.headers, d.checksum,"
        " d.data FROM queue_data AS d JOIN queues AS q ON q.queue_number = d.key >> 44"
        " ORDER BY q.queue_id, d.key"
    ).fetchall()


def test_a_version_7_database_upgrades_with_every_row_intact_and_works_after(tmp_path):
    rows = _version_7_file(tmp_path / DB_FILE)
    old = apsw.Connection(str(tmp_path / DB_FILE))
    queues_before = old.execute("SELECT * FROM queues ORDER BY queue_id").fetchall()
    old.close()
    store = Store(tmp_path)
    try:
        db = store._db
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 8
        # Every row, with its stamp, headers and checksum as they were (none recomputed), keyed
        # by its queue's number (kept: all within the bound) and its sequence number.
        assert _stored(db) == sorted(rows)
        assert db.execute("SELECT * FROM queues ORDER BY queue_id").fetchall() == queues_before
        # No index beside the table: the key is the rowid.
        assert (
            db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'queue_data'"
            ).fetchall()
            == []
        )
        (key,) = db.execute("SELECT max(key) FROM queue_data").fetchone()
        assert key == 9 * QUEUE_SPAN + 7
        assert store.positions() == {(C, "Q-ZZZZZ00001"): 7}
        assert store.first_retained()["Q-ZZZZZ00001"] == 5
        # Reads: a single READ, a batched read with headers, a group's read.
        assert store.apply([ReadNext(C, "Q-ZZZZZ00001")]) == [
            MessageRead(8, _value("Q-ZZZZZ00001", 8))
        ]
        (read,) = store.apply([ReadRecords("C-OTHER", "Q-MMMMM00003", 3)])
        assert [(d.sequence_num, d.data, d.headers) for d in read.messages] == [
            (s, _value("Q-MMMMM00003", s), (("k", "h3"),) if s == 3 else ()) for s in (1, 2, 3)
        ]
        (_, leased) = store.apply(
            [
                JoinGroup("Q-AAAAA00002", "g", None),
                GroupRead("Q-AAAAA00002", "g", "m", 2, now_ms=10),
            ]
        )
        assert [d.sequence_num for d in leased.messages] == [3, 4]
        # Appends go on from each queue's length; a new queue takes the next number.
        results = store.apply(
            [
                AppendBatch("Q-ZZZZZ00001", (b"13", b"14"), None, None, 9000),
                CreateQueue("Q-NEW0000004"),
                AppendBatch("Q-NEW0000004", (b"1",), None, None, 9001),
                Publish("Q-MMMMM00003", (Record(b"9", (("a", "b"),)),), appended_ms=9002),
            ]
        )
        assert results[0] == BatchAppended(13, 2) and results[2] == BatchAppended(1, 1)
        assert store.messages("Q-ZZZZZ00001")[-3:] == [_value("Q-ZZZZZ00001", 12), b"13", b"14"]
        assert store.messages("Q-NEW0000004") == [b"1"]
        assert db.execute(
            "SELECT key FROM queue_data WHERE data = x'31' AND appended_ms = 9001"
        ).fetchone() == (10 * QUEUE_SPAN + 1,)
        # Retention by count over the upgraded rows and the new; the scrub finds nothing.
        store.apply(
            [SetRetention("Q-ZZZZZ00001", RetentionPolicy(max_messages=3)), ApplyRetention(0)]
        )
        assert store.messages("Q-ZZZZZ00001") == [_value("Q-ZZZZZ00001", 12), b"13", b"14"]
        assert store.damaged_values(("", 0), 1000) == ([], None)
        # A deleted queue leaves no row; its neighbours keep theirs.
        store.apply([DeleteQueue("Q-AAAAA00002", force=True)])
        assert db.execute(
            "SELECT count(*) FROM queue_data WHERE key BETWEEN ? AND ?",
            (2 * QUEUE_SPAN, 3 * QUEUE_SPAN - 1),
        ).fetchone() == (0,)
        assert len(store.messages("Q-MMMMM00003")) == 8
    finally:
        store.close()


def test_a_version_7_database_numbered_past_the_bound_is_renumbered(tmp_path):
    """Version 7 gave a new queue the largest number plus one, without a bound: numbers past
    2**19 - 1 are renumbered from 1 (a queue's number is local to its database)."""
    numbers = {"Q-ZZZZZ00001": MAX_QUEUE_NUMBER + 7, "Q-AAAAA00002": 3, "Q-MMMMM00003": 2**40}
    rows = _version_7_file(tmp_path / DB_FILE, numbers)
    store = Store(tmp_path)
    try:
        db = store._db
        assert sorted(n for (n,) in db.execute("SELECT queue_number FROM queues")) == [1, 2, 3]
        assert _stored(db) == sorted(rows)
        assert store.damaged_values(("", 0), 1000) == ([], None)
        assert store.apply([CreateQueue("Q-NEW0000004")]) == [QueueCreated("Q-NEW0000004")]
        assert db.execute(
            "SELECT queue_number FROM queues WHERE queue_id = 'Q-NEW0000004'"
        ).fetchone() == (4,)
    finally:
        store.close()


def test_a_version_7_database_past_the_last_sequence_number_is_refused_untouched(tmp_path):
    path = tmp_path / DB_FILE
    _version_7_file(path)
    db = apsw.Connection(str(path))
    with db:
        db.execute(
            "INSERT INTO queue_data (queue_number, sequence_num, appended_ms, headers, checksum,"
            " data) VALUES (9, ?, 1, NULL, 0, x'00')",
            (MAX_SEQUENCE + 1,),
        )
    before = db.execute("SELECT * FROM queue_data ORDER BY queue_number, sequence_num").fetchall()
    db.close()
    with pytest.raises(SchemaCannotUpgrade, match=f"past sequence number {MAX_SEQUENCE}"):
        Store(tmp_path)
    db = apsw.Connection(str(path))
    assert db.execute("PRAGMA user_version").fetchone() == (7,)
    assert (
        db.execute("SELECT * FROM queue_data ORDER BY queue_number, sequence_num").fetchall()
        == before
    )
    db.close()


def test_a_version_7_snapshot_is_upgraded_when_received_and_installed(tmp_path):
    """A leader not yet upgraded sends a version-7 file (its last queue holding the highest
    sequence numbers a queue can have): the replica upgrades, checks and installs it."""
    snapshot = tmp_path / "incoming.sqlite3"
    rows = _version_7_file(snapshot, top=3)
    assert _snapshot_intact(str(snapshot))
    replica = Store(tmp_path / "replica")
    try:
        replica.apply([CreateQueue("Q-GONE000009")])
        meta = SnapshotMeta(40, 3, Config(frozenset({"B-AAAAA"})))
        replica.save(snapshot=(meta, str(snapshot)))
        assert _stored(replica._db) == sorted(rows)
        assert replica.apply([ReadNext(C, "Q-ZZZZZ00001")]) == [
            MessageRead(8, _value("Q-ZZZZZ00001", 8))
        ]
        assert replica.messages("Q-MMMMM00003") == [
            _value("Q-MMMMM00003", s) for s in range(MAX_SEQUENCE - 2, MAX_SEQUENCE + 1)
        ]
        assert replica.damaged_values(("", 0), 1000) == ([], None)
    finally:
        replica.close()


def test_a_version_7_snapshot_with_a_row_of_no_queue_is_refused_as_damaged(tmp_path, caplog):
    snapshot = tmp_path / "incoming.sqlite3"
    _version_7_file(snapshot)
    db = apsw.Connection(str(snapshot))
    with db:
        db.execute(
            "UPDATE queue_data SET queue_number = 77 WHERE queue_number = 2 AND sequence_num = 3"
        )
    db.close()
    assert not _snapshot_intact(str(snapshot))
    assert "snapshot.damaged" in caplog.text and "queue number 77" in caplog.text


def _at_the_end(store: Store, queue_id: str, length: int) -> None:
    """The queue as if ``length`` messages had been appended and all deleted by retention."""
    store._db.execute(
        "UPDATE queues SET length = ?1, deleted_through = ?1 WHERE queue_id = ?2",
        (length, queue_id),
    )


def _queue_state(store: Store) -> list[tuple]:
    return [
        *store._db.execute("SELECT * FROM queues ORDER BY queue_id"),
        *store._db.execute("SELECT key, appended_ms, checksum, data FROM queue_data ORDER BY key"),
    ]


@pytest.mark.parametrize("grouped", [False, True])
def test_appends_past_the_last_sequence_number_are_refused_alone_and_in_runs(tmp_path, grouped):
    """Each append is refused exactly when it would take its queue past 2**44 - 1 (the queue's
    length decides, the same on every broker), nothing of it stored; the ones before it in a
    run are applied, as they are one by one."""
    q = "Q-FULL000001"
    commands = [
        AppendMessage(q, b"a", None, None, 100),
        AppendMessage(q, b"b", None, None, 100),
        AppendMessage(q, b"c", None, None, 101),  # (past the last: refused)
        AppendBatch(q, (b"d", b"e"), None, None, 102),  # (refused)
        AppendMessage(q, b"f", "P-1", 1, 103),  # (a producer's: refused)
        Publish(q, (Record(b"g", ()),), appended_ms=104),  # (refused)
    ]
    results = []
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(q)])
        _at_the_end(store, q, MAX_SEQUENCE - 2)
        if grouped:
            (group,) = store.apply([CommandGroup(tuple(commands[:4]))])
            results = list(group.results) + store.apply(commands[4:])
        else:
            results = store.apply(commands)
        assert results[:2] == [MessageAppended(MAX_SEQUENCE - 1), MessageAppended(MAX_SEQUENCE)]
        for refused in results[2:]:
            assert isinstance(refused, CommandRejected) and refused.code == "BAD_REQUEST"
            assert f"{MAX_SEQUENCE} is the last sequence number" in refused.message
        assert store.messages(q) == [b"a", b"b"]
        (key,) = store._db.execute("SELECT max(key) FROM queue_data").fetchone()
        assert key == 1 * QUEUE_SPAN + MAX_SEQUENCE
        # A run of batches, all of which fit but the last.
        store.apply([CreateQueue("Q-FULL000002")])
        _at_the_end(store, "Q-FULL000002", MAX_SEQUENCE - 4)
        batches = [AppendBatch("Q-FULL000002", (b"x", b"y"), None, None, 5)] * 3
        if grouped:
            (group,) = store.apply([CommandGroup(tuple(batches))])
            got = list(group.results)
        else:
            got = store.apply(batches)
        assert got[:2] == [BatchAppended(MAX_SEQUENCE - 3, 2), BatchAppended(MAX_SEQUENCE - 1, 2)]
        assert isinstance(got[2], CommandRejected) and got[2].code == "BAD_REQUEST"
        assert store.messages("Q-FULL000002") == [b"x", b"y"] * 2
    finally:
        store.close()


def test_a_dead_letter_move_into_a_full_queue_waits_instead(tmp_path):
    """A message past its group's deliveries whose dead-letter queue holds the last sequence
    number a queue can have stays pending, waiting: never lost, never stored past the bound."""
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue("Q-WORK000001"), CreateQueue("Q-DEAD000001")])
        _at_the_end(store, "Q-DEAD000001", MAX_SEQUENCE)
        settings = GroupSettings(1000, 1, "Q-DEAD000001", 10)
        store.apply(
            [
                AppendBatch("Q-WORK000001", (b"m",), None, None, 1),
                JoinGroup("Q-WORK000001", "g", settings),
                GroupRead("Q-WORK000001", "g", "w", 1, now_ms=10),
            ]
        )
        store.apply([GroupNack("Q-WORK000001", "g", "w", (1,), now_ms=20)])
        assert store.messages("Q-DEAD000001") == []
        assert store._db.execute(
            "SELECT sequence_num, member FROM group_pending WHERE queue_id = 'Q-WORK000001'"
        ).fetchall() == [(1, None)]
        # Once the dead-letter queue has room again (it never does: here, by hand), it moves.
        _at_the_end(store, "Q-DEAD000001", 0)
        store.apply([GroupRead("Q-WORK000001", "g", "w", 1, now_ms=30)])
        store.apply([GroupNack("Q-WORK000001", "g", "w", (1,), now_ms=40)])
        assert store.messages("Q-DEAD000001") == [b"m"]
    finally:
        store.close()


def test_queue_numbers_past_the_bound_take_a_free_one_then_creation_is_refused(
    tmp_path, monkeypatch
):
    """With the largest number taken, a new queue takes the lowest free one; with every one
    taken (as many queues as numbers: a count every broker holds alike), CREATE_QUEUE and
    CREATE_NAMED_QUEUE are refused and nothing changes."""
    monkeypatch.setattr(_schema, "MAX_QUEUE_NUMBER", 3)
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(f"Q-NUMBER0000{n}") for n in (1, 2, 3)])
        store.apply([DeleteQueue("Q-NUMBER00001"), AppendBatch("Q-NUMBER00003", (b"3",))])
        assert store.apply([CreateQueue("Q-NUMBER00004")]) == [QueueCreated("Q-NUMBER00004")]
        numbers = dict(store._db.execute("SELECT queue_id, queue_number FROM queues"))
        assert numbers == {"Q-NUMBER00002": 2, "Q-NUMBER00003": 3, "Q-NUMBER00004": 1}
        before = _queue_state(store)
        refused = store.apply(
            [CreateQueue("Q-NUMBER00005"), CreateNamedQueue("Q-NUMBER00006", "named")]
        )
        for result in refused:
            assert isinstance(result, CommandRejected) and result.code == "BAD_REQUEST"
            assert "queues exist" in result.message
        assert _queue_state(store) == before
        assert store.apply([AppendBatch("Q-NUMBER00004", (b"4",))]) == [BatchAppended(1, 1)]
        assert store.messages("Q-NUMBER00003") == [b"3"]
        assert store.messages("Q-NUMBER00004") == [b"4"]
    finally:
        store.close()


def test_a_row_moved_into_another_queues_keys_is_found_and_never_served(tmp_path):
    """The key is the row's place; its checksum covers the queue id and the sequence number:
    a row whose key changed (here into another queue's range) is missing where it was and
    damaged where it landed, for a read and for the scrub."""
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue("Q-AAAAA00001"), CreateQueue("Q-BBBBB00002")])
        store.apply([AppendBatch(q, (b"1", b"2", b"3")) for q in ("Q-AAAAA00001", "Q-BBBBB00002")])
        db = store._db
        db.execute("DELETE FROM queue_data WHERE key = ?", (2 * QUEUE_SPAN + 2,))
        db.execute(
            "UPDATE queue_data SET key = ? WHERE key = ?", (2 * QUEUE_SPAN + 2, QUEUE_SPAN + 2)
        )
        with pytest.raises(StorageDamaged, match="seq 2"):
            store.messages("Q-AAAAA00001")
        with pytest.raises(StorageDamaged, match="seq 2"):
            store.messages("Q-BBBBB00002")
        assert store.damaged_values(("", 0), 100) == (
            [("Q-AAAAA00001", 2), ("Q-BBBBB00002", 2)],
            None,
        )
    finally:
        store.close()
