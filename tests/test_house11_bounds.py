"""The mock clock's :class:`MemoryStore` at schema version 8's bounds, against the SQLite store
(``_storage/_schema.py``): 2**44 - 1 messages a queue (an append, batch, producer's append or
PUBLISH past it is ``BAD_REQUEST``, each command of a group decided alone; a dead-letter move
into a full queue waits), and ``MAX_QUEUE_NUMBER`` queues alive at once (CREATE_QUEUE and
CREATE_NAMED_QUEUE ``BAD_REQUEST``, numbers taken again once a queue is deleted).

Both stores are driven with the same commands from the same starting point, reached through
the seams that need no 2**44 rows: a queue's length set as if retention had deleted every
message (SQLite: ``length`` and ``deleted_through``; memory: ``state.deleted``), and
``_schema.MAX_QUEUE_NUMBER`` lowered (both read it when they create a queue). Every result
and the whole state after each step must be alike."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_broker._core._commands import (
    AppendBatch,
    AppendMessage,
    BatchAppended,
    Command,
    CommandGroup,
    CommandRejected,
    CreateQueue,
    MessageAppended,
    QueueCreated,
)
from trio_broker._core._raft_messages import Entry
from trio_broker._core._work_commands import (
    CreateNamedQueue,
    DeleteQueue,
    ExpireLeases,
    GroupNack,
    GroupRead,
    GroupSettings,
    JoinGroup,
    LeasesExpired,
    NamedQueue,
    Publish,
    Published,
    Record,
)
from trio_broker._storage import Store, _schema
from trio_broker._storage._schema import MAX_SEQUENCE
from trio_broker.testing import MemoryStore

from .test_storage import QUEUES
from .test_work_queues import _assert_work_matches, _mixed, _settings, small_limits

__all__ = ["small_limits"]  # (a fixture, used by name)

Q, DLQ, OTHER = QUEUES


class Twins:
    """A SQLite store and a memory store, each fed every command as a committed log entry
    (``save(committed=...)``, the runtime's path), their results compared one by one."""

    def __init__(self, path: Any) -> None:
        self.sqlite = Store(path)
        self.memory = MemoryStore("twin")
        self.index = 0

    def apply(self, *commands: Command) -> list[Any]:
        entries = []
        for command in commands:
            self.index += 1
            entries.append(Entry(1, self.index, command))
        got = self.sqlite.save(committed=entries)
        assert self.memory.save(committed=entries) == got
        return got

    def start_at(self, queue_id: str, length: int) -> None:
        """The queue as if ``length`` messages had been appended and retention had deleted
        every one (a queue just created: no message, position or group yet)."""
        self.sqlite._db.execute(
            "UPDATE queues SET length = ?1, deleted_through = ?1 WHERE queue_id = ?2",
            (length, queue_id),
        )
        assert not self.memory.state.messages[queue_id]
        self.memory.state.deleted[queue_id] = length

    def check(self) -> None:
        _assert_work_matches(self.sqlite, self.memory.state)
        assert self.memory.queue_lengths() == self.sqlite.queue_lengths()
        for queue_id in QUEUES:
            assert self.memory.messages(queue_id) == self.sqlite.messages(queue_id)


@pytest.fixture
def twins(tmp_path):
    made = Twins(tmp_path)
    yield made
    made.sqlite.close()


def _refused(result: Any, words: str) -> bool:
    return (
        isinstance(result, CommandRejected)
        and result.code == "BAD_REQUEST"
        and words in (result.message)
    )


PAST = f"{MAX_SEQUENCE} is the last sequence number"


@pytest.mark.parametrize("grouped", [False, True])
def test_appends_past_the_last_sequence_number_are_refused_alike(twins, grouped):
    """APPEND, APPEND_BATCH, a producer's append and PUBLISH, alone and in a group (whose
    commands the SQLite store applies as a run, then one by one when the run would cross):
    the ones that fit stored, each past the bound refused with the same words, nothing of it
    stored; a producer's retry into the full queue answered as the duplicate it is."""
    twins.apply(CreateQueue(Q), CreateQueue(DLQ))
    twins.start_at(Q, MAX_SEQUENCE - 2)
    twins.start_at(DLQ, MAX_SEQUENCE - 4)
    commands: list[Command] = [
        AppendMessage(Q, b"a", None, None, 100),
        AppendMessage(Q, b"b", "P-1", 1, 100),
        AppendMessage(Q, b"c", None, None, 101),
        AppendBatch(Q, (b"d", b"e"), None, None, 102),
        AppendMessage(Q, b"b", "P-1", 1, 103),  # (the retry: a duplicate, not refused)
        AppendMessage(Q, b"f", "P-1", 2, 103),
        Publish(Q, (Record(b"g", (("k", "v"),)),), appended_ms=104),
        AppendBatch(DLQ, (b"x", b"y"), None, None, 5),
        AppendBatch(DLQ, (b"x", b"y"), None, None, 5),
        AppendBatch(DLQ, (b"x", b"y"), None, None, 6),
        Publish(DLQ, (Record(b"z"),), "P-2", 0, 1, 7),
    ]
    if grouped:
        (group,) = twins.apply(CommandGroup(tuple(commands)))
        results = list(group.results)
    else:
        results = twins.apply(*commands)
    assert results[:2] == [MessageAppended(MAX_SEQUENCE - 1), MessageAppended(MAX_SEQUENCE)]
    assert all(_refused(r, PAST) for r in results[2:4])
    assert results[4] == MessageAppended(MAX_SEQUENCE, duplicate=True)
    assert all(_refused(r, PAST) for r in results[5:7])
    assert results[7:9] == [BatchAppended(MAX_SEQUENCE - 3, 2), BatchAppended(MAX_SEQUENCE - 1, 2)]
    assert all(_refused(r, PAST) for r in results[9:])
    twins.check()
    # A fenced producer that filled the queue, its PUBLISH sent again: the duplicate.
    twins.apply(CreateQueue(OTHER))
    twins.start_at(OTHER, MAX_SEQUENCE - 1)
    publish = Publish(OTHER, (Record(b"1"),), "P-3", 0, 1, 8)
    assert twins.apply(publish, publish) == [
        Published(MAX_SEQUENCE, 1),
        Published(MAX_SEQUENCE, 1, duplicate=True),
    ]
    assert _refused(twins.apply(Publish(OTHER, (Record(b"2"),), "P-3", 0, 2, 9))[0], PAST)
    twins.check()


def test_a_dead_letter_move_into_a_full_queue_waits_alike(twins):
    """Messages past their group's deliveries whose dead-letter queue is one short of its last
    sequence number: one command (EXPIRE_LEASES) ends three leases; the first moves and fills
    the queue, the others wait in their group, redelivered as if under their limit."""
    twins.apply(CreateQueue(Q), CreateQueue(DLQ))
    twins.start_at(DLQ, MAX_SEQUENCE - 1)
    twins.apply(
        AppendBatch(Q, (b"1", b"2", b"3"), None, None, 1),
        JoinGroup(Q, "g", GroupSettings(10, 1, DLQ, 10)),
        GroupRead(Q, "g", "w", 3, now_ms=10),
    )
    assert twins.apply(ExpireLeases(now_ms=20)) == [LeasesExpired(3, 1)]
    assert twins.memory.messages(DLQ) == [b"1"]
    twins.check()
    # Redelivered; a NACK now waits as well (its move decided on the queue's length).
    (read,) = twins.apply(GroupRead(Q, "g", "w", 3, now_ms=30))
    assert [d.sequence_num for d in read.messages] == [2, 3]
    (nacked,) = twins.apply(GroupNack(Q, "g", "w", (2, 3), now_ms=40))
    assert nacked.dead_lettered == () and nacked.changed == (2, 3)
    twins.check()


def test_queue_creation_with_every_number_taken_is_refused_alike(twins, monkeypatch):
    """With as many queues as numbers, CREATE_QUEUE and CREATE_NAMED_QUEUE are refused with the
    same words (after the checks that come first: an existing id or name, a bad policy); a
    deleted queue's room is taken again."""
    monkeypatch.setattr(_schema, "MAX_QUEUE_NUMBER", 2)
    assert twins.apply(CreateQueue(Q), CreateNamedQueue(DLQ, "dead")) == [
        QueueCreated(Q),
        NamedQueue(DLQ, "dead", created=True),
    ]
    results = twins.apply(
        CreateQueue(OTHER),
        CreateNamedQueue(OTHER, "other"),
        CreateQueue(Q),  # (exists: that answer, not the bound's)
        CreateNamedQueue(OTHER, "dead"),  # (the name exists: the queue it names)
        CreateNamedQueue(OTHER, ""),  # (a bad name: that answer)
    )
    assert all(_refused(r, "queues exist") for r in results[:2])
    assert results[2].code == "QUEUE_EXISTS"
    assert results[3] == NamedQueue(DLQ, "dead", created=False)
    assert isinstance(results[4], CommandRejected) and "queues exist" not in results[4].message
    twins.check()
    _, created, refused = twins.apply(
        DeleteQueue(Q), CreateNamedQueue(OTHER, "other"), CreateQueue(Q)
    )
    assert created == NamedQueue(OTHER, "other", created=True)
    assert _refused(refused, "queues exist")
    assert twins.apply(AppendBatch(OTHER, (b"1",), None, None, 1)) == [BatchAppended(1, 1)]
    twins.check()


_lengths = st.sampled_from([0, 0, MAX_SEQUENCE - 3, MAX_SEQUENCE - 1, MAX_SEQUENCE])


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(st.lists(_mixed, min_size=1, max_size=8), min_size=1, max_size=6),
    lengths=st.tuples(_lengths, _lengths, _lengths),
    group=_settings,
)
def test_both_stores_agree_on_work_queue_histories_at_the_bounds(
    ram_path_factory, small_limits, monkeypatch, steps, lengths, group
):
    """Any history of the work-queue tests' commands (appends, batches, producers, PUBLISH,
    group reads, NACKs, expiries, dead letters, deletes and creates, groups of them), the
    queues started at or near their last sequence number, at most two queues alive."""
    monkeypatch.setattr(_schema, "MAX_QUEUE_NUMBER", 2)
    twins = Twins(ram_path_factory.mktemp("bounds"))
    try:
        twins.apply(CreateQueue(Q), CreateQueue(DLQ))
        for queue_id, length in zip((Q, DLQ), lengths, strict=False):
            twins.start_at(queue_id, length)
        twins.apply(JoinGroup(Q, "g1", group))
        for step in steps:
            twins.apply(*step)
            twins.check()
    finally:
        twins.sqlite.close()
