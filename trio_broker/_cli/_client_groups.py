"""``client status`` and ``client groups``: every replication group a cluster's brokers host.

A broker hosting several groups (docs/replication.md, "Several leaders") lists them in its
answer to ``CLUSTER_QUERY`` (``groups``); the client library keeps each as one of the
"clusters" it routes to. ``status`` asks each group's leader for the group's members with
``details`` (membership, and each member's lag: log entries it lacks, as the leader sees it),
one table per group in id order, then how many groups each broker leads. ``groups`` is one
line per group: its leader, voters, learners and how many queues it holds (counted with
``LIST_QUEUES``, from the group's leader).

A group whose leader is unknown (an election in progress) is still listed, as the brokers
that answered describe it, with no lag and no queue count.
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from .._protocol import dumps_value
from ..client import Client, Topology
from ._exit import EXIT_OK

MAX_QUEUE_PAGES = 100
"""A group's queues are counted a page (1,000) at a time, at most 100 pages."""
QUEUE_PAGE = 1000


def _out(text: str) -> None:
    print(text, flush=True)


def _json(value: Any) -> str:
    return dumps_value(value).decode()


async def _every_group(client: Client) -> list[Topology]:
    """Each cluster (group) the client knows, in id order, as its leader describes it."""
    return [
        await client.cluster_query(cluster_id=cid, details=True) for cid in sorted(client.clusters)
    ]


def topology_json(topology: Topology) -> dict[str, Any]:
    return {
        "cluster_id": topology.cluster_id,
        "cluster_version": topology.cluster_version,
        "leader": topology.leader.broker_id if topology.leader else None,
        "brokers": [
            {
                "broker_id": b.broker_id,
                "host": b.host,
                "port": b.port,
                "role": b.role,
                "status": b.status,
                "membership": b.membership,
                "lag": b.lag,
            }
            for b in topology.brokers
        ],
    }


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_topology(topology: Topology) -> str:
    """A cluster as a heading and an aligned table of its brokers."""
    leader = topology.leader.broker_id if topology.leader else "none (election in progress?)"
    heading = f"cluster {topology.cluster_id}  version {topology.cluster_version}  leader {leader}"
    rows = [("BROKER", "ADDRESS", "ROLE", "STATUS", "MEMBERSHIP", "LAG")]
    rows += [
        (
            b.broker_id,
            f"{b.host}:{b.port}",
            b.role,
            b.status,
            b.membership or "-",
            "-" if b.lag is None else str(b.lag),
        )
        for b in topology.brokers
    ]
    return "\n".join([heading, *_table(rows)])


def leaders_per_broker(topologies: list[Topology]) -> dict[str, int]:
    """How many of the groups each broker leads (every broker listed, 0 if it leads none)."""
    counts: Counter[str] = Counter({b.broker_id: 0 for t in topologies for b in t.brokers})
    counts.update(t.leader.broker_id for t in topologies if t.leader is not None)
    return dict(sorted(counts.items()))


async def status_command(client: Client, args: argparse.Namespace) -> int:
    topologies = await _every_group(client)
    if args.json:
        _out(_json({"clusters": [topology_json(t) for t in topologies]}))
        return EXIT_OK
    parts = [format_topology(t) for t in topologies]
    if len(topologies) > 1:
        led = leaders_per_broker(topologies)
        leaderless = sum(t.leader is None for t in topologies)
        summary = ", ".join(f"{broker} {n}" for broker, n in led.items())
        parts.append(
            f"{len(topologies)} groups; leaders per broker: {summary}"
            + (f"; {leaderless} without a leader" if leaderless else "")
        )
    _out("\n\n".join(parts))
    return EXIT_OK


async def _queue_count(client: Client, cluster_id: str) -> int:
    count = 0
    after = None
    for _ in range(MAX_QUEUE_PAGES):
        page = await client.list_queues(cluster_id, after=after, max_queues=QUEUE_PAGE)
        count += len(page.queues)
        after = page.next_after
        if after is None:
            break
    return count


def _members(topology: Topology, membership: str) -> list[str]:
    # Every broker of this project says ``membership`` when asked with details; one that
    # does not is a voter (learners are an addition of this project).
    return sorted(b.broker_id for b in topology.brokers if (b.membership or "voter") == membership)


async def groups_command(client: Client, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for topology in await _every_group(client):
        leader = topology.leader
        queues = None if leader is None else await _queue_count(client, topology.cluster_id)
        rows.append(
            {
                "group_id": topology.cluster_id,
                "leader_id": None if leader is None else leader.broker_id,
                "leader_address": None if leader is None else f"{leader.host}:{leader.port}",
                "voters": _members(topology, "voter"),
                "learners": _members(topology, "learner"),
                "queues": queues,
            }
        )
    if args.json:
        _out(_json({"groups": rows}))
        return EXIT_OK
    table = [("GROUP", "LEADER", "ADDRESS", "VOTERS", "LEARNERS", "QUEUES")]
    table += [
        (
            r["group_id"],
            r["leader_id"] or "-",
            r["leader_address"] or "-",
            ",".join(r["voters"]) or "-",
            ",".join(r["learners"]) or "-",
            "-" if r["queues"] is None else str(r["queues"]),
        )
        for r in rows
    ]
    _out("\n".join(_table(table)))
    return EXIT_OK
