"""A producer's de-duplication state saved after an append it made: one statement for both
tables that hold it, ``producers`` (APPEND, APPEND_BATCH: :mod:`._append_sql`) and
``fenced_producers`` (PUBLISH, whose producers also have an epoch: :mod:`._work_sql`).

The state is the next one (``next_producer_state``) on a clock that counts the table's uses:
the producer's row is written (inserted or updated), then the least recently used beyond
``MAX_PRODUCERS`` are forgotten. ``tests/test_producers_sql.py`` checks that both tables'
rows are what their own copies of this SQL wrote.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import apsw
import orjson

from .._core._commands import MAX_PRODUCERS, ProducerState, next_producer_state

TABLES = ("producers", "fenced_producers")
"""The tables a producer's state is kept in, keyed by (producer_id, queue_id)."""


def save_producer(
    db: apsw.Connection,
    table: str,
    producer: tuple[str, str],
    state: ProducerState | None,
    seq: int,
    first: int,
    count: int,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Save ``producer``'s (``(producer_id, queue_id)``) state in ``table`` after its append
    ``seq`` of ``count`` messages from sequence number ``first``; ``state`` is what it was
    (None: new), ``extra`` the table's other columns (``fenced_producers``' epoch)."""
    columns = tuple(extra or ())
    clock_sql, upsert_sql, forget_sql = _statements(table, columns)
    (clock,) = db.execute(clock_sql).fetchone()
    new = next_producer_state(state, seq, first, count, clock + 1)
    db.execute(
        upsert_sql,
        (
            *producer,
            *(extra or {}).values(),
            new.last_seq,
            orjson.dumps(new.recent).decode(),
            new.last_used,
        ),
    )
    db.execute(forget_sql, (MAX_PRODUCERS,))


@functools.cache
def _statements(table: str, extra: tuple[str, ...]) -> tuple[str, str, str]:
    """The clock's query, the upsert and the forgetting of ``table`` with ``extra`` columns
    (between the key and ``last_seq``)."""
    assert table in TABLES, table  # (names from this module's callers, never from requests)
    columns = (*extra, "last_seq", "recent", "last_used")
    marks = ", ".join("?" * (2 + len(columns)))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
    return (
        f"SELECT coalesce(max(last_used), 0) FROM {table}",
        f"INSERT INTO {table} (producer_id, queue_id, {', '.join(columns)}) VALUES ({marks})"
        f" ON CONFLICT (producer_id, queue_id) DO UPDATE SET {updates}",
        f"DELETE FROM {table} WHERE last_used <= (SELECT last_used FROM {table}"
        " ORDER BY last_used DESC LIMIT 1 OFFSET ?)",
    )
