"""SQLite storage: same semantics as the in-memory reference, durable, locked, versioned."""

from __future__ import annotations

import os
import threading

import apsw
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_broker._core import (
    AppendMessage,
    CommandRejected,
    CreateQueue,
    MessageAppended,
    MessageRead,
    QueueCreated,
    QueueState,
    ReadNext,
)
from trio_broker._core._commands import (
    Ack,
    AppendBatch,
    ApplyRetention,
    CommandGroup,
    MessagesRead,
    ReadBatch,
    RetentionApplied,
    RetentionPolicy,
    Seek,
    SetBrokerAddress,
    SetRetention,
)
from trio_broker._core._raft_messages import Entry, HardState
from trio_broker._storage import (
    DB_FILE,
    SCHEMA_VERSION,
    DataDirInUse,
    Identity,
    SchemaTooNew,
    StorageWorker,
    Store,
    open_storage_worker,
)
from trio_broker.testing._memory_store import MemoryStore

QUEUES = ["Q-AAAAA00001", "Q-AAAAA00002", "Q-BBBBB00003"]
CLIENTS = ["C-AAAAA", "C-BBBBB", "C-CCCCC"]

_queue_ids = st.sampled_from(QUEUES)
_clients = st.sampled_from(CLIENTS)
_data = st.binary(max_size=12) | st.sampled_from([b"1", b"1.5", b"true", b'"7"', b"null"])
# Few producers and small sequence numbers, so duplicates, gaps and stale retries all occur.
_producer = st.one_of(
    st.tuples(st.none(), st.none()),
    st.tuples(st.sampled_from(["P-1", "P-2"]), st.integers(min_value=0, max_value=12)),
)
# Stamps from leaders whose clocks disagree (and None: entries older than retention), and
# policies including invalid ones (refused alike by both implementations).
_stamps = st.none() | st.integers(min_value=0, max_value=40)
_policies = st.builds(
    RetentionPolicy,
    max_messages=st.none() | st.integers(min_value=0, max_value=5),
    max_age_ms=st.none() | st.integers(min_value=0, max_value=30),
    delete_acknowledged=st.booleans(),
)
_commands = st.one_of(
    st.builds(CreateQueue, queue_id=_queue_ids, retention=st.none() | _policies),
    st.builds(
        lambda q, d, p, t: AppendMessage(q, d, p[0], p[1], t), _queue_ids, _data, _producer, _stamps
    ),
    st.builds(
        lambda q, d, p, t: AppendBatch(q, tuple(d), p[0], p[1], t),
        _queue_ids,
        st.lists(_data, min_size=1, max_size=4),
        _producer,
        _stamps,
    ),
    st.builds(SetRetention, queue_id=_queue_ids, policy=_policies),
    st.builds(ApplyRetention, now_ms=st.integers(min_value=0, max_value=60)),
    st.builds(ReadNext, client_id=_clients, queue_id=_queue_ids),
    st.builds(
        ReadBatch,
        client_id=_clients,
        queue_id=_queue_ids,
        max_messages=st.integers(min_value=1, max_value=5),
        peek=st.booleans(),
        max_bytes=st.integers(min_value=0, max_value=30),
    ),
    st.builds(Ack, client_id=_clients, queue_id=_queue_ids, sequence_num=st.integers(-1, 12)),
    st.builds(
        Seek,
        client_id=_clients,
        queue_id=_queue_ids,
        next_sequence_num=st.none() | st.integers(0, 12),
    ),
    st.builds(
        SetBrokerAddress,
        broker_id=st.sampled_from(["B-AAAAA", "B-BBBBB"]),
        host=st.sampled_from(["127.0.0.1", "localhost"]),
        port=st.integers(1, 3),
    ),
)
_single_commands = _commands
# The leader groups concurrent proposals into one entry: a group applies like its commands.
_commands = _commands | st.builds(
    lambda cs: CommandGroup(tuple(cs)), st.lists(_commands, min_size=1, max_size=4)
)
# A step is either a batch of commands for one Store.apply call, or "reopen the store".
_steps = st.lists(
    st.one_of(st.lists(_commands, min_size=0, max_size=8), st.just("reopen")),
    min_size=1,
    max_size=12,
)


