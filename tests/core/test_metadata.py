"""The metadata group's cluster map, its commands' wire form, and CLUSTER_QUERY's ``groups``.

docs/replication.md, "Several leaders (design)".
"""

from __future__ import annotations

import copy
import typing
from collections import Counter

import cattrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_broker._core._commands import CommandRejected
from trio_broker._core._metadata import (
    AbandonReplicaMove,
    AddGroups,
    BrokerAddress,
    ClusterMap,
    ClusterSettings,
    DropQueue,
    FoundCluster,
    GroupAssignment,
    MapChanged,
    MetadataCommand,
    PlaceQueue,
    QueuePlaced,
    RegisterBroker,
    ReplicaMove,
    SetBrokerAlive,
    SetBrokerDraining,
    SetGroupReplicas,
    SetMetadataVoters,
    SetPreferredLeader,
    SetQueueCount,
    SetReplicationFactor,
    StartReplicaMove,
    UnregisterBroker,
    group_of_queue,
)
from trio_broker._core._placement import found_cluster
from trio_broker._core._routing import (
    GroupView,
    group_for_new_queue,
    group_for_query,
    groups_view,
)
from trio_broker._protocol import converter
from trio_broker._protocol._entries import METADATA_PAYLOADS, decode_payload, encode_payload

B1, B2, B3, B4 = "B-AAAA1", "B-AAAA2", "B-AAAA3", "B-AAAA4"
G1, G2, G3 = "G-XYZ71", "G-XYZ72", "G-XYZ73"


def address(b: str) -> BrokerAddress:
    return BrokerAddress(b, "127.0.0.1", 9000 + int(b[-1]))


def founded(brokers=(B1, B2, B3), groups=(G1, G2, G3), r=3) -> ClusterMap:
    cmap = ClusterMap()
    assert cmap.apply(found_cluster([address(b) for b in brokers], groups, r)) == MapChanged(1)
    return cmap


def test_founding_records_settings_brokers_and_groups():
    cmap = founded()
    assert cmap.settings == ClusterSettings(group_count=3, replication_factor=3)
    assert sorted(cmap.brokers) == [B1, B2, B3]
    assert all(b.alive and not b.draining for b in cmap.brokers.values())
    for rec in cmap.groups.values():
        assert rec.voters == (B1, B2, B3) and rec.learners == () and rec.config_version == 1
    # Three groups, three brokers: each leads one.
    assert sorted(rec.preferred_leader for rec in cmap.groups.values()) == [B1, B2, B3]
    assert cmap.queue_counts == {G1: 0, G2: 0, G3: 0}


def refused(cmap: ClusterMap, command, code: str, match: str = "") -> CommandRejected:
    before = copy.deepcopy(cmap)
    result = cmap.apply(command)
    assert isinstance(result, CommandRejected), result
    assert result.code == code and match in result.message, result
    assert cmap == before, "a refused command changed the map"
    return result


def test_nothing_but_founding_is_accepted_before_founding():
    cmap = ClusterMap()
    for command in (
        RegisterBroker(B1, "h", 1),
        SetBrokerAlive(B1, False),
        PlaceQueue("AAAAA"),
        DropQueue("Q-XYZ71AAAAA"),
    ):
        refused(cmap, command, "UNAVAILABLE", "not founded")


good_groups = (GroupAssignment(G1, (B1, B2), B1),)


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (FoundCluster(0, (address(B1),), good_groups), "replication_factor"),
        (FoundCluster(8, (address(B1),), good_groups), "replication_factor"),
        (FoundCluster(True, (address(B1),), good_groups), "replication_factor"),
        (FoundCluster(2, (), good_groups), "1 to"),
        (FoundCluster(2, (address(B1), address(B2)), ()), "1 to"),
        (FoundCluster(2, (address(B1), address(B1)), good_groups), "twice"),
        (FoundCluster(2, (BrokerAddress("B-1", "h", 1), address(B2)), good_groups), "B-XXXXX"),
        (FoundCluster(2, (BrokerAddress(B1, "", 1), address(B2)), good_groups), "host"),
        (FoundCluster(2, (BrokerAddress(B1, "h", 0), address(B2)), good_groups), "port"),
        (FoundCluster(2, (address(B1), address(B2)), good_groups * 2), "twice"),
        (
            FoundCluster(2, (address(B1), address(B2)), (GroupAssignment("X", (B1,), B1),)),
            "G-XXXXX",
        ),
        (
            FoundCluster(2, (address(B1), address(B2)), (GroupAssignment(G1, (B1,), B1),)),
            "needs 2 voters",
        ),
        (
            FoundCluster(2, (address(B1), address(B2)), (GroupAssignment(G1, (B1, B1), B1),)),
            "twice",
        ),
        (
            FoundCluster(2, (address(B1), address(B2)), (GroupAssignment(G1, (B1, B3), B1),)),
            "unknown brokers",
        ),
        (
            FoundCluster(2, (address(B1), address(B2)), (GroupAssignment(G1, (B1, B2), B3),)),
            "preferred leader",
        ),
    ],
)
def test_a_bad_founding_is_refused_and_changes_nothing(command, match):
    refused(ClusterMap(), command, "BAD_REQUEST", match)


