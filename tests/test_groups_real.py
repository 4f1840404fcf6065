"""Several replication groups per broker with real storage and TCP (docs/replication.md,
"Several leaders", stage 1): the trio client and a client of the original design append and
read on queues of every group, across a failover."""

from __future__ import annotations

import json

import pytest
import trio

from trio_broker._ids import cluster_of_queue
from trio_broker._runtime._groups import EVERY_BROKER
from trio_broker.client import Message, connect
from trio_broker.testing import open_local_cluster

from .spread import local_group_leaders, wait_voting_spread
from .wire import RawConnection, call

pytestmark = pytest.mark.trio

GROUPS = 3


async def until(predicate) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(0.05)


async def queues_on_every_group(cluster) -> dict[str, str]:
    """One queue per group: CREATE_QUEUE sent to each broker lands on a group it leads."""
    queues = {}
    for name in sorted(cluster.brokers):
        reply = await call(cluster.ports[name], {"operation": "CREATE_QUEUE"})
        assert reply["status"] == "success", reply
        queues[cluster_of_queue(reply["queue_id"])] = reply["queue_id"]
    return queues


async def test_trio_client_appends_and_reads_on_every_group_across_a_failover(ram_path):
    with trio.fail_after(90):
        async with open_local_cluster(
            ram_path, 3, groups=GROUPS, replication_factor=EVERY_BROKER
        ) as cluster:
            leaders = await wait_voting_spread(cluster, GROUPS)
            queues = await queues_on_every_group(cluster)
            assert sorted(queues) == sorted(leaders)
            seeds = [f"127.0.0.1:{port}" for port in cluster.ports.values()]
            async with connect(seeds) as client:
                for queue in queues.values():
                    for i in range(3):
                        assert await client.append(queue, [queue, i]) == i + 1
                    assert await client.read(queue) == Message(1, [queue, 0])
                # LIST_QUEUES of a group lists that group's queues only.
                for group, queue in queues.items():
                    listed = await client.list_queues(group)
                    assert [q.queue_id for q in listed.queues] == [queue]
                # The broker leading the first group goes away: every group still serves.
                victim = leaders[sorted(queues)[0]]
                await cluster.stop(victim)
                for queue in queues.values():
                    assert await client.append(queue, [queue, "after"]) == 4
                    assert await client.read(queue) == Message(2, [queue, 1])
                led = local_group_leaders(cluster)
                assert victim not in led.values() and all(led.values())


async def test_original_design_client_routes_by_queue_id_to_each_group(ram_path):
    """As an old client does it: CLUSTER_QUERY a seed about the queue's cluster (the id
    without ``Q-`` and its last five characters), then talk to that cluster's leader; on
    NOT_LEADER, ask again."""
    with trio.fail_after(90):
        async with open_local_cluster(
            ram_path, 3, groups=GROUPS, replication_factor=EVERY_BROKER
        ) as cluster:
            await wait_voting_spread(cluster, GROUPS)
            queues = await queues_on_every_group(cluster)

            async def leader_port(queue: str) -> int:
                group = "G-" + queue[2:-5]
                while True:
                    for seed in sorted(b.port for b in cluster.brokers.values()):
                        topology = await call(
                            seed, {"operation": "CLUSTER_QUERY", "cluster_id": group}
                        )
                        assert topology["cluster_id"] == group
                        leader = [b for b in topology["brokers"] if b["role"] == "leader"]
                        if leader:
                            return leader[0]["port"]
                    await trio.sleep(0.1)

            async def old_client(queue: str, request: dict) -> dict:
                while True:
                    try:
                        reply = await call(await leader_port(queue), request)
                    except OSError:  # a leader that just went away: ask again
                        reply = {"code": "NOT_LEADER"}
                    if reply.get("code") != "NOT_LEADER":
                        return reply
                    await trio.sleep(0.1)

            for queue in queues.values():
                for value in (7, "seven", 7.5):
                    reply = await old_client(
                        queue, {"operation": "APPEND", "queue_name": queue, "data": value}
                    )
                    assert reply["status"] == "success", reply
            # Pipelined on one connection to one broker: each group's answers in order.
            port = await leader_port(next(iter(queues.values())))
            connection = await RawConnection.open(port)
            try:
                await connection.send(
                    *(
                        {"operation": "READ", "queue_name": q, "client_id": "C-OLD01"}
                        for q in queues.values()
                    )
                )
                answers = [await connection.receive() for _ in queues]
            finally:
                await connection.aclose()
            for queue, answer in zip(queues.values(), answers, strict=True):
                if local_group_leaders(cluster)["G-" + queue[2:-5]] == cluster.name_of(
                    next(b for b in cluster.brokers.values() if b.port == port)
                ):
                    assert answer == {"status": "success", "sequence_num": 1, "data": 7}
                else:
                    assert answer["code"] == "NOT_LEADER", answer
            # A failover of a broker that leads a group: the old client follows it.
            victim = local_group_leaders(cluster)[sorted(queues)[0]]
            await cluster.stop(victim)
            for queue in queues.values():
                reply = await old_client(
                    queue, {"operation": "READ", "queue_name": queue, "client_id": "C-OLD02"}
                )
                assert reply == {"status": "success", "sequence_num": 1, "data": 7}
                reply = await old_client(
                    queue, {"operation": "APPEND", "queue_name": queue, "data": 8}
                )
                assert reply == {"status": "success", "sequence_num": 4}