def _assert_store_matches(store: Store, model: QueueState) -> None:
    assert store.queue_lengths() == {q: model.queue_length(q) for q in model.messages}
    assert store.first_retained() == {q: model.first_retained(q) for q in model.messages}
    for queue_id in QUEUES:
        assert store.messages(queue_id) == model.messages.get(queue_id, [])
        stamps = [
            row[0]
            for row in store._db.execute(
                "SELECT appended_ms FROM queue_data WHERE queue_number = (SELECT queue_number"
                " FROM queues WHERE queue_id = ?) ORDER BY sequence_num",
                (queue_id,),
            )
        ]
        assert stamps == model.stamps.get(queue_id, [])
    assert store.retention_policies() == model.retention
    assert store.positions() == model.positions
    assert store.broker_addresses() == model.brokers
    # The mock clock's MemoryStore answers the runtime's queries from the same state: its
    # listings and statistics must be Store's, page by page and limit by limit.
    memory = MemoryStore()
    memory.state = model
    for limit in (1, 2, 10):
        assert memory.queue_stats(limit) == store.queue_stats(limit)
        for after in (None, *QUEUES):
            assert memory.list_queues(after, limit, limit) == store.list_queues(after, limit, limit)
    assert memory.queue_lengths() == store.queue_lengths()
    assert memory.first_retained() == store.first_retained()
    assert memory.retention_policies() == store.retention_policies()
    assert memory.positions() == store.positions()
    assert memory.broker_addresses() == store.broker_addresses()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=_steps)
def test_store_agrees_with_reference_state_machine(new_store_dir, monkeypatch, steps):
    import trio_broker._core._queues as queues_module
    import trio_broker._storage._queue_sql as store_module

    # A small deletion budget, so that retention's "the rest goes next time" is exercised.
    monkeypatch.setattr(queues_module, "RETENTION_DELETES_PER_APPLY", 3)
    monkeypatch.setattr(store_module, "RETENTION_DELETES_PER_APPLY", 3)
    # The factory is session-scoped: make a fresh directory for every example.
    data_dir = new_store_dir("model")
    model = QueueState()
    store = Store(data_dir)
    try:
        for step in steps:
            if step == "reopen":
                store.close()
                store = Store(data_dir)
                _assert_store_matches(store, model)
                continue
            expected = [model.apply(c) for c in step]
            got = store.apply(step)
            assert got == expected
            for result in got:
                if isinstance(result, MessageRead) and result.data is not None:
                    assert type(result.data) is bytes
        _assert_store_matches(store, model)
        store.close()
        store = Store(data_dir)
        _assert_store_matches(store, model)
        # After reopening, the sequence numbers and positions carry on where they were.
        more = [AppendMessage(q, b"after") for q in model.messages] + [
            ReadNext(c, q) for c in CLIENTS for q in model.messages
        ]
        assert store.apply(more) == model.apply_all(more)
    finally:
        store.close()


# Retention-heavy traffic on queues that exist: appends (many undated ones first, as in a
# database upgraded from version 3), policies, enforcement, and the readers it depends on.
_retention_commands = st.one_of(
    st.builds(
        lambda q, d, t: AppendBatch(q, tuple(d), None, None, t),
        _queue_ids,
        st.lists(_data, min_size=1, max_size=6),
        _stamps,
    ),
    st.builds(SetRetention, queue_id=_queue_ids, policy=_policies),
    st.builds(ApplyRetention, now_ms=st.integers(min_value=0, max_value=60)),
    st.builds(ReadNext, client_id=_clients, queue_id=_queue_ids),
    st.builds(
        ReadBatch,
        client_id=_clients,
        queue_id=_queue_ids,
        max_messages=st.integers(min_value=1, max_value=5),
        peek=st.booleans(),
    ),
    st.builds(Ack, client_id=_clients, queue_id=_queue_ids, sequence_num=st.integers(0, 20)),
    st.builds(Seek, client_id=_clients, queue_id=_queue_ids, next_sequence_num=st.integers(1, 20)),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    undated=st.lists(st.tuples(_queue_ids, _data), max_size=8),
    steps=st.lists(
        st.one_of(st.lists(_retention_commands, min_size=1, max_size=10), st.just("reopen")),
        min_size=1,
        max_size=10,
    ),
)
def test_store_agrees_with_reference_under_retention(new_store_dir, monkeypatch, undated, steps):
    import trio_broker._core._queues as queues_module
    import trio_broker._storage._queue_sql as store_module

    monkeypatch.setattr(queues_module, "RETENTION_DELETES_PER_APPLY", 4)
    monkeypatch.setattr(store_module, "RETENTION_DELETES_PER_APPLY", 4)
    data_dir = new_store_dir("retention")
    model = QueueState()
    store = Store(data_dir)
    try:
        first = [CreateQueue(q) for q in QUEUES] + [AppendMessage(q, d) for q, d in undated]
        assert store.apply(first) == model.apply_all(first)
        for step in steps:
            if step == "reopen":
                store.close()
                store = Store(data_dir)
            else:
                assert store.apply(step) == model.apply_all(step)
            _assert_store_matches(store, model)
    finally:
        store.close()


