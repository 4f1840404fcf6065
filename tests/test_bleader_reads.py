"""Batched READs (``READ_RECORDS``) on the leader read, check and answer their values as
columns (``_storage/_read_columns.py``): the same results, answer frames and positions as the
checking path that makes an object per message, whatever the budget and the headers; a value
missing or damaged is never served: the checking path finds it and raises it, nothing written
GROUP_READs read the messages never delivered to their group the same way, on the leader and
applied for nobody (docs/performance-history.md, "Batched READs on the leader: columns instead of
objects")."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_broker._core import QueueState
from trio_broker._core._commands import (
    AppendBatch,
    CommandGroup,
    CreateQueue,
    GroupApplied,
    Seek,
)
from trio_broker._core._raft_messages import Entry
from trio_broker._core._work_commands import (
    Delivered,
    Delivery,
    GroupNack,
    GroupRead,
    GroupSettings,
    JoinGroup,
    Publish,
    ReadRecords,
    Record,
)
from trio_broker._protocol._codec import columns_frame, messages_frame
from trio_broker._runtime._runs import read_frame
from trio_broker._storage import Store, _budget_reads, _work_sql
from trio_broker._storage._integrity import StorageDamaged
from trio_broker._storage._read_columns import Deliveries

QUEUE = "Q-AAAAA00001"
CLIENTS = ["C-AAAAA", "C-BBBBB"]

# Stored values are JSON bytes, embedded as they are in the answer's frame.
_data = st.integers(min_value=0, max_value=30).map(lambda n: b'"' + b"v" * n + b'"')
_headers = st.lists(
    st.tuples(st.text(min_size=1, max_size=4), st.text(max_size=6)),
    max_size=2,
    unique_by=lambda h: h[0],
).map(lambda hs: tuple(sorted(hs)))
_read = st.builds(
    ReadRecords,
    client_id=st.sampled_from(CLIENTS),
    queue_id=st.just(QUEUE),
    max_messages=st.integers(min_value=0, max_value=9),
    peek=st.booleans(),
    max_bytes=st.one_of(st.integers(min_value=0, max_value=120), st.just(1 << 62)),
)
_single = st.one_of(
    _read,
    _read,
    _read,
    st.builds(lambda d: AppendBatch(QUEUE, tuple(d)), st.lists(_data, min_size=1, max_size=6)),
    st.builds(
        lambda rs: Publish(QUEUE, tuple(Record(d, h) for d, h in rs)),
        st.lists(st.tuples(_data, _headers), min_size=1, max_size=4),
    ),
    st.builds(
        Seek,
        client_id=st.sampled_from(CLIENTS),
        queue_id=st.just(QUEUE),
        next_sequence_num=st.none() | st.integers(1, 14),
    ),
)
_commands = _single | st.builds(
    lambda cs: CommandGroup(tuple(cs)), st.lists(_single, min_size=1, max_size=3)
)


def _results(result: Any) -> list[Any]:
    if isinstance(result, GroupApplied):
        return [r for inner in result.results for r in _results(inner)]
    return [result]


def _objects_path(monkeypatch: pytest.MonkeyPatch, store: Store) -> list[bool]:
    """``store`` reads by the checking path (one object per message), as before; every read
    of the others' is noted: True when it was answered as columns."""
    columns: list[bool] = []
    real = _work_sql.intact_columns

    def chosen(db: Any, *args: Any) -> Any:
        if db is store._db:
            return None
        found = real(db, *args)
        columns.append(found is not None)
        return found

    monkeypatch.setattr(_work_sql, "intact_columns", chosen)
    return columns


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.lists(_commands, min_size=1, max_size=6), min_size=1, max_size=6))
def test_a_batched_read_answered_as_columns_is_the_checking_paths(
    new_store_dir, monkeypatch, steps
):
    """Values of several sizes with and without headers, budgets from 0 to none, peeks, seeks
    anywhere: the leader answering as columns gives the checking path's results, the same
    answer frame to the byte, the same positions, and both the reference's."""
    model = QueueState()
    columns = Store(new_store_dir("columns"))
    objects = Store(new_store_dir("objects"))
    taken = _objects_path(monkeypatch, objects)
    try:
        for store in (columns, objects):
            store.hold_damage = True
        setup = [Entry(1, 1, CreateQueue(QUEUE))]
        for store in (columns, objects):
            store.save(entries=setup, committed=setup)
        model.apply(CreateQueue(QUEUE))
        index = 1
        for step in steps:
            entries = [Entry(1, index + k + 1, c) for k, c in enumerate(step)]
            index += len(step)
            expected = [model.apply(c) for c in step]
            got = columns.save(entries=entries, committed=entries)
            before = objects.save(entries=entries, committed=entries)
            assert got == before == expected
            for mine, theirs in zip(
                [r for g in got for r in _results(g)],
                [r for b in before for r in _results(b)],
                strict=True,
            ):
                if type(theirs) is Delivered:
                    assert type(mine.messages) is Deliveries
                    assert type(theirs.messages) is tuple
                    assert read_frame(mine) == read_frame(theirs)
                    assert read_frame(mine) == messages_frame(theirs.messages)
            assert columns.positions() == objects.positions() == model.positions
        assert all(taken)  # (every read of the columns' store was answered as columns)
    finally:
        columns.close()
        objects.close()


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE queue_data SET data = CAST(X'00' || data AS BLOB) WHERE sequence_num = 2",
        "UPDATE queue_data SET data = substr(data, 2) WHERE sequence_num = 2",
        "UPDATE queue_data SET data = CAST(upper(data) AS BLOB) WHERE sequence_num = 2",
        'UPDATE queue_data SET headers = \'{"k":"w"}\' WHERE sequence_num = 2',
        "DELETE FROM queue_data WHERE sequence_num = 2",
    ],
    ids=["longer", "shorter", "same-length", "headers", "missing"],
)
def test_a_damaged_value_is_never_served_by_a_batched_read(tmp_path, damage):
    """A damaged or missing second value: the leader's batched read raises the damage for it
    (the transaction held for a repair), serves nothing and moves no reader."""
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(QUEUE), AppendBatch(QUEUE, (b'"abcdef"',) * 4)])
        store.hold_damage = True
        store._db.execute(damage)
        entries = [Entry(1, 3, ReadRecords(CLIENTS[0], QUEUE, 4, max_bytes=1000))]
        with pytest.raises(StorageDamaged) as found:
            store.save(entries=entries, committed=entries)
        assert (found.value.queue_id, found.value.seq) == (QUEUE, 2)
        assert store.positions() == {}
    finally:
        store.close()


