"""A consumer group of four worker processes on a 3-broker cluster of real processes, with
one worker SIGKILLed while it holds leases and the leader SIGKILLed after it (issue: "How it
is checked"): every message is processed at least once, none is lost, the killed worker's
messages are delivered again after their lease runs out, and each is acknowledged exactly
once. Bounded: 60 messages, a minute at most."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import trio

from .processes import Nodes, open_nodes
from .test_cluster_process import (
    append_on_leader,
    eventually,
    kill_and_reap,
    must_call,
    start_cluster,
    wait_new_leader,
)

MESSAGES = 60
VISIBILITY_MS = 2000
DEADLINE = 90
ROOT = Path(__file__).resolve().parent.parent


def read_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _stderr_file(log: Path) -> BinaryIO:
    return open(f"{log}.err", "wb")


async def spawn_worker(log: Path, queue: str, seeds: list[str], slow: bool) -> trio.Process:
    args = [sys.executable, "-m", "tests.work_worker", str(log), queue, "workers"]
    if slow:
        args.append("--slow")
    with _stderr_file(log) as stderr:
        return await trio.lowlevel.open_process(
            [*args, *seeds], cwd=ROOT, stdin=subprocess.DEVNULL, stderr=stderr
        )


async def test_a_group_of_processes_survives_a_killed_worker_and_a_leader_failover(tmp_path):
    with trio.fail_after(DEADLINE):
        async with open_nodes(tmp_path) as nodes:
            await run(nodes, tmp_path)


async def run(nodes: Nodes, tmp_path: Path) -> None:
    live = await start_cluster(nodes, tmp_path)
    leader = await wait_new_leader(live)
    created = await must_call(leader.port, {"operation": "CREATE_QUEUE", "name": "jobs"})
    queue = created["queue_id"]
    for i in range(MESSAGES):
        await append_on_leader(live, queue, {"job": i})
    joined = await must_call(
        leader.port,
        {
            "operation": "GROUP_JOIN",
            "queue_name": queue,
            "group": "workers",
            "visibility_ms": VISIBILITY_MS,
        },
    )
    assert joined["status"] == "success", joined
    seeds = [n.address for n in live]
    logs = [tmp_path / f"worker{i}.log" for i in range(4)]
    workers: list[trio.Process] = []
    try:
        # The slow worker first, so that it surely holds leases when it is killed.
        workers.append(await spawn_worker(logs[0], queue, seeds, slow=True))
        await eventually(lambda: read_log(logs[0]), 20, "the slow worker received a message")
        for log in logs[1:]:
            workers.append(await spawn_worker(log, queue, seeds, slow=False))
        await eventually(
            lambda: sum(line[0] == "ack" for log in logs[1:] for line in read_log(log)) >= 10,
            20,
            "the other workers acknowledged 10 messages",
        )
        workers[0].send_signal(signal.SIGKILL)
        await workers[0].wait()
        held = {int(line[1]) for line in read_log(logs[0]) if line[0] == "got"}
        assert held
        await kill_and_reap(leader)
        live = [n for n in live if n is not leader]
        new_leader = await wait_new_leader(live, not_id=leader.broker_id, within=10)

        def acked() -> set[int]:
            return {int(line[1]) for log in logs[1:] for line in read_log(log) if line[0] == "ack"}

        await eventually(
            lambda: acked() == set(range(1, MESSAGES + 1)), 40, "every message acknowledged"
        )
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
            await worker.wait()

    lines = [line for log in logs[1:] for line in read_log(log)]
    got = [(int(line[1]), int(line[2])) for line in lines if line[0] == "got"]
    # Every message processed at least once; none lost.
    assert {seq for seq, _ in got} == set(range(1, MESSAGES + 1))
    # The killed worker's messages went to others, after their lease ran out, as redeliveries.
    for seq in held:
        assert any(s == seq and count >= 2 for s, count in got), (seq, got)
    # Each acknowledged exactly once: one ACK answered True, except where an ACK's outcome was
    # lost in the failover and its retry found the message done already.
    true_acks = Counter(int(line[1]) for line in lines if line[:1] == ["ack"] and line[2] == "True")
    unknown = {int(line[1]) for line in lines if line[0] == "ack-unknown"}
    assert all(n == 1 for n in true_acks.values()), true_acks
    assert set(true_acks) | unknown == set(range(1, MESSAGES + 1))
    # And the cluster agrees: the group has nothing left, delivered or not.
    for _ in range(3):
        leader = await wait_new_leader(live)
        answer = await must_call(
            leader.port,
            {"operation": "GROUP_READ", "queue_name": queue, "group": "workers", "member": "x"},
        )
        if answer.get("code") != "NOT_LEADER":
            break
    assert answer == {"status": "success", "messages": [], "in_flight": 0}, answer
    _ = new_leader
