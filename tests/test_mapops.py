"""The operator side of the cluster map (docs/replication.md, "Queue counts in the map"):
each group's queue count is replicated in the map (its leader reports it, ``SetQueueCount``),
a CREATE_QUEUE naming no group lands on the least-loaded group its broker leads by those
counts, and deletes free capacity. Real brokers on a memory network under the mock clock; the
map's commands through both state machines (in memory and SQLite)."""

from __future__ import annotations

import collections
import copy

import apsw
import pytest
import trio

from trio_broker._core._commands import CommandRejected
from trio_broker._core._metadata import (
    AddGroups,
    BrokerAddress,
    ClusterMap,
    GroupAssignment,
    MapChanged,
    PlaceQueue,
    SetBrokerDraining,
    SetGroupReplicas,
    SetPreferredLeader,
    SetQueueCount,
    SetReplicationFactor,
)
from trio_broker._core._placement import (
    RemoveReplica,
    TransferLeader,
    add_groups,
    found_cluster,
    plan_moves,
)
from trio_broker._core._queues import QueueState
from trio_broker._ids import cluster_of_queue
from trio_broker._protocol._entries import METADATA_PAYLOADS, decode_payload, encode_payload
from trio_broker._storage._queue_sql import apply_command, stored_map
from trio_broker._storage._schema import upgrade
from trio_broker.client import connect
from trio_broker.testing import open_local_cluster, open_mock_cluster

from .spread import wait_spread
from .test_balancing_cluster import Writer, answer_of, wait_settled
from .test_metamap import hold_the_balancer

BROKERS = [BrokerAddress(f"B-0000{i}", "127.0.0.1", 9000 + i) for i in range(1, 4)]
FOUND = found_cluster(BROKERS, ["G-AAAAA", "G-BBBBB"], 3)


def test_queue_count_reports_are_idempotent_and_ordered_by_index(tmp_path):
    """SetQueueCount sets one group's count (QUEUE_COUNT in the log); the same report again,
    or an older one, is STALE_REPORT; bad values are refused; each refusal changes nothing,
    in memory and in SQLite alike."""
    report = SetQueueCount("G-AAAAA", 7, 40)
    assert METADATA_PAYLOADS["QUEUE_COUNT"] is SetQueueCount
    assert decode_payload(encode_payload(report)) == report
    state = QueueState()
    db = apsw.Connection(str(tmp_path / "map.db"))
    upgrade(db)

    def both(command):
        with db:
            in_memory, in_sql = state.apply(command), apply_command(db, command)
        assert in_memory == in_sql, command
        assert stored_map(db) == state.cluster_map, command
        return in_memory

    assert both(FOUND) == MapChanged(1)
    assert both(report) == MapChanged(2)
    assert state.cluster_map.queue_counts == {"G-AAAAA": 7, "G-BBBBB": 0}
    before = copy.deepcopy(state.cluster_map)
    refused = [
        report,  # the same again
        SetQueueCount("G-AAAAA", 3, 39),  # older
        SetQueueCount("G-ZZZZZ", 1, 50),  # no such group
        SetQueueCount("G-AAAAA", -1, 50),
        SetQueueCount("G-AAAAA", True, 50),
        SetQueueCount("G-AAAAA", 1, 0),
        SetQueueCount("G-AAAAA", 1, "51"),
    ]
    for command in refused:
        result = both(command)
        assert isinstance(result, CommandRejected), command
        assert state.cluster_map == before, command
    assert both(SetQueueCount("G-AAAAA", 2, 41)) == MapChanged(3)
    assert state.cluster_map.queue_counts["G-AAAAA"] == 2
    # The least-loaded group follows the reports; a placement counts on top of them.
    assert state.cluster_map.least_loaded_group() == "G-BBBBB"
    assert both(SetQueueCount("G-BBBBB", 5, 9)) == MapChanged(4)
    assert state.cluster_map.least_loaded_group() == "G-AAAAA"
    placed = both(PlaceQueue("ABCDE"))
    assert placed.group_id == "G-AAAAA" and state.cluster_map.queue_counts["G-AAAAA"] == 3


