"""Benchmarks: ``python -m trio_broker bench`` (and ``nox -s bench``).

Starts a local cluster of broker processes on 127.0.0.1 (three by default; or targets
``--seed``), then drives each workload with independent load generators
(:mod:`trio_broker._cli._loadgen`: one process per core, each one epoll thread driving its
connections with frames encoded before the run). For each workload it reads every broker's CPU
time from ``/proc/<pid>/stat`` before and after, and prints the brokers' CPU per item next to
the generators' own CPU per request, so that the table shows what the brokers cost and that the
generator is not what was measured. Every workload runs ``--seconds`` (then at most a few
seconds to collect the answers in flight) and the whole run stops by itself.

The table gives each figure, its target (issue 10's, for 3 brokers + load on this machine's
cores, fsync before every acknowledgement, majority replication, 100-byte values) and the ratio
to it: ``ratio >= 1`` meets the target (value / target for "at least" figures, target / value
for "at most" ones).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import trio

from ._bench_args import WORKLOADS
from ._bench_groups import BENCH_GROUPS, GROUP_CONNECTIONS, groups_figures, role_figures
from ._bench_load import (
    PAYLOAD,
    Figure,
    Load,
    Row,
    _Conn,
    _generate,
    _rss_mb,
    _topology,
    _wait_for_leader,
)
from ._processes import start_node, stop_nodes

__all__ = ["run_bench"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def _local_cluster(
    base: Path, nodes: int, groups: int = 1
) -> AsyncIterator[list[tuple[int, trio.Process]]]:
    members: list[tuple[int, trio.Process]] = []
    try:
        for i in range(nodes):
            port = _free_port()
            seed = members[0][0] if members else None
            process, _ = await start_node(
                base / f"node-{i}",
                port,
                seed=seed,
                groups=groups if seed is None else 1,
                # The founder places the groups once every node has joined (R = 3 of 3).
                extra_args=("--founding-brokers", str(nodes))
                if groups > 1 and seed is None
                else (),
            )
            members.append((port, process))
        yield members
    finally:
        await stop_nodes([process for _, process in members])


READING = frozenset({"reads", "batch-reads"})
SEED_MESSAGES = 100_000
"""Messages the read workloads find in the queue at least: each reader reads it from its start
and, once it has read it all, starts over as another client (the empty read counts nothing)."""
SEED_BATCH = 1000
"""Messages per APPEND_BATCH while seeding (the broker's maximum batch)."""
SEED_DEADLINE = 120.0
"""Seconds the seeding may take at most."""


def messages_to_seed(only: set[str], appended: int) -> int:
    """How many messages to append before the read workloads of ``only``, when the workloads
    before them appended ``appended``: none without a read workload, else up to
    :data:`SEED_MESSAGES` (``--only reads`` alone reads what it seeded)."""
    return max(0, SEED_MESSAGES - appended) if only & READING else 0


async def seed_queue(host: str, port: int, queue: str, count: int) -> None:
    """Append ``count`` messages of the usual payload to ``queue``, a batch at a time."""
    conn = await _Conn.open(host, port)
    async with conn.stream:
        with trio.fail_after(SEED_DEADLINE):
            for first in range(0, count, SEED_BATCH):
                values = [PAYLOAD] * min(SEED_BATCH, count - first)
                answer = await conn.call(
                    {"operation": "APPEND_BATCH", "queue_name": queue, "values": values}
                )
                if answer.get("status") != "success":
                    raise RuntimeError(f"seeding the queue for the read workloads: {answer}")


async def _run(args: argparse.Namespace) -> tuple[list[Figure], list[Row]]:
    figures: list[Figure] = []
    rows: list[Row] = []
    processes = args.generators or os.cpu_count() or 1
    async with contextlib.AsyncExitStack() as stack:
        members: list[tuple[int, trio.Process]] = []
        if args.seed:
            host, _, port_text = args.seed.rpartition(":")
            port = int(port_text)
        else:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            members = await stack.enter_async_context(_local_cluster(base, args.nodes))
            host = "127.0.0.1"
            port = await _wait_for_leader([p for p, _ in members], args.nodes)
        pids = tuple(p.pid for _, p in members)
        leader_pid = next((p.pid for q, p in members if q == port), None)
        conn = await _Conn.open(host, port)
        queue = (await conn.call({"operation": "CREATE_QUEUE"}))["queue_id"]
        await conn.stream.aclose()
        append = {"operation": "APPEND", "queue_name": queue, "data": PAYLOAD}
        secs = args.seconds

        async def workload(name: str, **kw: Any) -> Load:
            load = await _generate(name, host, port, pids, seconds=secs, **kw)
            total = sum(load.broker_cpu.values())
            share = (
                load.broker_cpu[leader_pid] / total
                if leader_pid is not None and total
                else float("nan")
            )
            rows.append(
                Row(name, load.broker_us_per_item(), share, load.generator_us_per_request())
            )
            if load.items:
                each = ", ".join(
                    f"{'leader ' if pid == leader_pid else ''}{cpu / load.items * 1e6:,.1f}"
                    for pid, cpu in load.broker_cpu.items()
                )
                print(f"  {name}: broker CPU us per item, each: {each}", file=sys.stderr)
            return load

        def at_most(name: str, metric: str, value: float, target: float) -> Figure:
            return Figure(name, metric, value, target, higher_is_better=False)

        only = set(args.only.split(",")) if args.only else set(WORKLOADS)
        read = {"operation": "READ", "queue_name": queue}
        appended = 0
        if "pipelined" in only:
            name = "pipelined appends, 32 conns x 16"
            w = await workload(name, request=append, connections=32, window=16, processes=processes)
            appended += w.items
            figures += [
                Figure(name, "appends/s", w.rate, 75_000),
                at_most(name, "p99 ms", w.percentile_ms(0.99), 25),
                at_most(name, "broker CPU us/append", w.broker_us_per_item(), 20),
            ]
            # The generator's own budget where it matters most: the workload whose broker
            # cost per request is the smallest (a connection with one request in flight
            # costs the generator a wake-up per request, as it costs the brokers).
            figures.append(
                at_most(name, "generator CPU us/request", w.generator_us_per_request(), 5)
            )
        if "connections" in only:
            name = "100 conns x 1 in flight"
            w = await workload(name, request=append, connections=100, window=1, processes=processes)
            appended += w.items
            figures.append(Figure(name, "appends/s", w.rate, 15_000))
        if "sequential" in only:
            name = "1 client, 1 append at a time"
            w = await workload(name, request=append, connections=1, window=1, processes=1)
            appended += w.items
            figures += [
                at_most(name, "p50 ms", w.percentile_ms(0.5), 1),
                at_most(name, "p99 ms", w.percentile_ms(0.99), 2.5),
                at_most(name, "broker CPU us/append", w.broker_us_per_item(), 300),
            ]
        if "batch-appends" in only:
            name = "batch appends, 100 per request, 8 conns x 4"
            batch = {"operation": "APPEND_BATCH", "queue_name": queue, "values": [PAYLOAD] * 100}
            w = await workload(
                name,
                request=batch,
                connections=8,
                window=4,
                processes=processes,
                items="batch_append",
                batch=100,
            )
            appended += w.items
            figures.append(Figure(name, "appends/s", w.rate, 200_000))
        if missing := messages_to_seed(only, appended):
            print(f"  seeding {missing:,} messages for the reads", file=sys.stderr, flush=True)
            await seed_queue(host, port, queue, missing)
        if "reads" in only:
            name = "single-message READs, 32 conns x 16"
            w = await workload(
                name,
                request=read,
                connections=32,
                window=16,
                processes=processes,
                items="read",
                client_prefix="R",
            )
            figures += [
                Figure(name, "reads/s", w.rate, 40_000),
                at_most(name, "p99 ms", w.percentile_ms(0.99), 25),
            ]
        if "batch-reads" in only:
            name = "batched READs, 1000 per request, 4 conns x 4"
            w = await workload(
                name,
                request=read | {"max_messages": 1000},
                connections=4,
                window=4,
                processes=processes,
                items="batch_read",
                client_prefix="B",
            )
            figures.append(Figure(name, "messages/s", w.rate, 300_000))
        if members:
            rss = max(_rss_mb(p.pid) for _, p in members)
            figures.append(at_most("all of the above", "peak broker RSS MB", rss, 200))
            if "groups" in only:
                name = f"pipelined appends on 1 group, {GROUP_CONNECTIONS} conns x 16"
                one = await workload(
                    name,
                    request=append,
                    connections=GROUP_CONNECTIONS,
                    window=16,
                    processes=processes,
                )
                if leader_pid is not None:
                    figures += role_figures(name, one, leader_pid)
                base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                spread = await stack.enter_async_context(
                    _local_cluster(base, args.nodes, groups=BENCH_GROUPS)
                )
                figures += await groups_figures(spread, one, rows, secs, processes)
            if "failover" in only:
                figures.append(await _failover(members, queue, args.nodes))
    return figures, rows


async def _failover(members: list[tuple[int, trio.Process]], queue: str, nodes: int) -> Figure:
    """SIGKILL the leader; time until the next acknowledged append."""
    ports = [p for p, _ in members]
    leader_port = await _wait_for_leader(ports, nodes)
    leader = next(proc for port, proc in members if port == leader_port)
    others = [p for p in ports if p != leader_port]
    append = {"operation": "APPEND", "queue_name": queue, "data": "after failover"}
    killed = time.perf_counter()
    leader.send_signal(signal.SIGKILL)
    with trio.fail_after(60):
        while True:
            view = await _topology(others)
            if view and view.get("leader_id"):
                target = next(
                    (b["port"] for b in view["brokers"] if b["broker_id"] == view["leader_id"]),
                    None,
                )
                if target in others:
                    with contextlib.suppress(OSError, ConnectionError):
                        conn = await _Conn.open("127.0.0.1", target)
                        async with conn.stream:
                            if (await conn.call(append)).get("status") == "success":
                                break
            await trio.sleep(0.01)
    seconds = time.perf_counter() - killed
    print(
        f"  failover: next acknowledged append {seconds:.2f} s after SIGKILL",
        file=sys.stderr,
        flush=True,
    )
    return Figure("failover (SIGKILL of the leader)", "s to next ack", seconds, 3.0, False)


def _table(figures: list[Figure], rows: list[Row]) -> str:
    lines = [("workload", "metric", "value", "target", "ratio")]
    for f in figures:
        sign = ">=" if f.higher_is_better else "<="
        ratio = "" if f.ratio is None else f"{f.ratio:.2f}"
        target = "" if f.target is None else f"{sign} {f.target:,}"
        lines.append((f.workload, f.metric, f"{f.value:,.2f}", target, ratio))
    out = [_columns(lines), "", "(ratio >= 1 meets the target)", ""]
    cpu = [
        (
            "workload",
            "broker CPU us/item",
            "leader's share (several groups: the busiest broker's)",
            "generator CPU us/request",
        )
    ]
    for r in rows:
        cpu.append(
            (r.workload, f"{r.broker_us:,.1f}", f"{r.leader_share:.0%}", f"{r.generator_us:,.1f}")
        )
    out.append(_columns(cpu))
    return "\n".join(out)


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def run_bench(args: argparse.Namespace) -> int:
    figures, rows = trio.run(_run, args)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "nodes": None if args.seed else args.nodes,
        "seconds_per_workload": args.seconds,
        "figures": [attrs.asdict(f) | {"ratio": f.ratio} for f in figures],
        "cpu": [attrs.asdict(r) for r in rows],
    }
    print(json.dumps(doc, indent=2) if args.json else _table(figures, rows))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
