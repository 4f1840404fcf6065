"""Reads that change nothing are answered after a ReadIndex check, without a log entry
(``_runtime/_reads.py``), with the answers the log gave, and linearizable: they see every
acknowledged write, and a deposed leader never answers one from its stale state."""

from __future__ import annotations

import functools

import attrs
import pytest
import trio

from trio_broker._core._raft_messages import HeartbeatResponse
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker.testing import open_mock_cluster
from trio_broker.testing._mock_cluster import CLIENT

from .wire import RawConnection, call, create_queue

FT = BrokerConfig(data_dir="unused").failure_timeout
HB = BrokerConfig(data_dir="unused").heartbeat_interval
DEADLINE = 40 * FT


def within_deadline(test):
    @functools.wraps(test)
    async def wrapper(*args, **kwargs):
        with trio.fail_after(DEADLINE):
            await test(*args, **kwargs)

    return wrapper


def peek(queue_id: str, client: str = "C-PEEK1", count: int = 10) -> dict:
    return {
        "operation": "READ",
        "queue_name": queue_id,
        "client_id": client,
        "mode": "peek",
        "max_messages": count,
    }


def read(queue_id: str, client: str = "C-READ1", **fields) -> dict:
    return {"operation": "READ", "queue_name": queue_id, "client_id": client, **fields}


async def started(cluster) -> tuple[str, str]:
    leader = cluster.name_of(await cluster.stabilize())
    r = await cluster.call(leader, {"operation": "CREATE_QUEUE"})
    assert r["status"] == "success", r
    return leader, r["queue_id"]


async def append(cluster, name: str, queue_id: str, value) -> int:
    r = await cluster.call(name, {"operation": "APPEND", "queue_name": queue_id, "data": value})
    assert r["status"] == "success", r
    return r["sequence_num"]


def last_index(cluster, name: str) -> int:
    return cluster.brokers[name].driver.node.log.last_index


