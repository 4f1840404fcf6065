"""A run of plain appends applied as columns (``_append_run`` in ``_storage/_append_sql.py``:
the values' bytes and their stamps, ``insert_plain`` / ``insert_stamped``) stores exactly what
applying each command alone stores: the same rows and checksums, queue lengths and stamps,
producer state, positions and results, over random groups that mix those runs with every
other kind of append (headers, producer ids, batches, no stamp, an unknown queue) and with
reads, acknowledgements and retention (docs/performance-history.md, "Columnar runs of appends")."""

from __future__ import annotations

import random

import apsw
import orjson
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._core import _work_commands as work
from trio_broker._core._queues import monotonic_stamp
from trio_broker._storage import DB_FILE, Store
from trio_broker._storage._append_sql import run_stamps
from trio_broker._storage._integrity import insert_stamped, insert_values, value_checksum
from trio_broker._storage._queue_sql import apply_command

QUEUES = ("Q-one", 'Q-"two"\\é')
MISSING = "Q-missing"
BASE_MS = 1_765_000_000_000
SIZES = [1, 2, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 112, 127, 128, 300]


def queues_db(path) -> apsw.Connection:
    """A broker's database at ``path`` holding the :data:`QUEUES`, opened bare (the tests
    apply commands to it directly, each in a transaction they roll back)."""
    store = Store(path)
    store.apply([cmd.CreateQueue(q) for q in QUEUES])
    store.close()
    return apsw.Connection(str(path / DB_FILE))


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory):
    connection = queues_db(tmp_path_factory.mktemp("colrun"))
    yield connection
    connection.close()