def test_deliveries_as_columns_equal_the_tuple_and_write_its_frame():
    """Deliveries held as columns (bytes, some headers) are the tuple of the same deliveries in
    every way something may look at them, and their frame is the tuple's, to the byte."""
    headers: tuple[Any, ...] = ((), (("a", "1"), ("b", "x")), ())
    lazy = Deliveries(range(7, 10), (b'"x"', b"[1]", b"{}"), headers)
    made = tuple(
        Delivery(s, d, h, 1) for s, d, h in zip(range(7, 10), lazy.datas, headers, strict=True)
    )
    assert len(lazy) == 3 and lazy[1] == made[1] and lazy[-1] == made[-1]
    assert lazy[1:] == made[1:] and tuple(lazy) == made and list(lazy) == list(made)
    assert Delivered(lazy) == Delivered(made) and Delivered(made) == Delivered(lazy)  # type: ignore[arg-type]
    assert hash(Delivered(lazy)) == hash(Delivered(made))  # type: ignore[arg-type]
    assert read_frame(Delivered(lazy)) == messages_frame(made)  # type: ignore[arg-type]
    plain = Deliveries(range(7, 9), (b'"x"', b"[1]"))
    assert read_frame(Delivered(plain)) == messages_frame(tuple(plain))  # type: ignore[arg-type]
    assert columns_frame(range(3, 3), (), None) == messages_frame(())
    with pytest.raises(ValueError):
        columns_frame(range(1, 3), (b"1",), None)  # (columns of different lengths)


_member = st.sampled_from(["m-a", "m-b"])
_now = st.integers(min_value=0, max_value=200)
_group_step = st.one_of(
    st.builds(
        GroupRead,
        queue_id=st.just(QUEUE),
        group=st.just("g"),
        member=_member,
        max_messages=st.integers(min_value=1, max_value=9),
        now_ms=_now,
        max_bytes=st.one_of(st.integers(min_value=0, max_value=120), st.just(1 << 62)),
    ),
    st.builds(
        GroupNack,
        queue_id=st.just(QUEUE),
        group=st.just("g"),
        member=_member,
        sequence_nums=st.lists(st.integers(1, 12), min_size=1, max_size=3, unique=True).map(tuple),
        now_ms=_now,
    ),
    st.builds(lambda d: AppendBatch(QUEUE, tuple(d)), st.lists(_data, min_size=1, max_size=6)),
    st.builds(
        lambda rs: Publish(QUEUE, tuple(Record(d, h) for d, h in rs)),
        st.lists(st.tuples(_data, _headers), min_size=1, max_size=4),
    ),
)