def test_founding_twice_is_refused():
    refused(founded(), found_cluster([address(B1)], [G1], 1), "BAD_REQUEST", "already founded")


def with_move() -> ClusterMap:
    """Three groups on B1-B3; B4 joined; G1 moving its replica from B3 to B4."""
    cmap = founded()
    assert cmap.apply(RegisterBroker(B4, "127.0.0.1", 9004)) == MapChanged(2)
    assert cmap.apply(StartReplicaMove(G1, B3, B4)) == MapChanged(3)
    return cmap


@pytest.mark.parametrize(
    ("command", "code", "match"),
    [
        (RegisterBroker("B-lower", "h", 1), "BAD_REQUEST", "B-XXXXX"),
        (RegisterBroker(B1, "h" * 256, 1), "BAD_REQUEST", "host"),
        (RegisterBroker(B1, "h", 65536), "BAD_REQUEST", "port"),
        (SetBrokerAlive("B-NONE0", False), "BAD_REQUEST", "no broker"),
        (SetBrokerAlive(B1, 0), "BAD_REQUEST", "true or false"),
        (SetBrokerDraining("B-NONE0", True), "BAD_REQUEST", "no broker"),
        (UnregisterBroker(B1), "BAD_REQUEST", "still holds"),
        (UnregisterBroker(B4), "BAD_REQUEST", "still holds"),  # the target of G1's move
        (UnregisterBroker(["B-AAAA1"]), "BAD_REQUEST", "no broker"),
        (SetPreferredLeader("G-NONE0", B1), "WRONG_CLUSTER", "no group"),
        (SetPreferredLeader(G2, B4), "BAD_REQUEST", "not a voter"),
        (StartReplicaMove(G1, B2, B4), "BAD_REQUEST", "already moving"),
        (StartReplicaMove(G2, B3, "B-NONE0"), "BAD_REQUEST", "target"),
        (StartReplicaMove(G2, B3, B1), "BAD_REQUEST", "already a replica"),
        (StartReplicaMove(G2, B4, B4), "BAD_REQUEST", "source"),
        (StartReplicaMove(G2, None, B4), "BAD_REQUEST", "already has its 3"),
        (AbandonReplicaMove(G2), "BAD_REQUEST", "not moving"),
        (SetGroupReplicas(G1, (B1, B2, B3), (), 1), "STALE_REPORT", "configuration 1"),
        (SetGroupReplicas(G1, (), (B1,), 2), "BAD_REQUEST", "at least one voter"),
        (SetGroupReplicas(G1, (B1, B2), (B2,), 2), "BAD_REQUEST", "twice"),
        (SetGroupReplicas(G1, (B1, "B-NONE0"), (), 2), "BAD_REQUEST", "unknown"),
        # What a lax decoder could make of "voters": "B-AAAA1": never accepted.
        (SetGroupReplicas(G1, tuple("B-AAAA1"), (), 2), "BAD_REQUEST", "unknown"),
        (SetGroupReplicas(G1, [B1], (), 2), "BAD_REQUEST", "lists"),
        (SetGroupReplicas(G1, (B1,), (), "2"), "BAD_REQUEST", "integer"),
        (PlaceQueue("AAAA"), "BAD_REQUEST", "five characters"),
        (PlaceQueue("aaaaa"), "BAD_REQUEST", "five characters"),
        (PlaceQueue("AAAAA", "G-NONE0"), "WRONG_CLUSTER", "no group"),
        (DropQueue("Q-XYZ71AAAAA"), "QUEUE_NOT_FOUND", "never placed"),
    ],
)
def test_a_refused_command_changes_nothing(command, code, match):
    refused(with_move(), command, code, match)


