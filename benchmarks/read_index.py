"""Reads that change nothing: peeks, LIST_QUEUES and READs of an exhausted queue per second,
and the brokers' CPU per read (ReadIndex, docs/performance-history.md "Reads without a log entry").

    python benchmarks/read_index.py [--seconds 5]

Starts three broker processes on 127.0.0.1 (as ``python -m trio_broker bench`` does: the
same generators, one epoll thread per process, CPU read from /proc), then runs each workload
for ``--seconds``. To measure the code before a change, run it from another directory with
``PYTHONPATH`` naming the older checkout: the brokers and the generators are then that
checkout's (``cd /tmp && PYTHONPATH=/work/main python /path/to/benchmarks/read_index.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

import trio

import trio_broker
from trio_broker._cli._bench import _local_cluster
from trio_broker._cli._bench_load import PAYLOAD, _Conn, _generate, _wait_for_leader


async def _run(seconds: float, processes: int) -> None:
    print(f"trio_broker from {Path(trio_broker.__file__).parent}")
    async with contextlib.AsyncExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        members = await stack.enter_async_context(_local_cluster(base, 3))
        port = await _wait_for_leader([p for p, _ in members], 3)
        pids = tuple(p.pid for _, p in members)
        conn = await _Conn.open("127.0.0.1", port)
        full = (await conn.call({"operation": "CREATE_QUEUE"}))["queue_id"]
        empty = (await conn.call({"operation": "CREATE_QUEUE"}))["queue_id"]
        for _ in range(10):
            await conn.call({"operation": "APPEND", "queue_name": full, "data": PAYLOAD})
        await conn.stream.aclose()
        workloads = [
            (
                "peeks (1 message), 32 conns x 16",
                {"operation": "READ", "queue_name": full, "mode": "peek", "max_messages": 1},
                32,
                16,
                "P",
            ),
            ("LIST_QUEUES, 8 conns x 4", {"operation": "LIST_QUEUES"}, 8, 4, None),
            (
                "READs of an exhausted queue, 32 conns x 16",
                {"operation": "READ", "queue_name": empty},
                32,
                16,
                "E",
            ),
            (
                "peeks, 1 client, 1 at a time",
                {"operation": "READ", "queue_name": full, "mode": "peek", "max_messages": 1},
                1,
                1,
                "S",
            ),
        ]
        print(
            f"{'workload':45} {'reads/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'broker CPU us/read':>19} {'gen us/req':>10} {'errors':>6}"
        )
        for name, request, connections, window, prefix in workloads:
            load = await _generate(
                name,
                "127.0.0.1",
                port,
                pids,
                request=request,
                connections=connections,
                window=window,
                seconds=seconds,
                processes=processes if connections > 1 else 1,
                client_prefix=prefix,
            )
            print(
                f"{name:45} {load.rate:9.0f} {load.percentile_ms(0.5):7.2f} "
                f"{load.percentile_ms(0.99):7.2f} {load.broker_us_per_item():19.1f} "
                f"{load.generator_us_per_request():10.1f} {load.errors:6d}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--generators", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    trio.run(_run, args.seconds, args.generators)


if __name__ == "__main__":
    main()