def test_settings_commands_refuse_bad_input_and_change_nothing(tmp_path):
    """AddGroups and SetReplicationFactor (ADD_GROUPS, REPLICATION_FACTOR in the log): each
    refusal changes nothing, in memory and in SQLite; a good one adds the groups on one
    voter each (its preferred leader), counted, and sets the settings."""
    state = QueueState()
    db = apsw.Connection(str(tmp_path / "map.db"))
    upgrade(db)

    def both(command):
        with db:
            in_memory, in_sql = state.apply(command), apply_command(db, command)
        assert in_memory == in_sql, command
        assert stored_map(db) == state.cluster_map, command
        return in_memory

    assert METADATA_PAYLOADS["ADD_GROUPS"] is AddGroups
    assert METADATA_PAYLOADS["REPLICATION_FACTOR"] is SetReplicationFactor
    both(FOUND)
    both(SetBrokerDraining("B-00003", True))
    before = copy.deepcopy(state.cluster_map)
    new = GroupAssignment("G-NEW01", ("B-00001",), "B-00001")
    refused = [
        SetReplicationFactor(0),
        SetReplicationFactor(8),
        SetReplicationFactor(True),
        AddGroups(1, (new,)),  # the map has 2 groups: a stale or repeated request
        AddGroups(2, ()),
        AddGroups(2, (GroupAssignment("G-AAAAA", ("B-00001",), "B-00001"),)),  # exists
        AddGroups(2, (new, new)),
        AddGroups(2, (GroupAssignment("G-NEW01", ("B-00001", "B-00002"), "B-00001"),)),
        AddGroups(2, (GroupAssignment("G-NEW01", ("B-00003",), "B-00003"),)),  # draining
        AddGroups(2, (GroupAssignment("G-NEW01", ("B-00001",), "B-00002"),)),
        AddGroups(2, (GroupAssignment("bad", ("B-00001",), "B-00001"),)),
    ]
    for command in refused:
        assert isinstance(both(command), CommandRejected), command
        assert state.cluster_map == before, command
    # Placed by add_groups: the brokers that stay holding fewest replicas first.
    command = add_groups(state.cluster_map, ["G-NEW02", "G-NEW01", "G-NEW03"])
    assert command.group_count == 2
    assert [g.voters for g in command.groups] == [("B-00001",), ("B-00002",), ("B-00001",)]
    assert isinstance(both(command), MapChanged)
    assert isinstance(both(SetReplicationFactor(2)), MapChanged)
    cmap = state.cluster_map
    assert cmap.settings.group_count == 5 and cmap.replication_factor == 2
    assert cmap.groups["G-NEW02"].voters == ("B-00002",)
    assert cmap.groups["G-NEW02"].preferred_leader == "B-00002"
    assert cmap.queue_counts["G-NEW01"] == 0
    assert isinstance(both(command), CommandRejected)  # the same again adds nothing


def test_a_lowered_replication_factor_never_removes_the_preferred_leader():
    """The balancer's plan, R lowered from 3 to 1 on three groups of three voters: one
    removal per group per round, never of its preferred leader; a group led by the voter
    to go hands its leadership over first."""
    cmap = ClusterMap()
    cmap.apply(FOUND)
    cmap.apply(AddGroups(2, (GroupAssignment("G-CCCCC", ("B-00001",), "B-00001"),)))
    cmap.apply(SetGroupReplicas("G-CCCCC", ("B-00001", "B-00002", "B-00003"), (), 3))
    cmap.apply(SetReplicationFactor(1))
    for _ in range(5):  # rounds, the leaders following the preferred ones
        leaders = {g: r.preferred_leader for g, r in cmap.groups.items()}
        moves = plan_moves(cmap, leaders, max_moves=8, max_moving_groups=2)
        for m in moves:
            if isinstance(m, SetPreferredLeader):
                assert isinstance(cmap.apply(m), MapChanged)
        removals = [m for m in moves if isinstance(m, RemoveReplica)]
        assert len({m.group_id for m in removals}) == len(removals)  # one per group
        for m in removals:
            rec = cmap.groups[m.group_id]
            assert m.broker_id not in (rec.preferred_leader, leaders[m.group_id])
            voters = tuple(v for v in rec.voters if v != m.broker_id)
            report = SetGroupReplicas(m.group_id, voters, (), rec.config_version + 1)
            assert isinstance(cmap.apply(report), MapChanged)
    assert all(r.voters == (r.preferred_leader,) for r in cmap.groups.values()), cmap.groups
    # A group led by the only voter that may go hands its leadership over first.
    cmap.apply(SetReplicationFactor(3))
    cmap.apply(SetGroupReplicas("G-AAAAA", ("B-00001", "B-00002"), (), 99))
    cmap.apply(SetPreferredLeader("G-AAAAA", "B-00002"))
    cmap.apply(SetReplicationFactor(1))
    leaders = {g: r.preferred_leader for g, r in cmap.groups.items()} | {"G-AAAAA": "B-00001"}
    moves = plan_moves(cmap, leaders, max_moves=8, max_moving_groups=2)
    assert TransferLeader("G-AAAAA", "B-00002") in moves
    assert not [m for m in moves if isinstance(m, RemoveReplica)]


