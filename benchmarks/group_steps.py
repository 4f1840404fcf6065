"""Where an append on several groups spends its cycles, in counts: ``python -m
benchmarks.group_steps [--appends N] [--connections C] [--window W]``.

Starts a three-broker cluster in this process (127.0.0.1, a temporary directory) founded with
three data groups (``groups=3``: every broker hosts every group, each on the broker's one
shared storage thread and shared log), waits until each broker leads one group, creates a
queue on each, then sends pipelined APPENDs (``C`` connections, ``W`` in flight each) twice:
all to one group's queue, then spread over the three groups' queues (each group sees the load
of ``C / 3`` connections: the bench's ``groups`` workload in one process). For each run it
prints, per append and per broker (its three group replicas summed), the Readies each driver's
task handled and those its stepping tasks took instead (proposed, persisted, applied in step),
the wake-ups of the drivers' tasks, the peer streams' receives that held REPLICATEs, by how
many groups' (the after-frames persist of one receive could share one transaction only for
several), the storage jobs (handed to the storage thread, each two
cross-thread wake-ups, or run in place on the loop), the shared log's batches and the saves
they held, and the durable saves (each a shared-log row; a batch of them one fsync). For the
process: trio's task steps and waits for I/O. Counts, not timings: the machine's noise does
not change them (docs/performance-history.md, "Several groups per append (sixth round)").
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from trio_broker._core._raft_messages import Replicate
from trio_broker._runtime._peers import AFTER_FRAMES
from trio_broker.testing import open_local_cluster


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0
        self.io_waits = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

    def before_io_wait(self, timeout: float) -> None:
        self.io_waits += 1


def _replicas(broker: Any) -> list[Any]:
    """The broker's data-group replicas (its cluster group apart)."""
    host = broker.host
    return [b for g, b in sorted(host.groups.items()) if g != broker.cluster_id]


_RECEIVING: dict[Any, set[int]] = {}
"""Per task reading a peer stream: the groups whose REPLICATEs its current receive held."""


def _wrap(driver: Any, counts: collections.Counter[str]) -> None:
    handle, wake, step = driver._handle_ready, driver.wake, driver.step

    def counted_step(message: Any) -> None:
        after = AFTER_FRAMES.get()
        if type(message) is Replicate and after is not None and after.open:
            task = trio.lowlevel.current_task()
            if task not in _RECEIVING:
                _RECEIVING[task] = set()

                def done(now: bool) -> None:
                    groups = len(_RECEIVING.pop(task))
                    counts[f"receives, REPLICATEs of {groups} groups"] += 1

                after.append(done)
            _RECEIVING[task].add(id(driver))
        step(message)

    async def handle_ready(rd: Any) -> None:
        counts["Readies by the driver's task"] += 1
        return await handle(rd)

    def counted_wake() -> None:
        if not driver._wake.is_set():
            counts["driver wake-ups"] += 1
        wake()

    driver._handle_ready = handle_ready
    driver.wake = counted_wake
    driver.step = counted_step


def _wrap_committer(broker: Any, counts: collections.Counter[str]) -> None:
    """Count the broker's committer batches by how many saves each held."""
    committers = {id(c): c for r in _replicas(broker) if (c := r._worker.committer) is not None}
    for committer in committers.values():
        commit = committer._commit

        def counted(batch: list[Any], commit: Any = commit, **kw: Any) -> Any:
            size = len(batch)
            counts[f"batches of {size if size < 4 else '4+'} saves"] += 1
            return commit(batch, **kw)

        committer._commit = counted


def _snapshot(broker: Any) -> collections.Counter[str]:
    got: collections.Counter[str] = collections.Counter()
    workers: dict[int, Any] = {}
    for replica in _replicas(broker):
        driver = replica.driver
        got["Readies proposed in step"] += driver.proposed_in_step
        got["Readies persisted in step"] += driver.persisted_in_step
        got["Readies applied in step"] += driver.applied_in_step
        got["transactions"] += driver.transactions
        workers[id(replica._worker)] = replica._worker
    for worker in workers.values():
        got["storage jobs on the thread"] += worker.ran_there
        got["storage jobs in place"] += worker.ran_here
        turn = getattr(worker, "save_in_turn", None)
        committer = getattr(turn, "__self__", None)
        if committer is not None:
            got["shared-log batches"] += committer.batches
            got["saves in batches"] += committer.saves
            got["shared-log rows (batches of several)"] += committer._log.rows
            got["batches of one (no row)"] += getattr(committer, "own", 0)
            got["saves run in a step (shared store)"] += getattr(committer, "saves_here", 0)
    return got


