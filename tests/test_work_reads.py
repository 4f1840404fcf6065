"""Work-queue reads that change nothing are answered after a ReadIndex check, without a log
entry (``_runtime/_reads.py``, docs/replication.md "Work-queue reads without a log entry"):
exactly those whose apply would change nothing (``group_read_changes``, the SQLite twin's
rolled-back run), never missing a message appended during a long poll, never from a deposed
leader; expiries and NACK delays still lease through the log."""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_broker._core import QueueState
from trio_broker._core._commands import CreateQueue
from trio_broker._core._work import group_read_changes
from trio_broker._core._work_commands import GroupRead, GroupSettings, JoinGroup
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._runtime._reads import query, trial_read
from trio_broker._storage import Store
from trio_broker.testing import open_local_cluster, open_mock_cluster

from .test_metrics import scrape
from .test_read_index import FT, append, last_index, started, within_deadline
from .test_work_queues import (
    DLQ,
    QUEUES,
    Q,
    _assert_work_matches,
    _model_dump,
    _state_aware_command,
)
from .wire import call, create_queue

# -- the decision: exactly when the apply would change nothing ----------------------------------


def _state_of(model: QueueState) -> tuple:
    return _model_dump(model), {q: model.queue_length(q) for q in model.messages}


def test_a_group_read_changes_nothing_exactly_when_the_rule_and_the_sqlite_run_say_so(
    ram_path_factory,
):
    """On long state-aware histories (leases, expiries, NACK delays, dead letters, retention,
    ``max_in_flight``), before each GroupRead, and before extra reads at later clocks: the
    pure rule, the in-memory trial and the SQLite store's rolled-back run all say "changes
    nothing" exactly when applying it leaves the reference state as it was; then their result
    is the applied one, and the SQLite run left the store unchanged."""
    outcomes: set[bool] = set()

    @settings(
        max_examples=5,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(seed=st.integers(min_value=0, max_value=2**32))
    def run(seed):
        rng = random.Random(seed)
        model = QueueState()
        store = Store(ram_path_factory.mktemp("decide"))
        try:
            first = [CreateQueue(q) for q in QUEUES] + [
                JoinGroup(Q, "g1", GroupSettings(30, 2, DLQ, 4))
            ]
            assert store.apply(first) == model.apply_all(first)
            for _ in range(200):
                command = _state_aware_command(rng, model)
                reads = [command] if isinstance(command, GroupRead) else []
                for key in list(model.work.groups)[:2]:  # (later clocks: expiries, delays)
                    reads.append(GroupRead(*key, "m9", rng.randrange(1, 3), rng.randrange(0, 400)))
                for read in reads:
                    _check_one(store, model, read, outcomes)
                expected = model.apply(command)
                assert store.apply([command]) == [expected], command
            _assert_work_matches(store, model)  # (every run was rolled back)
        finally:
            store.close()

    run()
    assert outcomes == {True, False}  # (the histories reach both)


def _check_one(store: Store, model: QueueState, read: GroupRead, outcomes: set[bool]) -> None:
    before = _state_of(model)
    changes = group_read_changes(model, read)
    trial, trial_changed = trial_read(model, read)
    assert _state_of(model) == before  # (the trial changed nothing)
    ((sql_result, sql_changed),) = query(store, [read])
    twin = _copy_for(model, read)
    applied = twin.apply(read)
    assert _state_of(model) == before  # (the copy shares nothing the read changes)
    changed = _state_of(twin) != before
    outcomes.add(changed)
    assert changes == changed == trial_changed == sql_changed, read
    if not changed:
        assert trial == applied == sql_result, read


def test_a_waiting_message_behind_the_deleted_front_is_a_change():
    """A state from before retention kept groups' unfinished messages may hold a message
    waiting for a redelivery that retention deleted since: the read drops it (a change),
    whatever its delay."""
    from trio_broker._core._work import Pending

    model = QueueState()
    model.apply_all([CreateQueue(Q), JoinGroup(Q, "g1")])
    model.messages[Q].extend([b"1", b"2"])
    model.stamps[Q].extend([0, 0])
    group = model.work.groups[(Q, "g1")]
    group.cursor = 2
    group.pending = {1: Pending(1, None, until_ms=10**9), 2: Pending(1, "m", until_ms=10**9)}
    read = GroupRead(Q, "g1", "m", 1, now_ms=5)
    assert not group_read_changes(model, read)  # (both still due later, nothing past 2)
    model.messages[Q].pop(0)  # (retention deleted message 1)
    model.deleted[Q] = 1
    assert group_read_changes(model, read)
    twin = _copy_for(model, read)
    assert twin.apply(read).messages == () and 1 not in twin.work.groups[(Q, "g1")].pending


def _copy_for(model: QueueState, read: GroupRead) -> QueueState:
    """A copy of what a GroupRead may change (its group; the queues, for dead letters); the
    rest shared (deepcopying the whole state made this test ten times slower)."""
    twin = copy.copy(model)
    twin.work = copy.copy(model.work)
    twin.work.groups = dict(model.work.groups)
    key = (read.queue_id, read.group)
    if key in twin.work.groups:
        twin.work.groups[key] = copy.deepcopy(model.work.groups[key])
    twin.work.headers = {q: dict(h) for q, h in model.work.headers.items()}
    for name in ("messages", "stamps"):
        setattr(twin, name, {q: list(v) for q, v in getattr(model, name).items()})
    twin.last_stamp = dict(model.last_stamp)
    return twin


# -- the broker: no log entry for an idle group's reads ------------------------------------------


def group_read(queue_id: str, member: str = "m1", **fields) -> dict:
    return {
        "operation": "GROUP_READ",
        "queue_name": queue_id,
        "group": "workers",
        "member": member,
        **fields,
    }


async def joined(cluster, **settings_) -> tuple[str, str]:
    leader, queue_id = await started(cluster)
    r = await cluster.call(
        leader, {"operation": "GROUP_JOIN", "queue_name": queue_id, "group": "workers", **settings_}
    )
    assert r["status"] == "success", r
    return leader, queue_id


async def idle(cluster, leader: str, queue_id: str) -> None:
    """The group's first empty read: through the log (nothing said it would find nothing)."""
    r = await cluster.call(leader, group_read(queue_id, member="m0"))
    assert r["status"] == "success" and r["messages"] == [], r


@within_deadline
async def test_an_idle_groups_reads_write_no_log_entry(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await joined(cluster)
        await idle(cluster, leader, queue_id)
        reads = cluster.brokers[leader].driver.reads
        before, served = last_index(cluster, leader), reads.served
        for member in ("m1", "m2", "m3"):
            r = await cluster.call(leader, group_read(queue_id, member=member, max_messages=5))
            assert (r["status"], r["messages"], r["in_flight"]) == ("success", [], 0), r
        assert last_index(cluster, leader) == before
        assert reads.served == served + 3
        # An append makes the group deliver again, through the log.
        await append(cluster, leader, queue_id, "x")
        r = await cluster.call(leader, group_read(queue_id))
        assert [(m["data"], m["delivery_count"]) for m in r["messages"]] == [("x", 1)]
        assert last_index(cluster, leader) == before + 2


@within_deadline
async def test_a_long_poll_writes_nothing_and_gets_a_message_appended_during_it(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await joined(cluster)
        await idle(cluster, leader, queue_id)
        reads = cluster.brokers[leader].driver.reads
        before, served = last_index(cluster, leader), reads.served
        r = await cluster.call(leader, group_read(queue_id, wait_ms=2500))
        assert r["messages"] == [], r
        assert last_index(cluster, leader) == before
        assert reads.served >= served + 3  # (the first read and a round a second at least)
        at_append: list[int] = []

        async def append_later():
            await trio.sleep(1.3)
            at_append.append(last_index(cluster, leader))
            await append(cluster, leader, queue_id, 7)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_later)
            r = await cluster.call(leader, group_read(queue_id, member="m2", wait_ms=5000))
        assert [(m["sequence_num"], m["data"]) for m in r["messages"]] == [(1, 7)]
        assert at_append == [before]  # (its rounds before the append wrote nothing)


@pytest.mark.parametrize("how", ["expiry", "nack_delay"])
@within_deadline
async def test_a_lease_due_by_the_clock_alone_is_redelivered_through_the_log(autojump_clock, how):
    """No command says an expired lease or a NACK's ended delay made a message deliverable:
    the idle hint holds, and the run on the applied state, by the read's clock, sends the read
    to the log, which leases the message again (the leader's expiry sweep is off here, so
    that the read is the one to find it)."""
    async with open_mock_cluster(3, wall_clock=trio.current_time) as cluster:
        leader, queue_id = await joined(cluster, visibility_ms=1000)
        cluster.brokers[leader].work._may_sweep = lambda: False
        await append(cluster, leader, queue_id, "job")
        r = await cluster.call(leader, group_read(queue_id, member="m1"))
        assert [m["delivery_count"] for m in r["messages"]] == [1]
        if how == "nack_delay":
            r = await cluster.call(
                leader,
                {
                    "operation": "GROUP_NACK",
                    "queue_name": queue_id,
                    "group": "workers",
                    "member": "m1",
                    "sequence_nums": [1],
                    "delay_ms": 1000,
                },
            )
            assert r["changed"] == [1], r
        await idle(cluster, leader, queue_id)
        reads = cluster.brokers[leader].driver.reads
        before, served, logged = last_index(cluster, leader), reads.served, reads.sent_to_log
        r = await cluster.call(leader, group_read(queue_id, member="m2"))
        assert (r["messages"], r["in_flight"]) == ([], 1), r
        assert (last_index(cluster, leader), reads.served) == (before, served + 1)
        await trio.sleep(1.5)
        r = await cluster.call(leader, group_read(queue_id, member="m2"))
        assert [(m["data"], m["delivery_count"]) for m in r["messages"]] == [("job", 2)]
        assert reads.sent_to_log == logged + 1
        assert last_index(cluster, leader) == before + 1


@within_deadline
async def test_a_deposed_leader_never_answers_an_empty_group_read(autojump_clock):
    """As for READ (tests/test_read_index.py): the old leader, cut off and still believing it
    leads, knows the group idle; a message appended on the new leader meanwhile must not be
    answered "nothing" by it. Its reads wait for a round that never comes, and fail (counted)
    once it learns the new term."""
    async with open_mock_cluster(3) as cluster:
        old, queue_id = await joined(cluster)
        await idle(cluster, old, queue_id)
        before = last_index(cluster, old)
        reads = cluster.brokers[old].driver.reads
        failed = reads.failed
        cluster.brokers[old].driver.node.check_quorum = False
        cluster.isolate(old)
        new = cluster.name_of(await cluster.wait_for_leader(among=cluster.majority()))
        assert new != old
        await append(cluster, new, queue_id, "after")
        answers: list[dict] = []

        async def ask(request):
            answers.append(await cluster.call(old, request, src=old))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, group_read(queue_id))
            nursery.start_soon(ask, group_read(queue_id, member="m2", wait_ms=3000))
            await trio.sleep(4 * FT)
            assert last_index(cluster, old) == before  # (both wait for a round)
            assert cluster.brokers[old].driver.node.is_leader and answers == []
            cluster.heal()
        assert len(answers) == 2
        for r in answers:
            assert r["status"] == "error" and r["code"] == "NOT_LEADER", r
        assert reads.failed == failed + 2
        r = await cluster.call(new, group_read(queue_id))
        assert [m["data"] for m in r["messages"]] == ["after"]


# -- SQLite and the metrics ---------------------------------------------------------------------


async def test_an_empty_group_read_on_sqlite_is_undone_and_a_due_lease_takes_the_log(ram_path):
    """The SQLite store's run-and-undo: an idle group's read answers from a rolled-back
    transaction and leaves no trace (the lease it ran next to is untouched); once the lease
    is due by the read's clock alone, the run would write, and the read takes the log."""
    async with open_broker(BrokerConfig(data_dir=ram_path / "b", port=0)) as broker:
        broker.work._may_sweep = lambda: False
        with trio.fail_after(30):
            queue_id = await create_queue(broker.port)
            join = {"operation": "GROUP_JOIN", "queue_name": queue_id, "group": "workers"}
            await call(broker.port, {**join, "visibility_ms": 300})
            await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": 1})
            r = await call(broker.port, group_read(queue_id, member="m1"))
            assert [m["data"] for m in r["messages"]] == [1]
            await call(broker.port, group_read(queue_id, member="m0"))  # (the log: idle now)
            reads, before = broker.driver.reads, broker.driver.node.log.last_index
            for _ in range(3):
                r = await call(broker.port, group_read(queue_id, member="m2"))
                assert (r["messages"], r["in_flight"]) == ([], 1), r
            assert broker.driver.node.log.last_index == before
            assert (reads.served, reads.sent_to_log) == (3, 0)
            await trio.sleep(0.4)
            r = await call(broker.port, group_read(queue_id, member="m2"))
            assert [(m["data"], m["delivery_count"]) for m in r["messages"]] == [(1, 2)]
            assert reads.sent_to_log == 1
            assert broker.driver.node.log.last_index == before + 1


async def test_the_read_index_counters_are_in_the_metrics(ram_path):
    with trio.fail_after(30):
        async with open_local_cluster(ram_path, 3, metrics_port=0) as cluster:
            leader = await cluster.wait_for_voters(3)
            queue_id = await create_queue(leader.port)
            join = {"operation": "GROUP_JOIN", "queue_name": queue_id, "group": "workers"}
            await call(leader.port, join)
            m = await scrape(leader.metrics_port)
            reads = "trio_broker_read_index_reads_total"
            rounds = m[("trio_broker_read_index_rounds_total", ())]
            answered = m[(reads, (("outcome", "answered"),))]
            assert m[(reads, (("outcome", "failed"),))] == 0
            # (every documented series present: a rejection, a client behind on a queue)
            await call(leader.port, {"operation": "NOPE"})
            other = await create_queue(leader.port)
            for value in (1, 2):
                await call(leader.port, {"operation": "APPEND", "queue_name": other, "data": value})
            await call(leader.port, {"operation": "READ", "queue_name": other, "client_id": "C-1"})
            for _ in range(4):  # (the first through the log: then the group is idle)
                r = await call(leader.port, group_read(queue_id))
                assert r["messages"] == [], r
            m = await scrape(leader.metrics_port)
            assert m[(reads, (("outcome", "answered"),))] == answered + 3
            assert m[("trio_broker_read_index_rounds_total", ())] >= rounds + 1
            assert m[(reads, (("outcome", "logged"),))] == 0
            # docs/operations.md's table names only what a broker exports.
            exported = {name for name, _ in m}
            for name in _documented_metrics():
                assert exported & {name, f"{name}_count"}, name


def _documented_metrics() -> set[str]:
    guide = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
    rows = [line for line in guide.read_text().splitlines() if line.startswith("| `trio_broker_")]
    names = {n for row in rows for n in re.findall(r"`(trio_broker_\w+)", row.split(" | ")[0])}
    assert "trio_broker_read_index_reads_total" in names
    return names


@within_deadline
async def test_waiting_polls_reread_together_and_share_a_round(autojump_clock):
    """The once-a-second re-reads of polls that started at different moments fall on the same
    instants (``next_recheck``): each instant's reads share one heartbeat round."""
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await joined(cluster)
        await idle(cluster, leader, queue_id)
        driver = cluster.brokers[leader].driver
        served, rounds = driver.reads.served, driver.node.reads.read_rounds

        async def poll(n: int) -> None:
            await trio.sleep(0.1 * n)
            r = await cluster.call(leader, group_read(queue_id, member=f"m{n}", wait_ms=4000))
            assert r["messages"] == [], r

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(poll, n)
        reads = driver.reads.served - served
        # Each poll: its first read, about four re-reads, one at its end (48 here).
        assert reads >= 8 * 5
        # Its first and last reads are their own rounds; the re-reads of the eight share
        # one a second (20 here; 40 with each poll re-reading on its own second).
        assert driver.node.reads.read_rounds - rounds <= 8 * 2 + 6
