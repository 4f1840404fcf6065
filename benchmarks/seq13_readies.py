"""What a replica's saves hold under a workload of the bench, with a given apply lag.

    python -m benchmarks.seq13_readies [--lag 4] [--only connections] [--seconds 4]

Starts three brokers in this process (127.0.0.1, a temporary directory) with the replicas'
``APPLY_LAG`` set to ``--lag``, then runs ``python -m trio_broker bench --seed`` against the
leader (its load generator in a process of its own) and counts, for each replica's
``Store.save``: how many saves, the entries each persists, the committed entries each applies
and the commands those hold, and how many saves apply nothing; with the histogram of the
commands applied per applying save. Why: a lag of eight lowered the sequential p50 but cost
the 100 connections more CPU per request, for a reason not found (docs/performance.md, "Next
steps"): this says what the replicas' transactions hold with each lag. The three brokers
share one process (one core at a time): compare lags in the same setting, not with the
bench's absolute figures.

    python -m benchmarks.seq13_readies --processes [--only connections] [--seconds 4]

Three broker processes instead (``benchmarks.seq13_node``: each counts its own saves), with
the tree's own ``APPLY_LAG`` (run it with ``PYTHONPATH`` at each tree to compare): the
leader's saves are printed too.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from trio_broker.testing import open_local_cluster


def _commands(entry: Any) -> int:
    payload = entry.payload
    commands = getattr(payload, "commands", None)
    return 1 if commands is None else len(commands)


def _watch(store: Any, rows: list[tuple[int, int, int, int]]) -> None:
    save = store.save

    def counted(*args: Any, **kw: Any) -> Any:
        entries = kw.get("entries") or ()
        committed = kw.get("committed") or ()
        lone = sum(1 for e in entries if getattr(e.payload, "commands", None) is None)
        rows.append((len(entries), len(committed), sum(map(_commands, committed)), lone))
        return save(*args, **kw)

    store.save = counted


def _groups_at(group_lag: int) -> None:
    """(``--group-lag``) Fewer than ``group_lag`` committed entries wait while one of them is
    a group; lone appends alone wait up to the lag: patched into the core's rule here."""
    from trio_broker._core import _raft_ready

    rule = _raft_ready.ReadyHandOff._apply_waits

    def waits(self: Any) -> bool:
        if not rule(self):
            return False
        if self.commit - self.applied < group_lag:
            return True
        log = self.log
        return all(
            type(log.entry(i).payload).__name__ != "CommandGroup"
            for i in range(self.applied + 1, self.commit + 1)
        )

    _raft_ready.ReadyHandOff._apply_waits = waits  # type: ignore[method-assign]


async def _run(base: Path, lag: int, only: str, seconds: float, group_lag: int) -> None:
    from trio_broker._runtime import _recovery

    _recovery.APPLY_LAG = lag  # (what make_node gives every core it builds)
    if group_lag:
        _groups_at(group_lag)
    async with open_local_cluster(base, 3) as cluster:
        leader = await cluster.wait_for_leader()
        await trio.sleep(0.5)
        rows: dict[str, list[tuple[int, int, int, int]]] = {}
        for name, broker in cluster.brokers.items():
            if broker is not leader:
                rows[name] = []
                _watch(broker.driver._store, rows[name])
        command = [sys.executable, "-m", "trio_broker", "bench", "--seed"]
        command += [f"127.0.0.1:{leader.port}", "--only", only, "--seconds", str(seconds)]
        jobs = {n: (b._worker.ran_there, b._worker.ran_here) for n, b in cluster.brokers.items()}
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
        for line in done.stderr.decode().splitlines():
            if "items in" in line:
                print(line.strip())
        for name, saves in sorted(rows.items()):
            worker = cluster.brokers[name]._worker
            there, here = worker.ran_there - jobs[name][0], worker.ran_here - jobs[name][1]
            applying = [r for r in saves if r[1]]
            persisting = [r for r in saves if r[0]]
            print(f"{name} (replica), lag {lag}, group lag {group_lag}: {len(saves)} saves")
            print(
                f"  persisting entries {len(persisting)}, of which applying too "
                f"{sum(1 for r in persisting if r[1])}; applying alone "
                f"{sum(1 for r in saves if r[1] and not r[0])}; entries persisted"
                f" {sum(r[0] for r in saves)}, of which not a group {sum(r[3] for r in saves)};"
                f" storage jobs on the thread {there}, in place {here}"
            )
            if applying:
                counts = [r[2] for r in applying]
                print(
                    f"  applying saves: entries p50 {statistics.median(r[1] for r in applying)},"
                    f" commands p50 {statistics.median(counts)}, mean"
                    f" {statistics.fmean(counts):.1f}, max {max(counts)}; commands applied in"
                    f" all {sum(counts)}"
                )
                bins = collections.Counter(min(c // 64, 8) * 64 for c in counts)
                print("  commands per applying save:", dict(sorted(bins.items())))


def _summary(name: str, saves: list[Any]) -> None:
    applying = [r for r in saves if r[1]]
    print(
        f"{name}: {len(saves)} saves, entries persisted {sum(r[0] for r in saves)} (not a group"
        f" {sum(r[3] for r in saves)}); applying saves {len(applying)}, of which alone"
        f" {sum(1 for r in applying if not r[0])}, above 256 commands"
        f" {sum(1 for r in applying if r[2] > 256)}"
    )
    if applying:
        print(
            f"  per applying save: entries mean {statistics.fmean(r[1] for r in applying):.2f},"
            f" commands mean {statistics.fmean(r[2] for r in applying):.1f}, max"
            f" {max(r[2] for r in applying)}"
        )


def _processes(base: Path, only: str, seconds: float, port: int) -> None:
    """Three counted broker processes, the bench's workload against the first (the founder,
    which leads), then SIGTERM and each one's counts (less the saves before the workload)."""
    import json
    import signal
    import subprocess
    import time

    nodes = []
    for i in range(3):
        command = [sys.executable, "-m", "benchmarks.seq13_node", str(base / f"b{i + 1}.json")]
        command += ["node", "--port", str(port + i), "--data-dir", str(base / f"d{i + 1}")]
        command += ["--log-level", "WARNING"] + (["--seed", f"127.0.0.1:{port}"] if i else [])
        node = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert node.stdout is not None
        node.stdout.readline()  # (its ready line)
        nodes.append(node)
    try:
        time.sleep(3)  # (the joiners become voters)
        command = [sys.executable, "-m", "trio_broker", "bench", "--seed"]
        command += [f"127.0.0.1:{port}", "--only", only, "--seconds", str(seconds)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        for line in done.stderr.splitlines():
            if "items in" in line:
                print(line.strip())
    finally:
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            node.wait(30)
    for i in range(3):
        _summary(
            f"b{i + 1}" + (" (leader)" if i == 0 else ""),
            json.loads((base / f"b{i + 1}.json").read_text()),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lag", type=int, default=4)
    parser.add_argument("--only", default="connections")
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--group-lag", type=int, default=0, help="groups wait fewer (0: lag)")
    parser.add_argument("--processes", action="store_true", help="three broker processes")
    parser.add_argument("--base-port", type=int, default=19620, help="with --processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        if args.processes:
            _processes(Path(base), args.only, args.seconds, args.base_port)
            return
        trio.run(_run, Path(base), args.lag, args.only, args.seconds, args.group_lag)


if __name__ == "__main__":
    main()
