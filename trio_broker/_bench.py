"""Load generator: ``python -m trio_broker bench`` (and ``nox -s bench``).

Starts a broker process on 127.0.0.1 (or targets ``--seed``), drives the standard workloads over
raw pipelined connections, and prints each figure with its ratio to the project's target. Every
workload is bounded in time and in count and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

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


async def _pipelined(
    host: str,
    port: int,
    queue: str,
    op: dict[str, Any],
    connections: int,
    window: int,
    seconds: float,
    limit: int,
) -> tuple[int, int, list[float]]:
    """Each connection keeps `window` requests in flight; returns (ok, errors, latencies)."""
    ok = errors = 0
    latencies: list[float] = []
    deadline = trio.current_time() + seconds
    per_conn = max(1, limit // connections)

    async def run_one() -> None:
        nonlocal ok, errors
        conn = await _Conn.open(host, port)
        sent: list[float] = []
        done = 0
        try:
            while done < per_conn and trio.current_time() < deadline:
                burst = min(window - (len(sent) - done), per_conn - len(sent))
                if burst > 0:
                    now = time.perf_counter()
                    await conn.send([op] * burst)
                    sent.extend([now] * burst)
                answer = await conn.receive()
                latencies.append(time.perf_counter() - sent[done])
                done += 1
                if answer.get("status") == "success":
                    ok += 1
                else:
                    errors += 1
            while done < len(sent):  # drain what is still in flight
                answer = await conn.receive()
                done += 1
                ok += answer.get("status") == "success"
        finally:
            await conn.stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(run_one)
    return ok, errors, latencies


@contextlib.asynccontextmanager
async def _local_broker(data_dir: Path) -> AsyncIterator[tuple[str, int, trio.Process]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "trio_broker",
        "node",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        "WARNING",
    ]
    process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            line = b""
            while b"\n" not in line:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError("broker exited before it was ready")
                line += chunk
        yield "127.0.0.1", port, process
    finally:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def _run(args: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
    async with contextlib.AsyncExitStack() as stack:
        process = None
        if args.seed:
            host, _, port_text = args.seed.rpartition(":")
            port = int(port_text)
        else:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            host, port, process = await stack.enter_async_context(_local_broker(data_dir))
        conn = await _Conn.open(host, port)
        queue = (await conn.call({"operation": "CREATE_QUEUE"}))["queue_id"]
        append = {"operation": "APPEND", "queue_name": queue, "data": PAYLOAD}
        secs = args.seconds

        def report(name: str, ok: int, errors: int, lat: list[float], elapsed: float) -> None:
            print(f"  {name}: {ok} ok, {errors} errors in {elapsed:.1f} s", file=sys.stderr)

        # 1. pipelined appends
        start = time.perf_counter()
        ok, err, lat = await _pipelined(host, port, queue, append, 8, 128, secs, 2_000_000)
        elapsed = time.perf_counter() - start
        report("pipelined appends", ok, err, lat, elapsed)
        figures += [
            Figure("pipelined appends (8 conns x 128)", "appends/s", ok / elapsed, 75_000),
            Figure(
                "pipelined appends (8 conns x 128)",
                "p99 ms",
                _percentile(lat, 0.99) * 1e3,
                25,
                higher_is_better=False,
            ),
        ]
        # 2. 100 connections, one request in flight each
        start = time.perf_counter()
        ok, err, lat = await _pipelined(host, port, queue, append, 100, 1, secs, 1_000_000)
        elapsed = time.perf_counter() - start
        report("100 connections", ok, err, lat, elapsed)
        figures.append(Figure("100 conns x 1 in flight", "appends/s", ok / elapsed, 15_000))
        # 3. one client, one append at a time
        start = time.perf_counter()
        ok, err, lat = await _pipelined(host, port, queue, append, 1, 1, secs, 200_000)
        elapsed = time.perf_counter() - start
        report("sequential appends", ok, err, lat, elapsed)
        figures += [
            Figure(
                "1 client, 1 at a time",
                "p50 ms",
                statistics.median(lat) * 1e3,
                1,
                higher_is_better=False,
            ),
            Figure(
                "1 client, 1 at a time",
                "p99 ms",
                _percentile(lat, 0.99) * 1e3,
                2.5,
                higher_is_better=False,
            ),
        ]
        # 4. single-message reads with position tracking, 8 clients pipelined
        start = time.perf_counter()
        total_ok = 0
        async with trio.open_nursery() as nursery:
            results: list[int] = []

            async def reader(i: int) -> None:
                read = {"operation": "READ", "queue_name": queue, "client_id": f"C-BEN{i:02d}"}
                ok, _, _ = await _pipelined(host, port, queue, read, 1, 64, secs, 1_000_000)
                results.append(ok)

            for i in range(8):
                nursery.start_soon(reader, i)
        total_ok = sum(results)
        elapsed = time.perf_counter() - start
        print(f"  reads: {total_ok} ok in {elapsed:.1f} s", file=sys.stderr)
        figures.append(
            Figure("single-message READs (8 clients)", "reads/s", total_ok / elapsed, 20_000)
        )
        await conn.stream.aclose()
        if process is not None:
            figures.append(
                Figure(
                    "broker peak memory",
                    "RSS MB",
                    _rss_mb(process.pid),
                    200,
                    higher_is_better=False,
                )
            )
    return figures


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
    p = subparsers.add_parser("bench", help="run the standard benchmarks against a local broker")
    p.add_argument("--seed", metavar="HOST:PORT", help="target a running broker instead")
    p.add_argument("--seconds", type=float, default=5.0, help="per workload (%(default)s)")
    p.add_argument("--output", help="also write the figures as JSON to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_bench(args: argparse.Namespace) -> int:
    figures = trio.run(_run, args)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "figures": [attrs.asdict(f) | {"ratio": f.ratio} for f in figures],
    }
    print(json.dumps(doc, indent=2) if args.json else _table(figures))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
