"""Idle consumer groups: what long-polling GROUP_READs cost when there is nothing to read
(docs/performance-history.md, "Work-queue reads without a log entry").

    python benchmarks/idle_consumers.py [--consumers 50] [--seconds 5] [--wait-ms 5000]

Starts three broker processes on 127.0.0.1 (metrics on), creates a queue with one consumer
group, then runs ``--consumers`` members, each on its own connection, started spread over a
second, long-polling GROUP_READ (``wait_ms``) on the empty queue for ``--seconds`` after two
seconds of warm-up.
Prints, over the measured window: log entries per second (the leader's commit index), fsyncs
per second (durable storage transactions, the three brokers together), each per idle
consumer; the brokers' CPU (from /proc, the three together); the ReadIndex counters where the
brokers have them. To measure the code before a change, run it from another directory with
``PYTHONPATH`` naming the older checkout (``cd /tmp && PYTHONPATH=/path/to/old python
/path/to/benchmarks/idle_consumers.py``): the brokers are then that checkout's.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

import trio_broker
from trio_broker._cli._bench import _free_port
from trio_broker._cli._bench_load import _Conn, _cpu_seconds, _wait_for_leader
from trio_broker._cli._processes import start_node, stop_nodes

NODES = 3
STAGGER = 1.0
"""The members start spread over this many seconds, as independent workers would: started
together, their polls (and their rounds of one a second) would fall in step and share
entries and heartbeat rounds."""
WARM_UP = 2.0


async def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A broker's samples by (name, labels without the broker's and cluster's ids)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(1 << 16):
                data += chunk
    body = data.partition(b"\r\n\r\n")[2].decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = tuple(
                sorted((k, v) for k, v in s.labels.items() if k not in ("broker_id", "cluster_id"))
            )
            samples[(s.name, labels)] = s.value
    return samples


def _figures(leader: dict, every: list[dict]) -> dict[str, float]:
    reads = "trio_broker_read_index_reads_total"
    return {
        "entries": leader[("trio_broker_commit_index", ())],
        "fsyncs": sum(
            m[("trio_broker_storage_transaction_seconds_count", (("durable", "true"),))]
            for m in every
        ),
        "rounds": leader.get(("trio_broker_read_index_rounds_total", ()), float("nan")),
        "answered": leader.get((reads, (("outcome", "answered"),)), float("nan")),
        "logged": leader.get((reads, (("outcome", "logged"),)), float("nan")),
    }


async def _consume(
    port: int, queue_id: str, member: str, wait_ms: int, counts: list[int], delay: float
) -> None:
    await trio.sleep(delay)  # (members that start together would poll in step)
    conn = await _Conn.open("127.0.0.1", port)
    async with conn.stream:
        request = {
            "operation": "GROUP_READ",
            "queue_name": queue_id,
            "group": "idle",
            "member": member,
            "wait_ms": wait_ms,
        }
        while True:
            r = await conn.call(request)
            if r.get("status") != "success" or r.get("messages"):
                raise RuntimeError(f"unexpected answer {r!r}")
            counts[0] += 1


async def _run(consumers: int, seconds: float, wait_ms: int) -> None:
    print(f"trio_broker from {Path(trio_broker.__file__).parent}")
    async with contextlib.AsyncExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        members: list[tuple[int, int, trio.Process]] = []
        try:
            for i in range(NODES):
                port, metrics = _free_port(), _free_port()
                process, _ = await start_node(
                    base / f"node-{i}",
                    port,
                    seed=members[0][0] if members else None,
                    extra_args=("--metrics-port", str(metrics)),
                )
                members.append((port, metrics, process))
            port = await _wait_for_leader([p for p, _, _ in members], NODES)
            lead = [p for p, _, _ in members].index(port)
            conn = await _Conn.open("127.0.0.1", port)
            queue_id = (await conn.call({"operation": "CREATE_QUEUE"}))["queue_id"]
            join = {"operation": "GROUP_JOIN", "queue_name": queue_id, "group": "idle"}
            assert (await conn.call(join))["status"] == "success"
            await conn.stream.aclose()
            counts = [0]
            async with trio.open_nursery() as nursery:
                for n in range(consumers):
                    delay = STAGGER * n / consumers
                    nursery.start_soon(_consume, port, queue_id, f"w-{n}", wait_ms, counts, delay)
                await trio.sleep(WARM_UP)
                pids = [p.pid for _, _, p in members]
                every = [await _metrics(m) for _, m, _ in members]
                before = _figures(every[lead], every)
                cpu, answers = sum(_cpu_seconds(pid) for pid in pids), counts[0]
                start = trio.current_time()
                await trio.sleep(seconds)
                elapsed = trio.current_time() - start
                cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu
                answers = counts[0] - answers
                every = [await _metrics(m) for _, m, _ in members]
                after = _figures(every[lead], every)
                nursery.cancel_scope.cancel()
        finally:
            await stop_nodes([p for _, _, p in members])
    per = {k: (after[k] - before[k]) / elapsed for k in after}
    each = max(consumers, 1)
    print(f"{consumers} idle consumers, GROUP_READ wait_ms={wait_ms}, {elapsed:.1f} s measured")
    print(f"  log entries/s {per['entries']:8.1f}   per consumer {per['entries'] / each:6.3f}")
    print(f"  fsyncs/s      {per['fsyncs']:8.1f}   per consumer {per['fsyncs'] / each:6.3f}")
    print(
        f"  brokers' CPU  {100 * cpu / elapsed:7.1f}%   "
        f"{1e3 * cpu / elapsed / each:6.2f} ms/s per consumer"
    )
    print(f"  answers/s     {answers / elapsed:8.1f}   (empty long polls ending)")
    print(
        f"  ReadIndex: rounds/s {per['rounds']:.1f}, reads answered/s {per['answered']:.1f}, "
        f"sent to the log/s {per['logged']:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consumers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--wait-ms", type=int, default=5000)
    args = parser.parse_args()
    trio.run(_run, args.consumers, args.seconds, args.wait_ms)


if __name__ == "__main__":
    main()
