"""Waiting until the groups' leaderships are spread over the brokers: every group led, no
broker leading more than its share, ceil(G/N) (:func:`spread_out`). One wait per kind of
cluster: :func:`wait_spread` (mock-clock clusters), :func:`wait_voting_spread` (real brokers
in this process, ``open_local_cluster``) and :func:`wait_spread_answers` (broker processes,
as their CLUSTER_QUERY answers show it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import trio

from trio_broker._core._spread import leader_share
from trio_broker._ids import cluster_of_queue
from trio_broker.testing._local_cluster import LocalCluster
from trio_broker.testing._mock_cluster import MockCluster

from .wire import RawConnection

Leaders = Callable[[], Mapping[str, "str | None"]]
"""The groups counted, each with the name of the running broker that leads it (or None):
``cluster.group_leaders`` (every group) or ``cluster.data_leaders`` (with a cluster map, the
metadata group apart)."""


def led_counts(cluster: MockCluster, leaders: Mapping[str, str | None]) -> dict[str, int]:
    """Running broker name -> how many of the groups of ``leaders`` it leads."""
    counts = dict.fromkeys(cluster.brokers, 0)
    for leader in leaders.values():
        if leader is not None:
            counts[leader] += 1
    return counts


def spread_out(leaders: Mapping[str, Any], brokers: int) -> bool:
    """Whether every group of ``leaders`` (group -> its leader, however named; None: none)
    has a leader and none of ``brokers`` brokers leads more than its share of them, ceil(G/N)
    (:func:`~trio_broker._core._spread.leader_share`)."""
    led = list(leaders.values())
    return all(led) and max(map(led.count, led), default=0) <= leader_share(len(led), brokers)


async def wait_spread(cluster: MockCluster, groups: int, leaders: Leaders | None = None) -> None:
    """Until ``leaders()`` lists ``groups`` groups and their leadership is spread over the
    running brokers. ``leaders`` defaults to ``cluster.data_leaders``: the data groups with a
    cluster map (the metadata group apart), every group with the stage-1 list."""
    of = cluster.data_leaders if leaders is None else leaders

    def spread() -> bool:
        led = of()
        return len(led) == groups and spread_out(led, len(cluster.brokers))

    await cluster.wait_until(spread)


def local_group_leaders(cluster: LocalCluster) -> dict[str, str | None]:
    """Group id -> the name of the running broker that leads it (None: none does)."""
    leaders: dict[str, str | None] = {}
    for name, broker in sorted(cluster.brokers.items()):
        for group_id, replica in broker.host.groups.items():
            leaders.setdefault(group_id, None)
            if replica.driver.node.is_leader:
                leaders[group_id] = name
    return leaders


async def wait_voting_spread(cluster: LocalCluster, groups: int) -> dict[str, str]:
    """Until every running broker hosts the same groups, at least ``groups`` of them (more
    when the cluster keeps its metadata in a group of its own), votes in every one (no
    learners), and their leadership is spread. Returns group id -> its leader's name."""
    while True:
        leaders = local_group_leaders(cluster)
        voting = all(
            set(broker.host.groups) == set(leaders)
            and all(
                len(r.driver.node.config.voters) == len(cluster.brokers)
                and not r.driver.node.config.learners
                for r in broker.host.groups.values()
            )
            for broker in cluster.brokers.values()
        )
        if voting and len(leaders) >= groups and spread_out(leaders, len(cluster.brokers)):
            return leaders  # type: ignore[return-value]
        await trio.sleep(0.05)


async def ask(port: int, request: dict[str, Any], within: float = 2.0) -> dict[str, Any] | None:
    """One request to the broker on ``port``, on a connection of its own; None if it does not
    answer within ``within`` seconds."""
    try:
        with trio.fail_after(within):
            conn = await RawConnection.open(port)
            try:
                return await conn.call(request)
            finally:
                await trio.aclose_forcefully(conn.stream)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        return None


async def views(ports: list[int]) -> dict[str, dict[str, Any]]:
    """Every group as the first broker that answers lists it (CLUSTER_QUERY's ``groups``)."""
    for port in ports:
        answer = await ask(port, {"operation": "CLUSTER_QUERY"})
        if answer and answer.get("groups"):
            return {g["cluster_id"]: g for g in answer["groups"]}
    return {}


async def wait_views(
    ports: list[int], settled: Callable[[dict[str, dict[str, Any]]], bool]
) -> dict[str, dict[str, Any]]:
    """Until the groups the broker on the first port lists (:func:`views`) are ``settled``
    and each broker of ``ports`` names the same leaders. Returns the groups as the first one
    lists them."""
    with trio.fail_after(60):
        while True:
            seen = [await views([p]) for p in ports]
            first = seen[0]
            if settled(first) and all(
                {k: v.get("leader_id") for k, v in s.items()}
                == {k: v.get("leader_id") for k, v in first.items()}
                for s in seen
            ):
                return first
            await trio.sleep(0.1)


async def wait_spread_answers(
    ports: list[int], groups: int, brokers: int
) -> dict[str, dict[str, Any]]:
    """Until the broker on the first port lists ``groups`` groups, each with ``brokers``
    voters, and their leadership is spread over ``brokers`` brokers; then each broker of
    ``ports`` must name the same leaders. Returns the groups as the first one lists them."""
    return await wait_views(
        ports,
        lambda first: (
            len(first) == groups
            and spread_out({k: g.get("leader_port") for k, g in first.items()}, brokers)
            and all(len(g["voters"]) == brokers for g in first.values())
        ),
    )


async def append_acknowledged(
    cluster: MockCluster,
    queues: Iterable[str],
    value: object,
    acknowledged: dict[str, list[object]],
    leaders: Leaders,
) -> None:
    """APPEND ``value`` to every queue through its group's leader (as ``leaders()`` names it;
    a group without one is skipped); record what is acknowledged."""
    for queue in queues:
        leader = leaders().get(cluster_of_queue(queue))
        if leader is None:
            continue
        with trio.move_on_after(5):
            reply = await cluster.call(
                leader, {"operation": "APPEND", "queue_name": queue, "data": value}
            )
            if reply.get("status") == "success":
                acknowledged[queue].append(value)
