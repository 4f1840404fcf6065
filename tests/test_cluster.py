"""Replicated clusters of real brokers in one process (diagrams 1, 2, 4, 5, 6)."""

from __future__ import annotations

import pytest
import trio

from trio_broker._core._commands import data_size
from trio_broker._runtime import BrokerConfig, JoinFailed, open_broker
from trio_broker.testing import open_local_cluster

from .wire import RawConnection, append, call, create_queue

DEADLINE = 15


async def stored_messages(broker, queue_id: str) -> list[bytes]:
    return await broker._worker.run(broker._store.messages, queue_id)


async def wait_applied(broker, index: int) -> None:
    while broker.applied_index < index:
        await broker.driver.wait_changed()


@pytest.fixture
async def cluster(ram_path):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3) as cluster:
            yield cluster


async def test_three_brokers_agree_on_the_topology(cluster):
    """Diagram 1: any broker answers CLUSTER_QUERY with the same members and leader."""
    leader = await cluster.wait_for_leader()
    views = [await call(b.port, {"operation": "CLUSTER_QUERY"}) for b in cluster.brokers.values()]
    for view in views:
        assert view["status"] == "success"
        assert view["cluster_id"] == leader.cluster_id
        assert view["leader_id"] == leader.broker_id
        assert view["cluster_version"] == views[0]["cluster_version"]
        assert sorted(b["broker_id"] for b in view["brokers"]) == sorted(
            b.broker_id for b in cluster.brokers.values()
        )
        roles = {b["broker_id"]: b["role"] for b in view["brokers"]}
        assert roles.pop(leader.broker_id) == "leader"
        assert set(roles.values()) == {"replica"}
        assert {b["status"] for b in view["brokers"]} == {"active"}
        assert {b["port"] for b in view["brokers"]} == {b.port for b in cluster.brokers.values()}
    assert sorted(v["self_role"] for v in views) == ["leader", "replica", "replica"]


async def test_replicas_refuse_client_operations_with_a_leader_hint(cluster):
    leader = await cluster.wait_for_leader()
    replica = next(b for b in cluster.brokers.values() if b is not leader)
    for request in (
        {"operation": "CREATE_QUEUE"},
        {"operation": "APPEND", "queue_name": "Q-XXXXXYYYYY", "data": 1},
        {"operation": "READ", "queue_name": "Q-XXXXXYYYYY", "client_id": "C-1"},
    ):
        r = await call(replica.port, request)
        assert r["status"] == "error"
        assert r["code"] == "NOT_LEADER"
        assert (r["leader_id"], r["leader_host"], r["leader_port"]) == (
            leader.broker_id,
            "127.0.0.1",
            leader.port,
        )


async def test_acknowledged_writes_are_on_a_majority(cluster):
    """Diagram 2: the leader answers only after a majority holds the entry durably (in its
    stored log; a replica applies it once the next REPLICATE or heartbeat brings the commit)."""
    leader = await cluster.wait_for_leader()
    queue_id = await create_queue(leader.port)
    for i in range(20):
        assert await append(leader.port, queue_id, {"n": i}) == i + 1
    expected = [b'{"n":%d}' % i for i in range(20)]
    acknowledged = leader.node.commit
    holders = 0
    for broker in cluster.brokers.values():
        state = await broker._worker.run(broker._store.raft_state)
        stored = max([state.snapshot_index] + [e.index for e in state.entries])
        if stored >= acknowledged:
            holders += 1
    assert holders >= 2
    assert await stored_messages(leader, queue_id) == expected
    with trio.fail_after(DEADLINE):  # and, given time, on every replica
        for broker in cluster.brokers.values():
            await wait_applied(broker, leader.node.commit)
            assert await stored_messages(broker, queue_id) == expected


async def test_read_positions_survive_failover(cluster):
    """Diagram 3: positions are moved through the log, so the next leader knows them."""
    leader = await cluster.wait_for_leader()
    queue_id = await create_queue(leader.port)
    for i in range(5):
        await append(leader.port, queue_id, i)
    read = {"operation": "READ", "queue_name": queue_id, "client_id": "C-READR"}
    assert (await call(leader.port, read))["data"] == 0
    assert (await call(leader.port, read))["data"] == 1
    await cluster.stop(cluster.name_of(leader))
    with trio.fail_after(DEADLINE):
        new_leader = await cluster.wait_for_leader()
    assert new_leader is not leader
    r = await call(new_leader.port, read)
    assert (r["sequence_num"], r["data"]) == (3, 2)
    assert await append(new_leader.port, queue_id, 5) == 6


