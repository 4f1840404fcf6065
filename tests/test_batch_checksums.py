"""The stored values' checksums as the store's batch loops compute them (``insert_values``,
``read_values`` in ``_storage/_integrity.py``, docs/performance-history.md "Batches in and out"):
the number the stored definition gives, so that data directories written before read the same;
each value's checksum computed once per read; and a damaged or missing value in a batch still
never served."""

from __future__ import annotations

from types import SimpleNamespace

import apsw
import google_crc32c
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import STORE_QUEUE
from trio_broker._core._commands import AppendBatch, CommandRejected, CreateQueue
from trio_broker._core._work_commands import ReadRecords
from trio_broker._storage import DB_FILE, StorageDamaged, Store, _integrity
from trio_broker._storage._integrity import (
    UNCHECKED,
    insert_values,
    read_value,
    read_values,
    value_checksum,
)
from trio_broker._storage._schema import MAX_SEQUENCE

Q = STORE_QUEUE  # (the queue the store fixtures hold: tests/conftest.py)


def original_checksum(queue_id: str, seq: int, data: bytes, headers: str | None) -> int:
    """The stored checksum's definition as the store computed it when data directories of
    this version were written (a copy kept here: the code may compute it otherwise, never
    give another number)."""
    crc = google_crc32c.extend(google_crc32c.value(f"{queue_id}\0{seq}\0".encode()), data)
    if headers is not None:
        crc = google_crc32c.extend(crc, b"\0" + headers.encode())
    return crc


def _write_as_before(db: apsw.Connection, queue_id: str, rows: list[tuple]) -> None:
    """Rows ``(seq, data, headers)`` stored with the original definition's checksums, as a
    data directory written before holds them."""
    with db:
        db.executemany(
            "INSERT INTO queue_data (key, appended_ms, headers, checksum, data) VALUES"
            " ((SELECT queue_number << 44 FROM queues WHERE queue_id = ?) + ?, ?, ?, ?, ?)",
            [(queue_id, s, 1, h, original_checksum(queue_id, s, d, h), d) for s, d, h in rows],
        )


