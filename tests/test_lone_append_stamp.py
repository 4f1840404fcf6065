"""An APPEND or APPEND_BATCH without a producer applied alone (``_append_sql._append_plain``:
its stamp decided in the queue's ``UPDATE``, no ``SELECT`` first) stores and answers what the
code before stored and answered (a copy of it kept here): the same rows in every table and the
same results, over random sequences of lone appends and batches with stamps rising, equal,
going back behind the queue's last, or none (before and after the queue's first stamp), to
queues that exist or not, mixed with producers' appends and their duplicates."""

from __future__ import annotations

import random

import apsw
import pytest

from tests.test_colrun import MISSING, QUEUES, _state, _value, queues_db
from trio_broker._core import _commands as cmd
from trio_broker._core._queues import monotonic_stamp
from trio_broker._storage import _append_sql, _queue_sql
from trio_broker._storage._integrity import insert_plain

BASE_MS = 1_765_000_000_000


def append_before(db: apsw.Connection, command):
    """``_append`` for a command without a producer before the ninth round (a copy)."""
    batch = isinstance(command, cmd.AppendBatch)
    data = command.data if batch else (command.data,)
    row = db.execute(
        "SELECT last_appended_ms FROM queues WHERE queue_id = ?", (command.queue_id,)
    ).fetchone()
    if row is None:
        return cmd.queue_not_found(command.queue_id)
    stamp = monotonic_stamp(command.appended_ms, row[0])
    (length, number) = db.execute(
        "UPDATE queues SET length = length + ?1, last_appended_ms = ?2,"
        " undated_through = iif(?2 IS NULL, length + ?1, undated_through)"
        " WHERE queue_id = ?3 RETURNING length, queue_number",
        (len(data), stamp, command.queue_id),
    ).fetchone()
    first = length - len(data) + 1
    insert_plain(db, command.queue_id, first, data, stamp, number=number)
    return cmd.BatchAppended(first, len(data)) if batch else cmd.MessageAppended(first)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    connection = queues_db(tmp_path_factory.mktemp("lone"))
    yield connection
    connection.close()


def _commands(rng: random.Random, count: int) -> list:
    commands: list = []
    stamp = BASE_MS
    for n in range(count):
        queue = rng.choice([*QUEUES, MISSING]) if rng.random() < 0.1 else rng.choice(QUEUES)
        r = rng.random()
        if r < 0.2:
            proposed = None  # (an entry of an older leader: inherits the last stamp)
        else:
            stamp += rng.choice([0, 0, 1, 7, -1, -40])  # (a new leader's clock behind)
            proposed = stamp
        kind = rng.randrange(6)
        if kind < 3:
            commands.append(cmd.AppendMessage(queue, _value(rng, n), None, None, proposed))
        elif kind < 5:
            data = tuple(_value(rng, n + k) for k in range(rng.choice([1, 2, 11, 12, 13, 70])))
            commands.append(cmd.AppendBatch(queue, data, None, None, proposed))
        else:  # a producer's append (the path with its SELECT), sometimes a duplicate
            commands.append(
                cmd.AppendMessage(queue, _value(rng, n), "P-1", rng.randrange(1, 5), proposed)
            )
    return commands


def _applied(db: apsw.Connection, commands: list, monkeypatch, before: bool):
    with monkeypatch.context() as patch:
        if before:
            real = _append_sql._append

            def old(db, command):
                if command.producer_id is None or command.producer_seq is None:
                    return append_before(db, command)
                return real(db, command)

            patch.setattr(_queue_sql, "_append", old)
        db.execute("BEGIN")
        try:
            results = [_queue_sql.apply_command(db, c) for c in commands]
            return _state(db), results
        finally:
            db.execute("ROLLBACK")


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("first_stamped", [False, True])
def test_lone_appends_store_and_answer_what_they_did(db, monkeypatch, seed, first_stamped):
    rng = random.Random(seed)
    commands = _commands(rng, 60)
    if first_stamped:  # (else the queues' first appends may have no stamp at all)
        commands = [cmd.AppendMessage(q, b"0", None, None, BASE_MS) for q in QUEUES] + commands
    now = _applied(db, commands, monkeypatch, before=False)
    then = _applied(db, commands, monkeypatch, before=True)
    assert now == then


def test_a_lone_append_takes_one_update(db, monkeypatch):
    """No ``SELECT`` of the queue first (fails before: no such path)."""
    calls = []
    real = _append_sql._append_plain
    monkeypatch.setattr(_append_sql, "_append_plain", lambda *a: calls.append(a[1:3]) or real(*a))
    db.execute("BEGIN")
    try:
        first = _queue_sql.apply_command(db, cmd.AppendMessage(QUEUES[0], b"1", None, None, 5))
        batch = _queue_sql.apply_command(db, cmd.AppendBatch(QUEUES[0], (b"2", b"3")))
        missing = _queue_sql.apply_command(db, cmd.AppendMessage(MISSING, b"1", None, None, 5))
        stamps = db.execute(
            "SELECT appended_ms FROM queue_data WHERE sequence_num >= ? ORDER BY sequence_num",
            (first.sequence_num,),
        ).fetchall()
    finally:
        db.execute("ROLLBACK")
    assert batch == cmd.BatchAppended(first.sequence_num + 1, 2)
    assert missing == cmd.queue_not_found(MISSING)
    assert stamps[-3:] == [(5,), (5,), (5,)]  # (the batch without a stamp inherits it)
    assert [queue for queue, _ in calls] == [QUEUES[0], QUEUES[0], MISSING]