async def test_leader_failure_elects_a_replica_that_holds_every_committed_entry(cluster):
    """Diagram 5: after the leader goes, a replica wins and nothing committed is lost."""
    leader = await cluster.wait_for_leader()
    old_name = cluster.name_of(leader)
    queue_id = await create_queue(leader.port)
    acknowledged = [await append(leader.port, queue_id, i) for i in range(50)]
    old_term, committed = leader.node.term, leader.node.commit
    await cluster.stop(old_name)
    with trio.fail_after(DEADLINE):
        new_leader = await cluster.wait_for_leader()
        # A new leader learns what its predecessor committed last by committing an entry of
        # its own term (the commit index travels with the next REPLICATE or heartbeat, which
        # the old leader did not live to send); then it applies it.
        await wait_applied(new_leader, committed)
    assert new_leader.node.term > old_term
    assert await stored_messages(new_leader, queue_id) == [b"%d" % i for i in range(50)]
    assert acknowledged == list(range(1, 51))
    assert await append(new_leader.port, queue_id, "after") == 51
    # The old leader comes back as a replica and catches up.
    with trio.fail_after(DEADLINE):
        restarted = await cluster.start(old_name)
        await wait_applied(restarted, new_leader.node.commit)
    assert not restarted.is_leader
    assert len(await stored_messages(restarted, queue_id)) == 51


async def test_a_minority_cannot_commit_and_its_leader_steps_down(cluster):
    """Quorum over the configured voters: one of three brokers alone serves nothing."""
    leader = await cluster.wait_for_leader()
    queue_id = await create_queue(leader.port)
    for name in [n for n, b in cluster.brokers.items() if b is not leader]:
        await cluster.stop(name)
    with trio.fail_after(DEADLINE):
        while leader.is_leader:  # check-quorum: no majority heard for a failure timeout
            await leader.driver.wait_changed()
    r = await call(leader.port, {"operation": "APPEND", "queue_name": queue_id, "data": 1})
    assert r["status"] == "error"
    assert r["code"] == "NOT_LEADER"
    assert await stored_messages(leader, queue_id) == []


async def test_inactive_members_are_shown_and_still_counted(cluster):
    """Diagram 6: a silent member is marked inactive; the quorum does not shrink."""
    leader = await cluster.wait_for_leader()
    victim = next(n for n, b in cluster.brokers.items() if b is not leader)
    victim_id = cluster.brokers[victim].broker_id
    await cluster.stop(victim)
    with trio.fail_after(DEADLINE):
        while True:
            view = await call(leader.port, {"operation": "CLUSTER_QUERY"})
            status = {b["broker_id"]: b["status"] for b in view["brokers"]}
            if status[victim_id] == "inactive":
                break
            await trio.sleep(0.05)
    assert len(leader.node.config.voters) == 3
    queue_id = await create_queue(leader.port)  # 2 of 3 is still a majority
    assert await append(leader.port, queue_id, "ok") == 1
    await cluster.start(victim)
    with trio.fail_after(DEADLINE):
        while True:
            view = await call(leader.port, {"operation": "CLUSTER_QUERY"})
            if all(b["status"] == "active" for b in view["brokers"]):
                break
            await trio.sleep(0.05)


async def append_with_one_replica_down(cluster, count: int):
    """Stop a replica, then append ``count`` values 0.. pipelined to a new queue on the
    leader; returns (leader, the stopped replica's name, queue id)."""
    leader = await cluster.wait_for_leader()
    lagging = next(n for n, b in cluster.brokers.items() if b is not leader)
    await cluster.stop(lagging)
    queue_id = await create_queue(leader.port)
    conn = await RawConnection.open(leader.port)
    await conn.send(
        *[{"operation": "APPEND", "queue_name": queue_id, "data": i} for i in range(count)]
    )
    for i in range(count):
        assert (await conn.receive())["sequence_num"] == i + 1
    await conn.aclose()
    return leader, lagging, queue_id


