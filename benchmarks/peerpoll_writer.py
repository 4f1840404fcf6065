"""One answer's way out at one request in flight, on a TCP connection's writer: thread CPU per
answer of the reader's kick after it queued a proposal's answer (the head registers its
callback) and the settle that calls it back (the write, on a stand-in socket).

    python -m benchmarks.peerpoll_writer [--rounds N] [--number N]

What ``AnswerWriter`` does per lone APPEND at 100 connections x 1 once the poller decided it
(``_runtime/_writer.py``); the figure is its Python alone (the ``write`` system call left out:
the stand-in socket keeps nothing). Run it on two trees (``PYTHONPATH``) to compare them.
"""

from __future__ import annotations

import argparse
import statistics
import time

from trio_broker._core._commands import MessageAppended
from trio_broker._runtime._direct import DirectSocket
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import Pending
from trio_broker._runtime._runs import AppendAnswer
from trio_broker._runtime._writer import AnswerWriter


class _Direct(DirectSocket):
    """A TCP connection's socket whose sends take everything at once."""

    __slots__ = ()

    def __init__(self) -> None:
        self._sending = False

    def send_now(self, data: bytes | memoryview) -> int:
        return len(data)


def _round(number: int) -> float:
    outbox = Outbox(BufferBudget(1 << 30).account())
    writer = AnswerWriter(_Direct(), outbox, observe=lambda tally, now: None, plaintext_hint=None)
    writer._idle = True  # (the writer task waits for answers)
    outcomes = [MessageAppended(n) for n in range(number)]
    put, kick = outbox.put, writer.kick
    started = time.thread_time()
    for outcome in outcomes:
        pending = Pending()
        put("APPEND", 1.0, AppendAnswer(pending), 10)
        kick()
        pending.set(outcome)
    return (time.thread_time() - started) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    figures = [_round(args.number) for _ in range(args.rounds)]
    print(
        "µs per answer (queue, kick, settle, write): "
        + " / ".join(f"{f:.3f}" for f in figures)
        + f" (median {statistics.median(figures):.3f}, best {min(figures):.3f})"
    )


if __name__ == "__main__":
    main()
