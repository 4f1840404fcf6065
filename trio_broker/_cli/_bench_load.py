"""What every benchmark workload is made of: driving one workload with load generator
processes, asking a cluster for its topology, and reading the brokers' CPU and memory from
``/proc`` (split from ``_bench.py``, which starts the local cluster and runs the standard set;
shared with ``_bench_groups.py`` and ``benchmarks/``)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

from .._protocol import FrameDecoder, encode_frame

PAYLOAD = "x" * 100
DRAIN_SECONDS = 10.0
GENERATOR = [sys.executable, "-P", str(Path(__file__).with_name("_loadgen.py"))]
"""The load generator's command: its file run as a script (``-P``: its folder not on the path),
which imports the standard library and orjson only. As ``-m trio_broker._cli._loadgen`` it
imported the package first (trio, the codec, the command line: 0.6 s, 1.1 s with the machine
busy), longer than the second the bench gives its generators to start."""


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
    load, unanswered = await run_generators(GENERATOR, specs, pids, start_at)
    print(
        f"  {name}: {load.items:,} items in {load.elapsed:.1f} s ({load.rate:,.0f}/s), "
        f"{load.errors} errors, {unanswered} unanswered; broker CPU "
        f"{load.broker_us_per_item():,.1f} us per item, generator CPU "
        f"{load.generator_us_per_request():,.1f} us per request",
        file=sys.stderr,
        flush=True,
    )
    return load


async def run_generators(
    command: list[str], specs: list[dict[str, Any]], pids: Iterable[int], start_at: float
) -> tuple[Load, int]:
    """One generator process per spec (``command``, given the spec on its standard input),
    all starting to send at ``start_at``: their results summed into one :class:`Load`, with
    the CPU each of ``pids`` spent from then until the last generator ended, and how many
    requests were left unanswered."""
    pids = tuple(pids)
    results: list[dict[str, Any]] = []

    async def one(spec: dict[str, Any]) -> None:
        done = await trio.run_process(
            command, stdin=orjson.dumps(spec), capture_stdout=True, stderr=None
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
    return load, sum(r["unanswered"] for r in results)


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
