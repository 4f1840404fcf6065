"""Waiting until the groups' leaderships are spread over the brokers (mock-clock clusters)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import trio

from trio_broker._core._spread import leader_share
from trio_broker._ids import cluster_of_queue
from trio_broker.testing._mock_cluster import MockCluster

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


async def wait_spread(cluster: MockCluster, groups: int, leaders: Leaders) -> None:
    """Until ``leaders()`` lists ``groups`` groups, each has a leader, and no running broker
    leads more than its share, ceil(G/N) (:func:`~trio_broker._core._spread.leader_share`)."""
    share = leader_share(groups, len(cluster.brokers))

    def spread() -> bool:
        led = leaders()
        return (
            len(led) == groups
            and all(led.values())
            and max(led_counts(cluster, led).values()) <= share
        )

    await cluster.wait_until(spread)


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
