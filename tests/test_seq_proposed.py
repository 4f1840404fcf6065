"""One client, one APPEND at a time: the proposing task turns its proposal into the entry,
writes the REPLICATEs and persists the entry itself (``InStep._proposed``), without a turn
of the leader's driver; a burst of requests still becomes one group in the driver's Ready;
the leader counts its own copy only after its fsync. Counts and outcomes, never timings."""

from __future__ import annotations

import apsw
import trio

from tests.test_seq_turns import _DriverSteps, same_queue_lengths
from tests.wire import RawConnection, create_queue
from trio_broker._runtime import _driver
from trio_broker._runtime._disk_space import DiskState
from trio_broker.testing import open_local_cluster

APPENDS = 40


async def _appending(tmp_path, body) -> None:
    """A three-broker cluster, a queue and a connection to its leader that appends once
    (``call``) after five appends (the links connected, the replicas caught up); then
    ``body(cluster, leader, call, queue_id)``; then every broker holds what was answered."""
    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        append = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}
        answered: list[int] = []
        extra = [0]  # (appends answered success on other connections)

        async def call() -> dict:
            answer = await connection.call(append)
            answered.append(answer.get("status") == "success")
            return answer

        for _ in range(5):
            assert (await call()).get("status") == "success"
        extra[0] = await body(c, leader, call, queue_id) or 0
        await connection.aclose()
        lengths = await same_queue_lengths(c)
        assert lengths[queue_id] == sum(answered) + extra[0]


async def test_a_lone_proposal_is_replicated_and_persisted_by_the_proposing_task(
    tmp_path, monkeypatch
):
    """Before: every sequential append woke the leader's driver for its entry's Ready (one
    step per append, the REPLICATE written in it). Now the proposing task takes it.

    Every fsync counts as quick: a durable save measured at ``SLOW_FSYNC`` or more sends the
    next ones to the storage thread by design (``runs_in_place``), two driver steps each, and
    on a loaded machine the measure (the loop's latency included) stays above it for long
    runs: the count would be a timing."""
    monkeypatch.setattr(_driver, "SLOW_FSYNC", float("inf"))
    counted: list[tuple[int, int]] = []

    async def body(cluster, leader, call, queue_id) -> None:
        driver = leader.driver
        steps = _DriverSteps(driver)
        before = getattr(driver, "proposed_in_step", 0)
        trio.lowlevel.add_instrument(steps)
        try:
            for _ in range(APPENDS):
                assert (await call()).get("status") == "success"
        finally:
            trio.lowlevel.remove_instrument(steps)
        counted.append((steps.steps, getattr(driver, "proposed_in_step", 0) - before))

    await _appending(tmp_path, body)
    ((steps, proposed),) = counted
    assert proposed >= APPENDS / 2, proposed
    assert steps <= 0.5 * APPENDS, steps  # (before: about one per append)


async def test_the_leader_counts_its_entry_only_after_its_own_fsync(tmp_path):
    """Raft's rule for a leader that sends before it persists (``Ready``'s rule 1): while the
    transaction that writes its new entry has not committed, the core's own persisted index
    is below the entry (it reaches it only at ``advance()``), and the commit index is at most
    what a majority holds counting the leader by that persisted index (both replicas may
    commit the entry before the leader's fsync: a majority without it)."""
    seen: list[tuple[int, int, int, int]] = []

    async def body(cluster, leader, call, queue_id) -> None:
        driver = leader.driver
        store = driver._store
        save = store.save

        def watching_save(**kwargs):
            entries = kwargs.get("entries") or ()
            node = driver.node
            if entries and node.is_leader:
                persisted = node.log.persisted_index
                matches = sorted(
                    [persisted]
                    + [pr.match for peer, pr in node.progress.items() if peer != node.id],
                    reverse=True,
                )
                majority = matches[node.config.quorum() - 1]
                seen.append((entries[-1].index, persisted, node.commit, majority))
            return save(**kwargs)

        store.save = watching_save
        before = driver.proposed_in_step
        try:
            for _ in range(APPENDS):
                assert (await call()).get("status") == "success"
        finally:
            del store.save
        assert driver.proposed_in_step - before >= APPENDS / 2
        assert driver.node.log.persisted_index == driver.node.log.last_index

    await _appending(tmp_path, body)
    assert len(seen) >= APPENDS
    for index, persisted, commit, majority in seen:
        assert persisted < index and commit <= majority, (index, persisted, commit, majority)


async def test_a_burst_after_lone_appends_is_one_group_in_the_drivers_ready(tmp_path):
    """After lone appends (the proposing task takes their Readies), a burst of requests from
    many connections at once: at most the first is taken by its proposing task, the rest
    wait in the ledger for the driver's next Ready (the group commit stays whole)."""
    counted: list[tuple[int, int]] = []
    clients = 20

    async def body(cluster, leader, call, queue_id) -> None:
        driver = leader.driver
        port = leader.port
        connections = [await RawConnection.open(port) for _ in range(clients)]
        append = {"operation": "APPEND", "queue_name": queue_id, "data": "y" * 100}
        for _ in range(APPENDS):
            assert (await call()).get("status") == "success"
        before = driver.proposed_in_step
        grouped = driver._ledger.grouped
        answers: list[dict] = []

        async def one(connection: RawConnection) -> None:
            answers.append(await connection.call(append))

        async with trio.open_nursery() as nursery:
            for connection in connections:
                nursery.start_soon(one, connection)
        for connection in connections:
            await connection.aclose()
        assert [a.get("status") for a in answers] == ["success"] * clients
        counted.append((driver.proposed_in_step - before, driver._ledger.grouped - grouped))
        return clients

    await _appending(tmp_path, body)
    ((proposed, grouped),) = counted
    assert proposed <= 1, proposed
    assert grouped >= 1, grouped


async def test_a_failed_persist_by_the_proposing_task_goes_to_the_driver_and_is_stored_once(
    tmp_path,
):
    """Every third transaction the proposing task runs fails for lack of space (rolled back
    whole, as SQLite's full disk does): the driver's task runs the same Ready again (its
    REPLICATEs already sent); every APPEND is answered success and stored once everywhere."""
    failed: list[int] = []

    async def body(cluster, leader, call, queue_id) -> None:
        driver = leader.driver
        store = driver._store
        save = store.save
        calls = 0

        def failing_save(**kwargs):
            nonlocal calls
            if kwargs.keys() == {"hard_state", "entries", "committed"} and kwargs["entries"]:
                calls += 1  # (the proposing task's: the driver's passes more arguments)
                if calls % 3 == 0:
                    failed.append(calls)
                    raise apsw.FullError("database or disk is full")
            return save(**kwargs)

        store.save = failing_save
        try:
            for _ in range(APPENDS):
                assert (await call()).get("status") == "success"
        finally:
            del store.save
        assert driver.disk.state is DiskState.OK

    await _appending(tmp_path, body)
    assert len(failed) >= 3