def map_counts(cluster) -> dict[str, int]:
    return dict(cluster.brokers["b1"].host.meta.map.queue_counts)


def real_counts(cluster) -> dict[str, int]:
    """Each data group's queues, as its leader's replica holds them."""
    counts = {}
    for group, leader in cluster.data_leaders().items():
        replica = cluster.data_replicas(leader)[group]
        counts[group] = len(replica._store.queue_lengths())
    return counts


def counts_agree(cluster) -> bool:
    real = real_counts(cluster)
    return all(b.host.meta.map.queue_counts == real for b in cluster.brokers.values())


@pytest.mark.trio
async def test_the_map_counts_queues_and_creates_fill_the_least_loaded_led_group(
    autojump_clock,
):
    """2 brokers, 4 groups (each broker leads 2): queues created on one group by name, then
    CREATE_QUEUEs naming none sent to its leader fill that broker's other group first,
    until both hold as many; the map's count of every group, on every broker, converges to
    what the group holds; deleting queues lowers its count, and the next creates go there.
    (A count kept by the replica alone never goes down on a delete.)"""
    async with open_mock_cluster(2, groups=4, replication_factor=2) as cluster:
        with trio.fail_after(120):
            await wait_spread(cluster, 4)
        hold_the_balancer(cluster)  # (leadership stays where it is: two groups each)
        ids = {b.broker_id: name for name, b in cluster.brokers.items()}
        leaders = cluster.data_leaders()
        led = sorted(g for g, leader in leaders.items() if leader == "b1")
        assert len(led) == 2
        first, second = led
        named = []
        for _ in range(4):
            reply = await cluster.call("b1", {"operation": "CREATE_QUEUE", "cluster_id": first})
            assert reply["status"] == "success", reply
            named.append(reply["queue_id"])
        with trio.fail_after(30):
            await cluster.wait_until(lambda: counts_agree(cluster))
        assert map_counts(cluster)[first] == 4
        # Original-design creates: to b1's least-loaded group, counted as they land.
        landed = collections.Counter()
        for _ in range(6):
            reply = await cluster.call("b1", {"operation": "CREATE_QUEUE", "client_id": "old"})
            assert reply["status"] == "success", reply
            group = cluster_of_queue(reply["queue_id"])
            assert ids[cluster.brokers[leaders[group]].broker_id] == "b1"
            landed[group] += 1
        assert landed == {second: 5, first: 1}, landed
        with trio.fail_after(30):
            await cluster.wait_until(lambda: counts_agree(cluster))
        assert map_counts(cluster)[first] == 5 and map_counts(cluster)[second] == 5
        # Deletes free capacity: three queues of the first group go.
        for queue in named[:3]:
            reply = await cluster.call(
                "b1", {"operation": "DELETE_QUEUE", "queue_name": queue, "force": True}
            )
            assert reply["status"] == "success", reply
        with trio.fail_after(30):
            await cluster.wait_until(lambda: counts_agree(cluster))
        assert map_counts(cluster)[first] == 2
        landed.clear()
        for _ in range(3):
            reply = await cluster.call("b1", {"operation": "CREATE_QUEUE"})
            landed[cluster_of_queue(reply["queue_id"])] += 1
        assert landed == {first: 3}, landed
        # CLUSTER_QUERY lists the counts (an optional field of ``groups``).
        reply = await cluster.call("b2", {"operation": "CLUSTER_QUERY"})
        with trio.fail_after(30):
            await cluster.wait_until(lambda: counts_agree(cluster))
        reply = await cluster.call("b2", {"operation": "CLUSTER_QUERY"})
        listed = {g["cluster_id"]: g["queue_count"] for g in reply["groups"]}
        assert listed == real_counts(cluster) and listed[first] == 5


