"""The metadata group with real broker processes (docs/replication.md, "Stage 2: the metadata
group"): 4 brokers, 4 groups, replication factor 3, so each broker holds 3 of the 4 groups; a
broker leading some is SIGKILLed; every group fails over among its own replicas, and what any
group acknowledged survives. A client of the original design routes through any broker:
CLUSTER_QUERY's ``groups`` and NOT_LEADER name each group's leader, hosted there or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from .processes import Nodes, open_nodes
from .spread import views, wait_views
from .test_groups_process import FAST, ask

pytestmark = pytest.mark.trio

GROUPS = 4
BROKERS = 4
FACTOR = 3


@pytest.fixture
async def nodes(tmp_path: Path):
    async with open_nodes(tmp_path) as nodes:
        yield nodes


async def wait_placed(ports: list[int]) -> dict[str, dict[str, Any]]:
    """Until every running broker lists the same GROUPS groups of FACTOR voters, each with a
    leader among its voters."""
    return await wait_views(
        ports,
        lambda first: (
            len(first) == GROUPS
            and all(len(g["voters"]) == FACTOR for g in first.values())
            and all(g.get("leader_id") in g["voters"] for g in first.values())
        ),
    )


async def call_via(ports: list[int], start: int, request: dict[str, Any]) -> dict[str, Any]:
    """As a client of the original design: send to a broker, follow NOT_LEADER to the port it
    names; a dead broker or an answer without a leader: the next broker."""
    with trio.fail_after(30):
        port = ports[start % len(ports)]
        while True:
            answer = await ask(port, request)
            if answer is not None and answer.get("code") not in ("NOT_LEADER", "UNAVAILABLE"):
                return answer
            named = None if answer is None else answer.get("leader_port")
            if named in ports:
                port = named
            else:
                start += 1
                port = ports[start % len(ports)]
                await trio.sleep(0.1)


async def test_sigkill_with_each_group_on_three_of_four_brokers_loses_nothing_acknowledged(
    nodes: Nodes, tmp_path: Path
):
    founding = ["--groups", str(GROUPS), "--replication-factor", str(FACTOR)]
    first = await nodes.start_member(
        tmp_path / "b1", extra_args=[*FAST, *founding, "--founding-brokers", str(BROKERS)]
    )
    started = [first]
    for i in range(2, BROKERS + 1):
        started.append(
            await nodes.start_member(tmp_path / f"b{i}", seeds=[first], extra_args=list(FAST))
        )
    ports = [n.port for n in started]
    groups = await wait_placed(ports)
    by_id = {}
    for view in groups.values():
        by_id[view["leader_id"]] = view["leader_port"]
    queues: dict[str, str] = {}
    for node in started:  # CREATE_QUEUE lands on a group the broker leads
        answer = await ask(node.port, {"operation": "CREATE_QUEUE"})
        if answer and answer["status"] == "success":
            queues.setdefault("G-" + answer["queue_id"][2:-5], answer["queue_id"])
    assert len(queues) >= 2, queues
    acknowledged: dict[str, list[int]] = {q: [] for q in queues.values()}

    async def write(values: range) -> None:
        live = [n.port for n in started if n.running]
        for value in values:
            for i, queue in enumerate(sorted(acknowledged)):
                request = {"operation": "APPEND", "queue_name": queue, "data": value}
                answer = await call_via(live, value + i, request)
                assert answer["status"] == "success", answer
                acknowledged[queue].append(value)

    await write(range(4))
    victim_port = next(p for p in by_id.values() if p in ports)
    victim = next(n for n in started if n.port == victim_port)
    victim.kill()
    assert await victim.wait() != 0
    live = [n for n in started if n is not victim]
    await write(range(4, 8))  # every group, those it led included, takes writes
    restarted = await nodes.restart_same(victim)
    started = [*live, restarted]
    await wait_placed([n.port for n in started])
    await write(range(8, 10))
    for queue in sorted(acknowledged):
        values = []
        while True:
            answer = await call_via(
                [n.port for n in started],
                0,
                {"operation": "READ", "queue_name": queue, "client_id": "C-CHECK"},
            )
            if answer.get("message") == "no_messages":
                break
            values.append(answer["data"])
        assert values == acknowledged[queue] == list(range(10)), (queue, values)


async def test_cluster_command_founds_groups_on_every_node_with_leadership_spread(tmp_path):
    """``cluster --nodes 4 --groups 4 --replication-factor 3``: the founder places the
    groups once all four brokers have joined, each group on three of them, and each broker
    leads one group from the start; CLUSTER_QUERY lists the same groups on every broker."""
    from .test_cluster_command import running_cluster

    async with running_cluster(tmp_path, 4, "--groups", "4", "--replication-factor", "3") as (
        process,
        _output,
        base,
    ):
        ports = [base + i for i in range(4)]
        with trio.fail_after(60):
            while True:
                seen = [await views([p]) for p in ports]
                first = seen[0]
                leaders = sorted(g.get("leader_port", 0) for g in first.values())
                if (
                    len(first) == GROUPS
                    and all(len(g["voters"]) == 3 for g in first.values())
                    and leaders == ports
                    and all(s == first for s in seen)
                ):
                    break
                await trio.sleep(0.2)
        process.send_signal(2)
        with trio.fail_after(30):
            assert await process.wait() == 0
