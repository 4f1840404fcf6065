"""What a committer batch of several groups' saves costs the storage thread, by its shape:
``python -m benchmarks.group_batch_shape [GROUPS] [APPENDS] [ROUNDS]`` (default 3, 30, 3).

GROUPS stores on one shared log (``SharedLog``, real SQLite in a temporary directory, fsync
on), each saving replica Readies of APPENDS appends (the new entry persisted, the previous
one applied: the bench's ``groups`` load holds about 30 appends a save). Each round runs 200
batches of one save per group, alternated batch by batch (the same files: the machine's
drift cancels) between two shapes of ``TurnCommitter._commit``'s job:

- ``rows``: one shared-log transaction holding each save's durable part as a row (one
  fsync), then each group's own transaction at ``NORMAL`` (the shape of a batch of several
  groups until the ninth round);
- ``own each``: each save alone in its fsync, one after the other (``own_save``: the group's
  transaction at ``FULL``, no row, as a batch of one).

Prints the thread's CPU (``time.thread_time``: the fsyncs' waits are not counted, their
system time is) and the wall time per batch, medians, and the CPU per save.
"""

from __future__ import annotations

import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.replica_cost import _frame, create_queue
from trio_broker._core import _raft_messages as rm
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog, TurnCommitter, _Job
from trio_broker._storage._store import Store

BATCHES = 200


def run(groups: int, appends: int) -> dict[str, tuple[float, float]]:
    """Median thread CPU and wall time of one batch by shape, in µs."""
    with tempfile.TemporaryDirectory() as folder:
        log = SharedLog(Path(folder) / SHARED_LOG_FILE)
        stores = [Store(Path(folder) / f"G{g}", shared=log) for g in range(groups)]
        committer = TurnCommitter(None, log)  # type: ignore[arg-type]  # (_commit only)
        times: dict[str, list[tuple[float, float]]] = {"rows": [], "own each": []}
        previous: list[list[rm.Entry]] = [[] for _ in stores]
        try:
            for store in stores:
                create_queue(store)
            for n in range(2 * BATCHES):
                shape = "rows" if n % 2 == 0 else "own each"
                jobs: list[Any] = []
                for g, store in enumerate(stores):
                    index = 2 + n
                    _, entry = _frame(index, appends, 16)
                    save = functools.partial(
                        store.save,
                        entries=[entry],
                        hard_state=rm.HardState(1, None, index - 1),
                        committed=previous[g],
                    )
                    jobs.append(_Job(save, False, None, 1 + appends))
                    previous[g] = [entry]
                started, clock = time.thread_time(), time.perf_counter()
                if shape == "rows":
                    outcomes = committer._commit(jobs)
                else:
                    outcomes = [committer._commit([job])[0] for job in jobs]
                times[shape].append((time.thread_time() - started, time.perf_counter() - clock))
                for result in outcomes:
                    result.unwrap()
        finally:
            for store in stores:
                store.close()
            log.close()
    return {
        shape: (
            statistics.median(t[0] for t in got) * 1e6,
            statistics.median(t[1] for t in got) * 1e6,
        )
        for shape, got in times.items()
    }


def main() -> None:
    groups = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    appends = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    for r in range(1, rounds + 1):
        got = run(groups, appends)
        print(
            f"round {r}, {groups} groups x {appends} appends: "
            + "; ".join(
                f"{shape} {cpu:.0f} µs CPU a batch ({cpu / groups:.0f} a save), wall {wall:.0f}"
                for shape, (cpu, wall) in got.items()
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
