"""A leader's pipelined appends from a receive's parsed frames to their settle: thread CPU
per append, stage by stage (docs/performance-history.md, "The leader's receive held as columns
(thirteenth round)").

Each round is ``--readies`` Readies of ``--receives`` receives of ``--run`` APPENDs each (the
bench's pipelined load: 16 in flight per connection, one queue), each receive as
``Runs.handle_many`` takes it: ``Runs._plain_commands`` of its ``PlainAppend`` tuples, then
the driver's proposal of them (``propose_many``, or ``propose_columns`` where the tree has
it); then the ledger's ``propose_queued`` into the entries (its cuts), each entry's
``payload_bytes`` as its group's every member reads ``APPEND_RUNS`` (the log's and the
REPLICATE's bytes, with their checksum), its apply in a store (``Store.apply``, in
``/dev/shm`` when there is one: the fsync's wait is not CPU of the thread, its call is), and
the settle of its tokens (``applied_columns``, ``_settle_applied``). Runs on any tree with
these names: run it by its path with each tree first on ``PYTHONPATH``, alternated:

    PYTHONPATH=/tmp/a python benchmarks/columns13_path.py

Prints the best of ``--repeat`` rounds per stage and in all, in µs per append.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from typing import Any

from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._core._proposals import Proposals
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._entries import payload_bytes
from trio_broker._runtime._disk_space import DiskState
from trio_broker._runtime._pending import Capacity
from trio_broker._runtime._proposing import Proposing
from trio_broker._runtime._runs import Runs
from trio_broker._storage._store import Store

QUEUE = "Q-0123456789abcdefghij"


class _Node:
    is_leader = True
    transfer_target = None


class _Disk:
    state = DiskState.OK


class _Driver:
    """What the driver's proposals and settle read of it."""

    def __init__(self, total: int) -> None:
        self._capacity = Capacity(total)
        self.node = _Node()
        self.disk = _Disk()
        self._ledger: Proposals[Any] = Proposals(max_bytes=1 << 20)
        self._lone = False
        self.max_group = 1024

    def wake(self) -> None:
        pass

    def _settle(self, pending: Any, outcome: Any) -> None:
        raise AssertionError("an outcome that is not an applied result")


class _Config:
    max_in_flight = 1024


def _runs(driver: _Driver, clock: list[int]) -> Runs:
    runs = object.__new__(Runs)
    runs._config = _Config()  # type: ignore[assignment]
    runs._max_data = 1 << 20
    runs._driver = driver  # type: ignore[assignment]
    runs._closing = lambda: False  # type: ignore[method-assign]
    runs._wall_clock_ms = lambda: clock[0]  # type: ignore[method-assign]
    return runs


def _done(coroutine: Any) -> Any:
    """A coroutine's value when it does not wait (a unit of capacity free)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the proposal waited")


def _round(
    args: argparse.Namespace, store: Store, first_index: int, clock: list[int]
) -> tuple[list[float], int]:
    size = args.receives * args.run
    driver = _Driver(size * (args.readies + 1))
    runs = _runs(driver, clock)
    value = "x" * 100
    data = dumps_value(value)
    receives = [
        [("".join(("Q-", QUEUE[2:])), data, value) for _ in range(args.run)]
        for _ in range(args.receives * args.readies)
    ]
    propose_columns = getattr(Proposing, "propose_columns", None)
    spent = [0.0] * 5
    ledger = driver._ledger
    index = first_index
    payloads: list[Any] = []

    def log(payload: Any) -> tuple[int, int]:
        payloads.append(payload)
        return 1, index + len(payloads)

    gc.collect()
    for ready in range(args.readies):
        started = time.thread_time()
        for receive in receives[ready * args.receives : (ready + 1) * args.receives]:
            clock[0] += 1  # (a stamp per receive: a few per entry, as in the bench)
            plain = runs._plain_commands(receive)  # type: ignore[arg-type]
            if type(plain) is list or propose_columns is None:
                _done(Proposing.propose_many(driver, plain))  # type: ignore[arg-type]
            else:
                _done(propose_columns(driver, plain))  # type: ignore[arg-type]
        at = time.thread_time()
        spent[0] += at - started
        payloads.clear()
        ledger.propose_queued(log)
        started, at = at, time.thread_time()
        spent[1] += at - started
        entries = [rm.Entry(1, index + 1 + i, p) for i, p in enumerate(payloads)]
        for entry in entries:
            payload_bytes(entry, True)
        started, at = at, time.thread_time()
        spent[2] += at - started
        results = store.apply([e.payload for e in entries])
        started, at = at, time.thread_time()
        spent[3] += at - started
        for entry, result in zip(entries, results, strict=True):
            tokens, outcomes = ledger.applied_columns(entry.index, entry.term, result)
            Proposing._settle_applied(driver, tokens, outcomes)  # type: ignore[arg-type]
        spent[4] += time.thread_time() - at
        index += len(entries)
    return [s / (size * args.readies) * 1e6 for s in spent], index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receives", type=int, default=16)
    parser.add_argument("--run", type=int, default=16)
    parser.add_argument("--readies", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    names = ("receive+propose", "cuts", "encode", "apply", "settle")
    best = [float("inf")] * 6
    with tempfile.TemporaryDirectory(dir=where) as d:
        store = Store(d)
        try:
            store.apply([cmd.CreateQueue(QUEUE)])
            index = 0
            clock = [1_765_000_000_000]  # (never back: the queue's stamps as a leader's clock)
            for _ in range(args.repeat):
                stages, index = _round(args, store, index, clock)
                best = [min(b, s) for b, s in zip(best, [*stages, sum(stages)], strict=True)]
        finally:
            store.close()
    print("  ".join(f"{n} {b:.3f}" for n, b in zip([*names, "all"], best, strict=True)))


if __name__ == "__main__":
    main()
