"""The producers' de-duplication state, written by one upsert (``_storage/_producers_sql.py``)
for both tables that hold it: ``producers`` (APPEND, APPEND_BATCH) and ``fenced_producers``
(PUBLISH, with an epoch). The same sequence of idempotent appends and fenced publishes (new
producers, duplicates, gaps, a new epoch, a fenced one, more producers than are kept) leaves
exactly these rows in every table, as it did when each table had its own copy of the SQL."""

from __future__ import annotations

import hashlib
import sys

import apsw

from trio_broker._core import _commands as cmd
from trio_broker._core import _work_commands as work
from trio_broker._storage import DB_FILE, Store

from .test_colrun import _state as every_table

Q, OTHER = "Q-one", "Q-two"
BASE_MS = 1_765_000_000_000
KEPT = 5
"""Producer states kept in this test (``MAX_PRODUCERS``, set low in every storage module)."""


def _phases() -> tuple[list, list]:
    """One producer's story on both tables; then more producers than are kept."""
    story: list = [cmd.CreateQueue(Q), cmd.CreateQueue(OTHER)]
    ms = BASE_MS

    def stamp() -> int:
        nonlocal ms
        ms += 7
        return ms

    for seq in (1, 2, 2, 3, 5, 4):  # (in order, a duplicate, a gap refused, a late one)
        story.append(cmd.AppendMessage(Q, b"%d" % seq, "P-a", seq, stamp()))
    story.append(cmd.AppendBatch(Q, (b"1", b"2", b"3"), "P-a", 4, stamp()))
    story.append(cmd.AppendBatch(OTHER, (b"1", b"2"), "P-a", 1, stamp()))
    for epoch, seq in ((0, 1), (0, 2), (0, 2), (1, 1), (0, 3), (1, 2), (1, 4)):
        records = (work.Record(b"%d" % seq, (("trace", f"{epoch}-{seq}"),)),)
        story.append(work.Publish(Q, records, "P-a", epoch, seq, stamp()))
    story.append(work.Publish(OTHER, (work.Record(b"9"),), "P-b", 3, 1, stamp()))
    crowd: list = []
    for n in range(KEPT + 3):  # (the least recently used are forgotten)
        crowd.append(cmd.AppendMessage(OTHER, b"1", f"P-{n}", 1, stamp()))
        crowd.append(work.Publish(OTHER, (work.Record(b"1"),), f"P-{n}", 0, 1, stamp()))
    crowd.append(cmd.AppendMessage(Q, b"6", "P-a", 5, stamp()))
    return story, crowd


def _tables(path) -> dict[str, list]:
    """Every table's rows, ``queues`` and ``queue_data`` as version 6 held them (the queue id
    in each message's row, no queue number: the digests below were taken then, and still hold
    with the rows of schema version 7 read back in that form)."""
    db = apsw.Connection(str(path / DB_FILE))
    try:
        tables = every_table(db)
        tables["queues"] = sorted((row[:-1] for row in tables["queues"]), key=repr)
        tables["queue_data"] = sorted(
            db.execute(
                "SELECT queue_id, sequence_num, appended_ms, headers, checksum, data"
                " FROM queue_data JOIN queues USING (queue_number)"
            ).fetchall(),
            key=repr,
        )
        return tables
    finally:
        db.close()


def _digest(results: list, tables: dict[str, list]) -> str:
    return hashlib.sha256(repr((results, tables)).encode()).hexdigest()


def test_idempotent_appends_and_fenced_publishes_leave_the_same_rows(tmp_path, monkeypatch):
    for name, module in list(sys.modules.items()):
        if name.startswith("trio_broker._storage") and hasattr(module, "MAX_PRODUCERS"):
            monkeypatch.setattr(module, "MAX_PRODUCERS", KEPT)
    story, crowd = _phases()
    store = Store(tmp_path)
    try:
        told = [store.apply([c])[0] for c in story]
        after_story = _tables(tmp_path)
        crowded = [store.apply([c])[0] for c in crowd]
    finally:
        store.close()
    after_crowd = _tables(tmp_path)
    assert after_story["producers"] == [
        ("P-a", "Q-one", 4, "[[1,1,1],[2,2,1],[3,3,1],[4,4,1]]", 4),
        ("P-a", "Q-two", 1, "[[1,1,2]]", 5),
    ]
    assert after_story["fenced_producers"] == [
        ("P-a", "Q-one", 1, 2, "[[1,7,1],[2,8,1]]", 4),
        ("P-b", "Q-two", 3, 1, "[[1,3,1]]", 5),
    ]
    assert after_crowd["producers"] == [
        *((f"P-{n}", "Q-two", 1, f"[[1,{4 + 2 * n},1]]", 6 + n) for n in range(4, 8)),
        ("P-a", "Q-one", 5, "[[5,9,1]]", 14),
    ]
    assert after_crowd["fenced_producers"] == [
        (f"P-{n}", "Q-two", 0, 1, f"[[1,{5 + 2 * n},1]]", 6 + n) for n in range(3, 8)
    ]
    # Every other table and every result, as the two copies of the SQL left them (a change
    # of another table's layout on purpose changes these: recompute them then).
    assert _digest(told, after_story) == (
        "dcef2a25f4e2fa9ed82e5aeb1500bbee3ddbe15f1c47a8af592776e4159ec3ac"
    )
    assert _digest(crowded, after_crowd) == (
        "7855e72499b6a11c2b3a4a1fd1be7bbef72a7e3b21d610982d4695a857f562a4"
    )


def test_the_statements_are_those_each_table_had():
    from trio_broker._storage._producers_sql import _statements

    assert _statements("fenced_producers", ("epoch",)) == (
        "SELECT coalesce(max(last_used), 0) FROM fenced_producers",
        "INSERT INTO fenced_producers (producer_id, queue_id, epoch, last_seq, recent,"
        " last_used) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (producer_id, queue_id)"
        " DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq,"
        " recent = excluded.recent, last_used = excluded.last_used",
        "DELETE FROM fenced_producers WHERE last_used <= (SELECT last_used FROM"
        " fenced_producers ORDER BY last_used DESC LIMIT 1 OFFSET ?)",
    )
    assert _statements("producers", ())[1] == (
        "INSERT INTO producers (producer_id, queue_id, last_seq, recent, last_used)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (producer_id, queue_id) DO UPDATE SET"
        " last_seq = excluded.last_seq, recent = excluded.recent,"
        " last_used = excluded.last_used"
    )
