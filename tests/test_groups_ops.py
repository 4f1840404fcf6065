"""Operators of a cluster with several replication groups: ``client status`` shows every group
with its leader, voters and each replica's lag; ``client groups`` lists the groups with their
leader, voters and queue count (docs/operations.md, "Size the replication groups"). Real brokers
with real storage on 127.0.0.1."""

from __future__ import annotations

import orjson
import pytest
import trio

from trio_broker._cli._bench_groups import role_figures
from trio_broker._cli._bench_load import Load
from trio_broker._cli._client_groups import leaders_per_broker
from trio_broker._ids import cluster_of_queue
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker.client import BrokerInfo, Topology, connect
from trio_broker.testing import open_local_cluster

from .spread import wait_voting_spread
from .wire import call

GROUPS = 3


def group_leaders(cluster) -> dict[str, str | None]:
    """Group id -> broker id of its leader (None if no running broker leads it)."""
    leaders: dict[str, str | None] = {}
    for broker in cluster.brokers.values():
        for group_id, replica in broker.host.groups.items():
            leaders.setdefault(group_id, None)
            if replica.driver.node.is_leader:
                leaders[group_id] = broker.broker_id
    return leaders


async def listed_groups(cluster) -> list[str]:
    """The groups a broker lists in its answer to CLUSTER_QUERY: those clients see."""
    running = next(iter(cluster.brokers.values()))
    answer = await call(running.port, {"operation": "CLUSTER_QUERY"})
    return sorted(g["cluster_id"] for g in answer.get("groups") or [answer])


async def until(predicate) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(0.05)


async def listed_leaders(cluster) -> dict[str, str | None]:
    """Leader of each group clients are told about (None if no running broker leads it)."""
    leaders = group_leaders(cluster)
    return {g: leaders.get(g) for g in await listed_groups(cluster)}


async def settled(cluster, run):
    """``await run()`` while leadership stays put (a leader may still be handing a group to the
    broker that should lead it): its result, and the leaders before and after it."""
    for _ in range(50):
        before = await listed_leaders(cluster)
        result = await run()
        if await listed_leaders(cluster) == before:
            return result, before
        await trio.sleep(0.2)
    raise AssertionError("leadership kept moving")


async def create_queue(port: int) -> str:
    """CREATE_QUEUE through the broker on ``port``, again while it leads no group (a leadership
    hand-over in progress)."""
    for _ in range(100):
        reply = await call(port, {"operation": "CREATE_QUEUE"})
        if reply["status"] == "success":
            return reply["queue_id"]
        assert reply.get("code") == "NOT_LEADER", reply
        await trio.sleep(0.1)
    raise AssertionError(f"the broker on {port} never created a queue")


def seeds(cluster) -> list[str]:
    return [arg for port in cluster.ports.values() for arg in ("--seed", f"127.0.0.1:{port}")]


async def test_client_cluster_query_with_details_answers_about_the_group_asked(ram_path):
    # Regression: the leader was asked without the group's id, so a broker leading several
    # groups answered about its first one and another group was listed twice.
    with trio.fail_after(60):
        async with open_local_cluster(ram_path, 3, groups=GROUPS) as cluster:
            await wait_voting_spread(cluster, GROUPS)
            async with connect([f"127.0.0.1:{p}" for p in cluster.ports.values()]) as client:
                groups = await listed_groups(cluster)
                assert sorted(client.clusters) == groups
                for group in groups:
                    topology, leaders = await settled(
                        cluster, lambda g=group: client.cluster_query(cluster_id=g, details=True)
                    )
                    assert topology.cluster_id == group
                    assert topology.leader is not None
                    assert topology.leader.broker_id == leaders[group]
                    # Lag comes from the leader only: its answer was the one returned.
                    assert all(b.lag is not None for b in topology.brokers), topology


async def test_status_shows_every_group_its_leader_voters_and_lag(ram_path, cli):
    with trio.fail_after(90):
        async with open_local_cluster(ram_path, 3, groups=GROUPS) as cluster:
            await wait_voting_spread(cluster, GROUPS)
            names = {b.broker_id: n for n, b in cluster.brokers.items()}
            (status, out, err), leaders = await settled(
                cluster, lambda: cli(*seeds(cluster), "--json", "status")
            )
            assert (status, err) == (0, "")
            clusters = orjson.loads(out)["clusters"]
            assert [c["cluster_id"] for c in clusters] == sorted(leaders)
            for c in clusters:
                assert c["leader"] == leaders[c["cluster_id"]]
                assert {b["broker_id"] for b in c["brokers"]} == set(names)
                for b in c["brokers"]:
                    assert b["membership"] == "voter"
                    assert b["role"] == ("leader" if b["broker_id"] == c["leader"] else "replica")
                    assert isinstance(b["lag"], int) and b["lag"] >= 0

            # A replica falls behind on one group: that group's leader reports its lag.
            victim_id = next(b for b in names if b != leaders[sorted(leaders)[0]])
            await cluster.stop(names[victim_id])
            await until(lambda: all(group_leaders(cluster).values()))  # the victim's re-elect
            # A queue on some group, appended to through the trio client.
            port = next(iter(cluster.brokers.values())).port
            queue = await create_queue(port)
            group = cluster_of_queue(queue)
            async with connect([f"127.0.0.1:{port}"]) as client:
                for i in range(5):
                    assert await client.append(queue, i) == i + 1
            args = [a for b in cluster.brokers.values() for a in ("--seed", f"127.0.0.1:{b.port}")]
            (status, out, err), led = await settled(cluster, lambda: cli(*args, "--json", "status"))
            assert (status, err) == (0, "")
            by_group = {c["cluster_id"]: c for c in orjson.loads(out)["clusters"]}
            lagging = {b["broker_id"]: b for b in by_group[group]["brokers"]}
            # Six entries at least: the queue's creation and five appends, one at a time.
            assert lagging[victim_id]["lag"] >= 6, by_group[group]
            assert all(b["lag"] == 0 for i, b in lagging.items() if i != victim_id)

            # The same, as a table per group and how many groups each broker leads.
            (status, out, err), led = await settled(cluster, lambda: cli(*args, "status"))
            assert (status, err) == (0, "")
            blocks = out.strip().split("\n\n")
            assert len(blocks) == len(led) + 1
            for block, group_id in zip(blocks, sorted(led), strict=False):
                heading, header, *rows = block.splitlines()
                assert heading.startswith(f"cluster {group_id} ")
                assert header.split() == [
                    "BROKER",
                    "ADDRESS",
                    "ROLE",
                    "STATUS",
                    "MEMBERSHIP",
                    "LAG",
                ]
                assert len(rows) == 3
            row = next(r for r in blocks[sorted(led).index(group)].splitlines() if victim_id in r)
            assert row.split()[-1] == str(lagging[victim_id]["lag"])
            counts = {b: list(led.values()).count(b) for b in names}
            assert blocks[-1] == f"{len(led)} groups; leaders per broker: " + ", ".join(
                f"{b} {counts[b]}" for b in sorted(names)
            )