def test_a_move_completes_when_its_source_is_gone():
    cmap = with_move()
    # The group's leader reports each committed change: learner, promoted, source removed.
    assert isinstance(cmap.apply(SetGroupReplicas(G1, (B1, B2, B3), (B4,), 2)), MapChanged)
    assert cmap.groups[G1].move == ReplicaMove(B3, B4)
    assert isinstance(cmap.apply(SetGroupReplicas(G1, (B1, B2, B3, B4), (), 3)), MapChanged)
    assert cmap.groups[G1].move == ReplicaMove(B3, B4)
    # A late, older report is refused.
    refused(cmap, SetGroupReplicas(G1, (B1, B2, B3), (B4,), 2), "STALE_REPORT")
    assert isinstance(cmap.apply(SetGroupReplicas(G1, (B4, B2, B1), (), 4)), MapChanged)
    assert cmap.groups[G1].move is None
    assert cmap.groups[G1].voters == (B1, B2, B4)  # stored sorted
    assert cmap.groups_of(B3) == [G2, G3]


def test_a_move_completes_when_the_group_is_back_to_r_voters_another_way():
    cmap = with_move()
    cmap.apply(SetGroupReplicas(G1, (B1, B2, B3, B4), (), 2))
    assert isinstance(cmap.apply(SetGroupReplicas(G1, (B2, B3, B4), (), 3)), MapChanged)
    assert cmap.groups[G1].move is None and B3 in cmap.groups[G1].voters


def test_a_preferred_leader_that_stops_voting_is_forgotten():
    cmap = with_move()
    cmap.apply(SetPreferredLeader(G1, B3))
    cmap.apply(SetGroupReplicas(G1, (B1, B2, B3, B4), (), 2))
    assert cmap.groups[G1].preferred_leader == B3
    cmap.apply(SetGroupReplicas(G1, (B1, B2, B4), (), 3))
    assert cmap.groups[G1].preferred_leader is None


def test_an_abandoned_move_must_first_undo_its_learner():
    cmap = with_move()
    cmap.apply(SetGroupReplicas(G1, (B1, B2, B3), (B4,), 2))
    refused(cmap, AbandonReplicaMove(G1), "BAD_REQUEST", "remove B-AAAA4")
    cmap.apply(SetGroupReplicas(G1, (B1, B2, B3), (), 3))
    assert isinstance(cmap.apply(AbandonReplicaMove(G1)), MapChanged)
    assert cmap.groups[G1].move is None
    assert isinstance(cmap.apply(UnregisterBroker(B4)), MapChanged)


def test_a_new_queue_goes_to_the_least_loaded_group_or_the_named_one_and_routes_by_its_id():
    cmap = founded()
    placed = [cmap.apply(PlaceQueue(s)) for s in ("AAAA1", "AAAA2", "AAAA3", "AAAA4")]
    assert [p.group_id for p in placed] == [G1, G2, G3, G1]  # fewest queues, then lowest id
    assert placed[0] == QueuePlaced("Q-XYZ71AAAA1", G1, 2)
    named = cmap.apply(PlaceQueue("BBBBB", G3))
    assert named == QueuePlaced("Q-XYZ73BBBBB", G3, 6)
    for p in [*placed, named]:
        assert group_of_queue(p.queue_id) == p.group_id == cmap.queues[p.queue_id]
    refused(cmap, PlaceQueue("BBBBB", G3), "QUEUE_EXISTS")
    assert cmap.queue_counts == {G1: 2, G2: 1, G3: 2}
    assert cmap.apply(DropQueue("Q-XYZ71AAAA1")) == MapChanged(7)
    assert cmap.least_loaded_group() == G1
    assert cmap.least_loaded_group([G3, G2]) == G2
    assert group_of_queue("not-a-queue") is None


# -- any sequence of commands ---------------------------------------------------------------------

# Mostly meaningful values, some that must be refused.
brokers = st.sampled_from([B1, B2, B3, B4, B1, B2, B3, B4, "B-AAAA5", "B-bad"])
groups = st.sampled_from([G1, G2, G3, G1, G2, G3, "G-NONE0"])
replica_sets = st.lists(st.sampled_from([B1, B2, B3, B4]), max_size=3, unique=True).map(tuple)
placed = st.sampled_from(
    [f"Q-{g[2:]}{s}" for g in (G1, G2, G3, "G-NONE0") for s in ("AAAAA", "AAAAB")]
)
commands = st.one_of(
    st.builds(
        RegisterBroker, brokers, st.sampled_from(["127.0.0.1"] * 4 + [""]), st.integers(0, 9)
    ),
    st.builds(SetBrokerAlive, brokers, st.booleans()),
    st.builds(SetBrokerDraining, brokers, st.sampled_from([False, False, True])),
    st.builds(UnregisterBroker, brokers),
    st.builds(SetPreferredLeader, groups, brokers),
    st.builds(StartReplicaMove, groups, brokers, brokers),
    st.builds(StartReplicaMove, groups, st.none(), brokers),
    st.builds(AbandonReplicaMove, groups),
    st.builds(
        SetGroupReplicas,
        groups,
        replica_sets,
        replica_sets.map(lambda r: r[:1]),
        st.integers(0, 60),
    ),
    st.builds(PlaceQueue, st.sampled_from(["AAAAA", "AAAAB", "x"]), st.none() | groups),
    st.builds(DropQueue, placed),
)


