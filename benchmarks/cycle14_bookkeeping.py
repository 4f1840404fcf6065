"""The driver's bookkeeping that every replication cycle pays, warm, in thread CPU:
``python -m benchmarks.cycle14_bookkeeping [--calls N]``.

Three brokers in this process (127.0.0.1, a temporary directory), idle once a leader is
elected. On the leader, the median of five rounds of ``--calls`` calls each (µs per call):

- ``RaftDriver.step`` of an acknowledgement that commits nothing (the leader's second of
  each sequential append with three voters: its match index again), the whole step of the
  driver and the core;
- ``Leadership.note_role``, which runs after every step and every advance (about ten times
  per sequential append over the three brokers) and nearly always has nothing to say;
- ``RaftDriver.signal_changed``, after every Ready, with nobody in ``wait_changed``.

Warm figures: in a broker each call runs colder, after a system call or an fsync (three to
five times these here). Run it on two trees (``PYTHONPATH=A``, ``PYTHONPATH=B``) in
alternation to compare them (docs/performance.md, "The fixed cost per replication cycle,
and the driver's bookkeeping (fourteenth round)").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from trio_broker._core._raft_messages import ReplicateResponse
from trio_broker.testing import open_local_cluster


def _per_call(fn: Callable[[], object], calls: int) -> float:
    rounds = []
    for _ in range(5):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        rounds.append((time.thread_time() - started) / calls)
    return statistics.median(rounds) * 1e6


async def _run(base: Path, calls: int) -> None:
    async with open_local_cluster(base, 3) as cluster:
        leader = await cluster.wait_for_leader()
        await trio.sleep(0.3)
        driver = leader.driver
        node = driver.node
        peer = sorted(set(node.progress) - {node.id})[0]
        again = ReplicateResponse(
            src=peer,
            dst=node.id,
            term=node.term,
            cluster_version=node.cluster_version,
            success=True,
            match_index=node.progress[peer].match,
        )
        step = _per_call(lambda: driver.step(again), calls)
        note = _per_call(driver.leadership.note_role, calls)
        signal = _per_call(driver.signal_changed, calls)
        print(
            f"leader, µs per call: step of an acknowledgement that commits nothing {step:.3f},"
            f" note_role {note:.3f}, signal_changed {signal:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        trio.run(_run, Path(base), args.calls)


if __name__ == "__main__":
    main()
