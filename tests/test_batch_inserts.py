"""``insert_values`` (``_storage/_integrity.py``) stores a batch in a few statements of many
rows each (docs/performance-history.md, "Batches in and out"): the rows it writes are the rows one
``INSERT`` per message writes, checksums included, for every batch size and mix of headers
and stamps."""

from __future__ import annotations

import apsw
import orjson
import pytest

from tests.conftest import STORE_QUEUE
from trio_broker._core._commands import AppendBatch, CreateQueue
from trio_broker._storage import Store
from trio_broker._storage._integrity import (
    insert_plain,
    insert_stamped,
    insert_values,
    read_values,
    value_checksum,
)

Q = STORE_QUEUE  # (the queue the store fixtures hold: tests/conftest.py)
SIZES = [0, 1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 100, 111, 112, 127, 128, 1000]


def _rows(count: int, first: int) -> list[tuple[bytes, int | None, str | None]]:
    return [
        (
            orjson.dumps({"n": seq, "s": "é\U0001f600" * (seq % 5)}),
            None if seq % 7 == 0 else 1000 + seq // 3,
            None if seq % 2 else orjson.dumps({"k": f"v{seq}"}).decode(),
        )
        for seq in range(first, first + count)
    ]


def _stored(db: apsw.Connection, queue_id: str) -> list[tuple]:
    return db.execute(
        "SELECT queue_id, sequence_num, appended_ms, headers, checksum, data FROM queue_data"
        " JOIN queues USING (queue_number) WHERE queue_id = ? ORDER BY sequence_num",
        (queue_id,),
    ).fetchall()


@pytest.mark.parametrize("count", SIZES)
def test_a_batch_stores_the_rows_one_insert_per_message_stores(db, count):
    first = 7
    rows = _rows(count, first)
    with db:
        insert_values(db, Q, first, rows)
    expected = [
        (Q, seq, stamp, headers, value_checksum(Q, seq, data, headers), data)
        for seq, (data, stamp, headers) in enumerate(rows, first)
    ]
    assert _stored(db, Q) == expected
    assert read_values(db, Q, first, first + count - 1) == [
        (seq, data, headers) for seq, (data, stamp, headers) in enumerate(rows, first)
    ]


@pytest.mark.parametrize("insert", ["values", "plain", "stamped"])
def test_a_batch_of_100_takes_three_statements(db, insert):
    """100 messages: statements of 64, 32 and 4 rows, never one execution per row (the 4
    left after 96 went through ``executemany`` before, which steps once per row: 1.8 against
    1.3 µs per row)."""
    executed: list[int] = []

    def trace(_cursor, sql, bindings):
        if sql.startswith("INSERT INTO queue_data"):
            executed.append(sql.count("),(") + 1)
        return True

    rows = _rows(100, 1)
    plain = [data for data, _stamp, _headers in rows]
    db.exec_trace = trace
    if insert == "values":
        insert_values(db, Q, 1, rows)
    elif insert == "plain":
        insert_plain(db, Q, 1, plain, 5)
    else:
        insert_stamped(db, Q, 1, plain, list(range(100)))
    db.exec_trace = None
    assert len(_stored(db, Q)) == 100
    assert executed == [64, 32, 4]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 15, 17, 63, 127, 1000])
def test_every_count_is_cut_into_statements_of_falling_sizes(db, count):
    """Each size of statement at most once below 64, largest first: ``count`` rows take at
    most ``count // 64`` statements of 64 and one of each smaller size."""
    executed: list[int] = []

    def trace(_cursor, sql, bindings):
        if sql.startswith("INSERT INTO queue_data"):
            executed.append(sql.count("),(") + 1)
        return True

    db.exec_trace = trace
    insert_plain(db, Q, 1, [b'"x"'] * count, None)
    db.exec_trace = None
    assert sum(executed) == count == len(_stored(db, Q))
    assert executed == sorted(executed, reverse=True)
    assert [size for size in executed if size < 64] == [
        size for size in (32, 16, 8, 4, 2, 1) if count % 64 & size
    ]


def test_a_duplicate_in_a_batch_is_refused(db):
    """A sequence number already stored is a constraint error, as one INSERT per message
    gives (the caller's transaction then keeps nothing)."""
    with db:
        insert_values(db, Q, 50, _rows(1, 50))
    with pytest.raises(apsw.ConstraintError), db:
        insert_values(db, Q, 1, _rows(100, 1))
    assert [row[1] for row in _stored(db, Q)] == [50]


def test_an_append_batch_through_the_store_is_read_back_whole(tmp_path):
    """The largest APPEND_BATCH (1,000 values) applied by the store, then read back."""
    store = Store(tmp_path)
    try:
        values = tuple(orjson.dumps({"i": i, "pad": "x" * 900}) for i in range(1000))
        store.apply([CreateQueue(Q)])
        (appended,) = store.apply([AppendBatch(Q, values, None, None, 5)])
        assert (appended.first_sequence_num, appended.count) == (1, 1000)
        assert store.messages(Q) == list(values)
    finally:
        store.close()


@pytest.mark.parametrize("count", SIZES)
@pytest.mark.parametrize("stamp", [None, 1234])
def test_messages_of_one_stamp_store_what_insert_values_stores(store_db, count, stamp):
    """``insert_plain`` (an APPEND_BATCH, a run of APPENDs of one stamp) stores the rows
    ``insert_values`` stores for the same messages without headers."""
    data = [orjson.dumps({"n": seq, "s": "é" * (seq % 4)}) for seq in range(count)]
    stored = []
    for insert in (
        lambda: insert_plain(store_db, Q, 3, data, stamp),
        lambda: insert_values(store_db, Q, 3, [(d, stamp, None) for d in data]),
    ):
        store_db.execute("BEGIN")
        try:
            insert()
            stored.append(_stored(store_db, Q))
        finally:
            store_db.execute("ROLLBACK")
    assert stored[0] == stored[1]
    assert [row[1] for row in stored[0]] == list(range(3, 3 + count))
