"""What one append costs a group's leader and each replica, by how many requests the group
gathers: ``python -m benchmarks.group_batching [CONNECTIONS ...]`` (default 24 8).

The bench's many-groups workload splits 24 pipelined connections (16 in flight each) over
three groups, so each group's leader sees the load of 8. This runs one group of a 3-broker
cluster at each connection count given and prints the leader's and a replica's CPU per append
(``/proc/PID/stat``), so that the cost of smaller batches can be told apart from the cost of
hosting several groups (docs/performance.md, "Several groups: projecting more machines").
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import trio

from trio_broker._cli._bench import _local_cluster
from trio_broker._cli._bench_load import (
    PAYLOAD,
    _Conn,
    _generate,
    _wait_for_leader,
)

WINDOW = 16
SECONDS = 5.0


async def main(counts: list[int]) -> None:
    with tempfile.TemporaryDirectory() as d:
        async with _local_cluster(Path(d), 3) as members:
            port = await _wait_for_leader([p for p, _ in members], 3)
            conn = await _Conn.open("127.0.0.1", port)
            async with conn.stream:
                queue = (await conn.call({"operation": "CREATE_QUEUE"}))["queue_id"]
            pids = tuple(p.pid for _, p in members)
            leader = next(p.pid for q, p in members if q == port)
            request = {"operation": "APPEND", "queue_name": queue, "data": PAYLOAD}
            for connections in counts:
                load = await _generate(
                    f"{connections} x {WINDOW}",
                    "127.0.0.1",
                    port,
                    pids,
                    request=request,
                    connections=connections,
                    window=WINDOW,
                    seconds=SECONDS,
                    processes=2,
                )
                if not load.items:
                    print(f"{connections} conns x {WINDOW}: no append acknowledged")
                    continue
                lead = load.broker_cpu[leader] / load.items * 1e6
                replicas = [c for p, c in load.broker_cpu.items() if p != leader]
                replica = sum(replicas) / len(replicas) / load.items * 1e6
                print(
                    f"{connections} conns x {WINDOW}: {load.rate:,.0f} appends/s; per append, "
                    f"leader {lead:.1f} us, each replica {replica:.1f} us, "
                    f"all three {lead + 2 * replica:.1f} us",
                    flush=True,
                )


if __name__ == "__main__":
    trio.run(main, [int(a) for a in sys.argv[1:]] or [24, 8])