def check_invariants(cmap: ClusterMap) -> None:
    for rec in cmap.groups.values():
        assert rec.voters and rec.voters == tuple(sorted(rec.voters))
        assert not set(rec.voters) & set(rec.learners)
        assert all(b in cmap.brokers for b in rec.replicas)
        assert rec.preferred_leader is None or rec.preferred_leader in rec.voters
        if rec.move is not None:
            assert rec.move.target in cmap.brokers
    assert all(n >= 0 for n in cmap.queue_counts.values())
    assert {g: n for g, n in cmap.queue_counts.items() if n} == Counter(cmap.queues.values())
    for queue_id, g in cmap.queues.items():
        assert group_of_queue(queue_id) == g


@settings(max_examples=300)
@given(st.lists(commands, max_size=40))
def test_any_sequence_of_commands_keeps_the_map_consistent(sequence):
    cmap, twin = founded((B1, B2, B3, B4), r=2), founded((B1, B2, B3, B4), r=2)
    for command in sequence:
        before = copy.deepcopy(cmap)
        result = cmap.apply(command)
        assert twin.apply(command) == result  # deterministic
        if isinstance(result, CommandRejected):
            assert cmap == before
        else:
            assert cmap.version == before.version + 1 == result.version
        check_invariants(cmap)
    assert cmap == twin


# -- the wire form of the commands ----------------------------------------------------------------

# The log payload names the codec will give the commands (docs/replication.md, "Several leaders
# (design)"): one table entry each in _protocol/_entries.py.
WIRE_NAMES = {
    "FOUND_CLUSTER": FoundCluster,
    "REGISTER_BROKER": RegisterBroker,
    "BROKER_ALIVE": SetBrokerAlive,
    "BROKER_DRAINING": SetBrokerDraining,
    "UNREGISTER_BROKER": UnregisterBroker,
    "PREFERRED_LEADER": SetPreferredLeader,
    "START_REPLICA_MOVE": StartReplicaMove,
    "ABANDON_REPLICA_MOVE": AbandonReplicaMove,
    "GROUP_REPLICAS": SetGroupReplicas,
    "PLACE_QUEUE": PlaceQueue,
    "DROP_QUEUE": DropQueue,
    "QUEUE_COUNT": SetQueueCount,
    "REPLICATION_FACTOR": SetReplicationFactor,
    "ADD_GROUPS": AddGroups,
    "METADATA_VOTERS": SetMetadataVoters,
}

samples = [
    found_cluster([address(B1), address(B2)], [G1, G2], 3),
    RegisterBroker(B4, "10.0.0.4", 9004),
    SetBrokerAlive(B1, False),
    SetBrokerDraining(B2, True),
    UnregisterBroker(B3),
    SetPreferredLeader(G1, B2),
    StartReplicaMove(G1, None, B4),
    StartReplicaMove(G1, B3, B4),
    AbandonReplicaMove(G2),
    SetGroupReplicas(G1, (B1, B2), (B4,), 7),
    PlaceQueue("K589Z"),
    PlaceQueue("K589Z", G2),
    DropQueue("Q-XYZ71K589Z"),
    SetQueueCount(G1, 12, 340),
    SetReplicationFactor(5),
    SetMetadataVoters(3),
    AddGroups(2, (GroupAssignment("G-NEW01", (B1,), B1),)),
]


def test_every_command_has_a_wire_name_and_a_sample():
    assert set(WIRE_NAMES.values()) == set(typing.get_args(MetadataCommand))
    assert {type(s) for s in samples} == set(WIRE_NAMES.values())


def test_the_log_codec_names_every_command_as_the_design_does():
    assert METADATA_PAYLOADS == WIRE_NAMES


@pytest.mark.parametrize("command", samples, ids=lambda c: type(c).__name__)
def test_commands_round_trip_as_log_payloads(command):
    raw = encode_payload(command)
    assert orjson.loads(raw)["type"] == {v: k for k, v in WIRE_NAMES.items()}[type(command)]
    assert decode_payload(raw) == command


@pytest.mark.parametrize("command", samples, ids=lambda c: type(c).__name__)
def test_commands_round_trip_through_the_one_converter(command):
    raw = orjson.dumps(converter.unstructure(command))
    assert converter.structure(orjson.loads(raw), type(command)) == command


