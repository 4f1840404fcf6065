"""Where the pipelined cycle's time goes on each broker: ``python -m benchmarks.leader14_cycle
[SECONDS] [WINDOW]`` (default 8 and 4).

Runs ``python -m trio_broker bench --seconds SECONDS --only pipelined`` (32 connections x 16
APPENDs in flight) and, once the load generators run and a second has passed, measures each
broker over WINDOW seconds: every thread's CPU (user + system, from ``/proc/PID/task``) as a
fraction of the window (how busy the broker is: the rest is waiting), its context switches,
and its system calls by kind (``perf stat -e syscalls:sys_enter_*``: fsyncs, reads, writes,
``epoll_wait`` per second). The broker that used the most CPU is the leader. The counts per
second are what the cycle is made of: each ``fdatasync`` of a replica is one REPLICATE's
save, each of the leader's one Ready's (docs/performance.md, "Where the pipelined cycle
waits (fourteenth round)"). The generators' CPU is read the same way, so the window's two
cores are accounted for. ``perf`` must be allowed to read tracepoints (root here).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import group_threads

TICK = os.sysconf("SC_CLK_TCK")
CALLS = ("fdatasync", "read", "write", "writev", "sendto", "recvfrom", "epoll_wait", "futex")


def _children(parent: int, pattern: str) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(parent), "-f", pattern], capture_output=True, text=True
    )
    return sorted(int(p) for p in out.stdout.split())


def _threads(pid: int) -> dict[str, tuple[float, int, int]]:
    """Thread id -> (CPU seconds, voluntary, involuntary context switches): ``group_threads``'s
    reading of ``/proc/PID/task``, user and system together."""
    return {
        tid: (user + system, vol, invol)
        for tid, (user, system, vol, invol) in group_threads._threads(pid).items()
    }


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main(seconds: float, window: float) -> None:
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trio_broker",
            "bench",
            "--seconds",
            str(seconds),
            "--only",
            "pipelined",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _children(bench.pid, "_loadgen") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    brokers = _children(bench.pid, "trio_broker node")
    generators = _children(bench.pid, "_loadgen")
    events = ",".join(f"syscalls:sys_enter_{c}" for c in CALLS)
    perfs = {
        pid: subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", events, "-p", str(pid), "--", "sleep", str(window)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in brokers
    }
    before = {pid: _threads(pid) for pid in brokers}
    gen_before = {pid: _cpu(pid) for pid in generators}
    started = time.monotonic()
    time.sleep(window)
    took = time.monotonic() - started
    after = {pid: _threads(pid) for pid in brokers}
    gen_cpu = sum(
        _cpu(pid) - cpu for pid, cpu in gen_before.items() if Path(f"/proc/{pid}").exists()
    )
    calls = {}
    for pid, perf in perfs.items():
        _, err = perf.communicate()
        counts = {}
        for line in err.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_"):
                counts[parts[2].removeprefix("syscalls:sys_enter_")] = (
                    int(parts[0]) if parts[0].isdigit() else 0
                )
        calls[pid] = counts
    out, _ = bench.communicate()
    print(out)
    busy = {
        pid: sum(a[0] - before[pid].get(t, (0.0, 0, 0))[0] for t, a in after[pid].items())
        for pid in brokers
    }
    leader = max(busy, key=busy.__getitem__)
    print(f"window {took:.2f} s; generators {gen_cpu / took:.0%} of one core")
    for pid in sorted(brokers, key=lambda p: p != leader):
        name = "leader" if pid == leader else "replica"
        rows = []
        for tid, (cpu, vol, invol) in after[pid].items():
            c0, v0, i0 = before[pid].get(tid, (0.0, 0, 0))
            if cpu - c0 < 0.01 and vol - v0 < 10:
                continue
            kind = "loop" if tid == str(pid) else f"thread {tid}"
            rows.append(
                f"{kind} {(cpu - c0) / took:.0%} busy, switches/s {(vol - v0) / took:,.0f}"
                f"+{(invol - i0) / took:,.0f}"
            )
        per_s = ", ".join(f"{k} {v / took:,.0f}" for k, v in calls[pid].items() if v)
        print(f"{name} {pid}: {busy[pid] / took:.0%} of one core; " + "; ".join(rows))
        print(f"  system calls per second: {per_s}")


if __name__ == "__main__":
    main(
        float(sys.argv[1]) if len(sys.argv) > 1 else 8.0,
        float(sys.argv[2]) if len(sys.argv) > 2 else 4.0,
    )
