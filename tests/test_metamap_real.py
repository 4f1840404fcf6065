"""The metadata group with real storage and TCP (docs/replication.md, "Stage 2: the metadata
group"): a joiner learns the cluster map from a snapshot, and a data directory founded with
the stage-1 list keeps working as one (every broker hosts every group)."""

from __future__ import annotations

import pytest
import trio

from trio_broker._core._commands import SetGroups
from trio_broker._ids import cluster_of_queue
from trio_broker._runtime._groups import EVERY_BROKER
from trio_broker.client import Message, connect
from trio_broker.testing import open_local_cluster

from .wire import call

pytestmark = pytest.mark.trio


async def until(predicate) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(0.05)


async def test_a_joiner_learns_the_map_from_a_snapshot(tmp_path):
    """The map is replicated state of the cluster group: a broker joining after the log that
    founded it was compacted installs a snapshot (DATA_SYNC) holding the map, is registered
    in it, receives a group from the balancer, and answers CLUSTER_QUERY about every group,
    those it does not host too."""
    with trio.fail_after(90):
        async with open_local_cluster(tmp_path, 1, groups=3, replication_factor=1) as cluster:
            founder = cluster.brokers["b1"]
            await until(lambda: founder.host.meta.map is not None)
            founded = founder.host.meta.map
            await until(lambda: len(founder.host.groups) == 4)  # three groups + the metadata
            reply = await call(cluster.ports["b1"], {"operation": "SNAPSHOT"})
            assert reply["status"] == "success", reply
            assert founder.driver.node.log.snapshot_index > 0
            joiner = await cluster.start("b2")
            await until(lambda: joiner.host.meta.map is not None)
            assert joiner.driver.node.log.snapshot_index > 0  # it did install a snapshot
            assert joiner.host.meta.map.groups == founded.groups
            assert joiner.host.meta.map.settings == founded.settings
            # Registered afterwards, through the log; then the balancer moves one group's only
            # replica (R = 1 here) to it: two groups stay on the founder, one is the joiner's.
            await until(
                lambda: (
                    joiner.host.meta.map.broker(joiner.broker_id) is not None
                    and founder.host.meta.map.broker(joiner.broker_id) is not None
                )
            )

            def moved() -> bool:
                cmap = founder.host.meta.map
                return (
                    all(r.move is None for r in cmap.groups.values())
                    and len(cmap.groups_of(joiner.broker_id)) == 1
                    and joiner.host.meta.map.version == cmap.version
                )

            await until(moved)
            cmap = joiner.host.meta.map
            stored = await joiner._worker.run(joiner._store.cluster_map)
            assert stored == cmap
            (mine,) = cmap.groups_of(joiner.broker_id)
            await until(lambda: set(joiner.host.groups) == {joiner.cluster_id, mine})
            await until(lambda: joiner.host.groups[mine].driver.node.is_leader)
            # Until the joiner's refresh (once a failure timeout) learned the leaders of the
            # groups it does not host (a fixed 1.5 s wait before)
            await until(
                lambda: all(
                    joiner.host.meta.leader_of(g) == record.voters[0]
                    for g, record in cmap.groups.items()
                )
            )
            reply = await call(cluster.ports["b2"], {"operation": "CLUSTER_QUERY"})
            assert sorted(g["cluster_id"] for g in reply["groups"]) == sorted(founded.groups)
            # It names the leader of every group, those it does not host too.
            for g in reply["groups"]:
                assert g.get("leader_id") == cmap.groups[g["cluster_id"]].voters[0], reply
            created = await call(cluster.ports["b2"], {"operation": "CREATE_QUEUE"})
            assert created["status"] == "success", created  # (on the group it leads)
            assert created["queue_id"].startswith("Q-" + mine[2:])


