"""Load generator: ``python -m trio_broker bench`` (and ``nox -s bench``).

Starts a local cluster of broker processes on 127.0.0.1 (three by default; or targets
``--seed``), drives the standard workloads over raw pipelined connections, prints live progress,
and ends with each figure and its ratio to the project's target. Every workload is bounded in
time and in count and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

from ._processes import start_node, stop_nodes
from ._protocol import FrameDecoder, encode_frame

PAYLOAD = "x" * 100


@attrs.frozen
class Figure:
    workload: str
    metric: str
    value: float
    target: float
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        if self.value != self.value:  # NaN: not measured
            return 0.0
        if self.value == 0:
            return 0.0 if self.higher_is_better else float("inf")
        return self.value / self.target if self.higher_is_better else self.target / self.value


class _Conn:
    """A raw pipelined connection: send many, then read answers in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(16 * 1024 * 1024)

    @classmethod
    async def open(cls, host: str, port: int) -> _Conn:
        return cls(await trio.open_tcp_stream(host, port))

    async def send(self, requests: list[dict[str, Any]]) -> None:
        await self.stream.send_all(b"".join(encode_frame(orjson.dumps(r)) for r in requests))

    async def receive(self) -> dict[str, Any]:
        while (payload := self.decoder.next_frame()) is None:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise ConnectionError("broker closed the connection")
            self.decoder.feed(data)
        return orjson.loads(payload)

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        await self.send([request])
        return await self.receive()


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@attrs.define
class _Progress:
    """Counts shown once a second while a workload runs."""

    name: str
    ok: int = 0
    errors: int = 0
    items: int = 0

    async def show(self) -> None:
        last, start = 0, time.perf_counter()
        while True:
            await trio.sleep(1)
            rate = self.items - last
            last = self.items
            print(
                f"  {self.name}: {time.perf_counter() - start:4.0f} s  {rate:>8,}/s  "
                f"{self.errors} errors",
                file=sys.stderr,
                flush=True,
            )


async def _pipelined(
    host: str,
    port: int,
    request: dict[str, Any],
    connections: int,
    window: int,
    seconds: float,
    limit: int,
    progress: _Progress,
    items_of: Any = None,
) -> list[float]:
    """Each connection keeps ``window`` requests in flight; returns the latencies."""
    latencies: list[float] = []
    deadline = trio.current_time() + seconds
    per_conn = max(1, limit // connections)

    async def run_one() -> None:
        conn = await _Conn.open(host, port)
        sent: list[float] = []
        done = 0
        try:
            while done < per_conn and trio.current_time() < deadline:
                burst = min(window - (len(sent) - done), per_conn - len(sent))
                if burst > 0:
                    now = time.perf_counter()
                    await conn.send([request] * burst)
                    sent.extend([now] * burst)
                answer = await conn.receive()
                latencies.append(time.perf_counter() - sent[done])
                done += 1
                if answer.get("status") == "success":
                    progress.ok += 1
                    progress.items += items_of(answer) if items_of else 1
                else:
                    progress.errors += 1
            while done < len(sent):  # drain what is still in flight
                await conn.receive()
                done += 1
        finally:
            await conn.stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(run_one)
    return latencies


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def _local_cluster(base: Path, nodes: int) -> AsyncIterator[list[tuple[int, trio.Process]]]:
    members: list[tuple[int, trio.Process]] = []
    try:
        for i in range(nodes):
            port = _free_port()
            seed = members[0][0] if members else None
            process, _ = await start_node(base / f"node-{i}", port, seed=seed)
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
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


async def _measure(
    name: str, coro_fn: Any, *args: Any, items_of: Any = None, pids: tuple[int, ...] = ()
) -> tuple[_Progress, list[float], float]:
    """Run one workload; print its count, errors and (for local brokers) the brokers' CPU
    time per item, which is what bounds throughput when the cores are saturated."""
    progress = _Progress(name)
    cpu_before = sum(_cpu_seconds(pid) for pid in pids)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.show)
        start = time.perf_counter()
        latencies = await coro_fn(*args, progress, items_of)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    cpu = ""
    if pids and progress.items:
        per_item = (sum(_cpu_seconds(pid) for pid in pids) - cpu_before) / progress.items
        cpu = f", {per_item * 1e6:,.0f} us of broker CPU each"
    print(
        f"  {name}: {progress.items:,} in {elapsed:.1f} s, {progress.errors} errors{cpu}",
        file=sys.stderr,
        flush=True,
    )
    return progress, latencies, elapsed