def _for_nobody(result: Any) -> Any:
    """What a group read applied for nobody answers: the same leases, without their bytes and
    headers."""
    if isinstance(result, GroupApplied):
        return GroupApplied(tuple(_for_nobody(r) for r in result.results))
    if isinstance(result, Delivered):
        return Delivered(
            tuple(Delivery(d.sequence_num, b"", (), d.delivery_count) for d in result.messages),
            result.in_flight,
        )
    return result


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(st.lists(_group_step, min_size=1, max_size=6), min_size=1, max_size=6),
    in_flight=st.integers(min_value=1, max_value=8),
)
def test_a_group_read_of_new_messages_as_columns_is_the_checking_paths(
    new_store_dir, monkeypatch, steps, in_flight
):
    """GROUP_READs (budgets from 0 to none, headers or not, redeliveries after NACKs and
    expired leases first, a bounded number in flight) reading the new messages as columns give
    the per-message path's results and the reference's on a leader, and applied for nobody
    (new messages sized from checked bytes, kept per connection) the same leases without their
    bytes."""
    model = QueueState()
    columns = Store(new_store_dir("columns"))
    objects = Store(new_store_dir("objects"))
    nobody = Store(new_store_dir("nobody"))
    taken = _objects_path(monkeypatch, objects)
    sized: list[bool] = []
    real_sizes = _budget_reads.checked_sizes

    def sizes(*args: Any) -> Any:
        found = real_sizes(*args)
        sized.append(found is not None)
        return found

    monkeypatch.setattr("trio_broker._storage._queue_sql.checked_sizes", sizes)
    stores = (columns, objects, nobody)
    try:
        for store in stores:
            store.hold_damage = True
        nobody.unchecked_reads = True
        setup = [
            CreateQueue(QUEUE),
            JoinGroup(QUEUE, "g", GroupSettings(100, None, None, in_flight)),
            AppendBatch(QUEUE, (b'"first"', b"[2]")),
        ]
        entries = [Entry(1, k + 1, c) for k, c in enumerate(setup)]
        for store in stores:
            store.save(entries=entries, committed=entries)
        for command in setup:
            model.apply(command)
        index = len(setup)
        first = [GroupRead(QUEUE, "g", "m-a", 2, now_ms=0, max_bytes=10)]
        for step in [first, *steps]:
            entries = [Entry(1, index + k + 1, c) for k, c in enumerate(step)]
            index += len(step)
            expected = [model.apply(c) for c in step]
            assert objects.save(entries=entries, committed=entries) == expected
            assert columns.save(entries=entries, committed=entries) == expected
            assert nobody.save(entries=entries, committed=entries) == [
                _for_nobody(r) for r in expected
            ]
        assert taken and all(taken)  # (the new messages of the others read as columns)
        assert sized and all(sized)  # (and sized so where nobody waits)
        pending = "SELECT * FROM group_pending ORDER BY sequence_num"
        cursor = "SELECT cursor FROM consumer_groups"
        for query in (pending, cursor):
            found = [list(store._db.execute(query)) for store in stores]
            assert found[0] == found[1] == found[2]
    finally:
        for store in stores:
            store.close()


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE queue_data SET data = substr(data, 2) WHERE sequence_num = 2",
        "UPDATE queue_data SET data = CAST(upper(data) AS BLOB) WHERE sequence_num = 2",
        'UPDATE queue_data SET headers = \'{"k":"w"}\' WHERE sequence_num = 2',
        "DELETE FROM queue_data WHERE sequence_num = 2",
    ],
    ids=["shorter", "same-length", "headers", "missing"],
)
@pytest.mark.parametrize("for_nobody", [False, True], ids=["leader", "nobody"])
def test_a_damaged_value_is_never_leased_by_a_group_read(tmp_path, damage, for_nobody):
    """A damaged or missing second value: the group read, on a leader or applied for nobody,
    raises the damage for it (held for a repair), leases nothing and leaves the group's cursor
    where it was (a missing row is never skipped: the queue holds every message after its
    deleted front)."""
    store = Store(tmp_path)
    try:
        store.apply(
            [CreateQueue(QUEUE), AppendBatch(QUEUE, (b'"abcdef"',) * 4), JoinGroup(QUEUE, "g")]
        )
        store.hold_damage = True
        store.unchecked_reads = for_nobody
        store._db.execute(damage)
        entries = [Entry(1, 4, GroupRead(QUEUE, "g", "m-a", 4, now_ms=0, max_bytes=1000))]
        with pytest.raises(StorageDamaged) as found:
            store.save(entries=entries, committed=entries)
        assert (found.value.queue_id, found.value.seq) == (QUEUE, 2)
        assert list(store._db.execute("SELECT * FROM group_pending")) == []
        assert list(store._db.execute("SELECT cursor FROM consumer_groups")) == [(0,)]
    finally:
        store.close()


