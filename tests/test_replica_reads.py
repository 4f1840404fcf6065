"""Byte-bounded READs applied where nobody waits for the answer (a replica; a leader applying
entries nobody waits for): ``_storage/_budget_reads.py``. The reader's position moves exactly
as on the leader, which reads, checks and answers, whatever the queue, the budget and the
headers; a damaged or missing value never moves it differently: the transaction is held for a
repair, as on the checking path (docs/reliability.md, "Byte-bounded reads applied for
nobody")."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_broker._core import QueueState
from trio_broker._core._commands import (
    AppendBatch,
    AppendMessage,
    ApplyRetention,
    CommandGroup,
    CreateQueue,
    GroupApplied,
    MessagesRead,
    ReadBatch,
    RetentionPolicy,
    Seek,
    SetRetention,
)
from trio_broker._core._raft_messages import Entry
from trio_broker._core._work_commands import (
    DeleteQueue,
    Delivered,
    Delivery,
    ForgetIdlePositions,
    Publish,
    ReadRecords,
    Record,
)
from trio_broker._storage import Store, _budget_reads
from trio_broker._storage._integrity import StorageDamaged, intact_rows, repair_rows
from trio_broker._storage._read_columns import Deliveries

QUEUES = ["Q-AAAAA00001", "Q-BBBBB00002"]
CLIENTS = ["C-AAAAA", "C-BBBBB"]

_queues = st.sampled_from(QUEUES)
_clients = st.sampled_from(CLIENTS)
# Sizes from empty to several budgets' worth, so budgets run out mid-way, at once, or never.
_data = st.binary(min_size=0, max_size=40)
_headers = st.lists(
    st.tuples(st.text(min_size=1, max_size=4), st.text(max_size=6)),
    max_size=2,
    unique_by=lambda h: h[0],
).map(lambda hs: tuple(sorted(hs)))
_budgets = st.integers(min_value=0, max_value=120)
_reads = st.one_of(
    st.builds(
        ReadBatch,
        client_id=_clients,
        queue_id=_queues,
        max_messages=st.integers(min_value=0, max_value=9),
        peek=st.booleans(),
        max_bytes=_budgets,
    ),
    st.builds(
        ReadRecords,
        client_id=_clients,
        queue_id=_queues,
        max_messages=st.integers(min_value=0, max_value=9),
        peek=st.booleans(),
        max_bytes=_budgets,
    ),
)
_single = st.one_of(
    _reads,
    _reads,
    _reads,
    st.builds(CreateQueue, queue_id=_queues),
    st.builds(lambda q, d, t: AppendMessage(q, d, None, None, t), _queues, _data, st.none()),
    st.builds(
        lambda q, d: AppendBatch(q, tuple(d)), _queues, st.lists(_data, min_size=1, max_size=6)
    ),
    # Messages with headers: a READ_RECORDS counts them towards its budget.
    st.builds(
        lambda q, rs: Publish(q, tuple(Record(d, h) for d, h in rs)),
        _queues,
        st.lists(st.tuples(_data, _headers), min_size=1, max_size=4),
    ),
    # Retention deleting the head: reads then start at the first retained message.
    st.builds(
        SetRetention,
        queue_id=_queues,
        policy=st.builds(
            RetentionPolicy, max_messages=st.none() | st.integers(min_value=0, max_value=4)
        ),
    ),
    st.builds(ApplyRetention, now_ms=st.integers(min_value=0, max_value=60)),
    # A queue deleted, then created again under its id with other values.
    st.builds(DeleteQueue, queue_id=_queues),
    # Idle forgetting: once it has started, every read marks its position's activity
    # (position_activity), on the replica's path as on the leader's.
    st.builds(
        ForgetIdlePositions,
        now_ms=st.integers(min_value=0, max_value=60),
        idle_ms=st.integers(min_value=1, max_value=30),
    ),
    # Positions anywhere, the end and past what retention kept included.
    st.builds(
        Seek, client_id=_clients, queue_id=_queues, next_sequence_num=st.none() | st.integers(1, 14)
    ),
)
_commands = _single | st.builds(
    lambda cs: CommandGroup(tuple(cs)), st.lists(_single, min_size=1, max_size=4)
)


def _for_nobody(result: Any) -> Any:
    """What a READ_RECORDS applied for nobody answers: the same messages, their bytes left
    empty and their headers out (a READ_BATCH's answer is the leader's)."""
    if isinstance(result, GroupApplied):
        return GroupApplied(tuple(_for_nobody(r) for r in result.results))
    if isinstance(result, Delivered):
        return Delivered(
            tuple(Delivery(d.sequence_num, b"", (), 1) for d in result.messages), result.in_flight
        )
    return result


_BOOKKEEPING = {"meta", "raft_log"}
"""Tables of the log and the store's own records, not of the state commands change."""