@pytest.mark.trio
async def test_the_trio_client_places_new_queues_on_the_least_loaded_groups(tmp_path):
    """Four queues named on one group, counted in the map: a client then creating six
    without naming a group puts none there and three on each other group (the listed counts
    plus its own creates, ties in turn); once three of the four are deleted and counted, a
    new client's next three creates fill that group back first."""
    with trio.fail_after(60):
        async with open_local_cluster(tmp_path, 2, groups=3, replication_factor=1) as cluster:
            founder = cluster.brokers["b1"]
            while founder.host.meta.map is None:
                await founder.host.meta.wait_changed()
            groups = sorted(founder.host.meta.map.groups)
            while not all(  # noqa: ASYNC110 (polls the brokers until every group is led)
                any(
                    g in b.host.groups and b.host.groups[g].is_leader
                    for b in cluster.brokers.values()
                )
                for g in groups
            ):
                await trio.sleep(0.05)
            seed = f"127.0.0.1:{cluster.ports['b1']}"

            async def counted(group: str, count: int) -> None:
                for broker in cluster.brokers.values():
                    while broker.host.meta.map.queue_counts.get(group) != count:
                        await broker.host.meta.wait_changed()

            async with connect(seed) as client:
                full = [await client.create_queue(groups[0]) for _ in range(4)]
            await counted(groups[0], 4)
            async with connect(seed) as client:
                queues = [await client.create_queue() for _ in range(6)]
            landed = collections.Counter(cluster_of_queue(q) for q in queues)
            assert landed == {groups[1]: 3, groups[2]: 3}, landed
            async with connect(seed) as client:
                for queue in full[:3]:
                    await client.delete_queue(queue)
            # Every group's count is in the map before the next client reads it: a
            # report still on its way would leave a group looking less loaded.
            await counted(groups[0], 1)
            await counted(groups[1], 3)
            await counted(groups[2], 3)
            async with connect(seed) as client:
                queues = [await client.create_queue() for _ in range(2)]
                landed = collections.Counter(cluster_of_queue(q) for q in queues)
                assert landed == {groups[0]: 2}, landed
                assert await client.append(queues[0], "v") == 1


# -- changing the groups and the replication factor after founding -------------------------------


def settings_of(cluster):
    cmap = cluster.brokers["b1"].host.meta.map
    return len(cmap.groups), cmap.replication_factor


@pytest.mark.trio
async def test_the_replication_factor_goes_up_then_down_with_every_write_kept(autojump_clock):
    """3 brokers, 2 groups on 2 voters: SET_CLUSTER_SETTINGS to R = 3 (sent to a broker that
    may not lead the metadata group) grows every group to 3 voters (learner, then voter),
    then R = 1 shrinks each to one; appends go on all along, and every acknowledged one is
    on every voter at each step. Bad values are refused and change nothing."""
    async with open_mock_cluster(3, groups=2, replication_factor=2) as cluster:
        writer = Writer(cluster)
        await writer.create(2)
        await wait_settled(cluster, 2)
        version = cluster.brokers["b1"].host.meta.map.version
        for bad in (
            {"replication_factor": 0},
            {"replication_factor": 8},
            {"group_count": 1},  # fewer groups: queues live on them
            {},
            {"replication_factor": "3"},
        ):
            reply = await cluster.call("b3", {"operation": "SET_CLUSTER_SETTINGS", **bad})
            assert reply["status"] == "error" and reply["code"] == "BAD_REQUEST", (bad, reply)
        reply = await cluster.call("b3", {"operation": "SET_CLUSTER_SETTINGS", "group_count": 1})
        assert "cannot have fewer" in reply["message"], reply
        assert settings_of(cluster) == (2, 2)
        assert cluster.brokers["b1"].host.meta.map.version == version
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            for r in (3, 1):
                reply = await answer_of(
                    cluster, "b3", {"operation": "SET_CLUSTER_SETTINGS", "replication_factor": r}
                )
                assert reply["status"] == "success", reply
                assert reply["replication_factor"] == r and reply["group_count"] == 2, reply
                await wait_settled(cluster, r)
                await writer.check()
            nursery.cancel_scope.cancel()
        assert settings_of(cluster) == (2, 1)