QUEUE_IDS = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=20)
HEADERS = st.none() | st.dictionaries(
    st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3
).map(lambda h: orjson.dumps(dict(sorted(h.items()))).decode())
VALUES = st.lists(st.tuples(st.binary(max_size=64), HEADERS), min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(QUEUE_IDS, st.integers(1, MAX_SEQUENCE - 8), VALUES)
def test_inserted_checksums_are_the_stored_definitions(store_db, queue_id, first, values):
    """What ``insert_values`` stores is the definition's number, whatever the queue id (any
    text), the sequence number, the bytes and the headers; and ``value_checksum`` is it too."""
    store_db.execute("BEGIN")
    try:
        # (the queue, unless it is the fixture's own: its rows' key holds its number, version 8)
        store_db.execute(
            "INSERT OR IGNORE INTO queues (queue_id, queue_number)"
            " VALUES (?, (SELECT max(queue_number) + 1 FROM queues))",
            (queue_id,),
        )
        insert_values(store_db, queue_id, first, [(d, 5, h) for d, h in values])
        stored = store_db.execute(
            "SELECT sequence_num, data, headers, checksum FROM queue_data"
            " WHERE queue_number = (SELECT queue_number"
            " FROM queues WHERE queue_id = ?) ORDER BY sequence_num",
            (queue_id,),
        ).fetchall()
    finally:
        store_db.execute("ROLLBACK")
    assert [(s, d, h) for s, d, h, _ in stored] == [
        (s, d, h) for s, (d, h) in enumerate(values, first)
    ]
    for seq, data, headers, checksum in stored:
        assert checksum == original_checksum(queue_id, seq, data, headers)
        assert checksum == value_checksum(queue_id, seq, data, headers)


def test_values_written_before_read_the_same(db):
    """Rows stored with the original definition (with and without headers, unicode, any
    bytes) are read back whole, in one batch and one by one."""
    rows = [
        (1, b"42", None),
        (2, b'"\xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80"', '{"trace":"t-\u00e9\U0001f600"}'),
        (3, bytes(range(256)), None),
        (4, b"", '{"a":""}'),
        *((seq, orjson.dumps({"n": seq}), None) for seq in range(5, 1001)),
    ]
    _write_as_before(db, Q, rows)
    assert read_values(db, Q, 1, 1000) == rows
    assert read_values(db, Q, 2, 4) == rows[1:4]
    assert [read_value(db, Q, s) for s, _, _ in rows[:4]] == [(d, h) for _, d, h in rows[:4]]


def test_a_batch_read_checksums_each_value_once(db, monkeypatch):
    """One CRC computation per value read (the check computed it twice before)."""
    _write_as_before(db, Q, [(s, b"%d" % s, None if s % 2 else '{"k":"v"}') for s in range(1, 101)])
    calls = []

    def counted(name):
        real = getattr(google_crc32c, name)
        return lambda *args: calls.append(name) or real(*args)

    monkeypatch.setattr(
        _integrity,
        "google_crc32c",
        SimpleNamespace(value=counted("value"), extend=counted("extend")),
    )
    monkeypatch.setattr(_integrity, "_crc32c", counted("value"), raising=False)
    assert len(read_values(db, Q, 1, 100)) == 100
    assert len(calls) == 100
    calls.clear()
    assert read_value(db, Q, 7) == (b"7", None)
    assert len(calls) <= 2  # (one checksum: value and extend, or one call)


@pytest.mark.parametrize("damaged", [1, 500, 1000])
@pytest.mark.parametrize("how", ["bytes", "checksum", "headers", "missing", "type"])
def test_a_damaged_value_in_a_batch_is_never_served(db, damaged, how):
    """Whichever message of a 1,000-message batch is damaged (first, middle, last), and
    however (its bytes, its checksum, its headers, its row gone, a value of another type), the
    batch is refused with the message named; read for nobody (``UNCHECKED``), it reads as
    empty bytes and is noted, and every other message is served as stored."""
    rows = [
        (s, orjson.dumps({"n": s}), '{"h":"x"}' if s % 3 == 0 else None) for s in range(1, 1001)
    ]
    _write_as_before(db, Q, rows)
    with db:
        if how == "bytes":
            db.execute(
                "UPDATE queue_data SET data = ? WHERE queue_number = (SELECT queue_number"
                " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
                (orjson.dumps({"n": damaged + 1}), Q, damaged),
            )
        elif how == "checksum":
            db.execute(
                "UPDATE queue_data SET checksum = checksum + 1"
                " WHERE queue_number = (SELECT queue_number FROM queues WHERE queue_id = ?)"
                " AND sequence_num = ?",
                (Q, damaged),
            )
        elif how == "headers":
            db.execute(
                'UPDATE queue_data SET headers = \'{"h":"y"}\''
                " WHERE queue_number = (SELECT queue_number FROM queues WHERE queue_id = ?)"
                " AND sequence_num = ?",
                (Q, damaged),
            )
        elif how == "missing":
            db.execute(
                "DELETE FROM queue_data WHERE queue_number = (SELECT queue_number"
                " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
                (Q, damaged),
            )
        else:  # the table is STRICT: only a NULL where a text belongs can be of another type
            db.execute(
                "UPDATE queue_data SET headers = NULL WHERE queue_number = (SELECT queue_number"
                " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
                (Q, damaged),
            )
            if rows[damaged - 1][2] is None:  # (it had none: damage its bytes instead)
                db.execute(
                    "UPDATE queue_data SET data = x'00' WHERE queue_number = (SELECT queue_number"
                    " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
                    (Q, damaged),
                )
    with pytest.raises(StorageDamaged, match=f"seq {damaged}") as raised:
        read_values(db, Q, 1, 1000)
    assert raised.value.seq == damaged and raised.value.queue_id == Q
    met: list[tuple[str, int]] = []
    token = UNCHECKED.set(met)
    try:
        read = read_values(db, Q, 1, 1000)
    finally:
        UNCHECKED.reset(token)
    assert met == [(Q, damaged)]
    assert read == [(s, b"", None) if s == damaged else (s, d, h) for s, d, h in rows]
    # The messages around it are served.
    if damaged > 1:
        assert read_values(db, Q, 1, damaged - 1) == rows[: damaged - 1]
    if damaged < 1000:
        assert read_values(db, Q, damaged + 1, 1000) == rows[damaged:]


def test_a_damaged_value_in_a_batch_answers_unavailable_and_moves_nothing(tmp_path):
    """Through the store, a READ of the messages form that meets a damaged value is refused
    and the reader's position stays; the messages before it are still served."""
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(Q)])
        store.apply([AppendBatch(Q, tuple(orjson.dumps(i) for i in range(1, 101)), None, None, 1)])
    finally:
        store.close()
    db = apsw.Connection(str(tmp_path / DB_FILE))
    with db:
        db.execute(
            "UPDATE queue_data SET data = ? WHERE queue_number = (SELECT queue_number"
            " FROM queues WHERE queue_id = ?) AND sequence_num = 60",
            (orjson.dumps(61), Q),
        )
    db.close()
    store = Store(tmp_path)
    try:
        (refused,) = store.apply([ReadRecords("C-READER", Q, 100)])
        assert isinstance(refused, CommandRejected) and refused.code == "UNAVAILABLE"
        assert "seq 60" in refused.message
        (served,) = store.apply([ReadRecords("C-READER", Q, 59)])
        assert [d.data for d in served.messages] == [orjson.dumps(i) for i in range(1, 60)]
        assert store.positions()[("C-READER", Q)] == 59
    finally:
        store.close()