def _state(db: apsw.Connection) -> dict[str, list[tuple]]:
    """Every table's rows, in a fixed order."""
    tables = [
        name
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    return {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}


def _applied(db: apsw.Connection, prelude: list, commands: list, grouped: bool):
    """The state and results after ``prelude`` (one command at a time) then ``commands``, as
    one group or one at a time; rolled back after."""
    db.execute("BEGIN")
    try:
        for c in prelude:
            apply_command(db, c)
        if grouped:
            results = list(apply_command(db, cmd.CommandGroup(tuple(commands))).results)
        else:
            results = [apply_command(db, c) for c in commands]
        return _state(db), results
    finally:
        db.execute("ROLLBACK")


def _value(rng: random.Random, n: int) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return orjson.dumps("x" * rng.randrange(0, 120) + str(n))
    if kind == 1:
        return orjson.dumps({"n": n, "s": "é\U0001f600" * rng.randrange(3)})
    if kind == 2:
        return orjson.dumps([n, None, True, 1.5])
    return orjson.dumps(n)


def _random_commands(rng: random.Random, count: int, mixed: bool) -> list:
    """Runs of plain stamped appends (stamps that go back now and then) to one queue,
    broken, when ``mixed``, by every other kind of command."""
    commands: list = []
    stamp = BASE_MS + rng.randrange(-50, 50)
    n = 0
    while len(commands) < count:
        queue = rng.choice(QUEUES)
        for _ in range(rng.choice([1, 2, 3, 15, 16, 17, 33, 64, 65, 100])):
            n += 1
            r = rng.random()
            if r < 0.7:
                stamp += rng.choice([0, 0, 0, 1, 5])
            elif r < 0.85:
                stamp -= rng.randrange(1, 30)  # a new leader's clock behind the last
            commands.append(cmd.AppendMessage(queue, _value(rng, n), None, None, stamp))
        if not mixed:
            continue
        n += 1
        kind = rng.randrange(10)
        if kind == 0:  # an idempotent producer, sometimes sending a duplicate
            seq = rng.randrange(1, 4)
            commands.append(cmd.AppendMessage(queue, _value(rng, n), "P-1", seq, stamp))
        elif kind == 1:  # no stamp (an entry of an older leader)
            commands.append(cmd.AppendMessage(queue, _value(rng, n)))
        elif kind == 2:
            data = tuple(_value(rng, n + k) for k in range(rng.randrange(1, 40)))
            commands.append(cmd.AppendBatch(queue, data, None, None, stamp))
        elif kind == 3:  # appends with headers
            records = tuple(
                work.Record(_value(rng, n + k), (("k", f"v{k}"),) if k % 2 else ())
                for k in range(rng.randrange(1, 5))
            )
            commands.append(work.Publish(queue, records, appended_ms=stamp))
        elif kind == 4:
            commands.append(cmd.ReadNext(rng.choice(["C-1", "C-2"]), queue))
        elif kind == 5:
            commands.append(cmd.Ack("C-1", queue, rng.randrange(0, 50)))
        elif kind == 6:
            policy = cmd.RetentionPolicy(max_messages=rng.randrange(5, 200))
            commands.append(cmd.SetRetention(queue, policy))
        elif kind == 7:
            commands.append(cmd.ApplyRetention(stamp))
        elif kind == 8:  # a run to a queue that does not exist
            commands += [cmd.AppendMessage(MISSING, b"1", None, None, stamp)] * rng.randrange(1, 4)
        else:
            commands.append(cmd.AppendMessage(queue, _value(rng, n), "P-2", n, stamp))
    return commands


@pytest.mark.parametrize("seed", range(12))
def test_a_group_of_runs_stores_what_each_command_alone_stores(shared_db, seed):
    rng = random.Random(seed)
    mixed = seed % 3 != 0
    # A queue whose last stamp is after the group's first ones (a leader whose clock is
    # behind its predecessor's), or before them.
    prelude = [
        cmd.AppendMessage(QUEUES[0], b'"before"', None, None, BASE_MS + rng.randrange(-100, 100)),
        cmd.AppendMessage(QUEUES[1], b'"before"', None, None, BASE_MS + rng.randrange(-100, 100)),
    ]
    commands = _random_commands(rng, rng.randrange(50, 400), mixed)
    grouped_state, grouped_results = _applied(shared_db, prelude, commands, grouped=True)
    alone_state, alone_results = _applied(shared_db, prelude, commands, grouped=False)
    assert grouped_results == alone_results
    assert grouped_state == alone_state
    # (the group held runs for the columns: stamped appends without a producer, one queue)
    runs = sum(
        _plain(a) and _plain(b) and a.queue_id == b.queue_id and isinstance(r, cmd.MessageAppended)
        for a, b, r in zip(commands[:-1], commands[1:], alone_results[1:], strict=True)
    )
    assert runs > 20


def _plain(c) -> bool:
    return type(c) is cmd.AppendMessage and c.producer_id is None and c.appended_ms is not None


@pytest.mark.parametrize("count", SIZES)
def test_a_group_that_is_one_run_stores_what_each_append_alone_stores(shared_db, count):
    """The whole group one run (one queue, stamped, no producer: the pipelined shape), its
    stamps alike, rising, or going back behind the queue's last one."""
    rng = random.Random(count)
    for shape in ("alike", "rising", "back"):
        stamp = BASE_MS
        commands = []
        for k in range(count):
            if shape == "rising":
                stamp += rng.choice([0, 0, 1, 3])
            elif shape == "back":
                stamp += rng.choice([0, 2, -3])
            commands.append(cmd.AppendMessage(QUEUES[0], _value(rng, k), None, None, stamp))
        prelude = [cmd.AppendMessage(QUEUES[0], b"0", None, None, BASE_MS + rng.randrange(-5, 5))]
        grouped = _applied(shared_db, prelude, commands, grouped=True)
        alone = _applied(shared_db, prelude, commands, grouped=False)
        assert grouped == alone
        assert [r.sequence_num for r in grouped[1]] == list(range(2, count + 2))


@pytest.mark.parametrize(
    "odd",
    [
        cmd.AppendMessage(QUEUES[0], b'"p"', "P-1", 1, BASE_MS),
        cmd.AppendMessage(QUEUES[0], b'"p"', "P-1", 5, BASE_MS),
        cmd.AppendMessage(QUEUES[0], b'"undated"'),
        cmd.AppendMessage(QUEUES[1], b'"elsewhere"', None, None, BASE_MS),
        cmd.AppendMessage(MISSING, b'"nowhere"', None, None, BASE_MS),
        cmd.AppendBatch(QUEUES[0], (b"1", b"2"), None, None, BASE_MS),
        work.Publish(QUEUES[0], (work.Record(b"1", (("k", "v"),)),), appended_ms=BASE_MS),
    ],
)
@pytest.mark.parametrize("at", [0, 17, 39])
def test_one_odd_command_in_a_run_is_applied_as_alone(shared_db, odd, at):
    """A group of plain appends to one queue but for one command (a producer's, one without
    a stamp, another queue's, a batch, headers): the same as each alone, the odd one too."""
    prelude = [cmd.AppendMessage(QUEUES[0], b'"p"', "P-1", 1, BASE_MS)]
    commands = [cmd.AppendMessage(QUEUES[0], b"%d" % k, None, None, BASE_MS + k) for k in range(40)]
    commands[at] = odd
    assert _applied(shared_db, prelude, commands, grouped=True) == _applied(
        shared_db, prelude, commands, grouped=False
    )


def test_a_run_to_a_missing_queue_is_refused_for_each_append_and_stores_nothing(shared_db):
    run = [cmd.AppendMessage(MISSING, b"1", None, None, BASE_MS)] * 20
    state, results = _applied(shared_db, [], run, grouped=True)
    assert results == [cmd.queue_not_found(MISSING)] * 20
    assert state == _applied(shared_db, [], [], grouped=False)[0]


def _fold(last, proposed):
    stamps = []
    for p in proposed:
        last = monotonic_stamp(p, last)
        stamps.append(last)
    return stamps


def test_run_stamps_are_the_rule_applied_one_after_another():
    rng = random.Random(7)
    for _ in range(2000):
        last = rng.choice([None, BASE_MS + rng.randrange(-20, 20)])
        proposed = [BASE_MS + rng.randrange(-20, 20) for _ in range(rng.randrange(1, 8))]
        if rng.random() < 0.5:
            proposed.sort()
        assert run_stamps(last, list(proposed)) == _fold(last, proposed)
    # the usual case gives the stamps as proposed; one step back is raised to the last
    assert run_stamps(5, [5, 6, 6, 9]) == [5, 6, 6, 9]
    assert run_stamps(5, [6, 4, 7]) == [6, 6, 7]
    assert run_stamps(8, [6, 7, 9]) == [8, 8, 9]
    assert run_stamps(None, [3, 1]) == [3, 3]


@pytest.mark.parametrize("count", [0, *SIZES])
def test_insert_stamped_stores_the_rows_insert_values_stores(shared_db, count):
    rng = random.Random(count)
    data = [_value(rng, k) for k in range(count)]
    stamps = sorted(BASE_MS + rng.randrange(0, 9) for _ in range(count))
    stamps = [s if rng.random() > 0.1 else None for s in stamps]
    first = 11
    queue = QUEUES[1]

    def stored(insert) -> list[tuple]:
        shared_db.execute("BEGIN")
        try:
            insert()
            return shared_db.execute(
                "SELECT queue_id, sequence_num, appended_ms, headers, checksum, data"
                " FROM queue_data JOIN queues USING (queue_number) WHERE queue_id = ?"
                " ORDER BY sequence_num",
                (queue,),
            ).fetchall()
        finally:
            shared_db.execute("ROLLBACK")

    columns = stored(lambda: insert_stamped(shared_db, queue, first, data, stamps))
    rows = stored(
        lambda: insert_values(
            shared_db, queue, first, [(d, s, None) for d, s in zip(data, stamps, strict=True)]
        )
    )
    assert columns == rows
    assert [r[4] for r in columns] == [
        value_checksum(queue, first + k, d, None) for k, d in enumerate(data)
    ]
    assert [r[2] for r in columns] == stamps


def test_insert_stamped_refuses_columns_of_two_lengths(shared_db):
    shared_db.execute("BEGIN")
    try:
        with pytest.raises(ValueError, match="3 values with 2 stamps"):
            insert_stamped(shared_db, QUEUES[0], 1, [b"1", b"2", b"3"], [1, 2])
        assert shared_db.execute("SELECT count(*) FROM queue_data").fetchone() == (0,)
    finally:
        shared_db.execute("ROLLBACK")


def _spy_paths(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """What each step of the append paths was called with: whether a group was one run
    (``_one_run``'s answers), the runs applied as columns (``_append_run``), the columnar
    inserts (``insert_plain``: one stamp; ``insert_stamped``: a stamp per value), the general
    insert (``insert_values``, rows as tuples) and the one-append path (``_append``)."""
    from trio_broker._storage import _append_sql, _integrity, _queue_sql

    seen: dict[str, list] = {}

    def spy(module, name, record):
        real = getattr(module, name)
        seen[name] = []

        def spied(*args, **kwargs):  # (the inserts take the queue's number by keyword)
            result = real(*args, **kwargs)
            seen[name].append(record(args, result))
            return result

        monkeypatch.setattr(module, name, spied)

    # Each spied where it is looked up: the group's and the one command's dispatch are in
    # _queue_sql, the columnar inserts in _append_sql.
    spy(_queue_sql, "_one_run", lambda args, result: result)
    spy(_queue_sql, "_append_run", lambda args, result: len(args[1]))
    spy(_queue_sql, "_append", lambda args, result: args[1])
    spy(_append_sql, "insert_plain", lambda args, result: (args[2], list(args[3]), args[4]))
    spy(_append_sql, "insert_stamped", lambda args, result: (args[2], list(args[3]), list(args[4])))
    spy(_integrity, "insert_values", lambda args, result: len(args[3]))
    return seen


@pytest.mark.parametrize("shape", ["alike", "rising", "after-odd"])
def test_a_run_takes_the_columnar_path(shared_db, monkeypatch, shape):
    """64 plain stamped appends to one queue (one full chunk of rows) take the columnar path:
    the whole group found one run by ``_one_run`` (or, after an odd command, the run found in
    the group's loop), applied by one ``_append_run`` and one columnar insert of the two
    columns as they are (``insert_plain`` for stamps alike, ``insert_stamped`` for stamps
    that differ), never a row tuple (``insert_values``) nor an append alone (``_append``) for
    the run's messages."""
    data = [b"%d" % k for k in range(64)]
    if shape == "alike":
        stamps = [BASE_MS] * 64
    else:
        stamps = [BASE_MS + k // 3 for k in range(64)]
    run = [
        cmd.AppendMessage(QUEUES[0], d, None, None, s) for d, s in zip(data, stamps, strict=True)
    ]
    odd = cmd.AppendMessage(QUEUES[1], b"0", None, None, BASE_MS)
    commands = [odd, *run] if shape == "after-odd" else run
    seen = _spy_paths(monkeypatch)
    _, results = _applied(shared_db, [], commands, grouped=True)
    assert [r.sequence_num for r in results[-64:]] == list(range(1, 65))
    assert seen["_one_run"] == [shape != "after-odd"]
    assert seen["_append_run"] == [64]
    assert seen["_append"] == ([odd] if shape == "after-odd" else [])
    if shape == "alike":
        assert seen["insert_plain"] == [(1, data, BASE_MS)]
        assert seen["insert_stamped"] == []
    else:
        assert seen["insert_stamped"] == [(1, data, stamps)]
        assert seen["insert_plain"] == ([(1, [b"0"], BASE_MS)] if shape == "after-odd" else [])
    # (The odd append alone: its one row by insert_plain's statement of one row.)
    assert seen["insert_values"] == []
