"""The metadata group (docs/replication.md, "Stage 2: the metadata group"): the cluster map is
replicated state of the cluster group, each group lives on R brokers, not all, and every
broker still routes every group. Real brokers on a memory network, under the mock clock; the
map's commands through both state machines (in memory and SQLite)."""

from __future__ import annotations

import copy

import apsw
import attrs
import orjson
import pytest
import trio
from prometheus_client import generate_latest

from trio_broker._core._commands import CommandRejected, GroupsSet, SetGroups
from trio_broker._core._metadata import (
    BrokerAddress,
    DropQueue,
    FoundCluster,
    GroupAssignment,
    MapChanged,
    PlaceQueue,
    RegisterBroker,
    SetBrokerAlive,
    SetGroupReplicas,
    SetPreferredLeader,
    StartReplicaMove,
    UnregisterBroker,
)
from trio_broker._core._placement import BalancerSettings, found_cluster
from trio_broker._core._queues import QueueState
from trio_broker._ids import cluster_of_queue
from trio_broker._protocol._entries import (
    METADATA_PAYLOADS,
    decode_payload,
    encode_payload,
    payload_to_obj,
)
from trio_broker._runtime._metamap import hosted_by_map
from trio_broker._runtime._status import RequestRates, read_status, table_rows
from trio_broker._storage._queue_sql import apply_command, stored_groups, stored_map
from trio_broker._storage._schema import upgrade
from trio_broker.testing import open_mock_cluster
from trio_broker.testing._mock_cluster import MockCluster

from . import spread
from .spread import wait_spread

BROKERS = [BrokerAddress(f"B-0000{i}", "127.0.0.1", 9000 + i) for i in range(1, 5)]
FOUND = found_cluster(BROKERS[:3], ["G-AAAAA", "G-BBBBB", "G-CCCCC"], 3)


def bad_commands() -> list[object]:
    """Commands the founded map of :data:`FOUND` must refuse, each changing nothing."""
    return [
        FOUND,  # founded already
        SetGroups(("G-AAAAA", "G-BBBBB", "G-CCCCC")),  # the map places this cluster's groups
        RegisterBroker("bad id", "127.0.0.1", 1),
        RegisterBroker("B-00009", "", 1),
        RegisterBroker("B-00009", "127.0.0.1", 70000),
        SetBrokerAlive("B-00009", False),  # unknown broker
        UnregisterBroker("B-00001"),  # holds replicas
        SetPreferredLeader("G-ZZZZZ", "B-00001"),  # unknown group
        SetPreferredLeader("G-AAAAA", "B-00009"),  # not a voter
        StartReplicaMove("G-AAAAA", None, "B-00001"),  # already a replica (and R reached)
        StartReplicaMove("G-AAAAA", "B-00009", "B-00001"),
        SetGroupReplicas("G-AAAAA", ("B-00001",), (), 1),  # not newer: STALE_REPORT
        SetGroupReplicas("G-AAAAA", (), (), 2),  # no voter
        SetGroupReplicas("G-AAAAA", ("B-00001", "B-00001"), (), 2),  # twice
        SetGroupReplicas("G-AAAAA", ("B-00009",), (), 2),  # unknown broker
        PlaceQueue("bad"),
        PlaceQueue("ABCDE", "G-ZZZZZ"),
        DropQueue("Q-AAAAAZZZZZ"),  # never placed
    ]


def test_metadata_commands_are_log_payloads_under_their_wire_names():
    """Each command round-trips through the log codec with the name docs/replication.md
    gives it; a list where one is wanted must be a JSON list (never split as a string), a
    boolean a boolean, and an unknown field type is refused before anything is applied."""
    commands = [
        FOUND,
        RegisterBroker("B-00004", "h" * 255, 9004),
        SetGroupReplicas("G-AAAAA", ("B-00001", "B-00002"), ("B-00004",), 2),
        StartReplicaMove("G-AAAAA", None, "B-00004"),
        PlaceQueue("ABCDE"),
    ]
    for command in commands:
        obj = payload_to_obj(command)
        assert METADATA_PAYLOADS[obj["type"]] is type(command)
        assert decode_payload(encode_payload(command)) == command
    malformed = [
        {"type": "GROUP_REPLICAS", "group_id": "G-AAAAA", "voters": "B-00001", "learners": []}
        | {"config_version": 2},
        {"type": "BROKER_ALIVE", "broker_id": "B-00001", "alive": "false"},
        {"type": "FOUND_CLUSTER", "replication_factor": 3, "brokers": {}, "groups": []},
        {"type": "REGISTER_BROKER", "broker_id": "B-00001", "host": "h", "port": "80"},
    ]
    for obj in malformed:
        with pytest.raises(Exception, match="malformed"):
            decode_payload(orjson.dumps(obj))


