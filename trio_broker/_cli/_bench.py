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
import orjson
import trio

from .._protocol import FrameDecoder, encode_frame
from ._processes import start_node, stop_nodes

PAYLOAD = "x" * 100
WORKLOADS = (
    "pipelined",
    "connections",
    "sequential",
    "batch-appends",
    "reads",
    "batch-reads",
    "failover",
    "groups",
)
DRAIN_SECONDS = 10.0


@attrs.frozen
class Figure:
    workload: str
    metric: str
    value: float
    target: float | None = None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        """value / target ("at least") or target / value ("at most"): >= 1 meets it."""
        if self.target is None:
            return None
        if self.value != self.value:  # NaN: not measured
            return 0.0
        if self.value == 0:
            return 0.0 if self.higher_is_better else float("inf")
        return self.value / self.target if self.higher_is_better else self.target / self.value


@attrs.frozen
class Load:
    """What one workload did, summed over its generators, and what it cost."""

    ok: int
    errors: int
    items: int
    elapsed: float
    latencies_us: list[int]
    generator_cpu: float
    broker_cpu: dict[int, float]
    """CPU seconds per broker pid over the workload."""

    @property
    def rate(self) -> float:
        return self.items / self.elapsed if self.elapsed else float("nan")

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_us:
            return float("nan")
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3

    def broker_us_per_item(self) -> float:
        if not self.broker_cpu or not self.items:
            return float("nan")
        return sum(self.broker_cpu.values()) / self.items * 1e6

    def generator_us_per_request(self) -> float:
        requests = self.ok + self.errors
        return self.generator_cpu / requests * 1e6 if requests else float("nan")


class _Conn:
    """A control connection (setup, topology, failover): not used to generate load."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(16 * 1024 * 1024)

    @classmethod
    async def open(cls, host: str, port: int) -> _Conn:
        return cls(await trio.open_tcp_stream(host, port))

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        await self.stream.send_all(encode_frame(orjson.dumps(request)))
        while (payload := self.decoder.next_frame()) is None:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise ConnectionError("broker closed the connection")
            self.decoder.feed(data)
        return orjson.loads(payload)


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


async def _topology(ports: list[int]) -> dict[str, Any] | None:
    for port in ports:
        with contextlib.suppress(OSError, ConnectionError, trio.TooSlowError):
            with trio.fail_after(2):
                conn = await _Conn.open("127.0.0.1", port)
                async with conn.stream:
                    return await conn.call({"operation": "CLUSTER_QUERY"})
    return None


async def _wait_for_leader(ports: list[int], voters: int) -> int:
    """The leader's port, once every voter has joined."""
    with trio.fail_after(60):
        while True:
            view = await _topology(ports)
            if view and view.get("leader_id") and len(view["brokers"]) >= voters:
                leader = next(b for b in view["brokers"] if b["broker_id"] == view["leader_id"])
                return leader["port"]
            await trio.sleep(0.1)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


async def _generate(
    name: str,
    host: str,
    port: int,
    pids: tuple[int, ...],
    *,
    request: dict[str, Any],
    connections: int,
    window: int,
    seconds: float,
    processes: int,
    items: str = "one",
    batch: int = 1,
    client_prefix: str | None = None,
    targets: list[tuple[int, dict[str, Any]]] | None = None,
) -> Load:
    """Run one workload: ``connections`` connections with ``window`` requests in flight each,
    spread over ``processes`` generator processes that start together. With ``targets``
    (port, request), the connections are split over them instead, one generator each."""
    print(f"  {name}: {connections} connections x {window} in flight", file=sys.stderr)
    start_at = time.time() + 1.0
    specs = []
    first = 0
    if targets is None:
        plan = [(port, request, share) for share in _split(connections, processes)]
    else:
        plan = [
            (p, r, share)
            for (p, r), share in zip(targets, _split(connections, len(targets)), strict=True)
        ]
    for port, request, share in plan:
        spec: dict[str, Any] = {
            "host": host,
            "port": port,
            "connections": share,
            "window": window,
            "seconds": seconds,
            "request": request,
            "items": items,
            "batch": batch,
            "start_at": start_at,
            "drain_seconds": DRAIN_SECONDS,
        }
        if client_prefix is not None:
            # C-<prefix letter><4 base-36 digits>: one client (one read position) per connection
            spec["clients"] = [f"C-{client_prefix}{_base36(first + i, 4)}" for i in range(share)]
        first += share
        specs.append(spec)
    results: list[dict[str, Any]] = []

    async def one(spec: dict[str, Any]) -> None:
        done = await trio.run_process(
            [sys.executable, "-m", "trio_broker._cli._loadgen"],
            stdin=orjson.dumps(spec),
            capture_stdout=True,
            stderr=None,
        )
        results.append(orjson.loads(done.stdout))

    async with trio.open_nursery() as nursery:
        for spec in specs:
            nursery.start_soon(one, spec)
        await trio.sleep(max(0.0, start_at - time.time()))
        before = {pid: _cpu_seconds(pid) for pid in pids}
    after = {pid: _cpu_seconds(pid) for pid in pids}
    load = Load(
        ok=sum(r["ok"] for r in results),
        errors=sum(r["errors"] for r in results),
        items=sum(r["items"] for r in results),
        elapsed=max(r["elapsed"] for r in results),
        latencies_us=[x for r in results for x in r["latencies_us"]],
        generator_cpu=sum(r["cpu"] for r in results),
        broker_cpu={pid: after[pid] - before[pid] for pid in pids},
    )
    unanswered = sum(r["unanswered"] for r in results)
    print(
        f"  {name}: {load.items:,} items in {load.elapsed:.1f} s ({load.rate:,.0f}/s), "
        f"{load.errors} errors, {unanswered} unanswered; broker CPU "
        f"{load.broker_us_per_item():,.1f} us per item, generator CPU "
        f"{load.generator_us_per_request():,.1f} us per request",
        file=sys.stderr,
        flush=True,
    )
    return load


