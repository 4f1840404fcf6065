"""A leader's apply in an acknowledgement's step answers before its transaction's COMMIT
(``InStep._apply_here``, ``Store.save(before_commit=...)``; docs/performance-history.md, "Answers
before the apply's COMMIT"): the answers are settled while the transaction is open, the views
are told once it committed, and a COMMIT that fails after the answers left (rolled back whole)
is applied again with the results already sent. Counts and outcomes, never timings."""

from __future__ import annotations

import apsw
import pytest
import trio

from trio_broker._core import _commands as cmd
from trio_broker._core._raft_messages import Entry, HardState
from trio_broker._storage import Store
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog
from trio_broker.testing import open_local_cluster

APPENDS = 30


def _entries(first: int, count: int) -> list[Entry]:
    return [
        Entry(1, first + i, cmd.AppendMessage("Q-1", b'"v"', None, None, 1_765_000_000_000))
        for i in range(count)
    ]


def test_before_commit_runs_inside_the_transaction_and_a_failure_rolls_it_back(tmp_path):
    """The hook sees the results inside the open transaction; if the transaction then fails
    (as a failed COMMIT does), nothing of it stays, and the same apply gives the same
    results."""
    store = Store(tmp_path)
    try:
        store.save(
            hard_state=HardState(1, None, 0),
            entries=[Entry(1, 1, cmd.CreateQueue("Q-1")), *_entries(2, 3)],
        )
        store.save(committed=[Entry(1, 1, cmd.CreateQueue("Q-1"))])
        committed = _entries(2, 3)
        seen: list[tuple[bool, list[object]]] = []

        def failing(results: list[object]) -> None:
            seen.append((store._db.in_transaction, list(results)))
            raise apsw.FullError("database or disk is full")  # (rolled back, as a COMMIT's)

        with pytest.raises(apsw.FullError):
            store.save(hard_state=HardState(1, None, 4), committed=committed, before_commit=failing)
        assert store.get_meta("applied_index") == 1 and store.queue_lengths() == {"Q-1": 0}
        again = store.save(
            hard_state=HardState(1, None, 4),
            committed=committed,
            before_commit=lambda results: seen.append((store._db.in_transaction, results)),
        )
        assert seen[0] == (True, again) and seen[1][0] is True
        assert again == [cmd.MessageAppended(n) for n in (1, 2, 3)]
        assert store.get_meta("applied_index") == 4 and store.queue_lengths() == {"Q-1": 3}
        with pytest.raises(ValueError):  # (never for a transaction that makes entries durable)
            store.save(entries=_entries(5, 1), before_commit=lambda results: None)
    finally:
        store.close()


def test_a_store_on_the_shared_log_calls_the_hook_in_its_apply_stage(tmp_path):
    """With several groups per broker (the shared log) a save's apply stage is its own
    transaction: the hook runs inside it; a journal stage, which applies nothing, refuses it."""
    log = SharedLog(tmp_path / SHARED_LOG_FILE)
    store = Store(tmp_path / "G0", shared=log)
    try:
        create = Entry(1, 1, cmd.CreateQueue("Q-1"))
        store.save(hard_state=HardState(1, None, 0), entries=[create, *_entries(2, 2)])
        seen: list[tuple[bool, list[object]]] = []
        results = store.save(
            hard_state=HardState(1, None, 3),
            committed=[create, *_entries(2, 2)],
            before_commit=lambda results: seen.append((store._db.in_transaction, list(results))),
        )
        assert seen == [(True, results)] and results[1:] == [cmd.MessageAppended(n) for n in (1, 2)]
        with pytest.raises(ValueError):
            store.save(stage="journal", committed=(), before_commit=lambda results: None)
        writes: list[object] = []
        write = log.write
        log.write = lambda *args, **kwargs: writes.append(args) or write(*args, **kwargs)  # type: ignore[method-assign]
        with pytest.raises(ValueError):  # (refused before the shared log's row is written)
            store.save(
                hard_state=HardState(1, None, 3),
                entries=[Entry(1, 4, cmd.CreateQueue("Q-2"))],
                before_commit=lambda results: None,
            )
        assert writes == []
    finally:
        store.close()
        log.close()


