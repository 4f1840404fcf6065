"""Where the bench's ``groups`` workload spends each broker's CPU, by thread: ``python -m
benchmarks.group_threads [SECONDS]`` (default 3).

Runs ``python -m trio_broker bench --seconds SECONDS --only groups`` (pipelined APPENDs, 24
connections x 16, on a cluster of one group, then spread over the three groups of a cluster
founded with ``--groups 3``) and reads ``/proc/PID/task/*`` of each broker when each load
starts and when its figures are printed. For each load and broker it prints, per append
acknowledged, the CPU of the event loop's thread and of each other busy thread (the storage
threads: the broker's own, and the one its extra groups share), user and system, and their
context switches, voluntary (a thread that waits: each hand-off to a storage thread and
back is two) and not. With one group the leader's storage runs mostly on its loop (the
in-step paths); a broker hosting several groups hands its saves to the shared storage
thread when they do not run in a step (docs/performance-history.md, "Several groups per append
(sixth round)").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[str, tuple[float, float, int, int]]:
    """Thread id -> (user s, system s, voluntary, involuntary context switches)."""
    got = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue
        switches = []
        for kind in ("voluntary", "nonvoluntary"):
            found = re.search(rf"^{kind}_ctxt_switches:\s+(\d+)", status, re.M)
            switches.append(int(found.group(1)) if found else 0)
        got[task.name] = (int(fields[11]) / TICK, int(fields[12]) / TICK, *switches)
    return got  # type: ignore[return-value]


def _brokers(bench: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(bench), "-f", "trio_broker node"], capture_output=True, text=True
    ).stdout
    return sorted(int(p) for p in out.split())


def main(seconds: str) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "trio_broker", "bench", "--seconds", seconds, "--only", "groups"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bench.stderr is not None
    before: dict[int, dict[str, tuple[float, float, int, int]]] = {}
    for line in bench.stderr:
        if "connections x 16 in flight" in line:
            name = line.split(":")[0].strip()
            before = {pid: _threads(pid) for pid in _brokers(bench.pid)[-3:]}
        found = re.search(r"(\d[\d,]*) items in", line)
        if found and before:
            items = int(found.group(1).replace(",", ""))
            print(f"{name}: {items:,} appends; per append, each broker's threads (µs of CPU):")
            for pid, was in before.items():
                rows = []
                for tid, (user, system, vol, invol) in _threads(pid).items():
                    u0, s0, v0, i0 = was.get(tid, (0.0, 0.0, 0, 0))
                    if (user - u0) + (system - s0) < 0.005 and vol - v0 < 10:
                        continue
                    rows.append(
                        f"{'loop' if tid == str(pid) else 'thread'} user"
                        f" {(user - u0) / items * 1e6:.1f} sys {(system - s0) / items * 1e6:.1f}"
                        f" switches {(vol - v0) / items:.3f}+{(invol - i0) / items:.3f}"
                    )
                print(f"  broker {pid}: " + "; ".join(rows), flush=True)
            before = {}
    bench.wait()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "3")
