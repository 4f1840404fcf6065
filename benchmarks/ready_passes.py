"""The per-Ready passes over a group's commands, each alone: ``python -m benchmarks.ready_passes``.

What every broker (a replica above all) runs per append besides the decode and the SQL, on a
group of ``--appends`` APPEND_MESSAGEs of a 100-byte value (the bench's pipelined REPLICATE):
``apply_weight`` asked twice of one Ready's committed entries (as the driver asks it),
``held_size`` (the compaction's count), ``CommandGroup``'s check of the group it is built of
(as the decoder builds it) and ``FrameDecoder.next_frame`` of the REPLICATE's frame
(``--frame`` bytes). CPU time of the thread (``time.thread_time``), best of ``--rounds``, in
nanoseconds per append. Run it with ``PYTHONPATH`` at each tree to compare two trees
(docs/performance-history.md, "Per-Ready passes and the collector (third round)").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._framing import FrameDecoder, encode_frame
from trio_broker._runtime._save_place import apply_weight
from trio_broker._runtime._snapshots import held_size


def _best(f: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        f()
        best = min(best, time.thread_time() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--frame", type=int, default=53_000)
    args = parser.parse_args()
    count = args.appends
    value = dumps_value("x" * 100)
    commands = tuple(
        cmd.AppendMessage("Q-0123456789abcdef", value, None, None, 1_765_000_000_000 + i // 16)
        for i in range(count)
    )
    group = cmd.CommandGroup(commands)
    frame = encode_frame(b"x" * args.frame)

    def weights() -> None:
        committed = (rm.Entry(1, 2, group),)  # (a new Ready's tuple each round)
        apply_weight(committed)
        apply_weight(committed)

    def decode_frame() -> None:
        decoder = FrameDecoder()
        decoder.feed(frame)
        decoder.next_frame()

    pieces: dict[str, Callable[[], Any]] = {
        "apply_weight x2": weights,
        "held_size": lambda: held_size(group),
        "CommandGroup(...)": lambda: cmd.CommandGroup(commands),
        "next_frame (per frame)": decode_frame,
    }
    print(f"per-Ready passes over a group of {count} appends, best of {args.rounds}")
    for name, f in pieces.items():
        per = 1 if name.endswith("(per frame)") else count
        print(f"  {name:<24} {_best(f, args.rounds) / per * 1e9:8.1f} ns")


if __name__ == "__main__":
    main()