def test_retention_deletes_a_prefix_and_keeps_sequence_numbers(monkeypatch):
    """The reference semantics, spelled out: each rule, the gap at the front, the budget."""
    import trio_broker._core._queues as queues_module

    q, other = QUEUES[0], QUEUES[1]
    model = QueueState()
    model.apply_all(
        [CreateQueue(q, RetentionPolicy(max_messages=3)), CreateQueue(other)]
        + [AppendMessage(q, b"%d" % n, appended_ms=100 + n) for n in range(1, 6)]
        + [AppendMessage(other, b"o", appended_ms=0)]
    )
    assert model.apply(ApplyRetention(now_ms=10**6)) == RetentionApplied(((q, 3),))
    assert model.messages[q] == [b"3", b"4", b"5"] and model.first_retained(q) == 3
    assert model.messages[other] == [b"o"]  # no policy: kept, however old
    # Sequence numbers carry on; a client that never read starts at the first retained one.
    assert model.apply(AppendMessage(q, b"6", appended_ms=106)) == MessageAppended(6)
    assert model.apply(ReadNext(CLIENTS[0], q)) == MessageRead(3, b"3")
    assert model.apply(ReadBatch(CLIENTS[1], q, 2)) == MessagesRead(((3, b"3"), (4, b"4")))
    # Age: messages appended before now_ms - max_age_ms go; the clock of a later leader that
    # runs behind cannot make a stamp go backward.
    model.apply(SetRetention(q, RetentionPolicy(max_age_ms=10)))
    assert model.apply(AppendMessage(q, b"7", appended_ms=50)) == MessageAppended(7)
    assert model.stamps[q] == [103, 104, 105, 106, 106]
    assert model.apply(ApplyRetention(now_ms=115)) == RetentionApplied(((q, 5),))
    # Read by all: up to the slowest client with a position (C-A at 3 -> nothing new).
    model.apply(SetRetention(q, RetentionPolicy(delete_acknowledged=True)))
    assert model.apply(ApplyRetention(now_ms=0)) == RetentionApplied(())
    model.apply_all([Ack(CLIENTS[0], q, 7), Ack(CLIENTS[1], q, 6)])
    assert model.apply(ApplyRetention(now_ms=0)) == RetentionApplied(((q, 7),))
    # Seeking into the deleted front is allowed: the next read returns the first retained.
    assert model.apply(Seek(CLIENTS[0], q, 1)).next_sequence_num == 1
    assert model.apply(ReadNext(CLIENTS[0], q)) == MessageRead(7, b"7")
    # A policy that keeps everything removes the policy.
    model.apply(SetRetention(q, RetentionPolicy()))
    assert model.retention == {}
    # The budget: at most RETENTION_DELETES_PER_APPLY messages per enforcement, queues in id
    # order; the rest goes next time.
    monkeypatch.setattr(queues_module, "RETENTION_DELETES_PER_APPLY", 5)
    model.apply(CreateQueue(QUEUES[2], RetentionPolicy(max_messages=1)))
    model.apply(AppendBatch(QUEUES[2], (b"x",) * 10, appended_ms=0))
    model.apply(SetRetention(other, RetentionPolicy(max_age_ms=1)))
    assert model.apply(ApplyRetention(now_ms=5)) == RetentionApplied(((other, 2), (QUEUES[2], 5)))
    assert model.apply(ApplyRetention(now_ms=5)) == RetentionApplied(((QUEUES[2], 10),))
    assert model.apply(ApplyRetention(now_ms=5)) == RetentionApplied(())
    assert model.queue_length(QUEUES[2]) == 10 and model.messages[QUEUES[2]] == [b"x"]