@pytest.mark.parametrize("redelivery", [False, True], ids=["new", "redelivery"])
def test_a_missing_value_is_never_skipped_by_a_group_read(tmp_path, redelivery):
    """A missing row among the messages a group read hands out (new ones, or ones waiting for
    a redelivery after a NACK): on a leader it raises the damage for its sequence number;
    applied for nobody without a byte budget (the outcome does not depend on the values), it
    reads as empty bytes, is noted for a repair, and the group leases what the leader that
    holds the row leases."""
    stores = {name: Store(tmp_path / name) for name in ("whole", "leader", "nobody")}
    try:
        for name, store in stores.items():
            store.apply(
                [
                    CreateQueue(QUEUE),
                    AppendBatch(QUEUE, (b'"abcdef"',) * 4),
                    JoinGroup(QUEUE, "g"),
                ]
            )
            if redelivery:
                store.apply(
                    [
                        GroupRead(QUEUE, "g", "m-a", 4, now_ms=0),
                        GroupNack(QUEUE, "g", "m-a", (1, 2, 3, 4), now_ms=0),
                    ]
                )
            store.hold_damage = True
            store.unchecked_reads = name == "nobody"
            if name != "whole":
                store._db.execute("DELETE FROM queue_data WHERE sequence_num = 2")
        entries = [Entry(1, 4, GroupRead(QUEUE, "g", "m-b", 4, now_ms=1))]
        with pytest.raises(StorageDamaged) as found:
            stores["leader"].save(entries=entries, committed=entries)
        assert (found.value.queue_id, found.value.seq) == (QUEUE, 2)
        (whole,) = stores["whole"].save(entries=entries, committed=entries)
        (nobody,) = stores["nobody"].save(entries=entries, committed=entries)
        assert [d.sequence_num for d in whole.messages] == [1, 2, 3, 4]
        assert [(d.sequence_num, d.delivery_count) for d in nobody.messages] == [
            (d.sequence_num, d.delivery_count) for d in whole.messages
        ]
        assert stores["nobody"].unchecked_met == [(QUEUE, 2)]
        for query in ("SELECT * FROM group_pending ORDER BY 3", "SELECT * FROM consumer_groups"):
            held = list(stores["whole"]._db.execute(query))
            assert list(stores["nobody"]._db.execute(query)) == held
    finally:
        for store in stores.values():
            store.close()


DEAD = "Q-DEAD000001"


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE queue_data SET data = substr(data, 2) WHERE queue_number = (SELECT queue_number"
        " FROM queues WHERE queue_id = ?) AND sequence_num = 2",
        "DELETE FROM queue_data WHERE queue_number = (SELECT queue_number"
        " FROM queues WHERE queue_id = ?) AND sequence_num = 2",
    ],
    ids=["shorter", "missing"],
)
@pytest.mark.parametrize("end", ["expired", "nack"])
@pytest.mark.parametrize("for_nobody", [False, True], ids=["leader", "nobody"])
def test_a_damaged_value_is_never_moved_to_a_dead_letter_queue(tmp_path, damage, end, for_nobody):
    """A message past its last delivery, its value damaged or its row missing: the lease's
    end (expired, met by a group read without a byte budget, which applied for nobody
    goes over damaged values it only hands out; or a NACK) raises the damage for it (held
    for a repair) and copies nothing: never empty bytes into the dead-letter queue, and a
    missing row after the deleted front is never taken as deleted by retention."""
    store = Store(tmp_path)
    try:
        settings = GroupSettings(visibility_ms=10, max_deliveries=1, dead_letter_queue=DEAD)
        store.apply(
            [
                CreateQueue(QUEUE),
                CreateQueue(DEAD),
                AppendBatch(QUEUE, (b'"abcdef"',) * 2),
                JoinGroup(QUEUE, "g", settings),
                GroupRead(QUEUE, "g", "m-a", 2, now_ms=0),
            ]
        )
        store.hold_damage = True
        store.unchecked_reads = for_nobody
        store._db.execute(damage, (QUEUE,))
        command: Any = (
            GroupRead(QUEUE, "g", "m-b", 2, now_ms=100)
            if end == "expired"
            else GroupNack(QUEUE, "g", "m-a", (1, 2), now_ms=1)
        )
        pending = list(store._db.execute("SELECT * FROM group_pending"))
        entries = [Entry(1, 6, command)]
        with pytest.raises(StorageDamaged) as found:
            store.save(entries=entries, committed=entries)
        assert (found.value.queue_id, found.value.seq) == (QUEUE, 2)
        assert (
            list(
                store._db.execute(
                    "SELECT * FROM queue_data WHERE queue_number = (SELECT queue_number"
                    " FROM queues WHERE queue_id = ?)",
                    (DEAD,),
                )
            )
            == []
        )
        assert list(store._db.execute("SELECT * FROM group_pending")) == pending
    finally:
        store.close()