@pytest.mark.parametrize(
    ("cls", "obj"),
    [
        (RegisterBroker, {"broker_id": B1, "host": "h", "port": "9001"}),
        (SetBrokerAlive, {"broker_id": B1, "alive": "yes"}),
        (SetGroupReplicas, {"group_id": G1, "voters": [1], "learners": [], "config_version": 2}),
        (PlaceQueue, {}),
    ],
)
def test_the_converter_refuses_mistyped_fields(cls, obj):
    with pytest.raises(cattrs.BaseValidationError):
        converter.structure(obj, cls)


# -- CLUSTER_QUERY's groups list and where an old client's requests land -----------------------


def wire(views: list[GroupView]) -> list[dict]:
    """As the response encoder writes ``brokers`` entries: absent fields dropped."""
    out = [{k: v for k, v in converter.unstructure(v).items() if v is not None} for v in views]
    return orjson.loads(orjson.dumps(out))


def test_groups_list_shape():
    cmap = founded(groups=(G1, G2))
    cmap.apply(RegisterBroker(B4, "10.0.0.4", 9004))
    cmap.apply(SetGroupReplicas(G2, (B1, B2, B3), (B4,), 2))
    leaders = {G1: B2, G2: "B-GONE0"}
    assert wire(groups_view(cmap, leaders)) == [
        {
            "cluster_id": G1,
            "leader_id": B2,
            "leader_host": "127.0.0.1",
            "leader_port": 9002,
            "voters": [B1, B2, B3],
            "learners": [],
        },
        # A leader whose address the map does not hold: its id only.
        {"cluster_id": G2, "leader_id": "B-GONE0", "voters": [B1, B2, B3], "learners": [B4]},
    ]
    assert wire(groups_view(cmap, {})) == [
        {"cluster_id": G1, "voters": [B1, B2, B3], "learners": []},
        {"cluster_id": G2, "voters": [B1, B2, B3], "learners": [B4]},
    ]


def test_an_old_clients_create_queue_lands_on_a_group_the_broker_leads():
    cmap = founded()
    leaders = {G1: B1, G2: B2, G3: B1}
    cmap.apply(PlaceQueue("AAAAA", G1))
    assert group_for_new_queue(cmap, leaders, B1) == G3  # the one of B1's with fewest queues
    assert group_for_new_queue(cmap, leaders, B2) == G2
    assert group_for_new_queue(cmap, leaders, B3) is None  # leads none: NOT_LEADER
    # CLUSTER_QUERY without cluster_id answers about that same group, so the leader the old
    # client sees is the broker its CREATE_QUEUE then goes to.
    assert group_for_query(cmap, leaders, B1) == G3
    assert group_for_query(cmap, leaders, B3) == G1  # leads none: the first it holds
    cmap.apply(RegisterBroker(B4, "10.0.0.4", 9004))
    assert group_for_query(cmap, leaders, B4) == G2  # holds none: the least-loaded group
    assert group_for_query(ClusterMap(), {}, B1) is None


@given(
    st.integers(1, 8).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(1, 20), st.integers(1, min(5, n)))
    ),
    st.data(),
)
def test_an_old_client_sees_the_leader_its_queue_lands_on(size, data):
    # CLUSTER_QUERY (no cluster_id) to a broker, then CREATE_QUEUE to the leader it names, then
    # APPEND routed by the new queue's id: all three reach the same broker.
    n, g, r = size
    ids = [f"B-AAA{i:02d}" for i in range(n)]
    cmap = ClusterMap()
    cmap.apply(found_cluster([address_of(b) for b in ids], [f"G-XYZ{i:02d}" for i in range(g)], r))
    leaders = {
        gid: data.draw(st.none() | st.sampled_from(rec.voters)) for gid, rec in cmap.groups.items()
    }
    for b in ids:
        queried = group_for_query(cmap, leaders, b)
        assert queried in cmap.groups
        chosen = group_for_new_queue(cmap, leaders, b)
        if chosen is None:
            assert b not in leaders.values()
            continue
        assert queried == chosen and leaders[chosen] == b
        placed = cmap.apply(PlaceQueue("Z" + b[-4:], chosen))
        assert isinstance(placed, QueuePlaced)
        assert leaders[group_of_queue(placed.queue_id)] == b
    views = groups_view(cmap, leaders)
    assert [v.cluster_id for v in views] == sorted(cmap.groups)
    assert all(v.leader_id == leaders[v.cluster_id] for v in views)


def address_of(b: str) -> BrokerAddress:
    return BrokerAddress(b, "127.0.0.1", 9000 + int(b[-2:]))
