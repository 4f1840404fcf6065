"""The packed key at its edges (``_schema``, version 8): the queue with the largest number,
``MAX_QUEUE_NUMBER`` (2**19 - 1, whose keys end at 2**63 - 1, the largest rowid), and the
sequence numbers 1 and ``MAX_SEQUENCE``. Every read path, retention, the scrub, the repair
and DELETE_QUEUE find exactly that queue's rows there, and no neighbour's.

The largest number is reachable in practice, not only by creating half a million queues at
once: a new queue takes the largest live number plus one, so an application that rotates
queues (creates the next one, then deletes the previous) climbs one number per rotation and
reaches it (once a minute: within a year). Here the number is set by hand, as it would be then."""

from __future__ import annotations

import pytest

from trio_broker._core._commands import (
    AppendBatch,
    ApplyRetention,
    BatchAppended,
    CommandRejected,
    CreateQueue,
    MessageRead,
    MessagesRead,
    ReadBatch,
    ReadNext,
    RetentionPolicy,
    SetRetention,
)
from trio_broker._core._work_commands import (
    DeleteQueue,
    GroupRead,
    JoinGroup,
    Publish,
    Published,
    ReadRecords,
    Record,
)
from trio_broker._storage import StorageDamaged, Store
from trio_broker._storage._schema import MAX_QUEUE_NUMBER, MAX_SEQUENCE, QUEUE_SPAN

TOP, LOW, MID = "Q-TOP0000001", "Q-LOW0000001", "Q-MID0000001"


def _store(tmp_path, length: int = 0) -> Store:
    """Three queues: LOW (number 1), MID (MAX_QUEUE_NUMBER - 1) and TOP (MAX_QUEUE_NUMBER),
    each holding ``b"<id>-<seq>"`` for its sequence numbers ``length + 1 .. length + 5`` (the
    head before them deleted, as if retention had trimmed it)."""
    store = Store(tmp_path)
    store.apply([CreateQueue(LOW), CreateQueue(MID), CreateQueue(TOP)])
    for queue, number in ((MID, MAX_QUEUE_NUMBER - 1), (TOP, MAX_QUEUE_NUMBER)):
        store._db.execute("UPDATE queues SET queue_number = ? WHERE queue_id = ?", (number, queue))
    for queue in (LOW, MID, TOP):
        store._db.execute(
            "UPDATE queues SET length = ?1, deleted_through = ?1 WHERE queue_id = ?2",
            (length, queue),
        )
        values = tuple(b"%s-%d" % (queue.encode(), length + n) for n in range(1, 6))
        store.apply([AppendBatch(queue, values, None, None, 100)])
    return store


def _damage(store: Store, queue: str, seq: int) -> None:
    (number,) = store._db.execute(
        "SELECT queue_number FROM queues WHERE queue_id = ?", (queue,)
    ).fetchone()
    store._db.execute(
        "UPDATE queue_data SET data = x'00' WHERE key = ?", (number * QUEUE_SPAN + seq,)
    )


@pytest.mark.parametrize("length", [0, MAX_SEQUENCE - 5])
def test_the_scrub_finds_damage_in_the_queue_with_the_largest_number(tmp_path, length):
    """The scrub walks each queue's keys up to the next queue's first: for the largest number
    that bound is 2**63, past SQLite's integers (a shift there wraps to the smallest one, and
    no key is below it: the scrub saw none of that queue's rows)."""
    store = _store(tmp_path, length)
    try:
        assert store.damaged_values(("", 0), 100) == ([], None)
        for queue in (LOW, MID, TOP):
            _damage(store, queue, length + 1)
            _damage(store, queue, length + 5)
        found, _ = store.damaged_values(("", 0), 100)
        assert sorted(found) == sorted((q, length + s) for q in (LOW, MID, TOP) for s in (1, 5))
        # The scrub's steps, one value at a time, see the same.
        seen, after = [], ("", 0)
        for _ in range(100):
            found, step = store.damaged_values(after, 1)
            seen += found
            if step is None:
                break
            after = step
        assert sorted(seen) == sorted((q, length + s) for q in (LOW, MID, TOP) for s in (1, 5))
    finally:
        store.close()