async def test_lagging_replica_catches_up_by_snapshot_after_compaction(ram_path):
    """A replica that missed entries the leader compacted away receives a DATA_SYNC."""
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(
            ram_path, 3, compact_threshold=50, compact_keep=5, compact_bytes=2_000
        ) as cluster:
            leader, lagging, queue_id = await append_with_one_replica_down(cluster, 300)
            while leader.node.log.snapshot_index == 0:
                await leader.driver.wait_changed()
            restarted = await cluster.start(lagging)
            await wait_applied(restarted, leader.node.commit)
            assert restarted.node.log.snapshot_index > 0
            assert await stored_messages(restarted, queue_id) == [b"%d" % i for i in range(300)]
            # Its state is complete: it can lead, and it knows the read positions too.
            await cluster.stop(cluster.name_of(leader))
            new_leader = await cluster.wait_for_leader()
            assert await append(new_leader.port, queue_id, "next") == 301


async def test_remove_member_through_the_log(cluster):
    leader = await cluster.wait_for_leader()
    victim = next(b for b in cluster.brokers.values() if b is not leader)
    version = leader.node.cluster_version
    # Sent to a replica: forwarded to the leader.
    other = next(b for b in cluster.brokers.values() if b not in (leader, victim))
    r = await call(other.port, {"operation": "REMOVE_MEMBER", "broker_id": victim.broker_id})
    assert r == {"status": "success"}
    assert victim.broker_id not in leader.node.config.members
    assert leader.node.cluster_version == version + 1
    view = await call(leader.port, {"operation": "CLUSTER_QUERY"})
    assert victim.broker_id not in {b["broker_id"] for b in view["brokers"]}
    r = await call(leader.port, {"operation": "REMOVE_MEMBER", "broker_id": "B-NOONE"})
    assert r["code"] == "BAD_REQUEST"


async def test_a_broker_of_another_cluster_is_refused(cluster, ram_path):
    leader = await cluster.wait_for_leader()
    seeds = [f"127.0.0.1:{leader.port}"]
    config = BrokerConfig(data_dir=ram_path / "intruder", port=0, seeds=seeds, cluster_id="G-OTHER")
    with pytest.raises(JoinFailed, match="not G-OTHER"):
        async with open_broker(config):
            pass
    for request in (
        {
            "operation": "JOIN_CLUSTER",
            "broker_id": "B-INTRU",
            "host": "127.0.0.1",
            "port": 1,
            "cluster_id": "G-OTHER",
        },
        {"operation": "PEER_HELLO", "broker_id": "B-INTRU", "cluster_id": "G-OTHER"},
    ):
        r = await call(leader.port, request)
        assert r["code"] == "WRONG_CLUSTER"
    assert "B-INTRU" not in leader.node.config.members


async def test_a_replica_restarted_on_another_port_is_found_again(cluster):
    leader = await cluster.wait_for_leader()
    name = next(n for n, b in cluster.brokers.items() if b is not leader)
    broker_id = cluster.brokers[name].broker_id
    await cluster.stop(name)
    cluster.ports[name] = 0  # the operating system picks another port
    restarted = await cluster.start(name)
    queue_id = await create_queue(leader.port)
    with trio.fail_after(DEADLINE):
        while True:
            view = await call(leader.port, {"operation": "CLUSTER_QUERY"})
            ports = {b["broker_id"]: b["port"] for b in view["brokers"]}
            if ports[broker_id] == restarted.port and restarted.applied_index >= leader.node.commit:
                break
            await trio.sleep(0.05)
    assert await stored_messages(restarted, queue_id) == []
    assert queue_id in restarted._queue_ids


async def test_the_log_stays_bounded_under_steady_appends(ram_path):
    """Compaction by entry count: applied entries are dropped from the log; the tables are
    the snapshot. Appends go one at a time, so that each has an entry of its own."""
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(ram_path, 3, compact_threshold=50, compact_keep=5) as cluster:
            leader = await cluster.wait_for_leader()
            queue_id = await create_queue(leader.port)
            conn = await RawConnection.open(leader.port)
            sizes = []
            for _ in range(5):
                for i in range(40):
                    await conn.send({"operation": "APPEND", "queue_name": queue_id, "data": i})
                    assert (await conn.receive())["status"] == "success"
                for broker in cluster.brokers.values():
                    await wait_applied(broker, leader.node.commit)
                    sizes.append(await broker._worker.run(broker._store.log_size))
            await conn.aclose()
            # Never more than threshold + keep + one round of entries, on any broker.
            assert max(sizes) <= 50 + 5 + 40 + 5, sizes
            for broker in cluster.brokers.values():
                assert broker.node.log.snapshot_index > 0
                assert len(await stored_messages(broker, queue_id)) == 200


