"""What a durable save alone in its fsync costs on a shared store once its group's file holds
a mark (a batch of several groups wrote a row for it before): ``python -m
benchmarks.group_marked_save [APPENDS] [ROUNDS]`` (default 40, 3).

``benchmarks.group_lone_save`` measures a lone save on a group that never had a shared-log
row (its mark is 0: never written); under the bench's ``groups`` load about half the
committer's batches hold several groups, so a group's later lone saves carry the mark of its
last row. Each round: 300 replica saves (APPENDS appends persisted, the previous save's
applied, ``Store.save`` with no stage, as the in-step paths and a committer batch of one run
it), median thread CPU (``time.thread_time``) and wall time per save, fsync on, after one
batch's save (journal and apply stages) gave the group a row. Until the eighth round each of
them wrote the unchanged mark again (docs/performance-history.md, "Several groups: the leader's save
(eighth round)"); on a tree that skips it, every other save forgets the file's last mark
first and so writes it again, and both medians are printed (the same process and file: the
machine's drift cancels).
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


def run(appends: int) -> tuple[float, float, float | None]:
    """Median thread CPU and wall time of one save, in µs; and, on a tree that writes the
    mark only when it changed, the median thread CPU of the saves that write it again
    (every other save, the file's last mark forgotten first: the earlier behaviour, in the
    same process and file), else None."""
    with tempfile.TemporaryDirectory() as folder:
        log = SharedLog(Path(folder) / SHARED_LOG_FILE)
        store = Store(Path(folder) / "G0", shared=log)
        cpu: list[float] = []
        wall: list[float] = []
        again: list[float] = []
        skips = hasattr(store, "_marked")
        try:
            create_queue(store)
            _, first = _frame(2, appends, 16)
            hard = rm.HardState(1, None, 1)
            with log.transaction:  # (a batch of several: its row, then the group's at NORMAL)
                store.save(entries=[first], hard_state=hard, stage="journal")
            store.save(entries=[first], hard_state=hard, stage="apply")
            previous = [first]
            for index in range(3, 3 + SAVES):
                _, entry = _frame(index, appends, 16)
                hard = rm.HardState(1, None, index - 1)
                rewrite = skips and index % 2 == 1
                if rewrite:
                    store._marked = 0  # (as before the eighth round: written again)
                started, clock = time.thread_time(), time.perf_counter()
                store.save(entries=[entry], hard_state=hard, committed=previous)
                took = time.thread_time() - started
                (again if rewrite else cpu).append(took)
                wall.append(time.perf_counter() - clock)
                previous = [entry]
        finally:
            store.close()
            log.close()
    rewritten = statistics.median(again) * 1e6 if again else None
    return statistics.median(cpu) * 1e6, statistics.median(wall) * 1e6, rewritten


def main() -> None:
    appends = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for r in range(1, rounds + 1):
        cpu, wall, rewritten = run(appends)
        line = (
            f"round {r}, {appends} appends a save, marked group: {cpu:.1f} µs CPU"
            f" ({cpu / appends:.2f} per append), wall {wall:.0f} µs"
        )
        if rewritten is not None:
            line += f"; the mark written again (alternate saves): {rewritten:.1f} µs CPU"
        print(line)


if __name__ == "__main__":
    main()
