"""Queue numbers are reused (``_schema.next_queue_number``): a queue deleted with everything a
queue can hold (messages with and without headers, a deleted head, positions, a name,
producers, consumer groups with leases, waiting redeliveries and a dead-letter queue of its
own) leaves nothing under its number or its id in the transaction that deletes it, so the
queue that takes its number next answers every read exactly as the same queue in a fresh
store: no old message, position, lease or producer shows through."""

from __future__ import annotations

from typing import Any

from trio_broker._core._commands import (
    AppendBatch,
    AppendMessage,
    CreateQueue,
    ReadBatch,
    ReadNext,
    RetentionPolicy,
    SetRetention,
)
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
from trio_broker._storage import Store
from trio_broker._storage._schema import QUEUE_SPAN

OLD, NEW, KEEP, DEAD = "Q-OLD0000001", "Q-NEW0000001", "Q-KEEP000001", "Q-DEAD000001"


def _fill(store: Store, queue: str, dead: str | None) -> None:
    """Everything a queue can hold, ``dead`` its groups' dead-letter queue."""
    store.apply(
        [
            AppendBatch(queue, tuple(b"old-%d" % n for n in range(1, 9)), None, None, 10),
            Publish(queue, (Record(b"old-h", (("k", "v"),)),), "P-1", 0, 1, 11),
            AppendMessage(queue, b"old-p", "P-2", 1, 12),
            ReadNext("C-1", queue),
            ReadBatch("C-2", queue, 3),
            ReadRecords("C-3", queue, 2),
            JoinGroup(queue, "g", GroupSettings(1000, 1, dead, 10)),
            JoinGroup(queue, "h", GroupSettings(1000, None, None, 10)),
            GroupRead(queue, "g", "w", 3, now_ms=20),
            GroupRead(queue, "h", "w", 4, now_ms=20),
            GroupNack(queue, "h", "w", (2,), now_ms=21, delay_ms=500),
            SetRetention(queue, RetentionPolicy(max_messages=8)),
        ]
    )


def _reads(store: Store, queue: str) -> list[Any]:
    """What every read path answers on a new queue (the results, then the rows)."""
    results = store.apply(
        [
            ReadNext("C-1", queue),
            ReadBatch("C-2", queue, 100, peek=True),
            ReadRecords("C-3", queue, 100, peek=True),
            JoinGroup(queue, "g"),
            JoinGroup(queue, "h"),
            GroupRead(queue, "g", "w", 100, now_ms=30_000),
            GroupRead(queue, "h", "w", 100, now_ms=30_000),
            AppendMessage(queue, b"new-1", "P-2", 1, 40),
            Publish(queue, (Record(b"new-2"),), "P-1", 0, 1, 41),
            AppendBatch(queue, (b"new-3",), None, None, 42),
            ReadNext("C-1", queue),
            ReadBatch("C-2", queue, 100),
            ReadRecords("C-3", queue, 100),
            GroupRead(queue, "g", "w", 100, now_ms=30_000),
        ]
    )
    return [
        results,
        store.messages(queue),
        store.queue_lengths()[queue],
        store.first_retained()[queue],
        store.damaged_values(("", 0), 10_000),
    ]


def _number(store: Store, queue: str) -> int:
    (number,) = store._db.execute(
        "SELECT queue_number FROM queues WHERE queue_id = ?", (queue,)
    ).fetchone()
    return int(number)


def _mentions(store: Store, queue: str, number: int) -> list[tuple[str, int]]:
    """Rows anywhere that name ``queue`` or lie under ``number``'s keys."""
    found = []
    for (table,) in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        columns = [r[1] for r in store._db.execute(f"PRAGMA table_xinfo({table})")]
        for column in ("queue_id", "dead_letter_queue"):
            if column in columns:
                (n,) = store._db.execute(
                    f"SELECT count(*) FROM {table} WHERE {column} = ?", (queue,)
                ).fetchone()
                if n:
                    found.append((f"{table}.{column}", n))
    (rows,) = store._db.execute(
        "SELECT count(*) FROM queue_data WHERE key >= ? AND key < ?",
        (number * QUEUE_SPAN, (number + 1) * QUEUE_SPAN),
    ).fetchone()
    if rows:
        found.append(("queue_data", rows))
    return found


def _fresh(tmp_path, name: str, create: Any) -> list[Any]:
    store = Store(tmp_path / name)
    try:
        store.apply([CreateQueue(KEEP), create])
        return _reads(store, NEW)
    finally:
        store.close()


def test_a_deleted_queues_number_reused_shows_nothing_of_it(tmp_path):
    """The deleted queue holds the largest number, so the next queue takes the same one."""
    store = Store(tmp_path / "reused")
    try:
        store.apply([CreateQueue(KEEP), CreateNamedQueue(OLD, "orders"), CreateQueue(DEAD)])
        store.apply([JoinGroup(DEAD, "d", GroupSettings(1000, 1, OLD, 10))])  # (uses OLD)
        store.apply([DeleteQueue(DEAD, force=True)])
        _fill(store, OLD, OLD)  # (its own dead-letter queue)
        store.apply([GroupNack(OLD, "g", "w", (1,), now_ms=22)])  # (moved into OLD itself)
        number = _number(store, OLD)
        assert store.apply([DeleteQueue(OLD, force=True, now_ms=23)])[0].__class__.__name__ == (
            "QueueDeleted"
        )
        assert _mentions(store, OLD, number) == []
        store.apply([CreateNamedQueue(NEW, "orders")])
        assert _number(store, NEW) == number
        assert _reads(store, NEW) == _fresh(tmp_path, "fresh", CreateNamedQueue(NEW, "orders"))
    finally:
        store.close()


def test_a_number_freed_below_the_largest_is_reused_cleanly_too(tmp_path, monkeypatch):
    """With the largest number taken (here the bound lowered to 3), a new queue takes the lowest
    free number: a deleted queue's in the middle, whose keys lie between two live queues'."""
    from trio_broker._storage import _schema

    monkeypatch.setattr(_schema, "MAX_QUEUE_NUMBER", 3)
    store = Store(tmp_path / "reused")
    try:
        store.apply([CreateQueue(KEEP), CreateQueue(OLD), CreateQueue(DEAD)])
        _fill(store, OLD, DEAD)
        store.apply([AppendBatch(q, (b"x",) * 3, None, None, 5) for q in (KEEP, DEAD)])
        store.apply([GroupNack(OLD, "g", "w", (1,), now_ms=22)])  # (one moved into DEAD)
        number = _number(store, OLD)
        assert number == 2
        store.apply([DeleteQueue(OLD, force=True, now_ms=23)])
        assert _mentions(store, OLD, number) == []
        store.apply([CreateQueue(NEW)])
        assert _number(store, NEW) == number
        assert _reads(store, NEW) == _fresh(tmp_path, "fresh", CreateQueue(NEW))
        assert store.messages(KEEP) == [b"x"] * 3
        assert store.messages(DEAD)[:3] == [b"x"] * 3 and len(store.messages(DEAD)) == 4
    finally:
        store.close()
