"""The many-groups workload of the bench (issue 11): pipelined appends spread over a queue of
every group of a cluster founded with ``--groups``, against the same appends on one group; and
what one append costs a group's leader and each of its replicas (docs/performance.md,
"Several groups: projecting more machines")."""

from __future__ import annotations

import sys
from typing import Any

import trio

from .._core._placement import balance_leaders
from ._bench_load import PAYLOAD, Figure, Load, Row, _Conn, _generate, _topology

BENCH_GROUPS = 3
GROUP_CONNECTIONS = 24


async def groups_figures(
    members: list[tuple[int, trio.Process]],
    one: Load,
    rows: list[Row],
    seconds: float,
    processes: int,
) -> list[Figure]:
    """The many-groups workload (issue 11): the same pipelined appends as on one group, spread
    over a queue of every group of a cluster founded with ``--groups``, once every group is
    led by its preferred leader (:func:`settled`: then spread, and not moved by the balancer
    during the load); the busiest broker's share of the brokers' CPU, and the throughput ratio."""
    queues = await group_queues([p for p, _ in members])
    targets = [
        (port, {"operation": "APPEND", "queue_name": queue, "data": PAYLOAD})
        for _, (port, queue) in sorted(queues.items())
    ]
    name = f"pipelined appends on {BENCH_GROUPS} groups, {GROUP_CONNECTIONS} conns x 16"
    pids = tuple(p.pid for _, p in members)
    load = await _generate(
        name,
        "127.0.0.1",
        0,
        pids,
        request={},
        connections=GROUP_CONNECTIONS,
        window=16,
        seconds=seconds,
        processes=processes,
        targets=targets,
    )
    total = sum(load.broker_cpu.values())
    busiest = max(load.broker_cpu.values()) / total if total else float("nan")
    shares = ", ".join(f"{cpu / total:.0%}" for cpu in load.broker_cpu.values()) if total else "-"
    print(f"  {name}: each broker's share of the brokers' CPU: {shares}", file=sys.stderr)
    rows.append(Row(name, load.broker_us_per_item(), busiest, load.generator_us_per_request()))
    return [
        Figure(name, "busiest broker's CPU share", busiest, 0.45, higher_is_better=False),
        Figure(name, "appends/s", load.rate),
        Figure(name, "appends/s vs 1 group", load.rate / one.rate if one.rate else float("nan")),
    ]


async def group_queues(ports: list[int]) -> dict[str, tuple[int, str]]:
    """Group -> the port of the broker that created a queue on it (its leader) and the queue,
    once every group is led by its preferred leader (:func:`settled`)."""
    queues: dict[str, tuple[int, str]] = {}
    with trio.fail_after(120):
        while True:
            if settled((await _topology(ports) or {}).get("groups") or []):
                break
            await trio.sleep(0.2)
        # A CREATE_QUEUE sent to a broker lands on a group it leads.
        while len(queues) < BENCH_GROUPS:
            for port in ports:
                conn = await _Conn.open("127.0.0.1", port)
                async with conn.stream:
                    answer = await conn.call({"operation": "CREATE_QUEUE"})
                if answer.get("status") == "success":
                    queues.setdefault(answer["queue_id"][2:-5], (port, answer["queue_id"]))
            await trio.sleep(0.1)
    return queues


def settled(listed: list[dict[str, Any]]) -> bool:
    """Whether every group of a CLUSTER_QUERY's ``groups`` is led by its preferred leader:
    the founding's placement of leaders over the groups' voters
    (:func:`~trio_broker._core._placement.balance_leaders`, as ``initial_placement`` gives
    it), where the balancer moves each group's leadership once it leads. Spread alone is not
    enough: the first leaders are elected, and the balancer's transfers to the preferred ones
    came a few seconds later, during the load (a burst of NOT_LEADER answers, and the CPU of
    the moves counted per append)."""
    if len(listed) != BENCH_GROUPS or not all(g.get("leader_id") for g in listed):
        return False
    voters = {g["cluster_id"]: tuple(sorted(g.get("voters") or ())) for g in listed}
    preferred = balance_leaders(voters, {})
    return all(g["leader_id"] == preferred[g["cluster_id"]] for g in listed)


def role_figures(name: str, load: Load, leader_pid: int) -> list[Figure]:
    """What one append of ``load`` (pipelined appends on one group) cost the group's leader and
    each replica, in CPU microseconds: the per-role figures that docs/performance.md projects
    to more machines. With R replicas of every group, an append costs ``leader + (R - 1) *
    replica`` in all, wherever those run."""
    if not load.items or leader_pid not in load.broker_cpu:
        return []
    leader = load.broker_cpu[leader_pid] / load.items * 1e6
    replicas = [cpu for pid, cpu in load.broker_cpu.items() if pid != leader_pid]
    replica = sum(replicas) / len(replicas) / load.items * 1e6 if replicas else float("nan")
    print(
        f"  {name}: per append, the leader {leader:,.1f} us of CPU, each replica {replica:,.1f} us",
        file=sys.stderr,
        flush=True,
    )
    return [
        Figure(name, "leader CPU us/append", leader),
        Figure(name, "replica CPU us/append (mean)", replica),
    ]