@pytest.mark.parametrize("length", [0, MAX_SEQUENCE - 5])
def test_every_read_path_at_the_edges_reads_its_own_queue(tmp_path, length):
    """READ, READ_BATCH (and a peek), READ_RECORDS and a group read at a queue's first and
    last sequence numbers, for the lowest and the largest queue numbers, and once the head is
    trimmed (the first retained one), and on an emptied queue; repairs find the rows."""
    store = _store(tmp_path, length)
    try:
        for queue in (LOW, MID, TOP):
            want = [b"%s-%d" % (queue.encode(), length + n) for n in range(1, 6)]
            assert store.messages(queue) == want
            first, last = length + 1, length + 5
            assert store.apply([ReadNext("C-1", queue)]) == [MessageRead(first, want[0])]
            (batch,) = store.apply([ReadBatch("C-2", queue, 100, peek=True)])
            assert batch == MessagesRead(tuple(zip(range(first, last + 1), want, strict=True)))
            (records,) = store.apply([ReadRecords("C-3", queue, 100)])
            assert [d.sequence_num for d in records.messages] == list(range(first, last + 1))
            assert [d.data for d in records.messages] == want
            rows = store.intact_rows(queue, first, 100, 1 << 30)
            assert [r[1] for r in rows] == want
            assert store.intact_rows(queue, last + 1, 100, 1 << 30) == []
            # Retention trims the head to the last message; then the last one is read.
            store.apply([SetRetention(queue, RetentionPolicy(max_messages=1)), ApplyRetention(10)])
            assert store.messages(queue) == [want[-1]]
            assert store.apply([ReadNext("C-4", queue)]) == [MessageRead(last, want[-1])]
            _damage(store, queue, last)
            with pytest.raises(StorageDamaged, match=f"seq {last}"):
                store.messages(queue)
            assert store.repair_rows(queue, rows[-1:]) == [last]
            assert store.apply([ReadNext("C-5", queue)]) == [MessageRead(last, want[-1])]
            store.apply([JoinGroup(queue, "g")])
            (leased,) = store.apply([GroupRead(queue, "g", "w", 100, now_ms=1)])
            assert [(d.sequence_num, d.data) for d in leased.messages] == [(last, want[-1])]
            assert store.apply([ReadNext("C-5", queue)]) == [MessageRead(None, None)]
        # Deleting the largest-numbered queue deletes its rows, up to the largest key.
        store.apply([DeleteQueue(TOP, force=True)])
        (top_rows,) = store._db.execute(
            "SELECT count(*) FROM queue_data WHERE key >= ?", (MAX_QUEUE_NUMBER * QUEUE_SPAN,)
        ).fetchone()
        assert top_rows == 0
        assert store.messages(MID) == [b"%s-%d" % (MID.encode(), length + 5)]
        assert store.damaged_values(("", 0), 100) == ([], None)
    finally:
        store.close()


def test_a_producers_retry_into_a_full_queue_is_answered_as_the_duplicate_it_is(tmp_path):
    """A fenced producer's PUBLISH that filled the queue to its last sequence number, sent
    again (its answer lost): the retry is the duplicate it is, as for APPEND with a producer
    id, not a refusal saying nothing was stored (the producer would take its messages for
    lost, though stored). A new one past the bound is refused."""
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(TOP), CreateQueue(LOW)])
        for queue in (TOP, LOW):
            store._db.execute(
                "UPDATE queues SET length = ?1, deleted_through = ?1 WHERE queue_id = ?2",
                (MAX_SEQUENCE - 2, queue),
            )
        publish = Publish(TOP, (Record(b"a"), Record(b"b")), "P-1", 0, 1, 100)
        append = AppendBatch(LOW, (b"a", b"b"), "P-1", 1, 100)
        first = store.apply([publish, append])
        assert first == [Published(MAX_SEQUENCE - 1, 2), BatchAppended(MAX_SEQUENCE - 1, 2)]
        again = store.apply([publish, append])
        assert again == [
            Published(MAX_SEQUENCE - 1, 2, duplicate=True),
            BatchAppended(MAX_SEQUENCE - 1, 2, duplicate=True),
        ]
        refused = store.apply(
            [
                Publish(TOP, (Record(b"c"),), "P-1", 0, 2, 101),
                AppendBatch(LOW, (b"c",), "P-1", 2, 101),
            ]
        )
        for result in refused:
            assert isinstance(result, CommandRejected) and result.code == "BAD_REQUEST"
        assert store.messages(TOP) == [b"a", b"b"] and store.messages(LOW) == [b"a", b"b"]
    finally:
        store.close()
