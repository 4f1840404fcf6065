"""Broker processes on SQLite after a whole-cluster power cut with one machine gone for good
(docs/reliability.md, "A reboot votes only once it knows"): the two rebooted brokers elect
nobody and say what to do; the operator's ``data trust-log`` on each, stopped, lets them
elect, with every acknowledged value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trio_broker._storage import Store

from .processes import NodeProcess, Nodes, open_nodes
from .test_cluster_process import kill_and_reap, must_call, query, start_cluster, try_call


@pytest.fixture
async def nodes(tmp_path: Path):
    async with open_nodes(tmp_path) as nodes:
        yield nodes


def reboot_machine(data_dir: Path) -> None:
    """The machine under a stopped broker rebooted: its store last recorded another boot."""
    store = Store(data_dir)
    try:
        store.note_boot("a-boot-before-the-power-cut")
    finally:
        store.close()


UNVERIFIED_TIMING = ("--failure-timeout", "0.2")
"""The rebooted brokers' failure timeout while nobody can tell them what they acknowledged:
they say so after ten election timeouts, 2 s here rather than 5 (the cluster's own 0.5 s);
the heartbeat stays 0.05 s, a quarter of it. Once their logs are accepted they restart with
the cluster's timing."""


async def restart_all(
    nodes: Nodes, stopped: list[NodeProcess], extra_args: tuple[str, ...] = ()
) -> list[NodeProcess]:
    """``nodes.restart_same`` of each of ``stopped`` (then ``extra_args``), side by side (each
    waits for its own ready line); in the same order."""
    started: dict[int, NodeProcess] = {}

    async def restart(i: int, node: NodeProcess) -> None:
        started[i] = await nodes.restart_same(node, extra_args=extra_args)

    async with trio.open_nursery() as nursery:
        for i, node in enumerate(stopped):
            nursery.start_soon(restart, i, node)
    return [started[i] for i in range(len(stopped))]


async def test_two_rebooted_brokers_without_the_third_wait_until_the_operator_accepts_their_logs(
    nodes: Nodes, tmp_path: Path
):
    started = await start_cluster(nodes, tmp_path)
    topology = await query(started[0].port)
    assert topology is not None
    leader = next(
        n
        for n in started
        if any(b["role"] == "leader" and b["port"] == n.port for b in topology["brokers"])
    )
    queue = (await must_call(leader.port, {"operation": "CREATE_QUEUE"}))["queue_id"]
    for k in range(20):
        await must_call(leader.port, {"operation": "APPEND", "queue_name": queue, "data": k})
    await kill_and_reap(*started)  # the power cut
    survivors = started[:2]  # the third machine never comes back
    for node in survivors:
        reboot_machine(node.data_dir)
    restarted = await restart_all(nodes, survivors, UNVERIFIED_TIMING)
    for _ in range(600):  # ten election timeouts, then one WARNING each (at most 30 s)
        if all("raft.unverified" in n.stderr_text() for n in restarted):
            break
        await trio.sleep(0.05)
    for node in restarted:
        assert "data trust-log" in node.stderr_text()
        answer = await try_call(node.port, {"operation": "APPEND", "queue_name": queue, "data": 0})
        assert answer is not None and answer["status"] == "error", answer
        topology = await query(node.port)
        assert topology is None or not any(b["role"] == "leader" for b in topology["brokers"])

    await kill_and_reap(*restarted)
    # The operator's command on each stopped broker (side by side: separate machines).
    trusted: dict[Path, subprocess.CompletedProcess] = {}

    async def trust_log(data_dir: Path) -> None:
        trusted[data_dir] = await trio.run_process(
            [sys.executable, "-m", "trio_broker", "data", "trust-log", "--data-dir", str(data_dir)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )

    async with trio.open_nursery() as nursery:
        for node in restarted:
            nursery.start_soon(trust_log, node.data_dir)
    for node in restarted:
        done = trusted[node.data_dir]
        assert done.returncode == 0, done.stderr
        assert b"accepted the log" in done.stdout
    accepted = await restart_all(nodes, survivors)  # same data dirs and ports, their flags
    with trio.fail_after(30):
        while True:
            answer = await try_call(
                accepted[0].port, {"operation": "APPEND", "queue_name": queue, "data": 20}
            )
            if answer is not None and answer["status"] == "success":
                break
            other = await try_call(
                accepted[1].port, {"operation": "APPEND", "queue_name": queue, "data": 20}
            )
            if other is not None and other["status"] == "success":
                break
            await trio.sleep(0.2)
    for node in accepted:
        assert "raft.unverified" not in node.stderr_text()
    reader = None
    with trio.fail_after(30):
        while reader is None:
            for node in accepted:
                answer = await try_call(
                    node.port,
                    {"operation": "READ", "queue_name": queue, "client_id": "C-CHECK1"},
                )
                if answer is not None and answer["status"] == "success":
                    reader = node
                    assert answer["data"] == 0, answer
                    break
            await trio.sleep(0.1)
    values = [0]
    while True:
        answer = await must_call(
            reader.port, {"operation": "READ", "queue_name": queue, "client_id": "C-CHECK1"}
        )
        if "sequence_num" not in answer:
            break
        values.append(answer["data"])
    assert values == list(range(21))
