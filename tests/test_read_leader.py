"""A READ applied on the leader, for someone who waits for the answer (``_storage/_queue_sql``'s
read branch, ``_storage/_integrity.read_values``): the reference's results
(:class:`QueueState`), every value read checked, a damaged one never served, in as few
statements as docs/performance.md ("A single READ on the leader") counts."""

from __future__ import annotations

from typing import Any

import apsw
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_broker._core import QueueState
from trio_broker._core._commands import (
    AppendBatch,
    CommandGroup,
    CommandRejected,
    CreateQueue,
    GroupApplied,
    MessageRead,
    ReadNext,
    Seek,
)
from trio_broker._core._raft_messages import Entry
from trio_broker._storage import Store
from trio_broker._storage._integrity import (
    _READ_DATA,
    _READ_VALUES,
    StorageDamaged,
    read_data,
    read_values,
    value_checksum,
)
from trio_broker._storage._queue_sql import apply_command

QUEUE = "Q-AAAAA00001"
READER = "C-AAAAA"


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


def test_read_values_query_takes_the_key_order_without_a_sort(tmp_path):
    """The plan that lets the query leave out ``ORDER BY``: a range of the rows' packed keys
    (the table's rowid, schema version 8), no temporary B-tree."""
    store = Store(tmp_path)
    try:
        plan = " ".join(
            row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + _READ_VALUES, (QUEUE, 1, 2))
        )
        assert "SEARCH queue_data USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan
        assert "TEMP B-TREE" not in plan
    finally:
        store.close()


def _count_statements(store: Store) -> list[str]:
    """Every statement the store's connection runs from now on (apsw's exec tracer)."""
    seen: list[str] = []

    def tracer(cursor: Any, sql: str, bindings: Any) -> bool:
        seen.append(sql)
        return True

    store._db.exec_trace = tracer
    return seen


def _with_headers(store: Store, seq: int, headers: str) -> None:
    """Message ``seq`` given headers, intact (its checksum recomputed), as work-queue
    appends store them."""
    (data,) = store._db.execute(
        "SELECT data FROM queue_data WHERE queue_number = (SELECT queue_number"
        " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
        (QUEUE, seq),
    ).fetchone()
    checksum = value_checksum(QUEUE, seq, data, headers)
    store._db.execute(
        "UPDATE queue_data SET headers = ?, checksum = ? WHERE queue_number = (SELECT queue_number"
        " FROM queues WHERE queue_id = ?) AND sequence_num = ?",
        (headers, checksum, QUEUE, seq),
    )


def _damage(store: Store, seq: int, sql: str) -> None:
    store._db.execute(
        sql + " WHERE queue_number = (SELECT queue_number FROM queues WHERE queue_id = ?)"
        " AND sequence_num = ?",
        (QUEUE, seq),
    )


def test_a_single_read_is_three_statements_for_the_leader_and_two_for_nobody(tmp_path):
    """The leader answering someone: the position ``SELECT``, the value sought by its key, the
    position's upsert; applied for nobody (a replica): no value read."""
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(QUEUE), AppendBatch(QUEUE, (b"one", b"two"))])
        db = store._db
        with db:
            seen = _count_statements(store)
            assert apply_command(db, ReadNext(READER, QUEUE), hold=True) == MessageRead(1, b"one")
            assert len(seen) == 3
            assert [s for s in seen if "FROM queue_data" in s] == [_READ_DATA]
            seen.clear()
            got = apply_command(db, ReadNext(READER, QUEUE), hold=True, unchecked=[])
            assert got == MessageRead(2, b"")
            assert len(seen) == 2 and not [s for s in seen if "queue_data" in s]
            seen.clear()
            assert apply_command(db, ReadNext(READER, QUEUE), hold=True) == MessageRead(None, None)
            assert len(seen) == 1  # (nothing left to read: the position stays)
        assert store.positions() == {(READER, QUEUE): 2}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("damage", "found"),
    [
        ("UPDATE queue_data SET data = CAST(X'00' || data AS BLOB)", "does not match"),
        ('UPDATE queue_data SET headers = \'{"k": "w"}\'', "does not match"),
        ("UPDATE queue_data SET checksum = checksum + 1", "does not match"),
        ("UPDATE queue_data SET key = key - sequence_num + 9", "is missing"),
        ("DELETE FROM queue_data", "is missing"),
    ],
)
def test_a_single_read_never_serves_a_damaged_value(tmp_path, damage, found):
    """Bytes, headers or checksum changed, the row moved or gone: the leader's READ raises
    (``hold``: the broker repairs it from a peer) or, alone, answers UNAVAILABLE and moves
    nothing; the next READ past the damage still reads."""
    store = Store(tmp_path)
    try:
        store.apply(
            [
                CreateQueue(QUEUE),
                AppendBatch(QUEUE, (b"one", b"two")),
            ]
        )
        _with_headers(store, 1, '{"k": "v"}')
        _damage(store, 1, damage)
        db = store._db
        with pytest.raises(StorageDamaged) as raised:
            apply_command(db, ReadNext(READER, QUEUE), hold=True)
        assert (raised.value.queue_id, raised.value.seq) == (QUEUE, 1)
        assert found in str(raised.value)
        answer = apply_command(db, ReadNext(READER, QUEUE))
        assert answer.code == "UNAVAILABLE" and "seq 1" in answer.message
        assert store.positions() == {}
        apply_command(db, Seek(READER, QUEUE, 2))
        assert apply_command(db, ReadNext(READER, QUEUE)) == MessageRead(2, b"two")
    finally:
        store.close()


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.tuples(st.binary(max_size=6), st.none() | st.text(max_size=5)),
        min_size=1,
        max_size=6,
    ),
    damaged=st.sets(st.integers(1, 6)),
)
def test_read_data_checks_as_read_values_does(new_store_dir, values, damaged):
    """For every stored message, intact or not, :func:`read_data` gives the bytes
    :func:`read_values` gives, or refuses it with the same damage."""
    store = Store(new_store_dir("store"))
    try:
        store.apply([CreateQueue(QUEUE), AppendBatch(QUEUE, tuple(d for d, _ in values))])
        for seq, (_, headers) in enumerate(values, 1):
            if headers is not None:
                _with_headers(store, seq, headers)
        for seq in damaged:
            _damage(store, seq, "UPDATE queue_data SET data = CAST(X'00' || data AS BLOB)")
        for seq in range(1, len(values) + 1):
            try:
                expected: Any = read_values(store._db, QUEUE, seq, seq)[0][1]
            except StorageDamaged as exc:
                expected = (exc.found, exc.seq)
            try:
                got: Any = read_data(store._db, QUEUE, seq)
            except StorageDamaged as exc:
                got = (exc.found, exc.seq)
            assert got == expected
            assert isinstance(got, bytes) == (seq not in damaged)
    finally:
        store.close()


