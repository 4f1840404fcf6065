"""A sequential append's transactions on one store, by their parts: ``python -m
benchmarks.apply_commit [--rounds N]``.

Each round does what one sequential append costs a broker's storage, on one thread with real
SQLite in a temporary directory (fsync on, as in the broker), one APPEND_MESSAGE of a
100-byte value at a time:

- replica: ``Store.save`` of the new entry with the apply of the one before it and the commit
  index moved (a replica's in-step persist: one durable transaction);
- leader: the leader's own durable save of the new entry, then its apply alone
  (``InStep._apply_here``: ``Store.save(hard_state=..., committed=...)`` at ``NORMAL``), split
  at its ``before_commit`` hook into the statements (up to the answer) and the COMMIT after it:
  what answering before the COMMIT takes off the client's wait.

Each figure is CPU time of the thread (``time.thread_time``: an fsync's wait is not counted,
its system time is) and wall time, median of ``--rounds`` after a warm-up, in microseconds.
Run it against two trees (``PYTHONPATH``) in alternation to compare a change of ``Store.save``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from trio_broker._core import _commands as cmd
from trio_broker._core._raft_messages import Entry, HardState
from trio_broker._storage._store import Store

QUEUE = "Q-0123456789abcdef"


def _entry(index: int) -> Entry:
    return Entry(1, index, cmd.AppendMessage(QUEUE, b'"' + b"x" * 98 + b'"', None, None, index))


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return (time.thread_time() - cpu) * 1e6, (time.perf_counter() - wall) * 1e6


def run(rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}

    def note(name: str, cpu: float, wall: float) -> None:
        out.setdefault(name + " CPU", []).append(cpu)
        out.setdefault(name + " wall", []).append(wall)

    with tempfile.TemporaryDirectory() as leader_dir, tempfile.TemporaryDirectory() as r_dir:
        leader, replica = Store(leader_dir), Store(r_dir)
        try:
            for store in (leader, replica):
                create = Entry(1, 1, cmd.CreateQueue(QUEUE))
                store.save(hard_state=HardState(1, None, 1), entries=[create], committed=[create])
            hook: list[tuple[float, float]] = []

            def answer(results: list[Any]) -> None:
                hook.append((time.thread_time(), time.perf_counter()))

            for index in range(2, rounds + 52):
                new = _entry(index)
                previous = [_entry(index - 1)] if index > 2 else []
                hard_state = HardState(1, None, index - 1)
                cpu, wall = _timed(
                    functools.partial(
                        replica.save, hard_state=hard_state, entries=[new], committed=previous
                    )
                )
                own = _timed(functools.partial(leader.save, entries=[new]))
                cpu0, wall0 = time.thread_time(), time.perf_counter()
                leader.save(
                    hard_state=HardState(1, None, index), committed=[new], before_commit=answer
                )
                cpu1, wall1 = time.thread_time(), time.perf_counter()
                if index < 52:
                    continue  # (warm-up)
                note("replica: persist + apply before", cpu, wall)
                note("leader: own persist", *own)
                (hook_cpu, hook_wall), hook[:] = hook[-1], []
                note(
                    "leader: apply, to the answer",
                    (hook_cpu - cpu0) * 1e6,
                    (hook_wall - wall0) * 1e6,
                )
                note(
                    "leader: apply, its COMMIT after",
                    (cpu1 - hook_cpu) * 1e6,
                    (wall1 - hook_wall) * 1e6,
                )
                note("leader: apply, in all", (cpu1 - cpu0) * 1e6, (wall1 - wall0) * 1e6)
        finally:
            leader.close()
            replica.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    out = run(args.rounds)
    print(f"{args.rounds} sequential appends; median µs (p90)")
    for name, values in out.items():
        values.sort()
        p90 = values[(len(values) * 9) // 10]
        print(f"  {name:<40} {statistics.median(values):8.1f} ({p90:.1f})")


if __name__ == "__main__":
    main()