async def test_a_stage_1_data_directory_keeps_every_group_on_every_broker(tmp_path):
    """A cluster founded with the stage-1 list (SET_GROUPS), restarted with today's default
    flags (a replication factor of 3, --groups again on the founder): it keeps its list, its
    groups and their data, every broker hosting every group (a new one too), and no map is
    founded."""
    values = {}
    with trio.fail_after(120):
        async with open_local_cluster(
            tmp_path, 2, groups=3, replication_factor=EVERY_BROKER
        ) as cluster:
            founder = cluster.brokers["b1"]
            await until(lambda: all(len(b.host.groups) == 3 for b in cluster.brokers.values()))
            group_ids = founder.host.group_ids
            assert founder.cluster_id in group_ids
            for name in ("b1", "b2", "b1"):
                reply = await call(cluster.ports[name], {"operation": "CREATE_QUEUE"})
                if reply["status"] == "success":
                    values[reply["queue_id"]] = 7
                    appended = await routed(
                        cluster.ports,
                        name,
                        {"operation": "APPEND", "queue_name": reply["queue_id"], "data": 7},
                    )
                    assert appended["status"] == "success"
            assert values
            await cluster.stop("b2", graceful=True)
            await cluster.stop("b1", graceful=True)
            # Restarted with the default replication factor (3) and --groups on the founder.
            cluster.overrides.pop("replication_factor", None)
            founder = await cluster.start("b1", groups=3)
            await cluster.start("b2")
            await until(lambda: all(len(b.host.groups) == 3 for b in cluster.brokers.values()))
            for broker in cluster.brokers.values():
                assert broker.host.meta.map is None
                assert broker.host.group_ids == group_ids
                assert await broker._worker.run(broker._store.group_ids) == group_ids
                assert sorted(broker.host.groups) == list(group_ids)
            # A new broker joining with today's default flags hosts every group too.
            newcomer = await cluster.start("b3")
            await until(lambda: len(newcomer.host.groups) == 3)
            assert newcomer.host.meta.map is None
            assert sorted(newcomer.host.groups) == list(group_ids)
            # The list is still the stage-1 command's, applied again by the restart.
            entries = founder.driver.node.log.slice(1, founder.driver.node.log.last_index + 1)
            assert any(isinstance(e.payload, SetGroups) for e in entries)
            for queue, value in values.items():
                group = cluster_of_queue(queue)
                for _ in range(100):
                    leaders = [
                        n for n, b in cluster.brokers.items() if b.host.groups[group].is_leader
                    ]
                    if leaders:
                        break
                    await trio.sleep(0.1)
                # Leadership may still be spreading: follow NOT_LEADER as a client would.
                reply = await routed(
                    cluster.ports,
                    leaders[0],
                    {"operation": "READ", "queue_name": queue, "client_id": "C-AAAAA"},
                )
                assert reply == {"status": "success", "sequence_num": 1, "data": value}


async def routed(ports: dict[str, int], first: str, request: dict) -> dict | None:
    """As a client of the original design: send to ``first``, follow NOT_LEADER (and brokers
    that are down) by the leader's port; None when no leader answers in time."""
    port = ports[first]
    with trio.move_on_after(20):
        while True:
            try:
                reply = await call(port, request)
            except OSError:
                reply = {"code": "UNAVAILABLE"}
            if reply.get("code") == "NOT_LEADER" and reply.get("leader_port") in ports.values():
                port = reply["leader_port"]
                continue
            if reply.get("code") not in ("NOT_LEADER", "UNAVAILABLE"):
                return reply
            await trio.sleep(0.1)
            if port not in ports.values() or reply.get("code") == "UNAVAILABLE":
                port = ports[first]
    return None