async def test_the_log_stays_bounded_in_bytes_under_pipelined_appends(ram_path):
    """Compaction by size: pipelined appends share large grouped entries, few of them; the
    message bytes held in the log still trigger compactions and stay bounded."""
    budget = 4_000
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(ram_path, 3, compact_bytes=budget) as cluster:
            leader = await cluster.wait_for_leader()
            queue_id = await create_queue(leader.port)
            conn = await RawConnection.open(leader.port)
            held = []
            value = "v" * 100
            for _ in range(5):
                burst = [{"operation": "APPEND", "queue_name": queue_id, "data": value}] * 200
                await conn.send(*burst)
                for _ in burst:
                    assert (await conn.receive())["status"] == "success"
                for broker in cluster.brokers.values():
                    await wait_applied(broker, leader.node.commit)
                    log = broker.node.log
                    entries = log.slice(log.snapshot_index + 1, log.last_index + 1)
                    held.append(sum(data_size(e.payload) for e in entries))
            await conn.aclose()
            # One burst is 200 x 102 bytes; never more than the budget and one burst is held.
            assert max(held) <= budget + 200 * (102 + 64), held
            for broker in cluster.brokers.values():
                assert broker.node.log.snapshot_index > 0
                assert len(await stored_messages(broker, queue_id)) == 1000


async def test_advertised_address_is_what_clients_and_peers_are_told(ram_path):
    """A broker behind a port mapping announces the mapped port, not the one it binds."""
    config = BrokerConfig(
        data_dir=ram_path / "b", port=0, advertise_host="localhost", advertise_port=7777
    )
    async with open_broker(config) as broker:
        view = await call(broker.port, {"operation": "CLUSTER_QUERY"})
        assert [(b["host"], b["port"]) for b in view["brokers"]] == [("localhost", 7777)]
        with trio.fail_after(DEADLINE):  # written through the log once it leads
            while broker.broker_id not in broker.addresses:
                await broker.driver.wait_changed()
        assert broker.addresses[broker.broker_id] == ("localhost", 7777)


async def test_serve_broker_in_a_nursery_and_wait_leader(ram_path):
    """The service form: nursery.start(serve_broker, config) hands back the running broker."""
    from trio_broker import serve_broker

    async with trio.open_nursery() as nursery:
        broker = await nursery.start(serve_broker, BrokerConfig(data_dir=ram_path, port=0))
        with trio.fail_after(DEADLINE):
            assert await broker.wait_leader() == broker.broker_id
        q = await create_queue(broker.port)
        assert await append(broker.port, q, "served") == 1
        nursery.cancel_scope.cancel()
    async with open_broker(BrokerConfig(data_dir=ram_path, port=0)) as again:
        assert (await call(again.port, {"operation": "READ", "queue_name": q, "client_id": "C-1"}))[
            "data"
        ] == "served"


async def test_a_broken_snapshot_transfer_is_refused_and_retried(ram_path):
    """Chunks are checked: a corrupted one is refused, nothing is installed, and the leader
    offers the snapshot again until a transfer arrives intact."""
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(
            ram_path, 3, compact_threshold=50, compact_keep=5, compact_bytes=2_000
        ) as cluster:
            leader, lagging, queue_id = await append_with_one_replica_down(cluster, 200)
            served = leader.driver.read_snapshot_chunk
            corrupted = []

            def corrupt_first(snapshot_id, offset):
                chunk, size, digest = served(snapshot_id, offset)
                if not corrupted:
                    corrupted.append(snapshot_id)
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]  # the digest no longer fits
                return chunk, size, digest

            leader.driver.read_snapshot_chunk = corrupt_first
            restarted = await cluster.start(lagging)
            await wait_applied(restarted, leader.node.commit)
            assert corrupted, "the first transfer was not the corrupted one"
            assert restarted.node.log.snapshot_index > 0
            assert await stored_messages(restarted, queue_id) == [b"%d" % i for i in range(200)]