def test_bad_metadata_commands_are_refused_and_change_nothing(tmp_path):
    """The map's state machine in memory and in SQLite: each bad command answers a refusal
    and leaves the map exactly as it was (every field, its version included)."""
    state = QueueState()
    db = apsw.Connection(str(tmp_path / "map.db"))
    upgrade(db)
    with db:
        assert state.apply(FOUND) == apply_command(db, FOUND) == MapChanged(1)
    before = copy.deepcopy(state.cluster_map)
    assert stored_map(db) == before
    for command in bad_commands():
        with db:
            in_memory, in_sql = state.apply(command), apply_command(db, command)
        assert isinstance(in_memory, CommandRejected), command
        assert in_sql == in_memory, command
        assert state.cluster_map == before, command
        assert stored_map(db) == before, command
        assert state.groups == () and stored_groups(db) == ()
    # A good one still changes both alike.
    report = SetGroupReplicas("G-AAAAA", ("B-00001", "B-00002", "B-00003"), (), 2)
    with db:
        assert state.apply(RegisterBroker("B-00004", "127.0.0.1", 9004)) == MapChanged(2)
        assert apply_command(db, RegisterBroker("B-00004", "127.0.0.1", 9004)) == MapChanged(2)
        assert state.apply(report) == apply_command(db, report) == MapChanged(3)
    assert stored_map(db) == state.cluster_map
    db.close()
    assert stored_map(apsw.Connection(str(tmp_path / "map.db"))) == state.cluster_map


def test_a_stage_1_list_and_a_map_exclude_each_other(tmp_path):
    """A cluster founded with the stage-1 list (SET_GROUPS: every broker hosts every group)
    keeps it: FOUND_CLUSTER is refused there, and SET_GROUPS keeps applying (idempotent)."""
    listed = SetGroups(("G-AAAAA", "G-BBBBB"))
    state = QueueState()
    db = apsw.Connection(str(tmp_path / "list.db"))
    upgrade(db)
    with db:
        assert state.apply(listed) == apply_command(db, listed) == GroupsSet(listed.group_ids)
        assert state.apply(listed) == apply_command(db, listed) == GroupsSet(listed.group_ids)
        refused = state.apply(FOUND)
        assert isinstance(refused, CommandRejected)
        assert apply_command(db, FOUND) == refused
    assert state.cluster_map.settings is None and stored_map(db).settings is None
    assert stored_groups(db) == listed.group_ids


def placed_counts(cluster) -> dict[str, int]:
    return {name: len(cluster.data_replicas(name)) for name in cluster.brokers}


def led_counts(cluster) -> dict[str, int]:
    return spread.led_counts(cluster, cluster.data_leaders())


async def append_acknowledged(cluster, queues, value, acknowledged) -> None:
    """APPEND ``value`` to every queue through its group's leader; record what is acknowledged."""
    await spread.append_acknowledged(cluster, queues, value, acknowledged, cluster.data_leaders)


