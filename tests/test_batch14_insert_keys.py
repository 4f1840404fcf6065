"""``insert_plain`` (``_storage/_integrity.py``) binds each statement's first key once and lets
SQLite compute each row's key from it (docs/performance.md, "Batch appends per value: the
save's parts, the checkpoint, the decode (fourteenth round)"): a statement of ``n`` rows binds
``2 * n + 2`` values, not ``3 * n + 1``, and the rows it stores are the rows one ``INSERT`` per
message stores, keyed by the queue's number and each message's own sequence number, across
every statement's bounds."""

from __future__ import annotations

from typing import Any

import apsw
import pytest

from tests.conftest import STORE_QUEUE
from trio_broker._storage._integrity import insert_plain, insert_values
from trio_broker._storage._schema import QUEUE_SPAN

Q = STORE_QUEUE


def _inserts(db: apsw.Connection, run: Any) -> list[tuple[str, Any]]:
    """The ``INSERT INTO queue_data`` statements ``run()`` executes, with their bindings."""
    seen: list[tuple[str, Any]] = []

    def tracer(_cursor: Any, sql: str, bindings: Any) -> bool:
        if sql.startswith("INSERT INTO queue_data"):
            seen.append((sql, bindings))
        return True

    db.exec_trace = tracer
    try:
        run()
    finally:
        db.exec_trace = None
    return seen


@pytest.mark.parametrize("count", [1, 3, 64, 65, 100, 127, 1900])
def test_each_statement_binds_its_first_key_then_two_values_a_row(db, count):
    data = [b'"v%d"' % n for n in range(count)]
    select = "SELECT key, sequence_num, appended_ms, headers, checksum, data FROM queue_data"
    db.execute("SAVEPOINT one")
    insert_values(db, Q, 999_990, [(d, 1234, None) for d in data])
    expected = db.execute(select + " ORDER BY key").fetchall()
    db.execute("ROLLBACK TO one")
    statements = _inserts(db, lambda: insert_plain(db, Q, 999_990, data, 1234))
    assert db.execute(select + " ORDER BY key").fetchall() == expected
    assert [row[1] for row in expected] == list(range(999_990, 999_990 + count))
    rows = [sql.count("(?2+") for sql, _ in statements]
    assert sum(rows) == count
    first = 0
    (number,) = db.execute("SELECT queue_number FROM queues WHERE queue_id = ?", (Q,)).fetchone()
    for (_sql, bindings), n in zip(statements, rows, strict=True):
        assert len(bindings) == 2 * n + 2
        assert bindings[0] == 1234  # (the stamp)
        assert bindings[1] == number * QUEUE_SPAN + 999_990 + first  # (its first row's key)
        assert list(bindings[3::2]) == data[first : first + n]
        first += n
