"""``client rebalance`` and ``client drain`` against a real broker over TCP: the operations
travel the wire, reach the balancer on the metadata leader and print what it did. The broker's
map here is a stand-in of one group on this broker (the metadata group proper places it)."""

from __future__ import annotations

import json

import pytest
import trio

from trio_broker._core._metadata import (
    BrokerAddress,
    ClusterMap,
    FoundCluster,
    GroupAssignment,
    MapChanged,
    RegisterBroker,
)
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._runtime._balancing import Balancing, BalancingSettings
from trio_broker._runtime._balancing_seams import MetaMapSource, RemoteGroups

NEWCOMER = "B-ZZZZZ"


class OneBrokerMap:
    """A map source led wherever the broker's own group is led."""

    def __init__(self, broker, cmap: ClusterMap) -> None:
        self.broker = broker
        self.map = cmap
        self.proposed: list[object] = []

    def is_metadata_leader(self) -> bool:
        return self.broker.driver.node.is_leader

    def cluster_map(self) -> ClusterMap:
        return self.map

    async def propose(self, command):
        await trio.lowlevel.checkpoint()
        self.proposed.append(command)
        return self.map.apply(command)

    async def wait_map(self, version: int) -> None:
        assert self.map.version >= version  # (applied as proposed)

    def verdicts(self) -> dict[str, bool]:
        return {}


@pytest.fixture
async def balanced_broker(tmp_path):
    async with open_broker(BrokerConfig(data_dir=tmp_path / "b", port=0)) as broker:
        cmap = ClusterMap()
        me = BrokerAddress(broker.broker_id, "127.0.0.1", broker.port)
        found = FoundCluster(
            1, (me,), (GroupAssignment(broker.cluster_id, (me.broker_id,), me.broker_id),)
        )
        assert isinstance(cmap.apply(found), MapChanged)
        assert isinstance(cmap.apply(RegisterBroker(NEWCOMER, "127.0.0.1", 1)), MapChanged)
        config = broker.config
        broker.balancing = Balancing(
            OneBrokerMap(broker, cmap),
            RemoteGroups(broker, deadline=config.failure_timeout * 2),
            BalancingSettings.for_timing(config.heartbeat_interval, config.failure_timeout),
        )
        yield broker


def seed(broker) -> list[str]:
    return ["--seed", f"127.0.0.1:{broker.port}"]


async def test_without_a_map_rebalance_and_drain_are_refused(tmp_path, cli):
    async with open_broker(BrokerConfig(data_dir=tmp_path / "b", port=0)) as broker:
        for argv in (["rebalance"], ["drain", broker.broker_id]):
            status, out, err = await cli(*seed(broker), *argv)
            assert (status, out) == (1, ""), argv
            assert err.startswith("error: UNAVAILABLE: this cluster has no balancer"), err


async def test_drain_then_rebalance_move_the_replica_away_a_step_a_round(balanced_broker, cli):
    broker = balanced_broker
    group = broker.cluster_id
    status, out, err = await cli(*seed(broker), "rebalance")
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "balanced: nothing to move",
        "map version 2, 0 group(s) moving a replica",
    ]

    status, out, err = await cli(*seed(broker), "drain", broker.broker_id)
    assert (status, err) == (0, "")
    assert out == f"{broker.broker_id} is draining: still holds 1 replica(s), leads 1 group(s)\n"

    # First round: the move starts (a metadata command); second: its target is added as a
    # learner, through JOIN_CLUSTER asked of the group's leader.
    status, out, err = await cli(*seed(broker), "rebalance")
    assert (status, err) == (0, "")
    first, summary = out.splitlines()
    assert first == f"{group}\tSTART_REPLICA_MOVE {NEWCOMER} from {broker.broker_id}\tdone"
    assert summary == "map version 4, 1 group(s) moving a replica"
    status, out, err = await cli(*seed(broker), "--json", "rebalance")
    assert (status, err) == (0, "")
    report = json.loads(out)
    assert report["moves"] == [
        {
            "move": "ADD_LEARNER",
            "group_id": group,
            "outcome": "done",
            "broker_id": NEWCOMER,
            "source": None,
            "reason": None,
        }
    ]
    assert NEWCOMER in broker.driver.node.config.learners

    status, out, err = await cli(*seed(broker), "drain", broker.broker_id, "--undo")
    assert (status, err) == (0, "")
    assert out == f"{broker.broker_id} stays (holds 1 replica(s))\n"
    status, out, err = await cli(*seed(broker), "drain", "B-NOONE")
    assert status == 1 and "BAD_REQUEST" in err and "B-NOONE" in err


async def test_the_metadata_seam_adapter_reads_the_leaders_failure_detector(balanced_broker):
    broker = balanced_broker
    source = broker.balancing.source

    class Meta:
        map = source.map
        is_leader = True
        changed = trio.Event()

        async def propose(self, command):
            return await source.propose(command)

        async def wait_changed(self):
            await self.changed.wait()

    meta = Meta()
    adapter = MetaMapSource(meta, broker.driver)
    assert adapter.is_metadata_leader() and adapter.cluster_map() is source.map
    assert adapter.verdicts() == {broker.broker_id: True}
    # Waiting for a map version: at once when it is there, else until a newer map is loaded.
    await adapter.wait_map(source.map.version)
    with trio.move_on_after(1) as waited:
        await adapter.wait_map(source.map.version + 1)
    assert waited.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(adapter.wait_map, source.map.version + 1)
        await trio.sleep(0.1)
        await source.propose(RegisterBroker("B-YYYYY", "127.0.0.1", 2))
        meta.changed.set()
    Meta.map = None
    assert not adapter.is_metadata_leader()
    assert adapter.cluster_map().settings is None
