"""What a replica's REPLICATE costs when its save goes through the driver's task rather than
the receiving task's step: ``python -m benchmarks.replica12_hop``.

With one group a replica persists each receive's REPLICATEs in the task that read them
(``InStep._persist_after_frames``); when its store is not free (several groups sharing one
storage thread and shared log, whose thread nearly always holds another group's batch under
load) the step wakes the driver's task instead, which takes the Ready in its next turn
(``RaftDriver._drive``, ``_handle_ready``, ``_save`` through the repair and disk-space
wrappers) and sends the acknowledgement when the save returns. This measures that hop: the
same REPLICATEs as ``benchmarks.replica12_save_path`` (one frame per receive, decoded,
stepped into a real driver, persisted at ``synchronous = OFF`` on a store in a temporary
directory, acknowledged to a link that encodes and drops), each receive followed by the
receiving task's checkpoint (its next receive), by the two paths:

- step: persisted in the receiving task's step, as with one group;
- driver: the step wakes the driver's task, which persists in its turn; its storage job runs
  in place (``run``/``run_short`` call the save at once), so the storage thread's hand-off,
  which a save of several groups pays on either path, is not in it.

Thread CPU per REPLICATE (the whole loop's: both tasks run on this thread), the median of
``--rounds`` rounds of ``--repeat`` receives after a warm-up, the two paths alternated round
by round. ``--repeat`` is a multiple of the apply lag (``_applied.APPLY_LAG``, 4: a replica
applies small groups four at a time), so that each round applies as many entries.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from typing import Any

import trio

from benchmarks.replica12_save_path import replica_driver
from benchmarks.replica_cost import _frame, queue_store
from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._protocol._consensus import message_from_payload
from trio_broker._runtime._peers import AFTER_FRAMES, AfterFramesList


class _Worker:
    """The storage worker as the driver uses it: ``idle`` says whether the step may persist
    (``InStep._store_free``); its jobs run at once, in the calling task."""

    save_in_turn = None

    def __init__(self) -> None:
        self.idle = True

    async def run(self, job: Any) -> Any:
        return job()

    run_short = run


async def _measure(appends: int, receive: int, rounds: int, repeat: int) -> dict[str, float]:
    gc.set_threshold(*GC_THRESHOLDS)
    cpu = time.thread_time
    parts: dict[str, list[float]] = {"step": [], "driver": []}
    with tempfile.TemporaryDirectory() as d, queue_store(d) as store:
        store._db.execute("PRAGMA synchronous = OFF")
        driver = replica_driver(d, store)
        worker = _Worker()
        driver._worker = worker  # type: ignore[assignment]
        driver._parked = False
        after = AfterFramesList()
        AFTER_FRAMES.set(after)
        index = 2
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver._drive)
            for _ in range(100):  # (until the driver's task waits for work)
                if driver._parked:
                    break
                await trio.lowlevel.checkpoint()
            for round_ in range(2 * (rounds + 10)):
                path = "driver" if round_ % 2 else "step"
                worker.idle = path == "step"
                frames = [_frame(index + i, appends, receive, 0, True)[0] for i in range(repeat)]
                index += repeat
                transactions = driver.transactions
                started = cpu()
                for frame in frames:
                    driver._fsync_fast = True
                    done = driver.transactions
                    _group, message = message_from_payload(frame)
                    driver.step(message)
                    while after:
                        after.pop(0)(True)
                    await trio.lowlevel.cancel_shielded_checkpoint()  # (the next receive)
                    for _ in range(10):  # (the driver's turn, if it was woken)
                        if driver.transactions > done and driver._parked:
                            break
                        await trio.lowlevel.cancel_shielded_checkpoint()
                spent = cpu() - started
                if driver.transactions != transactions + repeat:
                    raise SystemExit(f"{path}: {driver.transactions - transactions} saves")
                if round_ >= 20:
                    parts[path].append(spent / repeat)
            nursery.cancel_scope.cancel()
        AFTER_FRAMES.set(None)
        if not driver.persisted_in_step:
            raise SystemExit("no save in the step")
    return {path: statistics.median(values) * 1e6 for path, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=47)
    parser.add_argument("--receive", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=8)
    args = parser.parse_args()
    figures = trio.run(_measure, args.appends, args.receive, args.rounds, args.repeat)
    print(
        f"a replica's REPLICATE of {args.appends} appends, synchronous off: µs of thread CPU"
        f" per REPLICATE, median of {args.rounds}"
    )
    for path, value in figures.items():
        print(f"  {path:<7} {value:8.1f}")
    print(f"  hop     {figures['driver'] - figures['step']:8.1f}")


if __name__ == "__main__":
    main()