def _tables(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the commands change (position_activity, work_meta, the
    queues' rows and values included), each table's rows sorted."""
    db = store._db
    names = [
        name
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        if name not in _BOOKKEEPING
    ]
    assert "position_activity" in names and "queue_data" in names
    return {name: sorted(db.execute(f'SELECT * FROM "{name}"'), key=repr) for name in names}


def _count_budgeted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, bool]]:
    """Each byte-bounded read applied for nobody on an existing queue, and whether the new
    path applied it (True) or handed it to the checking path (False)."""
    taken: list[tuple[Any, bool]] = []
    real = _budget_reads.budgeted_read

    def counted(*args: Any) -> Any:
        found = real(*args)
        taken.append((args[1], found is not None))
        return found

    monkeypatch.setattr("trio_broker._storage._queue_sql.budgeted_read", counted)
    return taken


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.lists(_commands, min_size=1, max_size=8), min_size=1, max_size=8))
def test_a_byte_bounded_read_for_nobody_moves_as_on_the_leader(new_store_dir, monkeypatch, steps):
    """Random queues (values of 0 to 40 bytes, with and without headers), budgets from 0 (a
    single message larger than it) to more than the range, empty queues, positions at or past
    the end, retention's deleted head, peeks, idle forgetting: the replica's store (nobody
    waits) gives the leader's results (each READ_RECORDS' deliveries equal to the leader's
    tuple), positions, lengths and heads, and both the reference's (:class:`QueueState`);
    after every step every table of the two stores holds the same rows (position_activity,
    which each read marks once idle forgetting has started, included)."""
    taken = _count_budgeted(monkeypatch)
    model = QueueState()
    leader = Store(new_store_dir("leader"))
    replica = Store(new_store_dir("replica"))
    try:
        leader.hold_damage = True
        replica.hold_damage = replica.unchecked_reads = True
        index = 0
        for step in steps:
            entries = [Entry(1, index + k + 1, c) for k, c in enumerate(step)]
            index += len(step)
            expected = [model.apply(c) for c in step]
            assert leader.save(entries=entries, committed=entries) == expected
            got = replica.save(entries=entries, committed=entries)
            assert got == [_for_nobody(r) for r in expected]
            assert replica.unchecked_met == []
            assert replica.positions() == leader.positions() == model.positions
            assert replica.queue_lengths() == leader.queue_lengths()
            assert replica.first_retained() == leader.first_retained()
            assert _tables(replica) == _tables(leader)
        # Every read of an existing queue went by the new path but those refused (max_messages
        # 0 for a READ_RECORDS, which the checking path answers): none fell back on intact values.
        assert all(
            applied or (type(c) is ReadRecords and c.max_messages < 1) for c, applied in taken
        )
    finally:
        leader.close()
        replica.close()


def _filled(store: Store, queue: str, sizes: list[int]) -> None:
    store.apply([CreateQueue(queue), AppendBatch(queue, tuple(b"x" * n for n in sizes))])


@pytest.mark.parametrize(
    "damage",
    [
        # Longer: a store that sized values by their stored length would stop one message early.
        "UPDATE queue_data SET data = CAST(X'00' || data AS BLOB) WHERE sequence_num = 2",
        # Shorter: it would take one message more.
        "UPDATE queue_data SET data = substr(data, 2) WHERE sequence_num = 2",
        # Same length, other bytes: only the checksum tells.
        "UPDATE queue_data SET data = CAST(upper(data) AS BLOB) WHERE sequence_num = 2",
        "DELETE FROM queue_data WHERE sequence_num = 2",
    ],
    ids=["longer", "shorter", "same-length", "missing"],
)
@pytest.mark.parametrize("kind", [ReadBatch, ReadRecords])
def test_a_damaged_value_holds_the_read_for_nobody_until_repaired(tmp_path, damage, kind):
    """Values of 10 bytes, a budget of exactly three: the damaged second value (changed, or its
    row lost) fails the replica's transaction whole (held, as on the checking path: nothing of
    it kept), never a position that differs from the leader's; once repaired from the leader's
    intact copy, the same entries move the reader as on the leader."""
    queue = QUEUES[0]
    leader = Store(tmp_path / "leader")
    replica = Store(tmp_path / "replica")
    try:
        for store in (leader, replica):
            _filled(store, queue, [10] * 6)
        leader.hold_damage = True
        replica.hold_damage = replica.unchecked_reads = True
        replica._db.execute(damage)
        entries = [Entry(1, 3, kind(CLIENTS[0], queue, 5, max_bytes=30))]
        answered = leader.save(entries=entries, committed=entries)
        with pytest.raises(StorageDamaged) as found:
            replica.save(entries=entries, committed=entries)
        assert (found.value.queue_id, found.value.seq) == (queue, 2)
        assert replica.positions() == {}
        assert leader.positions() == {(CLIENTS[0], queue): 3}
        assert repair_rows(replica._db, queue, intact_rows(leader._db, queue, 1, 10, 1 << 20))
        got = replica.save(entries=entries, committed=entries)
        assert got == [_for_nobody(r) for r in answered]
        assert replica.positions() == leader.positions()
    finally:
        leader.close()
        replica.close()


def test_a_leader_waited_for_still_reads_and_checks_every_value(tmp_path, monkeypatch):
    """With someone waiting (``unchecked_reads`` off), a byte-bounded read never takes the path
    for nobody: the leader's answer path reads and checks every value it serves."""
    taken = _count_budgeted(monkeypatch)
    queue = QUEUES[0]
    store = Store(tmp_path)
    try:
        _filled(store, queue, [10] * 4)
        store.hold_damage, store.unchecked_reads = True, False
        store._db.execute("UPDATE queue_data SET data = substr(data, 2) WHERE sequence_num = 3")
        entries = [Entry(1, 3, ReadRecords(CLIENTS[0], queue, 4, max_bytes=100))]
        with pytest.raises(StorageDamaged):
            store.save(entries=entries, committed=entries)
        assert taken == [] and store.positions() == {}
    finally:
        store.close()