async def test_a_joiner_learns_the_groups_from_a_snapshot(ram_path):
    """The group list is replicated state like the queues: a broker that joins after the log
    holding it was compacted learns it from the snapshot it installs (DATA_SYNC)."""
    with trio.fail_after(90):
        async with open_local_cluster(
            ram_path,
            1,
            groups=GROUPS,
            replication_factor=EVERY_BROKER,
            compact_threshold=20,
            compact_keep=5,
        ) as cluster:
            founder = cluster.brokers["b1"]
            await until(lambda: len(founder.host.groups) == GROUPS)
            # Three queues, one per group (each lands on the group with fewest): the cluster
            # group's takes the appends that make it compact its log.
            created = [
                (await call(cluster.ports["b1"], {"operation": "CREATE_QUEUE"}))["queue_id"]
                for _ in range(GROUPS)
            ]
            (queue,) = [q for q in created if cluster_of_queue(q) == founder.cluster_id]
            for i in range(60):
                reply = await call(
                    cluster.ports["b1"], {"operation": "APPEND", "queue_name": queue, "data": i}
                )
                assert reply["status"] == "success"
            primary = founder.host.primary
            await until(lambda: primary.driver.node.log.snapshot_index >= 20)
            joiner = await cluster.start("b2")
            await until(lambda: len(joiner.host.groups) == GROUPS)
            assert joiner.host.group_ids == founder.host.group_ids
            assert joiner.driver.node.log.snapshot_index >= 20  # it did install a snapshot
            assert await joiner._worker.run(joiner._store.group_ids) == founder.host.group_ids


async def test_client_status_shows_every_group_from_one_seed(ram_path, cli):
    with trio.fail_after(90):
        async with open_local_cluster(
            ram_path, 3, groups=GROUPS, replication_factor=EVERY_BROKER
        ) as cluster:
            leaders = await wait_voting_spread(cluster, GROUPS)
            status, out, err = await cli(
                "--seed", f"127.0.0.1:{cluster.ports['b2']}", "--json", "status"
            )
            assert status == 0, err
            clusters = json.loads(out)["clusters"]
            assert sorted(c["cluster_id"] for c in clusters) == sorted(leaders)
            for c in clusters:
                assert c["leader"] == cluster.brokers[leaders[c["cluster_id"]]].broker_id
                assert sorted(b["broker_id"] for b in c["brokers"]) == sorted(
                    b.broker_id for b in cluster.brokers.values()
                )
                assert {b["membership"] for b in c["brokers"]} == {"voter"}