@pytest.mark.trio
async def test_six_brokers_r3_each_host_half_the_groups_and_a_crash_loses_nothing(
    autojump_clock,
):
    """6 brokers, 6 groups, R = 3: each broker holds 3 replicas (G*R/N), each group 3 voters,
    leadership spread one per broker; a broker leading some is crashed, every group elects
    among its survivors, and every acknowledged write is on every replica afterwards."""
    async with open_mock_cluster(6, groups=6, replication_factor=3) as cluster:
        cmap = cluster.brokers["b1"].host.meta.map
        assert cmap is not None and cmap.replication_factor == 3 and len(cmap.groups) == 6
        assert placed_counts(cluster) == dict.fromkeys(cluster.brokers, 3)
        exposition = generate_latest(cluster.brokers["b2"].metrics.registry).decode()
        metadata_group = cluster.brokers["b2"].cluster_id
        labels = f'{{broker_id="B-000B2",cluster_id="{metadata_group}"}}'
        assert f"trio_broker_groups_hosted{labels} 3.0" in exposition
        assert f"trio_broker_cluster_map_version{labels} {float(cmap.version)}" in exposition
        for name, broker in cluster.brokers.items():
            assert broker.host.meta.map == cmap  # one map on every broker
            assert set(cluster.data_replicas(name)) == hosted_by_map(cmap, broker.broker_id)
            for replica in cluster.data_replicas(name).values():
                assert replica.node.config.voters == set(cmap.groups[replica.cluster_id].voters)
        with trio.fail_after(120):
            await wait_spread(cluster, 6)
        queues = []
        for name in sorted(cluster.brokers):
            reply = await cluster.call(name, {"operation": "CREATE_QUEUE"})
            assert reply["status"] == "success", reply
            assert cluster.data_leaders()[cluster_of_queue(reply["queue_id"])] == name
            queues.append(reply["queue_id"])
        assert {cluster_of_queue(q) for q in queues} == set(cmap.groups)
        acknowledged = {q: [] for q in queues}
        await append_acknowledged(cluster, queues, 0, acknowledged)
        victim = next(n for n, count in sorted(led_counts(cluster).items()) if count)
        victim_id = cluster.brokers[victim].broker_id
        await cluster.crash(victim)
        with trio.fail_after(60):
            await cluster.wait_until(lambda: all(cluster.data_leaders().values()))

        # The metadata leader's failure detector: the map records the victim as down.
        def down_in_the_map() -> list[str] | None:
            """The brokers the metadata leader's map records as down (None: no leader)."""
            for broker in cluster.brokers.values():
                if broker.host.meta.is_leader:
                    return [b for b, r in broker.host.meta.map.brokers.items() if not r.alive]
            return None

        with trio.fail_after(30):
            await cluster.wait_until(lambda: down_in_the_map() == [victim_id])
        for value in range(1, 4):
            await append_acknowledged(cluster, queues, value, acknowledged)
        await cluster.restart(victim)
        with trio.fail_after(120):
            await wait_spread(cluster, 6)
            await cluster.wait_until(lambda: down_in_the_map() == [])
        for value in range(4, 6):
            await append_acknowledged(cluster, queues, value, acknowledged)

        def replicated() -> bool:
            leaders = cluster.data_leaders()
            for name in cluster.brokers:
                for group_id, replica in cluster.data_replicas(name).items():
                    leader = cluster.replicas(leaders[group_id])[group_id]
                    if replica.applied_index < leader.driver.node.commit:
                        return False
            return True

        with trio.fail_after(60):
            await cluster.wait_until(replicated)
        for queue, values in acknowledged.items():
            assert values == list(range(6)), (queue, values)
            group = cluster_of_queue(queue)
            holders = [n for n in cluster.brokers if group in cluster.data_replicas(n)]
            assert len(holders) == 3
            for name in cluster.brokers:
                store = cluster.group_stores.get((name, group))
                if name not in holders:
                    assert store is None  # never placed there: no replica, no data
                    continue
                held = [orjson.loads(v) for v in store.messages(queue)]
                assert [v for v in held if v in values] == values, (name, queue, held)