@pytest.mark.trio
async def test_new_groups_are_placed_and_grown_by_the_balancer(autojump_clock):
    """3 brokers, 3 groups, R = 2: SET_CLUSTER_SETTINGS to 6 groups adds three, each started
    on one broker and grown to 2 voters one change at a time; replicas and leadership end
    spread, queues can be created on the new groups, and the same request again adds
    nothing."""
    async with open_mock_cluster(3, groups=3, replication_factor=2) as cluster:
        await wait_settled(cluster, 2)
        before = set(cluster.brokers["b1"].host.meta.map.groups)
        reply = await answer_of(
            cluster, "b2", {"operation": "SET_CLUSTER_SETTINGS", "group_count": 6}
        )
        assert reply["status"] == "success" and reply["group_count"] == 6, reply
        added = set(reply["added_groups"])
        assert len(added) == 3 and not added & before
        await wait_settled(cluster, 2)
        cmap = cluster.brokers["b1"].host.meta.map
        assert set(cmap.groups) == before | added and settings_of(cluster) == (6, 2)
        writer = Writer(cluster)
        await writer.create(6)
        await writer.append_round()
        await writer.check()
        again = await answer_of(
            cluster, "b1", {"operation": "SET_CLUSTER_SETTINGS", "group_count": 6}
        )
        assert again["status"] == "success" and again["added_groups"] == [], again
        assert len(cluster.brokers["b1"].host.meta.map.groups) == 6


# -- the leader of a group not hosted here: observed, or none ----------------------------------


@pytest.mark.trio
async def test_a_group_not_hosted_here_has_a_leader_only_when_one_was_observed(autojump_clock):
    """4 brokers, 4 groups on 2 voters each: an outsider (hosting no replica of a group)
    names the group's leader once a broker hosting it said so lately. With both its replicas
    crashed and that report expired, the outsider names no leader (CLUSTER_QUERY about the
    group: no ``leader_id`` and no broker in role ``leader``; ``groups``: none; a request for
    one of its queues: NOT_LEADER without a leader) rather than the map's preferred leader, a
    dead broker. Once the replicas are back, their leader is named again."""
    async with open_mock_cluster(4, groups=4, replication_factor=2) as cluster:
        with trio.fail_after(120):
            await wait_spread(cluster, 4)
        cmap = cluster.brokers["b1"].host.meta.map
        ids = {name: b.broker_id for name, b in cluster.brokers.items()}
        group, record = sorted(cmap.groups.items())[0]
        outsider = next(n for n in sorted(cluster.brokers) if ids[n] not in record.replicas)
        hosts = sorted(n for n in cluster.brokers if ids[n] in record.replicas)
        leader = cluster.data_leaders()[group]
        reply = await answer_of(cluster, leader, {"operation": "CREATE_QUEUE", "cluster_id": group})
        queue = reply["queue_id"]
        # Named once a broker hosting the group reported it (a refresh every failure timeout;
        # the balancer may still move the leadership meanwhile).
        with trio.fail_after(60):
            while True:
                topology = await cluster.call(
                    outsider, {"operation": "CLUSTER_QUERY", "cluster_id": group}
                )
                current = cluster.data_leaders()[group]
                if current is not None and topology.get("leader_id") == ids[current]:
                    break
                await trio.sleep(1)
        for name in hosts:
            await cluster.crash(name)
        await trio.sleep(30)  # (several failure timeouts: the last report expires)
        topology = await cluster.call(outsider, {"operation": "CLUSTER_QUERY", "cluster_id": group})
        assert "leader_id" not in topology, topology
        assert all(b["role"] == "replica" for b in topology["brokers"]), topology
        views = {g["cluster_id"]: g for g in topology["groups"]}
        assert "leader_id" not in views[group], views[group]
        refused = await cluster.call(
            outsider, {"operation": "APPEND", "queue_name": queue, "data": 1}
        )
        assert refused["code"] == "NOT_LEADER" and "leader_id" not in refused, refused
        for name in hosts:
            await cluster.restart(name)
        with trio.fail_after(120):
            while True:
                topology = await cluster.call(
                    outsider, {"operation": "CLUSTER_QUERY", "cluster_id": group}
                )
                if topology.get("leader_id") is not None:
                    break
                await trio.sleep(1)
        assert topology["leader_id"] in {ids[n] for n in hosts}