async def _pipelined(port: int, queue: str, appends: int, window: int) -> None:
    from tests.wire import RawConnection

    conn = await RawConnection.open(port)
    request = {"operation": "APPEND", "queue_name": queue, "data": "x" * 100}
    sent = answered = 0
    while answered < appends:
        burst = min(window - (sent - answered), appends - sent)
        if burst > 0:
            await conn.send(*([request] * burst))
            sent += burst
        answer = await conn.receive()
        assert answer is not None and answer.get("status") == "success", answer
        answered += 1
    await conn.aclose()


async def _spread(cluster: Any) -> dict[str, tuple[Any, str]]:
    """Wait until each broker leads one data group; then a queue on each: group -> (leader,
    queue)."""
    from tests.wire import create_queue

    brokers = list(cluster.brokers.values())
    with trio.fail_after(120):
        while True:
            leaders = [
                (g, b)
                for b in brokers
                if b.host is not None
                for g, r in b.host.groups.items()
                if g != b.cluster_id and r.driver.node.is_leader
            ]
            led = collections.Counter(b.broker_id for _, b in leaders)
            if len(leaders) == 3 and max(led.values()) == 1:
                break
            await trio.sleep(0.2)
    queues: dict[str, tuple[Any, str]] = {}
    with trio.fail_after(60):
        while len(queues) < 3:
            for group, broker in leaders:
                if group not in queues:
                    queue = await create_queue(broker.port)
                    queues.setdefault(queue[2:-5], (broker, queue))
            await trio.sleep(0.1)
    return queues


async def _measure(
    cluster: Any, targets: list[tuple[Any, str]], appends: int, connections: int, window: int
) -> None:
    brokers = dict(cluster.brokers)
    counts = {name: collections.Counter[str]() for name in brokers}
    for name, broker in brokers.items():
        for replica in _replicas(broker):
            _wrap(replica.driver, counts[name])
        _wrap_committer(broker, counts[name])
    before = {name: _snapshot(b) for name, b in brokers.items()}
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    each = appends // connections
    async with trio.open_nursery() as nursery:
        for i in range(connections):
            broker, queue = targets[i % len(targets)]
            nursery.start_soon(_pipelined, broker.port, queue, each, window)
    trio.lowlevel.remove_instrument(steps)
    total = each * connections
    after = {name: _snapshot(b) for name, b in brokers.items()}
    for name, broker in brokers.items():
        led = [r for r in _replicas(broker) if r.driver.node.is_leader]
        print(f"  {name} (leads {len(led)} of its groups), per append:")
        rows = counts[name] + (after[name] - before[name])
        for key in sorted(rows):
            print(f"    {key:<36} {rows[key] / total:6.3f}")
        for replica in _replicas(broker):  # (the wrappers off for the next run)
            for attr in ("_handle_ready", "wake", "step"):
                replica.driver.__dict__.pop(attr, None)
            committer = getattr(replica._worker, "committer", None)
            if committer is not None:
                committer.__dict__.pop("_commit", None)
    print(
        f"  the process: trio task steps {steps.steps / total:.2f}, "
        f"I/O waits {steps.io_waits / total:.3f} per append"
    )


async def _run(base: Path, appends: int, connections: int, window: int) -> None:
    async with open_local_cluster(base, 3, groups=3) as cluster:
        queues = await _spread(cluster)
        targets = [queues[g] for g in sorted(queues)]
        for _ in range(2):  # warm up: each group's first appends
            await _measure_quiet(targets, connections, window)
        print(f"one group, {connections} conns x {window}:")
        await _measure(cluster, targets[:1], appends, connections, window)
        print(f"three groups, {connections} conns x {window} spread over them:")
        await _measure(cluster, targets, appends, connections, window)
        cluster._nursery.cancel_scope.cancel()


async def _measure_quiet(targets: list[tuple[Any, str]], connections: int, window: int) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(connections):
            broker, queue = targets[i % len(targets)]
            nursery.start_soon(_pipelined, broker.port, queue, window * 4, window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=12_000)
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument("--window", type=int, default=16)
    args = parser.parse_args()
    sys.setrecursionlimit(10_000)
    with tempfile.TemporaryDirectory() as d:
        trio.run(_run, Path(d), args.appends, args.connections, args.window)


if __name__ == "__main__":
    main()
