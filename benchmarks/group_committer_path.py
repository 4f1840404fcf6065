"""What the committer's path costs the event loop per save, against a plain storage job:
``python -m benchmarks.group_committer_path [SAVES] [ROUNDS]`` (default 3000, 3).

A broker's groups on a shared store hand their saves to ``TurnCommitter.save``
(``_storage/_shared_log.py``), which gathers the saves of one loop turn into one job on the
storage thread. Its own path (the turn's checkpoint, the batch's bookkeeping, the hand-off)
is paid by the event loop on every save, beside the save's own work. Here the save is a
no-op (nothing written: only the path is measured), on a real ``StorageWorker`` and
``SharedLog`` in a temporary directory. Each round runs, alternated, SAVES saves of each:

- ``thread direct``: ``StorageWorker.run(job)`` (a plain storage job, the driver's path on a
  store of its own);
- ``thread committer``: ``TurnCommitter.save(job)`` alone (a batch of one on the thread);
- ``here direct``: ``StorageWorker.run_short(job)`` with the thread idle (run on the loop);
- ``here committer``: ``TurnCommitter.save(job, short=True)`` alone (a batch of one, short,
  run on the loop);
- ``3 groups``: three tasks saving at once through the committer (batches of several).

Prints the event loop's thread CPU (``time.thread_time`` of the trio thread, which excludes
its waits) per save, in µs, and the storage thread's, and each mode's batches per save.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog, TurnCommitter
from trio_broker._storage._worker import StorageWorker


def _job(*, stage: str | None = None) -> list[Any]:
    """A save that writes nothing."""
    return []


async def _measure(saves: int, one: Callable[[], Awaitable[Any]], tasks: int = 1) -> float:
    async def loop(n: int) -> None:
        for _ in range(n):
            await one()

    started = time.thread_time()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(loop, saves // tasks)
    return (time.thread_time() - started) / saves * 1e6


async def _thread_cpu(worker: StorageWorker) -> float:
    return await worker.run(time.thread_time)


async def _round(saves: int, folder: Path) -> dict[str, tuple[float, float, float]]:
    worker = StorageWorker(name="bench-shared-storage")
    log = await worker.run(SharedLog, folder / SHARED_LOG_FILE)
    committer = TurnCommitter(worker, log)
    modes: dict[str, tuple[Callable[[], Awaitable[Any]], int]] = {
        "thread direct": (lambda: worker.run(_job), 1),
        "thread committer": (lambda: committer.save(_job), 1),
        "here direct": (lambda: worker.run_short(_job), 1),
        "here committer": (lambda: committer.save(_job, short=True), 1),
        "3 groups": (lambda: committer.save(_job), 3),
    }
    out: dict[str, tuple[float, float, float]] = {}
    try:
        for name, (one, tasks) in modes.items():
            before_thread = await _thread_cpu(worker)
            batches = committer.batches
            loop_cpu = await _measure(saves, one, tasks)
            thread_cpu = (await _thread_cpu(worker) - before_thread) / saves * 1e6
            out[name] = (loop_cpu, thread_cpu, (committer.batches - batches) / saves)
    finally:
        await worker.run(log.close)
        worker.stop()
        await worker.wait_stopped()
    return out


def main() -> None:
    saves = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for r in range(1, rounds + 1):
        with tempfile.TemporaryDirectory() as folder:
            out = trio.run(_round, saves, Path(folder))
        print(
            f"round {r}: "
            + "; ".join(
                f"{name} loop {loop:.1f} thread {thread:.1f} µs ({batches:.2f} batches/save)"
                for name, (loop, thread, batches) in out.items()
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