async def test_groups_lists_leader_voters_and_queue_count(ram_path, cli):
    with trio.fail_after(90):
        async with open_local_cluster(ram_path, 3, groups=GROUPS) as cluster:
            await wait_voting_spread(cluster, GROUPS)
            port_of = {b.broker_id: b.port for b in cluster.brokers.values()}
            # 0, 1 and 2 queues created through the brokers in turn (each lands on a group
            # the broker leads): the groups hold different numbers of queues.
            wanted = dict.fromkeys(await listed_groups(cluster), 0)
            for count, port in enumerate(sorted(port_of.values())):
                for _ in range(count):
                    wanted[cluster_of_queue(await create_queue(port))] += 1  # KeyError: unlisted
            assert sum(wanted.values()) == 3, wanted
            (status, out, err), leaders = await settled(
                cluster, lambda: cli(*seeds(cluster), "--json", "groups")
            )
            assert (status, err) == (0, "")
            assert orjson.loads(out) == {
                "groups": [
                    {
                        "group_id": group,
                        "leader_id": leaders[group],
                        "leader_address": f"127.0.0.1:{port_of[leaders[group]]}",
                        "voters": sorted(port_of),
                        "learners": [],
                        "queues": wanted[group],
                    }
                    for group in sorted(leaders)
                ]
            }
            (status, out, err), leaders = await settled(
                cluster, lambda: cli(*seeds(cluster), "groups")
            )
            assert (status, err) == (0, "")
            header, *rows = out.splitlines()
            assert header.split() == ["GROUP", "LEADER", "ADDRESS", "VOTERS", "LEARNERS", "QUEUES"]
            assert [r.split() for r in rows] == [
                [
                    group,
                    leaders[group],
                    f"127.0.0.1:{port_of[leaders[group]]}",
                    ",".join(sorted(port_of)),
                    "-",
                    str(wanted[group]),
                ]
                for group in sorted(leaders)
            ]


async def test_groups_on_a_single_group_broker(ram_path, cli):
    async with open_broker(BrokerConfig(data_dir=ram_path / "one", port=0)) as broker:
        for _ in range(2):
            await call(broker.port, {"operation": "CREATE_QUEUE"})
        status, out, err = await cli("--seed", f"127.0.0.1:{broker.port}", "--json", "groups")
        assert (status, err) == (0, "")
        assert orjson.loads(out)["groups"] == [
            {
                "group_id": broker.cluster_id,
                "leader_id": broker.broker_id,
                "leader_address": f"127.0.0.1:{broker.port}",
                "voters": [broker.broker_id],
                "learners": [],
                "queues": 2,
            }
        ]


def _topology(group: str, leader: str | None, members: list[str]) -> Topology:
    brokers = tuple(
        BrokerInfo(
            broker_id=b,
            host="127.0.0.1",
            port=9000 + i,
            role="leader" if b == leader else "replica",
            status="active",
            membership="voter",
            lag=0,
        )
        for i, b in enumerate(members)
    )
    return Topology(
        cluster_id=group,
        cluster_version=5,
        brokers=brokers,
        leader=next((b for b in brokers if b.broker_id == leader), None),
    )


def test_leaders_per_broker_counts_every_broker_and_skips_leaderless_groups():
    members = ["B-AAAAA", "B-BBBBB", "B-CCCCC"]
    topologies = [
        _topology("G-AAAAA", "B-AAAAA", members),
        _topology("G-BBBBB", "B-AAAAA", members),
        _topology("G-CCCCC", None, members),  # an election in progress
    ]
    assert leaders_per_broker(topologies) == {"B-AAAAA": 2, "B-BBBBB": 0, "B-CCCCC": 0}


def test_role_figures_divide_each_brokers_cpu_by_the_appends():
    load = Load(
        ok=1000,
        errors=0,
        items=1000,
        elapsed=1.0,
        latencies_us=[],
        generator_cpu=0.0,
        broker_cpu={11: 0.040, 12: 0.010, 13: 0.014},  # seconds
    )
    figures = {f.metric: f.value for f in role_figures("w", load, leader_pid=11)}
    assert figures["leader CPU us/append"] == pytest.approx(40.0)
    assert figures["replica CPU us/append (mean)"] == pytest.approx(12.0)
    assert role_figures("w", load, leader_pid=99) == []
