"""Consecutive stamped APPEND_BATCHes to one queue without a producer id, applied together
(``_batch_run`` in ``_storage/_append_sql.py``: one ``SELECT`` and one ``UPDATE`` for the
run, the values of batches of one stamp inserted together), store exactly what applying
each batch alone stores: the same rows and checksums, lengths, stamps, producer state and
results, over random groups that mix such runs with batches and appends of every other kind
(docs/performance-history.md, "Batch appends: every broker's µs per message")."""

from __future__ import annotations

import random

import pytest

from tests.test_colrun import BASE_MS, MISSING, QUEUES, _applied, _value, queues_db
from trio_broker._core import _commands as cmd
from trio_broker._storage import _append_sql, _queue_sql
from trio_broker._storage._integrity import _chunk_spans


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory):
    connection = queues_db(tmp_path_factory.mktemp("batchruns"))
    yield connection
    connection.close()


def _batch(rng: random.Random, queue: str, n: int, stamp: int | None, producer=None):
    data = tuple(_value(rng, n + k) for k in range(rng.choice([1, 2, 3, 17, 64, 100, 130])))
    seq = rng.randrange(1, 4) if producer else None
    return cmd.AppendBatch(queue, data, producer, seq, stamp)


def _random_batches(rng: random.Random, count: int) -> list:
    """Runs of plain stamped batches (stamps alike, rising, or behind the last), broken by
    batches and appends that are not part of a run."""
    commands: list = []
    stamp = BASE_MS + rng.randrange(-50, 50)
    n = 0
    while len(commands) < count:
        queue = rng.choice(QUEUES)
        for _ in range(rng.choice([1, 2, 3, 5, 19])):
            n += 200
            r = rng.random()
            if r < 0.5:
                stamp += rng.choice([0, 1, 7])
            elif r < 0.7:
                stamp -= rng.randrange(1, 30)  # a new leader's clock behind the last
            commands.append(_batch(rng, queue, n, stamp))
        n += 200
        kind = rng.randrange(6)
        if kind == 0:  # an idempotent producer, sometimes a duplicate
            commands.append(_batch(rng, queue, n, stamp, "P-1"))
        elif kind == 1:  # no stamp (an entry of an older leader)
            commands.append(_batch(rng, queue, n, None))
        elif kind == 2:  # a run to a queue that does not exist
            commands += [_batch(rng, MISSING, n, stamp) for _ in range(rng.randrange(1, 4))]
        elif kind == 3:
            commands.append(cmd.AppendMessage(queue, _value(rng, n), None, None, stamp))
        elif kind == 4:
            commands.append(cmd.ReadNext("C-1", queue))
    return commands


def _count_runs(monkeypatch) -> list[int]:
    taken: list[int] = []
    real = _append_sql._batch_run

    def spied(db, run):
        taken.append(len(run))
        return real(db, run)

    monkeypatch.setattr(_queue_sql, "_batch_run", spied)
    return taken


@pytest.mark.parametrize("seed", range(16))
def test_a_group_of_batch_runs_stores_what_each_batch_alone_stores(shared_db, monkeypatch, seed):
    rng = random.Random(seed)
    prelude = [cmd.AppendBatch(QUEUES[0], (b"1",) * 3, None, None, BASE_MS + 40)]
    commands = _random_batches(rng, rng.randrange(10, 60))
    taken = _count_runs(monkeypatch)
    grouped = _applied(shared_db, prelude, commands, grouped=True)
    assert taken, "no run of batches was applied together"
    alone = _applied(shared_db, prelude, commands, grouped=False)
    assert grouped == alone


@pytest.mark.parametrize("per_stamp", [1, 4, 19])
def test_a_run_of_batches_reads_and_writes_its_queue_once(shared_db, monkeypatch, per_stamp):
    """19 batches of 100 (the bench's usual entry): one ``SELECT`` and one ``UPDATE`` of the
    queue for the run, never a batch alone (``_append``), and statements of 64 rows across
    the batches of one stamp."""
    run = [
        cmd.AppendBatch(QUEUES[0], tuple(b"%d" % (100 * i + k) for k in range(100)), None, None, s)
        for i, s in enumerate(BASE_MS + i // per_stamp for i in range(19))
    ]
    taken = _count_runs(monkeypatch)
    alone: list = []
    monkeypatch.setattr(_queue_sql, "_append", lambda db, c: alone.append(c))
    statements: list[str] = []

    def trace(_cursor, sql, bindings):
        statements.append(sql)
        return True

    shared_db.exec_trace = trace
    try:
        state, results = _applied(shared_db, [], run, grouped=True)
    finally:
        shared_db.exec_trace = None
    assert taken == [19] and alone == []
    assert [(r.first_sequence_num, r.count) for r in results] == [
        (1 + 100 * i, 100) for i in range(19)
    ]
    assert len([s for s in statements if s.startswith("SELECT last_appended_ms")]) == 1
    assert len([s for s in statements if s.startswith("UPDATE queues")]) == 1
    inserts = [s.count("),(") + 1 for s in statements if s.startswith("INSERT INTO queue_data")]
    assert sum(inserts) == 1900
    stamps = [len(range(i, min(i + per_stamp, 19))) for i in range(0, 19, per_stamp)]
    assert len(inserts) == sum(len(_chunk_spans(100 * n)) for n in stamps)
    # (``SELECT *``'s last column is the row's sequence number, computed from its key)
    assert sorted(row[-1] for row in state["queue_data"]) == list(range(1, 1901))