def test_retention_policies_are_validated_by_both_implementations(tmp_path):
    q = QUEUES[0]
    bad = [
        RetentionPolicy(max_messages=0),
        RetentionPolicy(max_age_ms=-5),
        RetentionPolicy(max_messages=10**13),
    ]
    commands = [CreateQueue(QUEUES[1], bad[0]), CreateQueue(q)] + [SetRetention(q, p) for p in bad]
    commands.append(SetRetention(QUEUES[2], RetentionPolicy(max_messages=1)))
    model = QueueState()
    expected = model.apply_all(commands)
    store = Store(tmp_path)
    try:
        assert store.apply(commands) == expected
        assert store.queue_lengths() == {q: 0}
        assert store.retention_policies() == {}
    finally:
        store.close()
    codes = [getattr(r, "code", None) for r in expected]
    assert codes == [
        "BAD_REQUEST",
        None,
        "BAD_REQUEST",
        "BAD_REQUEST",
        "BAD_REQUEST",
        "QUEUE_NOT_FOUND",
    ]


_plain_appends = st.builds(
    lambda q, d, t: AppendMessage(q, d, None, None, t),
    st.sampled_from(QUEUES),
    _data,
    st.integers(min_value=0, max_value=40),
)


@settings(max_examples=100, deadline=None)
@given(
    groups=st.lists(
        st.lists(_plain_appends | _plain_appends | _plain_appends | _single_commands, max_size=12),
        min_size=1,
        max_size=6,
    )
)
def test_runs_of_plain_appends_in_a_group_apply_like_one_by_one(new_store_dir, groups):
    """Pipelined appends to one queue arrive as runs inside a group, which the store writes
    with three statements per run: the results, rows and stamps are the reference's."""
    data_dir = new_store_dir("runs")
    model = QueueState()
    store = Store(data_dir)
    try:
        created = [CreateQueue(q) for q in QUEUES[:2]]  # the third stays unknown
        assert store.apply(created) == model.apply_all(created)
        for commands in groups:
            if commands:
                group = [CommandGroup(tuple(commands))]
                assert store.apply(group) == model.apply_all(group)
        _assert_store_matches(store, model)
    finally:
        store.close()


def test_a_rejected_command_changes_nothing_while_the_others_apply(tmp_path):
    store = Store(tmp_path)
    try:
        q, missing = QUEUES[0], QUEUES[1]
        results = store.apply(
            [
                CreateQueue(q),
                AppendMessage(missing, b"lost"),
                AppendMessage(q, b"a"),
                CreateQueue(q),
                ReadNext(CLIENTS[0], missing),
                AppendMessage(q, b"b"),
                ReadNext(CLIENTS[0], q),
            ]
        )
        assert results[0] == QueueCreated(q)
        assert isinstance(results[1], CommandRejected)
        assert results[1].code == "QUEUE_NOT_FOUND"
        assert results[2] == MessageAppended(1)
        assert isinstance(results[3], CommandRejected)
        assert results[3].code == "QUEUE_EXISTS"
        assert isinstance(results[4], CommandRejected)
        assert results[4].code == "QUEUE_NOT_FOUND"
        assert results[5] == MessageAppended(2)
        assert results[6] == MessageRead(1, b"a")
        # The duplicate CreateQueue did not reset the queue; nothing exists for the missing one.
        assert store.queue_lengths() == {q: 2}
        assert store.messages(q) == [b"a", b"b"]
        assert store.messages(missing) == []
        assert store.positions() == {(CLIENTS[0], q): 1}
        (rows,) = store._db.execute(
            "SELECT count(*) FROM queue_data"
            " WHERE queue_number NOT IN (SELECT queue_number FROM queues)"
        ).fetchone()
        assert rows == 0
    finally:
        store.close()
    # And all of it was committed.
    store = Store(tmp_path)
    try:
        assert store.messages(q) == [b"a", b"b"]
        assert store.positions() == {(CLIENTS[0], q): 1}
    finally:
        store.close()


