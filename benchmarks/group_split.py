"""Splits the bench's several-groups gap in two: ``python -m benchmarks.group_split
[SECONDS]`` (default 3).

The bench's ``groups`` workload compares 24 pipelined connections x 16 on a cluster of one
group with the same load spread over the three groups of a cluster founded with ``--groups
3`` (each group then gathers a third of the requests: smaller batches) whose brokers host
every group (one storage thread and one shared log for a broker's data groups, each group a
replica on every broker: hosting several groups). This runs, on both clusters, the loads that
tell the two apart, and prints the brokers' CPU per append (``/proc/PID/stat``, all three):

1. one group of the plain cluster at 24 connections, then at 8 (batching alone);
2. one group of the 3-group cluster at 24 connections, then at 8 (the two other groups idle:
   hosting alone, at each batch size);
3. the three groups at 8 connections each (the bench's spread load).

(2) against (1) at the same connections is what hosting several groups costs per append, (1)
at 8 against 24 what smaller batches cost, and (3) against (2) at 8 what three busy groups
cost beyond one (docs/performance-history.md, "Several groups per append (sixth round)").
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from trio_broker._cli._bench import _local_cluster
from trio_broker._cli._bench_groups import BENCH_GROUPS, group_queues
from trio_broker._cli._bench_load import PAYLOAD, _Conn, _generate, _wait_for_leader

WINDOW = 16


async def _run(
    name: str, pids: tuple[int, ...], targets: list[tuple[int, str]], connections: int, secs: float
) -> None:
    load = await _generate(
        name,
        "127.0.0.1",
        0,
        pids,
        request={},
        connections=connections,
        window=WINDOW,
        seconds=secs,
        processes=len(targets),
        targets=[
            (port, {"operation": "APPEND", "queue_name": q, "data": PAYLOAD}) for port, q in targets
        ],
    )
    each = ", ".join(
        f"{cpu / load.items * 1e6:.1f}" for cpu in load.broker_cpu.values() if load.items
    )
    print(
        f"{name}: {load.rate:,.0f} appends/s, {load.errors} errors; brokers' CPU per append"
        f" {load.broker_us_per_item():.1f} us (each: {each})",
        flush=True,
    )


async def main(secs: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        async with _local_cluster(Path(d) / "one", 3) as members:
            port = await _wait_for_leader([p for p, _ in members], 3)
            conn = await _Conn.open("127.0.0.1", port)
            async with conn.stream:
                queue = (await conn.call({"operation": "CREATE_QUEUE"}))["queue_id"]
            pids = tuple(p.pid for _, p in members)
            for connections in (24, 8):
                await _run(f"plain cluster, one group, {connections} conns", pids,
                           [(port, queue)], connections, secs)  # fmt: skip
        async with _local_cluster(Path(d) / "three", 3, groups=BENCH_GROUPS) as members:
            queues = await group_queues([p for p, _ in members])
            pids = tuple(p.pid for _, p in members)
            targets: list[Any] = [queues[g] for g in sorted(queues)]
            for connections in (24, 8):
                await _run(f"3-group cluster, one group, {connections} conns", pids,
                           targets[:1], connections, secs)  # fmt: skip
            await _run("3-group cluster, three groups, 8 conns each", pids, targets, 24, secs)


if __name__ == "__main__":
    trio.run(main, float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
