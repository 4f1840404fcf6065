"""``client rebalance`` and ``client drain`` over TCP: the operations travel the wire, reach
the balancer on the metadata leader (forwarded there from any broker) and print what it did;
on a real cluster with a map, and on a single broker with a stand-in map (one group), where
each round's step can be followed one at a time."""

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
from trio_broker._runtime._balancing import (
    MAP_NOT_KNOWN,
    NO_BALANCER,
    Balancing,
    BalancingSettings,
)
from trio_broker._runtime._balancing_seams import MetaMapSource, RemoteGroups
from trio_broker._runtime._groups import EVERY_BROKER
from trio_broker.testing import open_local_cluster

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


async def refusals(cli, broker) -> list[str]:
    """What ``rebalance`` and ``drain`` answer (both refused: status 1, nothing printed)."""
    errors = []
    for argv in (["rebalance"], ["drain", broker.broker_id]):
        status, out, err = await cli(*seed(broker), *argv)
        assert (status, out) == (1, ""), argv
        errors.append(err)
    return errors


async def test_without_a_map_rebalance_and_drain_are_refused(tmp_path, cli):
    # One group: no map, ever; the broker cannot tell that from a map not applied yet.
    async with open_broker(BrokerConfig(data_dir=tmp_path / "b", port=0)) as broker:
        for err in await refusals(cli, broker):
            assert err == f"error: UNAVAILABLE: {MAP_NOT_KNOWN}\n", err


async def test_a_founder_whose_map_is_not_founded_yet_says_so(tmp_path, cli):
    # Several groups, placed once a second broker joins: until then this broker knows no
    # map. It has no balancer yet, which is not the same as a cluster without one.
    config = BrokerConfig(data_dir=tmp_path / "b", port=0, groups=3, founding_brokers=2)
    async with open_broker(config) as broker:
        with trio.fail_after(10):
            while not broker.host.meta.founding:  # noqa: ASYNC110 (a view, no event)
                await trio.sleep(0.01)
        for err in await refusals(cli, broker):
            assert err.startswith("error: UNAVAILABLE: no cluster map is known on this broker yet")
            assert "retry shortly" in err and "this cluster has no balancer" not in err
        assert broker.balancing is None and broker.host.meta.map is None


async def test_a_cluster_with_listed_groups_has_no_balancer(tmp_path, cli):
    # Every broker hosts every group (the stage-1 list): certain, no balancer ever.
    config = BrokerConfig(
        data_dir=tmp_path / "b", port=0, groups=3, replication_factor=EVERY_BROKER
    )
    async with open_broker(config) as broker:
        with trio.fail_after(10):
            while not broker.host.listed:  # noqa: ASYNC110 (a view, no event)
                await trio.sleep(0.01)
        for err in await refusals(cli, broker):
            assert err == f"error: UNAVAILABLE: {NO_BALANCER}\n", err


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


async def test_rebalance_and_drain_on_a_cluster_with_a_map(tmp_path, cli):
    """Three brokers over TCP, two groups on two brokers each: the operations go to any
    broker, which forwards them to the metadata leader; the drained broker ends empty."""
    with trio.fail_after(120):
        async with open_local_cluster(tmp_path, 3, groups=2, replication_factor=2) as cluster:
            founder = cluster.brokers["b1"]

            def cmap():
                return founder.host.meta.map

            def settled() -> bool:
                m = cmap()
                return (
                    m is not None
                    and len(m.brokers) == 3
                    and all(r.move is None and len(r.voters) == 2 for r in m.groups.values())
                    # The broker asked must know the map too: one that has not applied it yet
                    # cannot tell this cluster from one founded before the metadata group.
                    and all(b.host.meta.map is not None for b in cluster.brokers.values())
                )

            await until(settled)
            asked = next(n for n, b in cluster.brokers.items() if not b.driver.node.is_leader)
            port = ["--seed", f"127.0.0.1:{cluster.ports[asked]}"]
            status, out, err = await cli(*port, "rebalance")
            assert (status, err) == (0, ""), err
            assert out.splitlines()[-1].startswith("map version ")
            leaving = max(cmap().brokers, key=lambda b: (len(cmap().groups_of(b)), b))
            held = len(cmap().groups_of(leaving))
            assert held >= 1
            status, out, err = await cli(*port, "drain", leaving)
            assert (status, err) == (0, ""), err
            assert out.startswith(f"{leaving} is draining: still holds {held} replica(s)")
            name = next(n for n, b in cluster.brokers.items() if b.broker_id == leaving)
            await until(
                lambda: (
                    not cmap().groups_of(leaving)
                    and all(r.move is None for r in cmap().groups.values())
                    and set(cluster.brokers[name].host.groups) == {founder.cluster_id}
                )
            )

            # The drain's answer is the metadata leader's view: its map (no replica left) and
            # who leads each group as its last balancer round observed (none led by the
            # leaving broker). Wait for that round rather than for a fixed time.
            def drained() -> bool:
                for broker in cluster.brokers.values():
                    balancing = broker.balancing
                    if balancing is not None and balancing.source.is_metadata_leader():
                        state = balancing.drain_state(leaving)
                        return state.replicas == 0 and state.leads == 0
                return False

            await until(drained)
            status, out, err = await cli(*port, "drain", leaving)
            assert (status, err) == (0, ""), err
            assert out == f"{leaving} is drained: it holds nothing and can be stopped and removed\n"
            for record in cmap().groups.values():
                assert leaving not in record.replicas and len(record.voters) == 2
            # The cluster's settings after founding (tests/test_mapops.py: what follows).
            status, out, err = await cli(*port, "set-group-count", "1")
            assert status == 1 and "cannot have fewer" in err, (status, err)
            assert len(cmap().groups) == 2
            status, out, err = await cli(*port, "set-replication-factor", "1")
            assert (status, err) == (0, ""), err
            assert out.startswith("2 groups, replication factor 1, 5 metadata voters\n"), out
            status, out, err = await cli(*port, "--json", "set-group-count", "3")
            assert (status, err) == (0, ""), err
            answer = json.loads(out)
            assert answer["group_count"] == 3 and len(answer["added_groups"]) == 1, answer
            # The answer comes from the metadata leader once its map applied the change; the
            # founder applies that map version in its own time: read its map once it did.
            await until(lambda: cmap().version >= answer["map_version"])
            assert cmap().replication_factor == 1 and len(cmap().groups) == 3


async def until(predicate) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(0.05)