@pytest.mark.trio
async def test_a_broker_not_hosting_a_group_names_its_leader(autojump_clock):
    """CLUSTER_QUERY's ``groups`` lists every group, with its leader, on every broker; asked
    about a group it does not host, a broker answers from the map; a request for a queue of
    that group gets NOT_LEADER naming the group's leader, where an original-design client
    then succeeds."""
    async with open_mock_cluster(4, groups=4, replication_factor=2) as cluster:
        with trio.fail_after(120):
            await wait_spread(cluster, 4)
        cmap = cluster.brokers["b1"].host.meta.map
        ids = {name: b.broker_id for name, b in cluster.brokers.items()}
        names = {b: n for n, b in ids.items()}
        group, record = sorted(cmap.groups.items())[0]
        outsider = next(n for n in sorted(cluster.brokers) if ids[n] not in record.replicas)
        leader = cluster.data_leaders()[group]
        reply = await cluster.call(leader, {"operation": "CREATE_QUEUE"})
        assert cluster_of_queue(reply["queue_id"]) == group
        queue = reply["queue_id"]
        await trio.sleep(5)  # (a refresh of the leaders the brokers hold no replica of)
        for name in sorted(cluster.brokers):
            reply = await cluster.call(name, {"operation": "CLUSTER_QUERY"})
            assert reply["metadata_group"] == cluster.brokers["b1"].cluster_id
            views = {g["cluster_id"]: g for g in reply["groups"]}
            assert sorted(views) == sorted(cmap.groups)
            for group_id, view in views.items():
                assert view["leader_id"] == ids[cluster.data_leaders()[group_id]], (name, view)
                assert view["leader_port"] == cluster.ports[names[view["leader_id"]]]
                assert view["voters"] == list(cmap.groups[group_id].voters)
        # (the balancer may have moved the group's leadership during the wait: every broker
        # named the leader of now above, and the checks below name it too)
        leader = cluster.data_leaders()[group]
        # The outsider's status page lists every group, those it does not host from the map.
        status = await read_status(
            cluster.brokers[outsider], RequestRates(cluster.brokers[outsider])
        )
        rows = {r["group_id"]: r for r in table_rows(status, "groups")}
        assert set(cmap.groups) <= set(rows)
        assert rows[group]["hosted"] is False and rows[group]["voters"] == 2
        assert rows[group]["leader_id"] == ids[leader]
        topology = await cluster.call(outsider, {"operation": "CLUSTER_QUERY", "cluster_id": group})
        assert topology["cluster_id"] == group and topology["self_role"] == "replica"
        assert topology["leader_id"] == ids[leader]
        assert sorted(b["broker_id"] for b in topology["brokers"]) == list(record.voters)
        reply = await cluster.call(
            outsider, {"operation": "APPEND", "queue_name": queue, "data": 1}
        )
        assert reply["code"] == "NOT_LEADER", reply
        assert reply["leader_id"] == ids[leader]
        assert reply["leader_port"] == cluster.ports[leader]
        retried = await cluster.call(
            names[reply["leader_id"]], {"operation": "APPEND", "queue_name": queue, "data": 1}
        )
        assert retried == {"status": "success", "sequence_num": 1}


@pytest.mark.trio
async def test_hosting_follows_the_map_when_a_group_changes_its_members(autojump_clock):
    """A group's leader reports each committed membership change (SET_GROUP_REPLICAS, through
    the metadata leader); every broker then hosts what the new map places on it: the removed
    replica stops and its data is set aside, and the map counts the group's new voters."""
    async with open_mock_cluster(3, groups=3, replication_factor=2) as cluster:
        with trio.fail_after(120):
            await wait_spread(cluster, 3)
        meta = cluster.brokers["b1"].host.meta
        group, record = next(
            (g, r) for g, r in sorted(meta.map.groups.items()) if cluster.data_leaders()[g] != "b1"
        )
        leader = cluster.data_leaders()[group]
        other = next(b for b in record.voters if b != cluster.brokers[leader].broker_id)
        other_name = cluster.name_of(other)
        reply = await cluster.call(
            leader,
            {"operation": "REMOVE_MEMBER", "broker_id": other, "cluster_id": group},
        )
        assert reply["status"] == "success", reply

        def moved_on() -> bool:
            return all(
                broker.host.meta.map.groups[group].voters == (cluster.brokers[leader].broker_id,)
                for broker in cluster.brokers.values()
            ) and group not in cluster.data_replicas(other_name)

        with trio.fail_after(60):
            await cluster.wait_until(moved_on)
        assert (other_name, group) in cluster.retired_stores
        assert (other_name, group) not in cluster.group_stores
        assert meta.map.groups[group].config_version == record.config_version + 1
        # The group still takes writes on its remaining voter.
        reply = await cluster.call(leader, {"operation": "CLUSTER_QUERY", "cluster_id": group})
        assert [b["broker_id"] for b in reply["brokers"]] == [cluster.brokers[leader].broker_id]