async def _appending(tmp_path, body) -> list[int]:
    """Five appends, then ``body``'s, each of its own value; every broker ends with the same
    queue, and each value the client was told is at a sequence number is stored there. The
    sequence numbers answered, in order (an "outcome unknown" answer adds none)."""
    from tests.test_seq_turns import same_queue_lengths
    from tests.wire import RawConnection, create_queue

    answered: list[tuple[int, bytes]] = []
    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)

        async def call() -> None:
            nonlocal connection
            data = f"m{len(answered)}-{trio.current_time()}"
            append = {"operation": "APPEND", "queue_name": queue_id, "data": data}
            answer = await connection.call(append)
            while answer.get("code") == "NOT_LEADER":  # (refused: a rebuilt core's election)
                await trio.sleep(0.05)
                await connection.aclose()
                connection = await RawConnection.open((await c.wait_for_leader()).port)
                answer = await connection.call(append)
            if answer.get("outcome") == "unknown":  # (in flight when the core was rebuilt)
                return
            assert answer.get("status") == "success", answer
            answered.append((answer["sequence_num"], f'"{data}"'.encode()))

        for _ in range(5):  # (the links connected, the replicas caught up)
            await call()
        await body(leader, call)
        await connection.aclose()
        lengths = await same_queue_lengths(c)
        for broker in c.brokers.values():
            stored = await broker.driver._worker.run(broker.driver._store.messages, queue_id)
            assert len(stored) == lengths[queue_id] >= len(answered)
            assert [stored[seq - 1] for seq, _ in answered] == [data for _, data in answered]
    return [seq for seq, _ in answered]


async def test_answers_are_settled_before_the_commit_and_views_told_after(tmp_path):
    """Before: the apply's answers left after its COMMIT. Now they are settled inside the
    transaction (its COMMIT not yet run), and the views are told after it."""
    settled: list[bool] = []
    told: list[bool] = []

    async def body(leader, call) -> None:
        driver = leader.driver
        db = driver._store._db
        settle, on_applied = driver._settle_applied, driver._on_applied
        before = driver.applied_in_step

        def settle_applied(tokens, outcomes):
            if tokens:
                settled.append(db.in_transaction)
            settle(tokens, outcomes)

        def views(payload, result):
            if isinstance(payload, cmd.AppendMessage):
                told.append(db.in_transaction)
            on_applied(payload, result)

        driver._settle_applied, driver._on_applied = settle_applied, views
        try:
            for _ in range(APPENDS):
                await call()
        finally:
            del driver._settle_applied, driver._on_applied
        assert driver.applied_in_step - before >= APPENDS / 2

    assert await _appending(tmp_path, body) == list(range(1, 6 + APPENDS))
    assert settled.count(True) >= APPENDS / 2, settled  # (the applies in a step)
    assert told and not any(told), told  # (views only once committed)


def _lock_error() -> apsw.IOError:
    """An I/O error that lost no write (a lock): a failed fsync or write stops the broker
    instead (tests/test_failed_fsync.py)."""
    error = apsw.IOError("disk I/O error")
    error.extendedresult = apsw.SQLITE_IOERR_LOCK
    return error


@pytest.mark.parametrize(
    "failure",
    [lambda: apsw.FullError("database or disk is full"), lambda: _lock_error()],
    ids=["disk full", "I/O error"],
)
async def test_a_commit_that_fails_after_the_answers_left_keeps_them_true(tmp_path, failure):
    """Every third apply in a step fails after its answers left (the transaction rolled back
    whole, as a failed COMMIT does): out of space, the driver's own path applies the same
    Ready again; any other error rebuilds the core from disk, which applies them again from
    the log. Either way every APPEND was answered success with the sequence number it is
    stored at, once, on every broker."""
    failed: list[int] = []

    async def body(leader, call) -> None:
        store = leader.driver._store
        save = store.save
        calls = 0

        def failing_save(**kwargs):
            nonlocal calls
            answer = kwargs.get("before_commit")
            if answer is not None:  # (_apply_here's call)
                calls += 1
                if calls % 3 == 0 and len(failed) < 3:

                    def answer_then_fail(results):
                        answer(results)
                        failed.append(calls)
                        raise failure()  # (inside the transaction: rolled back whole)

                    kwargs["before_commit"] = answer_then_fail
            return save(**kwargs)

        store.save = failing_save
        try:
            for _ in range(APPENDS):
                await call()
        finally:
            del store.save

    answered = await _appending(tmp_path, body)
    assert answered == sorted(set(answered))  # (and each value is where it was told: above)
    if isinstance(failure(), apsw.FullError):  # (the same Ready again: nobody else failed)
        assert len(failed) == 3
        assert answered == list(range(1, 6 + APPENDS))
    else:  # (the rebuilt core steps down: the failures end with its leadership)
        assert failed