def test_a_run_of_one_readers_reads_in_a_group_is_three_statements(tmp_path):
    """One receive's pipelined READs (one client, one queue, one after another in a group):
    three statements for the run on the leader, two where nobody waits, the answers those of
    the READs one by one, past the queue's end too."""
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(QUEUE), AppendBatch(QUEUE, (b"a", b"b", b"c", b"d", b"e"))])
        db = store._db
        run = CommandGroup(tuple(ReadNext(READER, QUEUE) for _ in range(4)))
        with db:
            seen = _count_statements(store)
            got = apply_command(db, run, hold=True)
            assert got == GroupApplied(
                tuple(MessageRead(n, v) for n, v in enumerate((b"a", b"b", b"c", b"d"), 1))
            )
            assert len(seen) == 3
            seen.clear()
            got = apply_command(db, run, hold=True, unchecked=[])
            assert got == GroupApplied((MessageRead(5, b""),) + (MessageRead(None, None),) * 3)
            assert len(seen) == 2 and not [s for s in seen if "queue_data" in s]
        assert store.positions() == {(READER, QUEUE): 5}
    finally:
        store.close()


def _placeless(store: Store, results: tuple[Any, ...]) -> tuple[Any, ...]:
    """``results`` with the store's file name left out of damage answers (two stores)."""
    name = store._db.filename
    return tuple(
        attrs.evolve(r, message=r.message.replace(name, "FILE"))
        if isinstance(r, CommandRejected)
        else r
        for r in results
    )


_group_reads = st.lists(
    st.builds(ReadNext, client_id=st.sampled_from([READER, "C-BBBBB"]), queue_id=st.just(QUEUE))
    | st.builds(
        Seek,
        client_id=st.just(READER),
        queue_id=st.just(QUEUE),
        next_sequence_num=st.integers(1, 7),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    groups=st.lists(_group_reads, min_size=1, max_size=4),
    damaged=st.sets(st.integers(1, 6), max_size=2),
    hold=st.booleans(),
    sweeping=st.booleans(),
)
def test_reads_in_a_group_answer_and_move_as_one_by_one(
    new_store_dir, groups, damaged, hold, sweeping
):
    """A group's READs (runs of one reader among others, SEEKs between) against the same
    commands each in an entry of its own, on a store whose values may be damaged: the same
    answers (a damaged value never served: UNAVAILABLE alone, raised with ``hold``), the same
    positions and position marks; without damage, the reference's answers."""
    stores = [Store(new_store_dir(name)) for name in ("grouped", "alone")]
    model = QueueState()
    try:
        setup = [CreateQueue(QUEUE), AppendBatch(QUEUE, tuple(b"v%d" % n for n in range(6)))]
        for command in setup:
            model.apply(command)
        for store in stores:
            store.apply(setup)
            if sweeping:
                store._db.execute("INSERT INTO work_meta (key, value) VALUES ('sweep_ms', '0')")
            for seq in damaged:
                _damage(store, seq, "UPDATE queue_data SET data = CAST(X'00' || data AS BLOB)")
            store.hold_damage = hold
        grouped, alone = stores
        index = 0
        for commands in groups:
            index += 1
            entry = Entry(1, index, CommandGroup(tuple(commands)))
            entries = [Entry(1, index + k, c) for k, c in enumerate(commands)]
            index += len(commands)
            try:
                got: Any = grouped.save(entries=[entry], committed=[entry])[0].results
                got = _placeless(grouped, got)
            except StorageDamaged as exc:
                got = exc.seq
            try:
                expected: Any = tuple(alone.save(entries=entries, committed=entries))
                expected = _placeless(alone, expected)
            except StorageDamaged as exc:
                expected = exc.seq
            assert got == expected
            if not damaged:
                assert got == tuple(model.apply(c) for c in commands)
            assert grouped.positions() == alone.positions()
            marks = "SELECT client_id, queue_id, touched_ms FROM position_activity ORDER BY 1"
            assert grouped._db.execute(marks).fetchall() == alone._db.execute(marks).fetchall()
    finally:
        for store in stores:
            store.close()
