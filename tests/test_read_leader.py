"""A READ applied on the leader, for someone who waits for the answer (``_storage/_queue_sql``'s
read branch, ``_storage/_integrity.read_values``): the reference's results
(:class:`QueueState`), every value read checked, a damaged one never served, in as few
statements as docs/performance.md ("A single READ on the leader") counts."""

from __future__ import annotations

from typing import Any

import apsw

from trio_broker._core._commands import AppendBatch, CreateQueue
from trio_broker._storage import Store
from trio_broker._storage._integrity import _READ_VALUES, read_values

QUEUE = "Q-AAAAA00001"


class _Reordered:
    """A connection whose queries return their rows in reverse order (what SQLite would do if
    a plan gave up the index's order): :func:`read_values` must not depend on the order."""

    def __init__(self, db: apsw.Connection) -> None:
        self._db = db
        self.filename = db.filename

    def execute(self, sql: str, params: Any = ()) -> Any:
        rows = self._db.execute(sql, params).fetchall()
        return _Rows(rows[::-1])


class _Rows:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchall(self) -> list[Any]:
        return self._rows


def test_read_values_answers_in_sequence_order_whatever_order_the_rows_come_in(tmp_path):
    """Its query has no ``ORDER BY`` (the index gives the order); rows that came in another
    order are still answered in sequence order, each checked."""
    store = Store(tmp_path)
    try:
        values = tuple(b"value %d" % n for n in range(1, 8))
        store.apply([CreateQueue(QUEUE), AppendBatch(QUEUE, values)])
        expected = [(n, values[n - 1], None) for n in range(2, 7)]
        assert read_values(store._db, QUEUE, 2, 6) == expected
        assert read_values(_Reordered(store._db), QUEUE, 2, 6) == expected  # type: ignore[arg-type]
    finally:
        store.close()


def test_read_values_query_takes_the_index_order_without_a_sort(tmp_path):
    """The plan that lets the query leave out ``ORDER BY``: a search of the unique index on
    ``(queue_id, sequence_num)``, no temporary B-tree."""
    store = Store(tmp_path)
    try:
        plan = " ".join(
            row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + _READ_VALUES, (QUEUE, 1, 2))
        )
        assert "USING INDEX sqlite_autoindex_queue_data_1" in plan
        assert "TEMP B-TREE" not in plan
    finally:
        store.close()
