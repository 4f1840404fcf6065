"""A storage-thread hand-off against the job itself: ``python -m benchmarks.storage_handoff``.

Times apply-only transactions of one APPEND each (what the leader runs for a sequential
append), through the storage thread (``StorageWorker.run``) and in place on the trio thread
(``StorageWorker.run_short`` with the thread idle): CPU and wall time per transaction.
"""

from __future__ import annotations

import functools
import resource
import tempfile
import time

import trio

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_messages import Entry, HardState
from trio_broker._storage import open_sqlite_storage

TRANSACTIONS = 2000
QUEUE = "Q-AAAAA00001"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        async with open_sqlite_storage(d) as (worker, store):
            create = Entry(1, 1, CreateQueue(QUEUE))
            await worker.run(
                functools.partial(store.save, entries=[create], hard_state=HardState(1, None, 0))
            )
            await worker.run(
                functools.partial(store.save, committed=[create], hard_state=HardState(1, None, 1))
            )
            index = 2
            for mode in ("thread", "in place", "thread", "in place"):
                run = worker.run if mode == "thread" else worker.run_short
                entries = [
                    Entry(1, index + i, AppendMessage(QUEUE, b'"x"')) for i in range(TRANSACTIONS)
                ]
                # written durably first, as the log is (not timed)
                await worker.run(functools.partial(store.save, entries=entries))
                before, started = _cpu(), time.perf_counter()
                for e in entries:
                    hs = HardState(1, None, e.index)
                    await run(functools.partial(store.save, hard_state=hs, committed=[e]))
                cpu = (_cpu() - before) / TRANSACTIONS * 1e6
                wall = (time.perf_counter() - started) / TRANSACTIONS * 1e6
                index += TRANSACTIONS
                print(f"{mode:8s}: {cpu:6.1f} us CPU, {wall:6.1f} us wall per transaction")


if __name__ == "__main__":
    trio.run(main)