def test_only_what_is_read_back_through_the_applied_index_is_answered_before_the_commit():
    """A queue created (by name or not), a work group's command, retention, membership: some
    request reads their effect straight from the store, so a COMMIT that failed (and stays
    failed while the disk is full) would leave an answer the next RESOLVE_QUEUE contradicts.
    They answer after the COMMIT; appends, reads, acks, seeks and groups of them before."""
    from trio_broker._core import _work_commands as work
    from trio_broker._core._raft_messages import NoOp
    from trio_broker._runtime._in_step import answers_early

    append = cmd.AppendMessage("Q-1", b"1", None, None, 1)
    read = cmd.ReadNext("C-1", "Q-1")
    early = [append, read, cmd.CommandGroup((append, read)), NoOp()]
    late = [
        work.CreateNamedQueue("Q-2", "orders"),
        cmd.CreateQueue("Q-2"),
        cmd.SetRetention("Q-1", None),
        cmd.CommandGroup((append, cmd.CreateQueue("Q-2"))),
    ]
    assert answers_early([Entry(1, n, p) for n, p in enumerate(early, 1)])
    for payload in late:
        assert not answers_early([Entry(1, 1, append), Entry(1, 2, payload)]), payload


async def test_a_named_queues_creation_is_answered_after_its_commit(tmp_path):
    """On a running leader: the in-step applies of CREATE_QUEUE by name take no hook (their
    answer waits for the COMMIT), those of appends take one."""
    from tests.wire import RawConnection

    hooks: dict[str, list[bool]] = {"named": [], "appends": []}
    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        connection = await RawConnection.open(leader.port)
        store = leader.driver._store
        save = store.save

        def recording_save(**kwargs: object) -> object:
            kinds = {type(e.payload).__name__ for e in kwargs.get("committed") or ()}  # type: ignore[attr-defined]
            if "CreateNamedQueue" in kinds:
                hooks["named"].append(kwargs.get("before_commit") is not None)
            elif kinds == {"AppendMessage"}:
                hooks["appends"].append(kwargs.get("before_commit") is not None)
            return save(**kwargs)

        store.save = recording_save
        try:
            for n in range(APPENDS):
                created = await connection.call({"operation": "CREATE_QUEUE", "name": f"q{n}"})
                assert created["status"] == "success"
                appended = await connection.call(
                    {"operation": "APPEND", "queue_name": f"q{n}", "data": n}
                )
                assert appended["status"] == "success"
        finally:
            await connection.aclose()
    assert hooks["named"] and not any(hooks["named"]), hooks
    assert any(hooks["appends"]), hooks


def test_the_hook_runs_before_the_metadata_rows_and_their_failure_rolls_back(tmp_path):
    """The answers leave once the apply's statements ran, before the commit and applied
    indexes' rows (docs/performance-history.md, "One client, one append at a time: the critical path
    (eighth round)"): a meta row written before the hook was on the client's wait. A failure
    in those rows after the hook rolls the transaction back whole, as a failed COMMIT does,
    and the same apply gives the same results."""
    store = Store(tmp_path)
    try:
        create = Entry(1, 1, cmd.CreateQueue("Q-1"))
        store.save(hard_state=HardState(1, None, 0), entries=[create, *_entries(2, 2)])
        store.save(committed=[create])
        trace: list[str] = []

        def tracer(cursor: object, sql: str, bindings: object) -> bool:
            trace.append(sql)
            return True

        store._db.exec_trace = tracer
        results = store.save(
            hard_state=HardState(1, None, 2),
            committed=_entries(2, 1),
            before_commit=lambda results: trace.append("ANSWERED"),
        )
        store._db.exec_trace = None
        assert results == [cmd.MessageAppended(1)]
        answered = trace.index("ANSWERED")
        assert any("queues" in sql for sql in trace[:answered]), trace  # (the apply before)
        assert not any("meta" in sql for sql in trace[:answered]), trace
        # (the applied index's row says the commit index too: it is not written apart)
        assert sum("INSERT INTO meta" in sql for sql in trace[answered:]) == 1, trace
        assert store.get_meta("applied_index") == 2
        assert store.raft_state().hard_state.commit == 2

        set_meta, answered_with = store._set_meta, []

        def full(items: dict[str, object]) -> None:
            raise apsw.FullError("database or disk is full")

        store._set_meta = full  # type: ignore[method-assign]
        with pytest.raises(apsw.FullError):
            store.save(
                hard_state=HardState(1, None, 3), committed=_entries(3, 1),
                before_commit=answered_with.append,
            )  # fmt: skip
        store._set_meta = set_meta  # type: ignore[method-assign]
        assert answered_with == [[cmd.MessageAppended(2)]]
        assert store.get_meta("applied_index") == 2 and store.queue_lengths() == {"Q-1": 1}
        again = store.save(hard_state=HardState(1, None, 3), committed=_entries(3, 1))
        assert again == answered_with[0] and store.get_meta("applied_index") == 3
    finally:
        store.close()