def test_deliveries_made_when_looked_at_equal_the_tuple():
    """A READ_RECORDS' deliveries for nobody: the tuple of the same deliveries (empty bytes, no
    headers) in every way something may look at them (length, truth, items, slices,
    iteration, equality both ways, hash)."""
    lazy = Deliveries(range(4, 6))
    made = (Delivery(4, b"", (), 1), Delivery(5, b"", (), 1))
    assert len(lazy) == 2 and bool(lazy) and not Deliveries(range(3, 3))
    assert lazy[1] == made[1] and lazy[-1] == made[1] and lazy[:1] == made[:1]
    assert tuple(lazy) == made and list(lazy) == list(made)
    assert Delivered(lazy) == Delivered(made) and Delivered(made) == Delivered(lazy)  # type: ignore[arg-type]
    assert Delivered(lazy, 1) != Delivered(made)  # type: ignore[arg-type]
    assert lazy != made[:1] and lazy != list(made)
    assert hash(Delivered(lazy)) == hash(Delivered(made))  # type: ignore[arg-type]
    assert MessagesRead(()) != Delivered(lazy)  # type: ignore[arg-type]


def test_a_queue_created_again_under_its_id_is_sized_from_its_new_values(tmp_path):
    """A queue deleted and created again under its id with values of other sizes: a replica's
    reader is moved by the new values' sizes, as on the leader."""
    queue = QUEUES[0]
    leader = Store(tmp_path / "leader")
    replica = Store(tmp_path / "replica")
    try:
        leader.hold_damage = True
        replica.hold_damage = replica.unchecked_reads = True
        history = [
            CreateQueue(queue),
            AppendBatch(queue, (b"x" * 10,) * 6),
            ReadRecords(CLIENTS[0], queue, 5, max_bytes=30),
            DeleteQueue(queue),
            CreateQueue(queue),
            AppendBatch(queue, (b"y" * 4,) * 6),
            ReadRecords(CLIENTS[0], queue, 5, max_bytes=30),
        ]
        for index, command in enumerate(history, 1):
            entries = [Entry(1, index, command)]
            answered = leader.save(entries=entries, committed=entries)
            assert replica.save(entries=entries, committed=entries) == [
                _for_nobody(r) for r in answered
            ]
        assert replica.positions() == leader.positions() == {(CLIENTS[0], queue): 5}
    finally:
        leader.close()
        replica.close()
