"""What a save alone in its fsync costs on a shared store, against a store of its own:
``python -m benchmarks.group_lone_save [APPENDS] [ROUNDS]`` (default 40, 3).

A replica's save under the pipelined load (one COMMAND_GROUP entry of APPENDS appends
persisted, the previous one applied, in one ``Store.save``), on one thread with real SQLite in
a temporary directory (fsync on), 300 saves a run: on a store of its own, then on a store
that shares the broker's shared log (``Store(..., shared=SharedLog(...))``, the save with no
stage, as the in-step paths and a committer batch of one run it). Prints the thread's CPU
(``time.thread_time``: the fsync's wait is not counted, its system time is) and the wall time
per save, medians, and the CPU per append. Before the seventh round such a save wrote its
row in a shared-log transaction of its own (one commit and fsync) and then the group's at
``NORMAL``; now it is the group's transaction at ``FULL`` alone, as on a store of its own
(docs/performance-history.md, "Several groups' saves of one receive (seventh round)").
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.replica_cost import _frame, create_queue
from trio_broker._core import _raft_messages as rm
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog
from trio_broker._storage._store import Store

SAVES = 300


def run(appends: int, shared: bool) -> tuple[float, float]:
    """Median thread CPU and wall time of one save, in µs."""
    with tempfile.TemporaryDirectory() as folder:
        log = SharedLog(Path(folder) / SHARED_LOG_FILE) if shared else None
        store = Store(Path(folder) / "G0", shared=log)
        cpu: list[float] = []
        wall: list[float] = []
        try:
            create_queue(store)
            previous: list[rm.Entry] = []
            for index in range(2, 2 + SAVES):
                _, entry = _frame(index, appends, 16)
                hard = rm.HardState(1, None, index - 1)
                started, clock = time.thread_time(), time.perf_counter()
                store.save(entries=[entry], hard_state=hard, committed=previous)
                cpu.append(time.thread_time() - started)
                wall.append(time.perf_counter() - clock)
                previous = [entry]
        finally:
            store.close()
            if log is not None:
                log.close()
    return statistics.median(cpu) * 1e6, statistics.median(wall) * 1e6


def main() -> None:
    appends = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for r in range(1, rounds + 1):
        own_cpu, own_wall = run(appends, False)
        shared_cpu, shared_wall = run(appends, True)
        print(
            f"round {r}, {appends} appends a save: store of its own {own_cpu:.0f} µs CPU"
            f" ({own_cpu / appends:.2f} per append, wall {own_wall:.0f}); shared store"
            f" {shared_cpu:.0f} µs CPU ({shared_cpu / appends:.2f} per append, wall"
            f" {shared_wall:.0f})"
        )


if __name__ == "__main__":
    main()
