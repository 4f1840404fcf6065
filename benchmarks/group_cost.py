"""What an idle replication group costs: ``python -m benchmarks.group_cost [G ...]``.

For each G (default 1, 8 and 32), starts 3 broker processes on 127.0.0.1, the first founding
G groups (``node --groups G``, every broker hosting every group), waits until every broker
votes in every group and leadership is spread, lets it settle, then measures each broker over
``--seconds`` with no client at all:

- CPU (user + system, ``/proc/PID/stat``), as a percentage of one core;
- resident memory (``VmRSS``, ``/proc/PID/status``);
- bytes sent and received per second on its TCP connections (``ss -tinp``): with no client,
  that is the peer traffic (every group's heartbeats);
- then, in a second window of the same length, the fsync/fdatasync calls (``strace -c``
  attached to every thread; kept apart because tracing costs CPU).

Prints one line per G (the brokers' mean) and the cost of one more group, from the first and
last G. Heartbeat interval and failure timeout are the node's defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from trio_broker._cli._bench import _local_cluster
from trio_broker._cli._bench_load import _cpu_seconds, _topology

SETTLE = 5.0
SPREAD_WITHIN = 120.0


def _rss_now_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _tcp_bytes(pids: list[int]) -> dict[int, tuple[int, int]]:
    """Bytes sent and received so far on each process's TCP connections (``ss -tinp``: the
    kernel's per-connection counters; brokers talk to each other with ``send``, which
    ``/proc/PID/io`` does not count)."""
    totals = {pid: (0, 0) for pid in pids}
    out = subprocess.run(
        ["ss", "-tinpH"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    owner: int | None = None
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            found = re.search(r"pid=(\d+)", line)
            owner = int(found[1]) if found else None
            continue
        if owner not in totals:
            continue
        sent = re.search(r"bytes_sent:(\d+)", line)
        received = re.search(r"bytes_received:(\d+)", line)
        s, r = totals[owner]
        totals[owner] = (s + int(sent[1] if sent else 0), r + int(received[1] if received else 0))
    return totals


async def _wait_spread(ports: list[int], groups: int) -> None:
    share = -(-groups // len(ports))
    with trio.fail_after(SPREAD_WITHIN):
        while True:
            view = await _topology(ports) or {}
            listed = view.get("groups") or ([view] if groups == 1 and view else [])
            if groups == 1:
                ready = bool(view.get("leader_id")) and len(view.get("brokers", [])) == len(ports)
            else:
                leaders = [g.get("leader_id") for g in listed]
                ready = (
                    len(listed) == groups
                    and all(leaders)
                    and all(len(g["voters"]) == len(ports) and not g["learners"] for g in listed)
                    and max(leaders.count(x) for x in set(leaders)) <= share
                )
            if ready:
                return
            await trio.sleep(0.5)


async def _fsyncs(pids: list[int], seconds: float) -> list[int | None]:
    """fsync + fdatasync calls of each process over ``seconds`` (None without strace)."""
    if shutil.which("strace") is None:
        return [None] * len(pids)
    tracers = [
        await trio.lowlevel.open_process(
            ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for pid in pids
    ]
    await trio.sleep(seconds)
    counts: list[int | None] = []
    for tracer in tracers:
        tracer.send_signal(signal.SIGINT)
        assert tracer.stderr is not None
        report = b""
        with trio.move_on_after(10):
            while chunk := await tracer.stderr.receive_some():
                report += chunk
        with trio.move_on_after(5):
            await tracer.wait()
        if tracer.poll() is None:
            tracer.kill()
            await tracer.wait()
            counts.append(None)
            continue
        count = 0
        for line in report.decode(errors="replace").splitlines():
            fields = line.split()
            if fields and fields[-1] in ("fsync", "fdatasync"):
                count += int(fields[3])
        counts.append(count)
    return counts


async def measure(groups: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        async with _local_cluster(Path(d), 3, groups=groups) as members:
            ports = [p for p, _ in members]
            pids = [proc.pid for _, proc in members]
            await _wait_spread(ports, groups)
            await trio.sleep(SETTLE)
            cpu0 = [_cpu_seconds(p) for p in pids]
            io0 = _tcp_bytes(pids)
            await trio.sleep(seconds)
            cpu = [(_cpu_seconds(p) - c) / seconds * 100 for p, c in zip(pids, cpu0, strict=True)]
            io = _tcp_bytes(pids)
            rss = [_rss_now_mb(p) for p in pids]
            fsyncs = await _fsyncs(pids, seconds)
    n = len(pids)
    sent = [(io[p][0] - io0[p][0]) / seconds for p in pids]
    received = [(io[p][1] - io0[p][1]) / seconds for p in pids]
    return {
        "groups": groups,
        "cpu_percent": sum(cpu) / n,
        "rss_mb": sum(rss) / n,
        "tcp_sent_bytes_per_s": sum(sent) / n,
        "tcp_received_bytes_per_s": sum(received) / n,
        "fsyncs_per_s": None
        if None in fsyncs
        else sum(f for f in fsyncs if f is not None) / n / seconds,
    }


async def main(counts: list[int], seconds: float) -> list[dict[str, Any]]:
    results = []
    for groups in counts:
        print(f"  {groups} groups on 3 brokers: measuring {seconds:g} s idle", file=sys.stderr)
        results.append(await measure(groups, seconds))
    return results


def _line(r: dict[str, Any]) -> str:
    fsyncs = "-" if r["fsyncs_per_s"] is None else f"{r['fsyncs_per_s']:.2f}"
    return (
        f"{r['groups']:>6}  {r['cpu_percent']:>8.2f}  {r['rss_mb']:>7.1f}  "
        f"{r['tcp_sent_bytes_per_s'] / 1024:>9.1f}  {r['tcp_received_bytes_per_s'] / 1024:>9.1f}  "
        f"{fsyncs:>9}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.group_cost")
    parser.add_argument("groups", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = trio.run(main, args.groups, args.seconds)
    if args.json:
        print(json.dumps(results, indent=2))
        sys.exit(0)
    print("groups  CPU %  RSS MB  sent KiB/s  recv KiB/s  fsyncs/s  (per broker; CPU: of a core)")
    for r in results:
        print(_line(r))
    first, last = results[0], results[-1]
    extra = last["groups"] - first["groups"]
    if extra > 0:
        with contextlib.suppress(ZeroDivisionError):
            print(
                f"one more group, per broker: "
                f"{(last['cpu_percent'] - first['cpu_percent']) / extra:.3f} % of a core, "
                f"{(last['rss_mb'] - first['rss_mb']) / extra * 1024:.0f} KiB, "
                f"{(last['tcp_sent_bytes_per_s'] - first['tcp_sent_bytes_per_s']) / extra:.0f} B/s "
                "sent"
            )