# -- the metadata group's leadership in the leader balance ---------------------------------------


def test_the_metadata_leader_counts_in_the_leader_balance():
    """3 brokers, 2 groups on all 3: founded, B-00001 and B-00002 are the preferred leaders;
    with B-00001 leading the metadata group too, the plan moves a group's preference (and
    leadership) to B-00003, so each leads one of the three; counted nowhere, it moves none."""
    cmap = ClusterMap()
    cmap.apply(FOUND)
    preferred = {g: r.preferred_leader for g, r in cmap.groups.items()}
    assert sorted(preferred.values()) == ["B-00001", "B-00002"]
    plan = dict(max_moves=8, max_moving_groups=2)
    assert plan_moves(cmap, preferred, **plan) == []
    moves = plan_moves(cmap, preferred, metadata_leader="B-00001", **plan)
    led = next(g for g, p in preferred.items() if p == "B-00001")
    assert SetPreferredLeader(led, "B-00003") in moves
    assert TransferLeader(led, "B-00003") in moves
    for m in moves:
        if isinstance(m, SetPreferredLeader):
            cmap.apply(m)
    leaders = {g: r.preferred_leader for g, r in cmap.groups.items()}
    assert plan_moves(cmap, leaders, metadata_leader="B-00001", **plan) == []  # converged
    leads = collections.Counter([*leaders.values(), "B-00001"])
    assert max(leads.values()) == 1 and len(leads) == 3


@pytest.mark.trio
async def test_no_broker_leads_more_than_its_share_with_the_metadata_group_counted(
    autojump_clock,
):
    """3 brokers, 2 groups, R = 3: once settled, the three leaderships (the metadata group's
    and the two data groups') are on three different brokers."""
    async with open_mock_cluster(3, groups=2, replication_factor=3) as cluster:
        await wait_settled(cluster, 3)

        def one_each() -> bool:
            leaders = [*cluster.data_leaders().values()]
            meta = [n for n, b in cluster.brokers.items() if b.driver.node.is_leader]
            return None not in leaders and sorted(leaders + meta) == sorted(cluster.brokers)

        with trio.fail_after(60):
            await cluster.wait_until(one_each)
        await trio.sleep(20)  # (four more rounds: nothing moves back)
        assert one_each()


# -- the metadata group's voters ------------------------------------------------------------------


@pytest.mark.trio
async def test_the_metadata_group_keeps_its_voters_capped_and_replaces_a_dead_one(
    autojump_clock,
):
    """A cluster capped at 3 metadata voters (SET_CLUSTER_SETTINGS metadata_voters): five
    brokers join, two stay learners of the metadata group (they still get the map); a voter
    crashes and a caught-up learner is promoted in its place (3 alive), and no further one."""
    async with open_mock_cluster(1, groups=2, replication_factor=2) as cluster:
        await wait_settled(cluster, 1)
        reply = await answer_of(
            cluster, "b1", {"operation": "SET_CLUSTER_SETTINGS", "metadata_voters": 3}
        )
        assert reply["status"] == "success" and reply["metadata_voters"] == 3, reply
        for name in ("b2", "b3", "b4", "b5"):
            await cluster.start(name)
        node = cluster.brokers["b1"].driver.node

        def joined() -> bool:
            return len(node.config.members) == 5 and all(
                b.host.meta.map is not None and b.host.meta.map.settings.metadata_voters == 3
                for b in cluster.brokers.values()
            )

        with trio.fail_after(120):
            await cluster.wait_until(joined)
        await trio.sleep(10)  # (learners caught up long ago: none more is promoted)
        assert len(node.config.voters) == 3 and len(node.config.learners) == 2
        leader = next(n for n, b in cluster.brokers.items() if b.driver.node.is_leader)
        ids = {b.broker_id: n for n, b in cluster.brokers.items()}
        victim = next(ids[v] for v in sorted(node.config.voters) if ids[v] != leader)
        await cluster.crash(victim)
        meta = cluster.brokers[leader].driver.node

        def replaced() -> bool:
            statuses = meta.member_statuses()
            alive = [v for v in meta.config.voters if statuses[v].status == "active"]
            return len(alive) == 3 and len(meta.config.voters) == 4

        with trio.fail_after(60):
            await cluster.wait_until(replaced)
        await trio.sleep(10)
        assert replaced()
