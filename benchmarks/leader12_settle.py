"""The leader's settle and answer of one applied entry of pipelined appends: thread CPU per
append (docs/performance-history.md, "The leader's CPU per pipelined append (twelfth round)").

An entry of ``--groups`` receives of ``--run`` APPENDs each (the bench's pipelined load: 16
in flight per connection), applied as one run of plain appends (its results an
``AppendedRun``, as ``_storage/_append_sql._append_run`` gives them): the driver's
``_settle_applied`` of its tokens (``(PendingGroup, index)``, as ``propose_many`` makes them),
then each connection's writer taking its group's answers (``AnswerWriter._take``: the frames
of its appended messages). Run each tree in turn with ``PYTHONPATH`` at it:

    PYTHONPATH=/tmp/a python -m benchmarks.leader12_settle
"""

from __future__ import annotations

import argparse
import gc
import time
from itertools import repeat
from typing import Any

from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._core._appended_run import AppendedRun
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import Capacity, GroupRun, PendingGroup, settling
from trio_broker._runtime._proposing import Proposing
from trio_broker._runtime._writer import AnswerWriter


class _Socket:
    def send_now(self, data: bytes) -> int:
        return len(data)


class _Driver:
    """What ``_settle_applied`` reads of the driver."""

    def __init__(self, total: int) -> None:
        self._capacity = Capacity(total)

    def _settle(self, pending: Any, outcome: Any) -> None:  # (not applied: not measured)
        raise AssertionError("an outcome that is not an applied result")


def _entry(groups: int, run: int) -> tuple[list[PendingGroup], list[Any]]:
    made = [PendingGroup(run) for _ in range(groups)]
    tokens = [token for group in made for token in zip(repeat(group), range(run))]
    return made, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--run", type=int, default=16)
    parser.add_argument("--number", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    size = args.groups * args.run
    driver = _Driver(size * (args.number + 1))
    budget = BufferBudget(1 << 30)
    infos = [("APPEND", 0.0, 150)] * args.run
    settle_applied = Proposing._settle_applied
    best_settle = best_answer = float("inf")
    first = 1_000_000
    for _ in range(args.repeat):
        entries = [_entry(args.groups, args.run) for _ in range(args.number)]
        runs = [AppendedRun(first + i * size, size) for i in range(args.number)]
        driver._capacity.value = 0
        started = time.thread_time()
        for (_, tokens), run in zip(entries, runs, strict=True):
            with settling():
                settle_applied(driver, tokens, run)  # type: ignore[arg-type]
        best_settle = min(best_settle, time.thread_time() - started)
        outboxes = []
        for made, _ in entries:
            for group in made:
                outbox = Outbox(budget.account())
                outbox.put_many(infos, GroupRun(group, 0, args.run))  # type: ignore[arg-type]
                outboxes.append(outbox)
        writers = [
            AnswerWriter(
                _Socket(),  # type: ignore[arg-type]
                outbox,
                observe=lambda tally, now: None,
                plaintext_hint=None,
            )
            for outbox in outboxes
        ]
        started = time.thread_time()
        for writer in writers:
            writer._take()
        best_answer = min(best_answer, time.thread_time() - started)
        taken = writers[-1]._take()
        assert taken is None, "a writer left answers"
    per = 1e6 / (args.number * size)
    print(
        f"an applied entry of {args.groups} x {args.run} appends, us per append (thread CPU, "
        f"best of {args.repeat}): settle {best_settle * per:.3f}, answer {best_answer * per:.3f}, "
        f"together {(best_settle + best_answer) * per:.3f}"
    )


if __name__ == "__main__":
    main()