@pytest.mark.trio
async def test_a_malformed_metadata_proposal_is_refused_and_changes_nothing(autojump_clock):
    """METADATA_PROPOSE, the way a group leader reaches the metadata leader: a command that
    is not a metadata command, or one the map refuses, is answered with an error and the map
    stays as it was."""
    async with open_mock_cluster(3, groups=3, replication_factor=2) as cluster:
        primary = cluster.brokers["b1"].host.primary
        meta = cluster.brokers["b1"].host.meta
        before = copy.deepcopy(meta.map)
        leader = cluster.name_of(await cluster.wait_for_leader())
        stale = payload_to_obj(SetGroupReplicas(sorted(before.groups)[0], ("B-000B1",), (), 1))
        for command, code in [
            ({"type": "CREATE_QUEUE", "queue_id": "Q-AAAAABBBBB"}, "BAD_REQUEST"),
            ({"type": "GROUP_REPLICAS", "group_id": "G-ZZZZZ"}, "BAD_REQUEST"),
            (payload_to_obj(UnregisterBroker(primary.broker_id)), "BAD_REQUEST"),
            (stale, "STALE_REPORT"),
            ("not an object", "BAD_REQUEST"),
        ]:
            reply = await cluster.call(
                leader,
                {
                    "operation": "METADATA_PROPOSE",
                    "command": command,
                    "cluster_id": primary.cluster_id,
                },
            )
            assert reply["status"] == "error" and reply["code"] == code, (command, reply)
        await cluster.stabilize()
        for broker in cluster.brokers.values():
            assert broker.host.meta.map == before
        # The founding is not redone by a second FOUND_CLUSTER either.
        again = FoundCluster(
            2,
            (BrokerAddress(primary.broker_id, "127.0.0.1", 1),),
            (GroupAssignment("G-NEW00", (primary.broker_id,), primary.broker_id),),
        )
        result = await meta.propose(again)
        assert isinstance(result, CommandRejected) and meta.map == before


@pytest.mark.trio
async def test_a_group_grows_to_a_new_broker_through_the_seam(autojump_clock):
    """What the balancer automates, step by step through the seam: founded on 2 brokers with
    R = 3, each group has 2 voters; a third broker joins and is registered in the map; a
    committed StartReplicaMove (source null) makes it open an empty replica of the group,
    which the group's leader adds (as a learner, promoted once caught up); the leader's
    report completes the move, and the new replica holds the group's queue."""
    async with open_mock_cluster(2, groups=2, replication_factor=3) as cluster:
        hold_the_balancer(cluster)  # (it would start the same move on its own, racing)
        meta = cluster.brokers["b1"].host.meta
        assert meta.map.settings.replication_factor == 3
        assert all(len(r.voters) == 2 for r in meta.map.groups.values())
        joiner = await cluster.start("b3")
        hold_the_balancer(cluster)
        with trio.fail_after(60):
            await cluster.wait_until(
                lambda: (
                    meta.map.broker(joiner.broker_id) is not None
                    and joiner.host.meta.map is not None
                    and joiner.host.meta.map.broker(joiner.broker_id) is not None
                )
            )
        assert set(cluster.data_replicas("b3")) == set()  # registered, hosting nothing yet
        group = sorted(meta.map.groups)[0]
        leader = cluster.data_leaders()[group]
        queue = (await answer_of(cluster, leader, {"operation": "CREATE_QUEUE"}))["queue_id"]
        group = cluster_of_queue(queue)
        leader = cluster.data_leaders()[group]
        for value in range(3):
            reply = await cluster.call(
                leader, {"operation": "APPEND", "queue_name": queue, "data": value}
            )
            assert reply["status"] == "success"
        result = await cluster.brokers["b2"].host.meta.propose(
            StartReplicaMove(group, None, joiner.broker_id)
        )
        assert isinstance(result, MapChanged), result
        with trio.fail_after(30):
            await cluster.wait_until(lambda: group in cluster.data_replicas("b3"))
        replica = cluster.replicas("b3")[group]
        assert not replica.node.config.members  # empty: waits to be added
        reply = await cluster.call(
            leader,
            {
                "operation": "ADD_MEMBER",
                "host": "127.0.0.1",
                "port": cluster.ports["b3"],
                "cluster_id": group,
            },
        )
        assert reply["status"] == "success", reply

        def grown() -> bool:
            record = meta.map.groups[group]
            return record.move is None and joiner.broker_id in record.voters

        with trio.fail_after(60):
            await cluster.wait_until(grown)
        assert len(meta.map.groups[group].voters) == 3
        await cluster.wait_until(
            lambda: len(cluster.group_stores[("b3", group)].messages(queue)) == 3
        )
        held = cluster.group_stores[("b3", group)].messages(queue)
        assert [orjson.loads(v) for v in held] == [0, 1, 2]