async def test_six_brokers_r3_with_real_storage_lose_nothing_acknowledged_in_a_crash(tmp_path):
    """6 brokers in one process with SQLite and TCP, 6 groups, R = 3: each broker holds 3
    replicas; an original-design client writes to a queue of every group through any broker
    (NOT_LEADER names each group's leader, hosted there or not); a broker leading groups is
    cancelled (its process gone, its disk as fsynced), the writes go on, it comes back; every
    acknowledged value is read back once, in order, from every group."""
    with trio.fail_after(240):
        async with open_local_cluster(tmp_path, 6, groups=6, replication_factor=3) as cluster:
            b1 = cluster.brokers["b1"]
            await until(
                lambda: all(
                    b.host.meta.map is not None and len(b.host.groups) == 4
                    for b in cluster.brokers.values()
                )
            )
            cmap = b1.host.meta.map
            assert len(cmap.groups) == 6
            assert all(len(r.voters) == 3 for r in cmap.groups.values())
            queues: dict[str, str] = {}
            while len(queues) < 6:
                for name in sorted(cluster.brokers):
                    reply = await call(cluster.ports[name], {"operation": "CREATE_QUEUE"})
                    if reply["status"] == "success":
                        queues.setdefault(cluster_of_queue(reply["queue_id"]), reply["queue_id"])
                await trio.sleep(0.1)
            ports = dict(cluster.ports)
            acknowledged: dict[str, list[int]] = {q: [] for q in queues.values()}

            async def write(values: range, via: list[str]) -> None:
                for value in values:
                    for i, queue in enumerate(sorted(acknowledged)):
                        live = {n: ports[n] for n in via}
                        request = {"operation": "APPEND", "queue_name": queue, "data": value}
                        reply = await routed(live, via[(value + i) % len(via)], request)
                        if reply is not None and reply.get("status") == "success":
                            acknowledged[queue].append(value)

            names = sorted(cluster.brokers)
            await write(range(3), names)
            leading = {
                n: sum(1 for g, r in b.host.groups.items() if g in cmap.groups and r.is_leader)
                for n, b in cluster.brokers.items()
            }
            victim = max(sorted(leading), key=lambda n: leading[n])
            assert leading[victim] >= 1
            await cluster.stop(victim)
            survivors = [n for n in names if n != victim]
            await write(range(3, 6), survivors)
            await cluster.start(victim)
            await write(range(6, 8), names)
            for queue, values in sorted(acknowledged.items()):
                assert values == list(range(8)), (queue, values)
                read = []
                while True:
                    reply = await routed(
                        ports,
                        names[0],
                        {"operation": "READ", "queue_name": queue, "client_id": "C-CHECK"},
                    )
                    assert reply is not None
                    if reply.get("message") == "no_messages":
                        break
                    read.append(reply["data"])
                assert [v for v in read if v in values] == values, (queue, read)


async def test_the_trio_client_reaches_every_group_from_one_seed_not_hosting_it(tmp_path):
    """4 brokers, 4 groups, R = 2: the trio client given one seed learns every group (and its
    leader) from that broker's CLUSTER_QUERY, hosted there or not, and appends and reads on
    each; LIST_QUEUES of a group lists that group's queues."""
    with trio.fail_after(120):
        async with open_local_cluster(tmp_path, 4, groups=4, replication_factor=2) as cluster:
            await until(
                lambda: all(
                    b.host.meta.map is not None and len(b.host.groups) == 3
                    for b in cluster.brokers.values()
                )
            )
            cmap = cluster.brokers["b1"].host.meta.map
            queues: dict[str, str] = {}
            created: dict[str, list[str]] = {}
            while len(queues) < 4:
                for name in sorted(cluster.brokers):
                    reply = await call(cluster.ports[name], {"operation": "CREATE_QUEUE"})
                    if reply["status"] == "success":
                        group = cluster_of_queue(reply["queue_id"])
                        queues.setdefault(group, reply["queue_id"])
                        created.setdefault(group, []).append(reply["queue_id"])
                await trio.sleep(0.1)
            seed = cluster.brokers["b1"]
            assert set(cmap.groups) - set(seed.host.groups)  # some groups not hosted there
            # Until its refresh learned the leaders of those (a fixed 1 s wait before)
            await until(lambda: all(seed.host.meta.leader_of(g) for g in cmap.groups))
            async with connect([f"127.0.0.1:{cluster.ports['b1']}"]) as client:
                for queue in queues.values():
                    for i in range(3):
                        assert await client.append(queue, [queue, i]) == i + 1
                    assert await client.read(queue) == Message(1, [queue, 0])
                for group in queues:
                    listed = await client.list_queues(group)
                    assert [q.queue_id for q in listed.queues] == sorted(created[group])