def test_a_batch_that_fails_is_rolled_back_whole(tmp_path):
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(QUEUES[0])])
        with pytest.raises(TypeError):
            store.apply([AppendMessage(QUEUES[0], b"x"), CreateQueue(QUEUES[1]), "not a command"])
        assert store.queue_lengths() == {QUEUES[0]: 0}
        assert store.messages(QUEUES[0]) == []
        assert store.apply([AppendMessage(QUEUES[0], b"y")]) == [MessageAppended(1)]
    finally:
        store.close()


def test_identity_is_created_once_and_kept(tmp_path):
    store = Store(tmp_path)
    try:
        assert store.identity() is None
        first = store.init_identity("B-AAAAA", "G-XYZ78")
        assert first == Identity("B-AAAAA", "G-XYZ78")
        again = store.init_identity("B-ZZZZZ", "G-QQQQQ")
        assert again == first
        assert store.identity() == first
    finally:
        store.close()
    store = Store(tmp_path)
    try:
        assert store.identity() == first
        assert store.init_identity("B-YYYYY", "G-YYYYY") == first
    finally:
        store.close()


def test_data_dir_lock(tmp_path):
    first = Store(tmp_path)
    try:
        with pytest.raises(DataDirInUse) as info:
            Store(tmp_path)
        assert f"pid {os.getpid()}" in str(info.value)
        assert str(tmp_path) in str(info.value)
        # A refused attempt does not release the holder's lock.
        with pytest.raises(DataDirInUse):
            Store(tmp_path)
        first.apply([CreateQueue(QUEUES[0])])
    finally:
        first.close()
    second = Store(tmp_path)
    try:
        assert second.queue_lengths() == {QUEUES[0]: 0}
        with pytest.raises(DataDirInUse):
            Store(tmp_path)
    finally:
        second.close()


def test_schema_too_new_is_refused(tmp_path):
    db = apsw.Connection(str(tmp_path / DB_FILE))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    for _ in range(2):
        # Refused every time: the failed open released the directory lock.
        with pytest.raises(SchemaTooNew) as info:
            Store(tmp_path)
        assert str(SCHEMA_VERSION + 1) in str(info.value)
    db = apsw.Connection(str(tmp_path / DB_FILE))
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert tables == []
    finally:
        db.close()