def hold_the_balancer(cluster) -> None:
    """The balancer's rounds wait (practically for ever) on every broker: a test that takes
    its steps by hand."""
    for broker in cluster.brokers.values():
        balancing = getattr(broker, "balancing", None)
        if balancing is not None:
            held = BalancerSettings(interval_ticks=10**9)
            balancing.settings = attrs.evolve(balancing.settings, balancer=held)
            balancing._balancer = None  # (re-armed with the held interval)


async def answer_of(cluster, name, request):
    """One request to broker ``name``, following NOT_LEADER hints."""
    for _ in range(50):
        reply = await cluster.call(name, request)
        if reply.get("code") in ("NOT_LEADER", "UNAVAILABLE"):
            names = {b.broker_id: n for n, b in cluster.brokers.items()}
            name = names.get(reply.get("leader_id"), name)
            await trio.sleep(0.2)
            continue
        return reply
    raise AssertionError(f"no answer to {request}: {reply}")


def test_node_and_cluster_flags_for_the_replication_factor():
    """``node --replication-factor R --founding-brokers K`` (``all``: every broker hosts every
    group); out-of-range values are refused with the range in the message."""
    import argparse

    from trio_broker._cli._cluster_args import _replication_factor
    from trio_broker._cli._node_options import SettingsError, add_arguments, resolve

    def config_of(*argv: str):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return resolve(parser.parse_args(argv), environ={})[0]

    defaults = config_of()
    assert (defaults.replication_factor, defaults.founding_brokers) == (3, 1)
    chosen = config_of("--groups", "6", "--replication-factor", "2", "--founding-brokers", "4")
    assert (chosen.groups, chosen.replication_factor, chosen.founding_brokers) == (6, 2, 4)
    assert config_of("--replication-factor", "all").replication_factor == 0
    for argv, message in [
        (("--replication-factor", "8"), "1 to 7 or 'all'"),
        (("--replication-factor", "0"), "1 to 7 or 'all'"),
        (("--founding-brokers", "0"), "1 to 1024"),
    ]:
        with pytest.raises(SettingsError, match=message):
            config_of(*argv)
    assert _replication_factor("all") == 0 and _replication_factor("5") == 5
    for bad in ("0", "8", "three"):
        with pytest.raises(argparse.ArgumentTypeError):
            _replication_factor(bad)


@pytest.mark.trio
async def test_the_founder_waits_for_its_founding_brokers_and_takes_no_queue_meanwhile(
    autojump_clock, tmp_path
):
    """``--founding-brokers 2``: alone, the founder places no group and answers CREATE_QUEUE
    UNAVAILABLE (a queue created then would land on the metadata group); once the second
    broker votes, the groups are placed over both and queues land on them."""
    async with trio.open_nursery() as nursery:
        cluster = MockCluster(nursery, tmp_path)
        cluster.groups, cluster.founding_brokers = 3, 2
        await cluster.start("b1")
        await trio.sleep(10)
        assert cluster.brokers["b1"].host.meta.map is None
        reply = await cluster.call("b1", {"operation": "CREATE_QUEUE"})
        assert reply["code"] == "UNAVAILABLE" and "2 brokers" in reply["message"], reply
        assert cluster.brokers["b1"].queue_count == 0
        await cluster.start("b2")
        with trio.fail_after(60):
            await cluster.wait_for_groups(3, 2)
        cmap = cluster.brokers["b1"].host.meta.map
        assert sorted(cmap.brokers) == ["B-000B1", "B-000B2"]
        assert all(r.voters == ("B-000B1", "B-000B2") for r in cmap.groups.values())
        reply = await answer_of(cluster, "b1", {"operation": "CREATE_QUEUE"})
        assert cluster_of_queue(reply["queue_id"]) in cmap.groups
        nursery.cancel_scope.cancel()
