"""Several replication groups with real broker processes (docs/replication.md, "Several
leaders"): a broker that leads several groups is SIGKILLed; every group fails over, and what
any group acknowledged survives, on every group; the broker comes back, reopens every group,
and leadership spreads back. The cluster is founded with the cluster map (the default
replication factor, 3, over its 3 brokers: ``--founding-brokers 3``), so every broker holds
every group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from .processes import Nodes, open_nodes
from .spread import ask, views, wait_spread_answers

pytestmark = pytest.mark.trio

GROUPS = 6
BROKERS = 3
FAST = ("--heartbeat-interval", "0.05", "--failure-timeout", "0.5")


@pytest.fixture
async def nodes(tmp_path: Path):
    async with open_nodes(tmp_path) as nodes:
        yield nodes


async def call_leader(ports: list[int], group: str, request: dict[str, Any]) -> dict[str, Any]:
    """As a client of the original design: ask for the group's leader, send it there, follow
    NOT_LEADER and dead brokers until an answer that is neither."""
    with trio.fail_after(30):
        while True:
            port = (await views(ports)).get(group, {}).get("leader_port")
            if port in ports:
                answer = await ask(port, request)
                if answer is not None and answer.get("code") not in ("NOT_LEADER", "UNAVAILABLE"):
                    return answer
            await trio.sleep(0.1)


async def test_sigkill_of_a_broker_leading_several_groups_loses_nothing_acknowledged(
    nodes: Nodes, tmp_path: Path
):
    first = await nodes.start_member(
        tmp_path / "b1",
        extra_args=[*FAST, "--groups", str(GROUPS), "--founding-brokers", str(BROKERS)],
    )
    started = [first]
    for i in range(2, BROKERS + 1):
        started.append(
            await nodes.start_member(tmp_path / f"b{i}", seeds=[first], extra_args=list(FAST))
        )
    ports = [n.port for n in started]
    groups = await wait_spread_answers(ports, GROUPS, BROKERS)
    queues: dict[str, str] = {}
    # CREATE_QUEUE lands on the least-loaded group the asked broker leads: asking each broker
    # in turn reaches every group (a bounded number of rounds: the balancer may still move a
    # leadership meanwhile, so one round per broker is not always enough).
    for _ in range(4):
        for node in started:
            answer = await ask(node.port, {"operation": "CREATE_QUEUE"})
            assert answer and answer["status"] == "success", answer
            queues.setdefault("G-" + answer["queue_id"][2:-5], answer["queue_id"])
        if len(queues) == GROUPS:
            break
    assert sorted(queues) == sorted(groups)
    acknowledged: dict[str, list[int]] = {q: [] for q in queues.values()}

    async def write(values: range) -> None:
        for value in values:
            for group, queue in sorted(queues.items()):
                answer = await call_leader(
                    [n.port for n in started if n.running],
                    group,
                    {"operation": "APPEND", "queue_name": queue, "data": value},
                )
                assert answer["status"] == "success", answer
                acknowledged[queue].append(value)

    await write(range(5))
    led = {}
    for view in groups.values():
        led[view["leader_port"]] = led.get(view["leader_port"], 0) + 1
    victim = next(n for n in started if led.get(n.port, 0) >= 2)
    victim.kill()
    assert await victim.wait() != 0
    live = [n for n in started if n is not victim]
    await write(range(5, 10))  # every group, its leader's death included, takes writes
    restarted = await nodes.restart_same(victim)
    started = [*live, restarted]
    await wait_spread_answers([n.port for n in started], GROUPS, BROKERS)
    await write(range(10, 12))
    for group, queue in sorted(queues.items()):
        values = []
        while True:
            answer = await call_leader(
                [n.port for n in started],
                group,
                {"operation": "READ", "queue_name": queue, "client_id": "C-CHECK"},
            )
            if answer.get("message") == "no_messages":
                break
            values.append(answer["data"])
        assert values == acknowledged[queue] == list(range(12)), (group, values)
