"""Administration of a cluster of real ``python -m trio_broker node`` processes, where signals
and the command line matter: a leader stepping down on SIGTERM under load, and the client
commands run as processes of their own (transfer-leader, add-member of a ``--join-wait``
node, snapshot).

Terms and transfers are read from the nodes' JSON log lines (``role.changed``,
``leadership.taken_over``, ``broker.stepped_down``), never from timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_broker

from .processes import NodeProcess, Nodes, open_nodes
from .test_cluster_process import (
    FAST,
    Topology,
    Writer,
    check_queue,
    create_queue,
    eventually,
    query,
    read_all_from_leader,
    start_cluster,
    wait_formed,
    wait_new_leader,
)

# Slow failure detection: a replica cannot start an election of its own for 2 s after it last
# heard from the leader, so a leader that appears within that time was handed the leadership.
JSON_LOGS = ("--log-format", "json")
SLOW_ELECTIONS = ("--failure-timeout", "2.0", *JSON_LOGS)


@pytest.fixture
async def nodes(tmp_path: Path):
    async with open_nodes(tmp_path) as nodes:
        yield nodes


def events(node: NodeProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in node.stderr_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found


def led_in_terms(node: NodeProcess) -> list[int]:
    return [
        r["term"]
        for r in events(node, "role.changed")
        if r.get("role") == "leader" and r.get("broker_id") == node.broker_id
    ]


async def run_client(*args: str, within: float = 30.0) -> subprocess.CompletedProcess:
    """``python -m trio_broker client ARGS`` as a process; stdout and stderr as text."""
    command = [sys.executable, "-m", "trio_broker", "client", "--timeout", "20", *args]
    with trio.fail_after(within):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def test_sigterm_on_the_leader_under_load_hands_over_and_loses_nothing(
    nodes: Nodes, tmp_path
):
    """SIGTERM to the leader: it transfers its leadership before it exits, so the next leader
    is elected in exactly the next term by TIMEOUT_NOW (no replica's election timer ran out),
    writers keep being acknowledged, and every acknowledged append is stored."""
    with trio.fail_after(90):
        started = await start_cluster(nodes, tmp_path, extra_args=SLOW_ELECTIONS)
        old = started[0]
        live = started[1:]
        queue_id = await create_queue(old.port)
        ports = [n.port for n in started]
        writers = [Writer(queue_id, Topology(ports), offset=w * 1_000_000) for w in range(3)]
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for w in writers:
                nursery.start_soon(lambda w=w: w.run(stop, max_count=20_000, duration=30.0))
            await eventually(
                lambda: all(len(w.acked) >= 20 for w in writers), 20.0, "appends before SIGTERM"
            )
            old.terminate()
            assert await old.wait() == 0, old.describe()
            await eventually(
                lambda: any(
                    leader not in (None, old.broker_id) for w in writers for _, leader in w.ack_log
                ),
                20.0,
                "no append acknowledged by a new leader",
            )
            stop.set()
        assert not any(w.gave_up for w in writers)
        new = await wait_new_leader(live, not_id=old.broker_id)

        (stepped_down,) = events(old, "broker.stepped_down")
        assert stepped_down["new_leader"] == new.broker_id
        old_term = max(led_in_terms(old))
        assert stepped_down["term"] == old_term
        assert led_in_terms(new) == [old_term + 1], new.describe()
        (taken_over,) = events(new, "leadership.taken_over")
        assert taken_over["term"] == old_term + 1
        # Nobody campaigned on their own: no pre-vote, no election in any other term.
        for n in live:
            terms = {r["term"] for r in events(n, "role.changed")}
            assert terms <= set(range(old_term + 2)), n.describe()

        acked = [pair for w in writers for pair in w.acked]
        indeterminate = [v for w in writers for v in w.indeterminate]
        stored = await read_all_from_leader(live, queue_id, "SIGT")
        check_queue(stored, acked, indeterminate)


async def test_client_commands_as_processes_transfer_add_member_snapshot(nodes: Nodes, tmp_path):
    with trio.fail_after(120):
        started = await start_cluster(nodes, tmp_path, extra_args=JSON_LOGS)
        leader = started[0]
        seed = ("--seed", leader.address)
        queue_id = await create_queue(leader.port)

        # transfer-leader --to a named replica
        target = started[2]
        done = await run_client(*seed, "--json", "transfer-leader", "--to", target.broker_id)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["leader_id"] == target.broker_id
        assert (await wait_new_leader(started)) is target

        # add-member: a node started with --join-wait founds nothing and waits
        waiting = await nodes.start(
            tmp_path / "b4",
            extra_args=(*FAST, "--join-wait", "--cluster-id", leader.cluster_id, *JSON_LOGS),
        )
        topology = await query(waiting.port)
        assert topology is not None and topology["brokers"] == []
        assert topology["cluster_id"] == leader.cluster_id
        done = await run_client(*seed, "add-member", waiting.address)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"added {waiting.broker_id} as a learner")
        live = [*started, waiting]
        await wait_formed(live, members=4, version=7)

        # snapshot, on every member, of a log holding ten appends: the first from ``client
        # append`` as a process, the others through the library that command runs (one
        # connection; a process apiece cost a second each for no other command's sake)
        done = await run_client(*seed, "append", queue_id, "0")
        assert done.returncode == 0, done.stderr
        async with trio_broker.connect([leader.address]) as client:
            for i in range(1, 10):
                assert await client.append(queue_id, i) == i + 1
        done = await run_client(*seed, "--json", "snapshot")
        assert done.returncode == 0, done.stderr
        taken = json.loads(done.stdout)["snapshots"]
        assert {t["broker_id"] for t in taken} == {n.broker_id for n in live}
        assert all(t["snapshot_index"] > 0 for t in taken)
        for n in live:
            assert events(n, "log.compacted"), n.describe()
        stored = await read_all_from_leader(live, queue_id, "SNAP")
        check_queue(stored, [(i + 1, i) for i in range(10)])


async def test_sigint_on_the_leader_hands_over_too(nodes: Nodes, tmp_path):
    """Ctrl-C (SIGINT) is the same graceful shutdown as SIGTERM."""
    with trio.fail_after(60):
        started = await start_cluster(nodes, tmp_path, extra_args=SLOW_ELECTIONS)
        old = started[0]
        old.interrupt()
        assert await old.wait() == 0, old.describe()
        new = await wait_new_leader(started[1:], not_id=old.broker_id)
        (stepped_down,) = events(old, "broker.stepped_down")
        assert stepped_down["new_leader"] == new.broker_id
        assert led_in_terms(new) == [max(led_in_terms(old)) + 1]
        assert events(new, "leadership.taken_over")
