"""The balancer's group actions and the group leaders' reports, on real brokers (a memory
network under the mock clock): ``RemoteGroups`` (``_runtime/_balancing_seams.py``) asks a
group's leader (or a replica, which forwards) to add a learner, remove a replica and transfer
its leadership through the existing membership operations, and the group's leader reports
each committed membership to the map (``report_replicas``, ``_runtime/_metamap.py``). Every
acknowledged write stays on every replica across the changes. The clusters here host every
group on every broker (``replication_factor=0``, the stage-1 list): no map of their own and no
balancer acting beside the test.
"""

from __future__ import annotations

import orjson
import pytest
import trio

from trio_broker._core._metadata import (
    BrokerAddress,
    ClusterMap,
    FoundCluster,
    GroupAssignment,
    MapChanged,
)
from trio_broker._core._placement import (
    AddLearner,
    PromoteLearner,
    RemoveReplica,
    TransferLeader,
)
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._ids import cluster_of_queue
from trio_broker._runtime._balancing import WAITING
from trio_broker._runtime._balancing_seams import RemoteGroups
from trio_broker._runtime._metamap import MetaMap, report_replicas
from trio_broker.testing import open_mock_cluster
from trio_broker.testing._memory_network import LOCALHOST

pytestmark = pytest.mark.trio


async def answer_of(cluster, name, request):
    """One raw request to broker ``name``, following NOT_LEADER hints."""
    names = {b.broker_id: n for n, b in cluster.brokers.items()}
    for _ in range(50):
        reply = await cluster.call(name, request)
        if reply.get("code") in ("NOT_LEADER", "UNAVAILABLE"):
            name = names.get(reply.get("leader_id"), name)
            await trio.sleep(0.2)
            continue
        return reply
    raise AssertionError(f"no answer to {request}: {reply}")


def map_of(cluster) -> ClusterMap:
    """The map a metadata group would hold for this stage-1 cluster: every group on every
    broker, R = 3."""
    brokers = tuple(
        BrokerAddress(b.broker_id, LOCALHOST, cluster.ports[n])
        for n, b in sorted(cluster.brokers.items())
    )
    ids = tuple(b.broker_id for b in brokers)
    leaders = cluster.group_leaders()
    groups = tuple(
        GroupAssignment(g, ids, cluster.brokers[leaders[g]].broker_id) for g in sorted(leaders)
    )
    cmap = ClusterMap()
    assert isinstance(cmap.apply(FoundCluster(3, brokers, groups)), MapChanged)
    return cmap


class StandInMeta:
    """The metadata group's seam as ``report_replicas`` uses it, over one in-memory map."""

    def __init__(self, cmap: ClusterMap) -> None:
        self.map = cmap
        self.counters = {}  # (the queue counts ``report_replicas`` keeps for placement)

    counter = MetaMap.counter

    async def propose(self, command):
        await trio.sleep(0.01)
        return self.map.apply(command)

    async def wait_changed(self) -> None:
        await trio.sleep_forever()


def held(cluster, name: str, queue: str) -> list[int]:
    group = cluster_of_queue(queue)
    store = cluster.group_stores.get((name, group)) or cluster.stores[name]
    return [orjson.loads(v) for v in store.messages(queue)]


async def test_group_actions_reach_the_group_leader_and_every_write_stays(autojump_clock):
    async with open_mock_cluster(3, groups=3, replication_factor=0) as cluster:
        reply = await answer_of(cluster, "b1", {"operation": "CREATE_QUEUE"})
        queue = reply["queue_id"]
        g = cluster_of_queue(queue)
        acknowledged = []

        async def append(value: int) -> None:
            request = {"operation": "APPEND", "queue_name": queue, "data": value}
            answer = await answer_of(cluster, "b1", request)
            assert answer["status"] == "success", answer
            acknowledged.append(value)

        for value in range(5):
            await append(value)
        cmap = map_of(cluster)

        meta = StandInMeta(cmap)
        remote = RemoteGroups(cluster.brokers["b1"], deadline=6.0)
        async with trio.open_nursery() as nursery:
            for name in cluster.brokers:
                replica = cluster.replicas(name)[g]
                nursery.start_soon(report_replicas, replica, meta)
            leaders = await remote.leaders(cmap)
            assert leaders == {
                group: cluster.brokers[name].broker_id
                for group, name in cluster.group_leaders().items()
            }
            names = {b.broker_id: n for n, b in cluster.brokers.items()}
            leader = leaders[g]
            gone = min(b for b in cmap.groups[g].voters if b != leader)
            everyone = set(cmap.groups[g].voters)

            # Remove a voter: asked of the group's leader, through REMOVE_MEMBER.
            assert await remote.act(cmap, RemoveReplica(g, gone), leader) is None
            node = cluster.replicas(names[leader])[g].driver.node
            assert gone not in node.config.members
            await cluster.wait_until(lambda: set(cmap.groups[g].voters) == everyone - {gone})
            assert cmap.groups[g].config_version == node.config.version
            for value in range(5, 7):
                await append(value)

            # Add it back as a learner (JOIN_CLUSTER naming the group), asked of a replica
            # that is not the leader: it forwards. The leader promotes it once caught up.
            other = min(everyone - {gone, leader})
            assert await remote.act(cmap, AddLearner(g, gone), other) is None
            assert await remote.act(cmap, PromoteLearner(g, gone), leader) == WAITING
            await cluster.wait_until(lambda: set(cmap.groups[g].voters) == everyone)
            assert cmap.groups[g].learners == ()

            # Leadership to it, asked with the leader unknown (any live voter forwards).
            assert await remote.act(cmap, TransferLeader(g, gone), None) is None
            assert cluster.replicas(names[gone])[g].driver.node.is_leader
            await append(7)

            refused = await remote.act(cmap, RemoveReplica(g, "B-99999"), gone)
            assert isinstance(refused, BrokerError) and refused.code == ErrorCode.BAD_REQUEST
            nursery.cancel_scope.cancel()

        def caught_up() -> bool:
            commit = max(cluster.replicas(n)[g].driver.node.commit for n in cluster.brokers)
            return all(cluster.replicas(n)[g].applied_index >= commit for n in cluster.brokers)

        with trio.fail_after(30):
            await cluster.wait_until(caught_up)
        assert acknowledged == list(range(8))
        for name in cluster.brokers:
            assert [v for v in held(cluster, name, queue) if v in acknowledged] == acknowledged


async def test_a_broker_that_cannot_be_reached_is_an_error_not_a_hang(autojump_clock):
    async with open_mock_cluster(3, groups=2, replication_factor=0) as cluster:
        cmap = map_of(cluster)
        g = sorted(cmap.groups)[0]
        leader = cluster.group_leaders()[g]
        leader_id = cluster.brokers[leader].broker_id
        asker = next(b for n, b in cluster.brokers.items() if n != leader)
        cluster.isolate(leader)
        remote = RemoteGroups(asker, deadline=2.0)
        with trio.fail_after(30):
            observed = await remote.leaders(cmap)
        assert observed[g] != leader_id
        with trio.fail_after(30):
            result = await remote.act(cmap, TransferLeader(g, leader_id), leader_id)
        # Asked of the isolated leader first, then of the others, which cannot hand
        # leadership to an unreachable broker either.
        assert isinstance(result, BrokerError)