async def _run(args: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
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
        cpu_before = {p.pid: _cpu_seconds(p.pid) for _, p in members}
        pids = tuple(p.pid for _, p in members)
        conn = await _Conn.open(host, port)
        queue = (await conn.call({"operation": "CREATE_QUEUE"}))["queue_id"]
        append = {"operation": "APPEND", "queue_name": queue, "data": PAYLOAD}
        secs = args.seconds
        started = time.perf_counter()

        p, lat, t = await _measure(
            "pipelined appends", _pipelined, host, port, append, 8, 128, secs, 5_000_000, pids=pids
        )
        name = "pipelined appends (8 conns x 128 in flight)"
        figures += [
            Figure(name, "appends/s", p.items / t, 75_000),
            Figure(name, "p99 ms", _percentile(lat, 0.99) * 1e3, 25, higher_is_better=False),
        ]
        batch = {"operation": "APPEND_BATCH", "queue_name": queue, "values": [PAYLOAD] * 100}
        p, lat, t = await _measure(
            "batch appends",
            _pipelined,
            host,
            port,
            batch,
            4,
            8,
            secs,
            1_000_000,
            items_of=lambda a: len(a["sequence_nums"]),
            pids=pids,
        )
        figures.append(Figure("batch appends (100 per request)", "appends/s", p.items / t, 75_000))
        p, lat, t = await _measure(
            "100 connections", _pipelined, host, port, append, 100, 1, secs, 5_000_000, pids=pids
        )
        figures.append(Figure("100 conns x 1 in flight", "appends/s", p.items / t, 15_000))
        p, lat, t = await _measure(
            "sequential appends", _pipelined, host, port, append, 1, 1, secs, 1_000_000, pids=pids
        )
        name = "1 client, 1 append at a time"
        figures += [
            Figure(
                name,
                "p50 ms",
                statistics.median(lat) * 1e3 if lat else float("nan"),
                1,
                higher_is_better=False,
            ),
            Figure(name, "p99 ms", _percentile(lat, 0.99) * 1e3, 2.5, higher_is_better=False),
        ]

        async def readers(*pargs: Any) -> list[float]:
            *_, progress, items_of = pargs
            lat: list[float] = []
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    read = {"operation": "READ", "queue_name": queue, "client_id": f"C-R{i:04d}"}
                    nursery.start_soon(
                        _pipelined, host, port, read, 1, 64, secs, 5_000_000, progress, items_of
                    )
            return lat

        p, _, t = await _measure(
            "single-message reads",
            readers,
            items_of=lambda a: 1 if "sequence_num" in a else 0,
            pids=pids,
        )
        figures.append(Figure("single-message READs (8 clients)", "reads/s", p.items / t, 20_000))
        batch_read = {
            "operation": "READ",
            "queue_name": queue,
            "client_id": "C-BATCH",
            "max_messages": 1000,
        }
        p, _, t = await _measure(
            "batched reads",
            _pipelined,
            host,
            port,
            batch_read,
            1,
            4,
            secs,
            1_000_000,
            items_of=lambda a: len(a.get("messages", [])),
            pids=pids,
        )
        figures.append(
            Figure("batched READs (1000 per request)", "messages/s", p.items / t, 200_000)
        )
        await conn.stream.aclose()
        if members:
            total = time.perf_counter() - started
            rss = max(_rss_mb(p.pid) for _, p in members)
            cpu = sum(_cpu_seconds(p.pid) - cpu_before[p.pid] for _, p in members)
            figures.append(
                Figure("all of the above", "max broker RSS MB", rss, 200, higher_is_better=False)
            )
            figures.append(
                Figure(
                    "all of the above",
                    "broker CPU s per wall s",
                    cpu / total,
                    float(os.cpu_count() or 1),
                    higher_is_better=False,
                )
            )
            figures.append(await _failover(members, queue, args.nodes))
    return figures


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
    return Figure(
        "failover (SIGKILL of the leader)", "s to next ack", seconds, 3.0, higher_is_better=False
    )


def _table(figures: list[Figure]) -> str:
    rows = [("workload", "metric", "value", "target", "ratio")]
    for f in figures:
        sign = ">=" if f.higher_is_better else "<="
        rows.append(
            (f.workload, f.metric, f"{f.value:,.2f}", f"{sign} {f.target:,}", f"{f.ratio:.2f}")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def add_bench_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="run the standard benchmarks against a local cluster")
    p.add_argument("--seed", metavar="HOST:PORT", help="target a running cluster's leader instead")
    p.add_argument(
        "--nodes", type=int, default=3, help="brokers in the local cluster (%(default)s)"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="per workload (%(default)s)")
    p.add_argument("--output", help="also write the figures as JSON to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_bench(args: argparse.Namespace) -> int:
    figures = trio.run(_run, args)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "nodes": None if args.seed else args.nodes,
        "seconds_per_workload": args.seconds,
        "figures": [attrs.asdict(f) | {"ratio": f.ratio} for f in figures],
    }
    print(json.dumps(doc, indent=2) if args.json else _table(figures))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