def _base36(n: int, width: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    for _ in range(width):
        n, d = divmod(n, 36)
        out = digits[d] + out
    return out


@attrs.frozen
class Row:
    """One workload's line of CPU figures (shown next to its throughput figures)."""

    workload: str
    broker_us: float
    leader_share: float
    generator_us: float


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
            return load

        def at_most(name: str, metric: str, value: float, target: float) -> Figure:
            return Figure(name, metric, value, target, higher_is_better=False)

        only = set(args.only.split(",")) if args.only else set(WORKLOADS)
        read = {"operation": "READ", "queue_name": queue}
        if "pipelined" in only:
            name = "pipelined appends, 32 conns x 16"
            w = await workload(name, request=append, connections=32, window=16, processes=processes)
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
            figures.append(Figure(name, "appends/s", w.rate, 15_000))
        if "sequential" in only:
            name = "1 client, 1 append at a time"
            w = await workload(name, request=append, connections=1, window=1, processes=1)
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
            figures.append(Figure(name, "appends/s", w.rate, 200_000))
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
                base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                spread = await stack.enter_async_context(
                    _local_cluster(base, args.nodes, groups=BENCH_GROUPS)
                )
                figures += await _groups(spread, one, rows, secs, processes)
            if "failover" in only:
                figures.append(await _failover(members, queue, args.nodes))
    return figures, rows


BENCH_GROUPS = 3
GROUP_CONNECTIONS = 24


async def _groups(
    members: list[tuple[int, trio.Process]],
    one: Load,
    rows: list[Row],
    seconds: float,
    processes: int,
) -> list[Figure]:
    """The many-groups workload (issue 11): the same pipelined appends as on one group, spread
    over a queue of every group of a cluster founded with ``--groups``, once its leadership is
    spread; the busiest broker's share of the brokers' CPU, and the throughput ratio."""
    ports = [p for p, _ in members]
    queues: dict[str, tuple[int, str]] = {}
    """Group -> the port of the broker that created its queue (its leader) and the queue."""
    with trio.fail_after(120):
        while True:
            view = await _topology(ports) or {}
            listed = view.get("groups") or []
            leaders = [g.get("leader_port") for g in listed]
            share = -(-BENCH_GROUPS // len(ports))
            if (
                len(listed) == BENCH_GROUPS
                and all(leaders)
                and max(leaders.count(p) for p in set(leaders)) <= share
            ):
                break
            await trio.sleep(0.2)
        # A CREATE_QUEUE sent to a broker lands on a group it leads.
        while len(queues) < BENCH_GROUPS:
            for port in ports:
                conn = await _Conn.open("127.0.0.1", port)
                async with conn.stream:
                    answer = await conn.call({"operation": "CREATE_QUEUE"})
                if answer.get("status") == "success":
                    queues.setdefault(answer["queue_id"][2:-5], (port, answer["queue_id"]))
            await trio.sleep(0.1)
    targets = [
        (port, {"operation": "APPEND", "queue_name": queue, "data": PAYLOAD})
        for _, (port, queue) in sorted(queues.items())
    ]
    name = f"pipelined appends on {BENCH_GROUPS} groups, {GROUP_CONNECTIONS} conns x 16"
    pids = tuple(p.pid for _, p in members)
    load = await _generate(
        name,
        "127.0.0.1",
        0,
        pids,
        request={},
        connections=GROUP_CONNECTIONS,
        window=16,
        seconds=seconds,
        processes=processes,
        targets=targets,
    )
    total = sum(load.broker_cpu.values())
    busiest = max(load.broker_cpu.values()) / total if total else float("nan")
    shares = ", ".join(f"{cpu / total:.0%}" for cpu in load.broker_cpu.values()) if total else "-"
    print(f"  {name}: each broker's share of the brokers' CPU: {shares}", file=sys.stderr)
    rows.append(Row(name, load.broker_us_per_item(), busiest, load.generator_us_per_request()))
    return [
        Figure(name, "busiest broker's CPU share", busiest, 0.45, higher_is_better=False),
        Figure(name, "appends/s", load.rate),
        Figure(name, "appends/s vs 1 group", load.rate / one.rate if one.rate else float("nan")),
    ]


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


def add_bench_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="run the standard benchmarks against a local cluster")
    p.add_argument("--seed", metavar="HOST:PORT", help="target a running cluster's leader instead")
    p.add_argument(
        "--nodes", type=int, default=3, help="brokers in the local cluster (%(default)s)"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="per workload (%(default)s)")
    p.add_argument(
        "--generators",
        type=int,
        default=0,
        help="load generator processes per workload (default: one per core)",
    )
    p.add_argument(
        "--only",
        metavar="NAME,...",
        help=f"run only these workloads, in the usual order ({','.join(WORKLOADS)})",
    )
    p.add_argument("--output", help="also write the figures as JSON to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


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