def test_fresh_database_gets_current_schema_version(tmp_path):
    store = Store(tmp_path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        store.close()
    store = Store(tmp_path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        store.close()


def test_connection_is_wal_with_synchronous_full(tmp_path):
    store = Store(tmp_path)
    try:
        (mode,) = store._db.execute("PRAGMA journal_mode").fetchone()
        assert mode.lower() == "wal"
        (sync,) = store._db.execute("PRAGMA synchronous").fetchone()
        assert sync == 2  # FULL
        store.apply([CreateQueue(QUEUES[0])])
        assert (tmp_path / (DB_FILE + "-wal")).exists()
    finally:
        store.close()


# -- the storage thread ---------------------------------------------------------------------------


async def test_worker_runs_everything_on_one_thread():
    trio_thread = threading.get_ident()
    async with open_storage_worker() as worker:
        assert isinstance(worker, StorageWorker)
        idents = {await worker.run(threading.get_ident) for _ in range(20)}
        assert len(idents) == 1
        assert trio_thread not in idents
        # Concurrent callers share that same thread too.
        seen = []

        async def call():
            seen.append(await worker.run(threading.get_ident))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(call)
        assert set(seen) == idents
        assert await worker.run(lambda a, b: a + b, 2, 3) == 5


async def test_worker_propagates_exceptions():
    class Boom(Exception):
        pass

    boom = Boom("storage failed")

    def fail():
        raise boom

    async with open_storage_worker() as worker:
        with pytest.raises(Boom) as info:
            await worker.run(fail)
        assert info.value is boom
        # The thread survives a failing job.
        assert await worker.run(lambda: "still alive") == "still alive"


async def test_cancelled_caller_waits_for_its_job():
    started = threading.Event()
    release = threading.Event()
    effects = []
    observed = []

    def job():
        started.set()
        release.wait(10)
        effects.append("committed")
        return "result"

    async with open_storage_worker() as worker:
        scope = trio.CancelScope()
        finished = trio.Event()

        async def caller():
            with scope:
                try:
                    observed.append(await worker.run(job))
                finally:
                    # What the caller sees when run returns or raises.
                    observed.append(list(effects))
                    finished.set()
                await trio.lowlevel.checkpoint()
                observed.append("not cancelled?")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.to_thread.run_sync(started.wait)
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            # Cancelled, but still waiting: the job has not finished.
            assert not finished.is_set()
            assert observed == []
            release.set()
        assert effects == ["committed"]
        assert observed[-1] == ["committed"]
        assert "not cancelled?" not in observed
        assert scope.cancelled_caught


async def test_caller_cancelled_before_submitting_runs_nothing():
    calls = []
    async with open_storage_worker() as worker:
        with trio.CancelScope() as scope:
            scope.cancel()
            await worker.run(calls.append, "should not run")
        assert scope.cancelled_caught
        # Jobs run in order on one thread: once a later job ran, an earlier one would have too.
        await worker.run(calls.append, "later")
        assert calls == ["later"]


async def test_a_short_job_runs_here_when_the_thread_is_idle_and_never_beside_a_job():
    """run_short runs on the trio thread only when no job is queued or running on the storage
    thread; otherwise it waits behind them there, so the connection is never used by two
    threads at once and jobs keep their order."""
    trio_thread = threading.get_ident()
    started = threading.Event()
    release = threading.Event()
    order = []

    def long_job():
        started.set()
        release.wait(10)
        order.append("long")
        return threading.get_ident()

    def short_job():
        order.append("short")
        return threading.get_ident()

    async with open_storage_worker() as worker:
        storage_thread = await worker.run(threading.get_ident)
        assert await worker.run_short(short_job) == trio_thread
        assert worker.ran_here == 1
        order.clear()
        results = {}

        async def run_long():
            results["long"] = await worker.run(long_job)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_long)
            await trio.to_thread.run_sync(started.wait)

            async def run_short():
                results["short"] = await worker.run_short(short_job)

            nursery.start_soon(run_short)
            await trio.testing.wait_all_tasks_blocked()
            assert order == []  # the short job waits behind the running one
            release.set()
        assert order == ["long", "short"]
        assert results == {"long": storage_thread, "short": storage_thread}
        # Idle again: here.
        assert await worker.run_short(short_job) == trio_thread


async def test_a_cancelled_short_job_does_not_run():
    calls = []
    async with open_storage_worker() as worker:
        with trio.CancelScope() as scope:
            scope.cancel()
            await worker.run_short(calls.append, "should not run")
        assert scope.cancelled_caught
        assert calls == []


async def test_store_through_worker(tmp_path):
    async with open_storage_worker() as worker:
        store = await worker.run(Store, tmp_path)
        try:
            results = await worker.run(
                store.apply, [CreateQueue(QUEUES[0]), AppendMessage(QUEUES[0], b"42")]
            )
            assert results == [QueueCreated(QUEUES[0]), MessageAppended(1)]
            assert await worker.run(store.apply, [ReadNext(CLIENTS[0], QUEUES[0])]) == [
                MessageRead(1, b"42")
            ]
        finally:
            await worker.run(store.close)


def test_producer_states_are_bounded_and_evicted_alike(tmp_path, monkeypatch):
    """The least recently used producer is forgotten first, by both implementations."""
    import trio_broker._core._queues as queues_module
    import trio_broker._storage._producers_sql as producers_module

    monkeypatch.setattr(queues_module, "MAX_PRODUCERS", 2)
    monkeypatch.setattr(producers_module, "MAX_PRODUCERS", 2)
    q = QUEUES[0]
    commands = [
        CreateQueue(q),
        AppendMessage(q, b"1", "P-A", 1),
        AppendMessage(q, b"2", "P-B", 1),
        AppendMessage(q, b"3", "P-A", 2),  # P-A used more recently than P-B
        AppendMessage(q, b"4", "P-C", 1),  # evicts P-B
        AppendMessage(q, b"5", "P-A", 2),  # a retry: the original result, nothing added
        AppendMessage(q, b"6", "P-B", 1),  # P-B was forgotten: a fresh start; evicts P-A
        AppendMessage(q, b"7", "P-C", 9),  # a gap: refused
        AppendMessage(q, b"8", "P-A", 7),  # P-A was forgotten: any number starts afresh
    ]
    model = QueueState()
    expected = model.apply_all(commands)
    store = Store(tmp_path)
    try:
        assert store.apply(commands) == expected
    finally:
        store.close()
    seqs = [getattr(r, "sequence_num", None) for r in expected[1:]]
    assert seqs == [1, 2, 3, 4, 3, 5, None, 6]
    assert expected[5].duplicate is True
    assert expected[7].code == "OUT_OF_ORDER_SEQUENCE"
    assert sorted(model.producers) == [("P-A", q), ("P-B", q)]


def test_a_version_1_database_is_upgraded_in_place(tmp_path):
    """Schema upgrades by user_version: a database of the first release keeps its data."""
    import apsw

    from trio_broker._storage._schema import _V1

    db = apsw.Connection(str(tmp_path / DB_FILE))
    with db:
        db.execute(_V1)
        db.execute("PRAGMA user_version = 1")
        db.execute("INSERT INTO meta VALUES ('broker_id', 'B-OLDV1'), ('cluster_id', 'G-OLDV1')")
        db.execute("INSERT INTO queues VALUES ('Q-OLDV1AAAAA', 1)")
        db.execute("INSERT INTO queue_data VALUES ('Q-OLDV1AAAAA', 1, ?)", (b'"kept"',))
        db.execute("INSERT INTO client_positions VALUES ('C-OLD', 'Q-OLDV1AAAAA', 1)")
    db.close()
    store = Store(tmp_path)
    try:
        (version,) = store._db.execute("PRAGMA user_version").fetchone()
        assert version == SCHEMA_VERSION
        assert store.identity() == Identity("B-OLDV1", "G-OLDV1")
        assert store.messages("Q-OLDV1AAAAA") == [b'"kept"']
        assert store.positions() == {("C-OLD", "Q-OLDV1AAAAA"): 1}
        # The tables of later versions exist and work.
        assert store.apply([AppendMessage("Q-OLDV1AAAAA", b"1", "P-1", 1)]) == [MessageAppended(2)]
        assert store.log_size() == 0
    finally:
        store.close()


def test_a_version_3_database_is_upgraded_with_messages_of_unknown_age(tmp_path, monkeypatch):
    """Schema v4 (retention): rows of v3 keep their data and get an unknown age, which the age
    rule resolves with the first dated message after them, exactly as the reference does."""
    import apsw

    import trio_broker._core._queues as queues_module
    import trio_broker._storage._queue_sql as store_module
    from trio_broker._storage._schema import _V1, _V2, _V3

    q = "Q-OLDV3AAAAA"
    db = apsw.Connection(str(tmp_path / DB_FILE))
    with db:
        for script in (_V1, _V2, _V3):
            db.execute(script)
        db.execute("PRAGMA user_version = 3")
        db.execute("INSERT INTO meta VALUES ('broker_id', 'B-OLDV3'), ('cluster_id', 'G-OLDV3')")
        db.execute("INSERT INTO queues VALUES (?, 5)", (q,))
        for n in range(1, 6):
            db.execute("INSERT INTO queue_data VALUES (?, ?, ?)", (q, n, b"%d" % n))
        db.execute("INSERT INTO client_positions VALUES ('C-OLD', ?, 2)", (q,))
    db.close()
    # The same history in the reference: five appends that carry no stamp.
    model = QueueState()
    model.apply_all([CreateQueue(q)] + [AppendMessage(q, b"%d" % n) for n in range(1, 6)])
    model.positions[("C-OLD", q)] = 2
    monkeypatch.setattr(queues_module, "RETENTION_DELETES_PER_APPLY", 3)
    monkeypatch.setattr(store_module, "RETENTION_DELETES_PER_APPLY", 3)
    store = Store(tmp_path)
    try:
        (version,) = store._db.execute("PRAGMA user_version").fetchone()
        assert version == SCHEMA_VERSION == 8
        assert store.identity() == Identity("B-OLDV3", "G-OLDV3")
        _assert_store_matches(store, model)
        assert model.stamps[q] == [None] * 5
        commands = [
            SetRetention(q, RetentionPolicy(max_age_ms=100)),
            ApplyRetention(now_ms=10**6),  # unknown ages, no dated message: nothing goes
            AppendMessage(q, b"6", appended_ms=1000),
            AppendMessage(q, b"7", appended_ms=5000),
            ApplyRetention(now_ms=1050),  # #6 is not too old yet: nor are #1..#5
            ApplyRetention(now_ms=2000),  # #6 is: #1..#6 may go, three at a time
            ApplyRetention(now_ms=2000),
            ApplyRetention(now_ms=2000),
            ReadNext("C-OLD", q),
        ]
        results = store.apply(commands)
        assert results == model.apply_all(commands)
        assert [r.trimmed for r in results[4:8]] == [(), ((q, 4),), ((q, 7),), ()]
        assert results[8] == MessageRead(7, b"7")
        _assert_store_matches(store, model)
    finally:
        store.close()
    store = Store(tmp_path)
    try:
        _assert_store_matches(store, model)
        assert store.apply([AppendMessage(q, b"8")]) == [MessageAppended(8)]
    finally:
        store.close()


def test_a_compaction_that_arrives_after_a_later_one_changes_nothing(tmp_path):
    """Two compactions started together may reach the storage thread in either order (and a
    leader's snapshot may be installed in between): the snapshot point never moves back, so
    the broker still restarts from what it stored."""
    from trio_broker._core._raft_messages import Config, Entry, HardState, NoOp, SnapshotMeta

    config = Config(voters=frozenset({"B-AAAAA"}))
    store = Store(tmp_path)
    entries = [Entry(1, i, NoOp()) for i in range(1, 21)]
    store.save(hard_state=HardState(1, "B-AAAAA", 20), entries=entries, committed=entries)
    store.compact(SnapshotMeta(20, 1, config))
    store.compact(SnapshotMeta(15, 1, config))  # the older one, late
    assert (store.get_meta("snapshot_index"), store.log_size()) == (20, 0)
    store.close()
    store = Store(tmp_path)
    state = store.raft_state()
    assert (state.snapshot_index, state.hard_state.commit, state.entries) == (20, 20, [])
    store.close()


# -- the hard state: only what changed is written ---------------------------------------------

_hard_states = st.builds(
    HardState,
    term=st.integers(0, 3),
    voted_for=st.sampled_from([None, "B-AAAAA", "B-BBBBB"]),
    commit=st.integers(0, 3),
    recovering_until=st.integers(0, 2),
    recovering_term=st.integers(0, 2),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(states=st.lists(_hard_states, min_size=1, max_size=8))
def test_a_save_writes_the_fields_of_the_hard_state_that_changed_and_reads_back_whole(
    new_store_dir, states
):
    """Store.save writes only the hard-state fields that differ from what it last committed
    (usually the commit index alone): the table must still hold every field of the last
    hard state saved, after each save and once reopened."""
    path = new_store_dir("hs")
    store = Store(path)
    try:
        for hard_state in states:
            store.save(hard_state=hard_state)
            assert store.raft_state().hard_state == hard_state
    finally:
        store.close()
    store = Store(path)
    try:
        assert store.raft_state().hard_state == states[-1]
    finally:
        store.close()


def test_a_save_rolled_back_does_not_count_as_written(tmp_path):
    """A transaction whose commit fails rolls back the hard state it wrote: the next save of
    that same hard state must write it again, not take it for already stored."""
    store = Store(tmp_path)
    try:
        create = Entry(1, 1, CreateQueue("Q-AAAAA00001"))
        store.save(hard_state=HardState(1, "B-AAAAA", 0), entries=[create])
        next_state = HardState(2, "B-BBBBB", 1)
        store._db.set_commit_hook(lambda: True)  # (the commit fails: rolled back)
        with pytest.raises(apsw.ConstraintError):
            store.save(hard_state=next_state, committed=[create])
        store._db.set_commit_hook(None)
        assert store.raft_state().hard_state == HardState(1, "B-AAAAA", 0)
        store.save(hard_state=next_state)
        assert store.raft_state().hard_state == next_state
    finally:
        store.close()
