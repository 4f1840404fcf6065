"""The metadata group with real storage and TCP (docs/replication.md, "Stage 2: the metadata
group"): a joiner learns the cluster map from a snapshot, and a data directory founded with
the stage-1 list keeps working as one (every broker hosts every group)."""

from __future__ import annotations

import pytest
import trio

from trio_broker._core._commands import SetGroups
from trio_broker._ids import cluster_of_queue
from trio_broker._runtime._groups import EVERY_BROKER
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
            await trio.sleep(1.5)  # (the joiner's refresh of the leaders of the groups)
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
    groups and their data, every broker hosting every group, and no map is founded."""
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
                    appended = await call(
                        cluster.ports[name],
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
                reply = await call(
                    cluster.ports[leaders[0]],
                    {"operation": "READ", "queue_name": queue, "client_id": "C-AAAAA"},
                )
                assert reply == {"status": "success", "sequence_num": 1, "data": value}
