"""Protocol-aware recovery with real brokers (mock clock, in-memory disks that can be damaged):
a replica whose log is damaged or shortened repairs itself from the leader, never votes on
what it lost, and a group without an intact copy of the newest entries waits, and says so,
rather than guess (docs/reliability.md, "Damaged and shortened logs")."""

from __future__ import annotations

import logging

import trio

from trio_broker._runtime._metrics import _StateCollector
from trio_broker._runtime._status import RequestRates, read_status
from trio_broker.testing._mock_cluster import open_mock_cluster

NAMES = ("b1", "b2", "b3")


async def fill(cluster, leader: str, count: int) -> str:
    queue = (await cluster.call(leader, {"operation": "CREATE_QUEUE"}))["queue_id"]
    for k in range(count):
        answer = await cluster.call(leader, {"operation": "APPEND", "queue_name": queue, "data": k})
        assert answer["status"] == "success", answer
    await cluster.stabilize()
    return queue


def recovering_gauge(broker) -> float:
    """The ``trio_broker_recovering`` gauge, as the metrics endpoint would serve it."""
    families = _StateCollector(broker, broker.metrics).collect()
    (family,) = [f for f in families if f.name == "trio_broker_recovering"]
    return family.samples[0].value


def node(cluster, name: str):
    return cluster.brokers[name].driver.node


async def test_a_replica_with_a_damaged_entry_recovers_from_the_leader(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        leader = cluster.name_of(await cluster.wait_for_leader())
        queue = await fill(cluster, leader, 10)
        replica = next(n for n in NAMES if n != leader)
        await cluster.crash(replica)
        store = cluster.stores[replica]
        last = max(store.log)
        store.damage(last - 3)
        await cluster.restart(replica)
        assert f"first_damaged={last - 3} last_index={last}" in caplog.text
        assert "raft.recovering" in caplog.text
        stats = cluster.brokers[replica].statistics()
        assert recovering_gauge(cluster.brokers[replica]) == 1.0
        assert stats.recovering_until == last
        with trio.fail_after(30):
            await cluster.wait_until(lambda: not node(cluster, replica).recovering)
        await cluster.stabilize()
        assert "raft.recovered" in caplog.text
        assert cluster.brokers[replica].statistics().recovering_until is None
        assert recovering_gauge(cluster.brokers[replica]) == 0.0
        assert node(cluster, replica).log.last_index >= last
        assert cluster.messages(replica, queue) == list(range(10))
        assert store.hard_state.recovering_until == 0


async def test_a_replica_that_lost_synced_writes_is_repaired_and_counts_again(
    autojump_clock, caplog
):
    """The issue's replica whose WAL tail was cut: its own disk cannot tell. The leader saw
    it acknowledge more, probes it, tells it, repairs it; then, with the other replica gone,
    appends still commit on the leader and the repaired replica."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        leader = cluster.name_of(await cluster.wait_for_leader())
        queue = await fill(cluster, leader, 10)
        replica, other = [n for n in NAMES if n != leader]
        await cluster.crash(replica)
        store = cluster.stores[replica]
        last = max(store.log)
        for index in range(last - 5, last + 1):
            del store.log[index]
        store.meta["raft_commit"] = min(store.meta["raft_commit"], last - 6)
        await cluster.restart(replica)
        assert not node(cluster, replica).recovering
        with trio.fail_after(30):
            await cluster.wait_until(lambda: node(cluster, replica).log.last_index >= last)
            await cluster.wait_until(lambda: not node(cluster, replica).recovering)
        assert f"raft.recovering broker_id={cluster.brokers[replica].broker_id}" in caplog.text
        await cluster.crash(other)
        with trio.fail_after(30):
            answer = await cluster.call(
                leader, {"operation": "APPEND", "queue_name": queue, "data": "after"}
            )
        assert answer["status"] == "success", answer
        await cluster.stabilize(among=[leader, replica])
        assert cluster.messages(replica, queue) == [*range(10), "after"]


async def test_without_an_intact_copy_the_group_waits_and_says_so(autojump_clock, caplog):
    """Both replicas lost the newest entries, and the only broker that holds them is down:
    neither replica may lead or vote for the other, so nobody leads, and they say what an
    operator can do. Bringing back the broker that holds the entries elects it (its log is
    at least as up to date as theirs were) and it repairs them."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        leader = cluster.name_of(await cluster.wait_for_leader())
        queue = await fill(cluster, leader, 10)
        replicas = [n for n in NAMES if n != leader]
        # (The replicas first: alone, the leader can neither commit nor hand over anything.)
        for name in [*replicas, leader]:
            await cluster.crash(name)
        for name in replicas:
            store = cluster.stores[name]
            store.damage(max(store.log) - 2)
            await cluster.restart(name)
        await trio.sleep(60)
        assert not any(node(cluster, n).is_leader for n in replicas)
        assert all(node(cluster, n).recovering for n in replicas)
        answer = await cluster.call(
            replicas[0], {"operation": "APPEND", "queue_name": queue, "data": "x"}
        )
        assert answer["status"] == "error"
        assert "raft.recovery_stalled" in caplog.text and "restore" in caplog.text
        damaged = cluster.brokers[replicas[0]]
        status = await read_status(damaged, RequestRates(damaged))
        assert status["broker"]["recovering_until"] == node(cluster, replicas[0]).recovering_until
        assert status["broker"]["recovering_until"] > node(cluster, replicas[0]).log.last_index
        await cluster.restart(leader)
        with trio.fail_after(30):
            await cluster.wait_until(lambda: not any(node(cluster, n).recovering for n in replicas))
        await cluster.stabilize()
        for name in NAMES:
            assert cluster.messages(name, queue) == list(range(10))
        status = await read_status(damaged, RequestRates(damaged))
        assert status["broker"]["recovering_until"] is None