@within_deadline
async def test_a_peek_writes_no_log_entry_and_sees_every_acknowledged_append(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        for value in range(3):
            await append(cluster, leader, queue_id, value)
        before = last_index(cluster, leader)
        served = cluster.brokers[leader].driver.reads.served
        for _ in range(3):
            r = await cluster.call(leader, peek(queue_id))
            assert r["status"] == "success"
            assert [m["data"] for m in r["messages"]] == [0, 1, 2]
        assert last_index(cluster, leader) == before
        assert cluster.brokers[leader].driver.reads.served == served + 3


@within_deadline
async def test_list_queues_is_confirmed_and_writes_nothing(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        await append(cluster, leader, queue_id, "x")
        before = last_index(cluster, leader)
        served = cluster.brokers[leader].driver.reads.served
        r = await cluster.call(leader, {"operation": "LIST_QUEUES"})
        assert r["status"] == "success", r
        assert [(q["queue_id"], q["length"]) for q in r["queues"]] == [(queue_id, 1)]
        assert last_index(cluster, leader) == before
        assert cluster.brokers[leader].driver.reads.served == served + 1


@within_deadline
async def test_an_exhausted_queue_is_read_without_a_log_entry_until_an_append(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        await append(cluster, leader, queue_id, "a")
        r = await cluster.call(leader, read(queue_id))
        assert (r["sequence_num"], r["data"]) == (1, "a")
        # The first read that finds nothing goes through the log (nothing said it would)...
        assert (await cluster.call(leader, read(queue_id)))["message"] == "no_messages"
        before = last_index(cluster, leader)
        # ... the next ones, once applied state showed the client has read everything, not.
        for _ in range(3):
            assert (await cluster.call(leader, read(queue_id)))["message"] == "no_messages"
        assert last_index(cluster, leader) == before
        # An acknowledged append is seen by the very next read, which moves the position.
        await append(cluster, leader, queue_id, "b")
        r = await cluster.call(leader, read(queue_id))
        assert (r["sequence_num"], r["data"]) == (2, "b")
        assert (await cluster.call(leader, read(queue_id)))["message"] == "no_messages"


@within_deadline
async def test_a_long_poll_round_that_finds_nothing_writes_no_entry(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        assert (await cluster.call(leader, read(queue_id)))["message"] == "no_messages"
        before = last_index(cluster, leader)
        r = await cluster.call(leader, read(queue_id, wait_ms=500))
        assert r["message"] == "no_messages"
        assert last_index(cluster, leader) == before

        async def append_later():
            await trio.sleep(0.3)
            await append(cluster, leader, queue_id, 7)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_later)
            r = await cluster.call(leader, read(queue_id, wait_ms=5000))
        assert (r["sequence_num"], r["data"]) == (1, 7)


@within_deadline
async def test_a_peek_pipelined_after_an_append_on_one_connection_sees_it(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        stream = await cluster.connect(leader)
        conn = RawConnection(stream)
        requests = []
        for i in range(5):
            requests.append({"operation": "APPEND", "queue_name": queue_id, "data": i})
            requests.append(peek(queue_id, count=100))
        await conn.send(*requests)
        for i in range(5):
            assert (await conn.receive())["sequence_num"] == i + 1
            r = await conn.receive()
            # Every append sent before it; those sent after, still in flight with it, may
            # be there too (linearizable: they were concurrent).
            seen = [m["data"] for m in r["messages"]]
            assert seen == list(range(len(seen))) and len(seen) >= i + 1
        await conn.aclose()


@within_deadline
async def test_a_partitioned_old_leader_never_answers_a_read_from_stale_state(autojump_clock):
    """Linearizability across a leader change: the old leader, cut off, still believes it
    leads (its check-quorum off here, as for a leader that stalled); a read sent to it must
    not answer without the write the new leader acknowledged meanwhile. It waits for a
    confirmation that never comes, and fails once the old leader learns the new term."""
    async with open_mock_cluster(3) as cluster:
        old, queue_id = await started(cluster)
        await append(cluster, old, queue_id, "before")
        assert (await cluster.call(old, read(queue_id, client="C-OLD01")))["data"] == "before"
        assert (await cluster.call(old, read(queue_id, client="C-OLD01")))["status"] == "success"
        before = last_index(cluster, old)
        cluster.brokers[old].driver.node.check_quorum = False
        cluster.isolate(old)
        new = cluster.name_of(await cluster.wait_for_leader(among=cluster.majority()))
        assert new != old
        await append(cluster, new, queue_id, "after")
        answers: list[dict] = []

        async def ask(request):
            answers.append(await cluster.call(old, request, src=old))

        async with trio.open_nursery() as nursery:
            for request in (
                peek(queue_id),
                read(queue_id, client="C-OLD01"),
                {"operation": "LIST_QUEUES"},
            ):
                nursery.start_soon(ask, request)
            await trio.sleep(4 * FT)
            assert last_index(cluster, old) == before  # (all three wait for a round)
            assert cluster.brokers[old].driver.node.is_leader and answers == []
            cluster.heal()
        assert len(answers) == 3
        for r in answers:
            assert r["status"] == "error" and r["code"] == "NOT_LEADER", r
        r = await cluster.call(new, peek(queue_id))
        assert [m["data"] for m in r["messages"]] == ["before", "after"]


@within_deadline
async def test_a_replica_refuses_reads_as_before(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        replica = next(name for name in cluster.brokers if name != leader)
        for request in (peek(queue_id), {"operation": "LIST_QUEUES"}):
            r = await cluster.call(replica, request, src=CLIENT)
            assert r["status"] == "error" and r["code"] == "NOT_LEADER", r


async def test_a_peek_on_sqlite_is_undone_and_a_read_that_would_write_takes_the_log(tmp_path):
    """The SQLite store's run-and-undo: a peek answers from a rolled-back transaction; an
    empty read whose run would write (idle forgetting marks the position used) goes to the
    log, and its mark is there afterwards."""
    async with open_broker(BrokerConfig(data_dir=tmp_path / "b", port=0)) as broker:
        with trio.fail_after(30):
            queue_id = await create_queue(broker.port)
            for value in ("a", "b"):
                await call(
                    broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": value}
                )
            before = broker.driver.node.log.last_index
            for _ in range(3):
                r = await call(broker.port, peek(queue_id))
                assert [m["data"] for m in r["messages"]] == ["a", "b"]
            assert broker.driver.node.log.last_index == before
            assert broker.driver.reads.sent_to_log == 0
            # The positions are untouched: a moving read starts at the first message.
            r = await call(broker.port, read(queue_id, client="C-PEEK1"))
            assert (r["sequence_num"], r["data"]) == (1, "a")


@pytest.mark.parametrize("mode", ["peek", "exhausted"])
async def test_a_read_whose_run_would_write_goes_to_the_log(tmp_path, mode):
    async with open_broker(BrokerConfig(data_dir=tmp_path / "b", port=0)) as broker:
        with trio.fail_after(30):
            queue_id = await create_queue(broker.port)
            request = peek(queue_id) if mode == "peek" else read(queue_id)
            await call(broker.port, request)  # (learns the queue is exhausted for C-READ1)

            # Idle forgetting on: the next use of a position marks it (a replicated write).
            def mark(store):
                with store._db:
                    store._db.execute(
                        "INSERT INTO work_meta (key, value) VALUES ('sweep_ms', '1')"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                    )
                    store._db.execute("UPDATE position_activity SET touched_ms = 1")

            await broker.driver._worker.run(mark, broker._store)
            before = broker.driver.node.log.last_index
            tried = broker.driver.reads.sent_to_log
            r = await call(broker.port, request)
            assert r["status"] == "success", r
            assert broker.driver.reads.sent_to_log == tried + 1
            assert broker.driver.node.log.last_index > before


@within_deadline
async def test_with_members_that_do_not_echo_rounds_reads_take_the_log(autojump_clock):
    """Peers of the previous version answer heartbeats without the round: a peek is then
    answered through the log, as before, with the same answer."""
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        await append(cluster, leader, queue_id, "x")
        for name, broker in cluster.brokers.items():
            if name == leader:
                continue
            send = broker.driver.peers.send

            def as_older(message, send=send):
                if isinstance(message, HeartbeatResponse):
                    message = attrs.evolve(message, round=0)
                send(message)

            broker.driver.peers.send = as_older
        await trio.sleep(4 * HB)  # (their answers without rounds reach the leader)
        before = last_index(cluster, leader)
        tried = cluster.brokers[leader].driver.reads.sent_to_log
        r = await cluster.call(leader, peek(queue_id))
        assert [m["data"] for m in r["messages"]] == ["x"]
        assert last_index(cluster, leader) > before
        assert cluster.brokers[leader].driver.reads.sent_to_log == tried + 1
        # LIST_QUEUES, which has no log path, answers unconfirmed then, as it did before.
        r = await cluster.call(leader, {"operation": "LIST_QUEUES"})
        assert [q["queue_id"] for q in r["queues"]] == [queue_id]
