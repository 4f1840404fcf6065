"""A pipelined receive's read on the leader, frame by frame against all together: thread CPU
per APPEND (docs/performance-history.md, "The leader's CPU per pipelined append (twelfth round)").

A receive of ``--run`` APPENDs of the bench's 100-byte value, from the bytes to the run that
``handle_many`` decides, as ``ConnectionServer._read_requests`` reads it:

- **one by one**: ``next_frame``, the buffer's ``take``, ``decode_client_request``, and the
  request and its ``(operation, start, bytes)`` appended to the run, per frame (the loop);
- **together**: the frames cut at once, ``decode_plain_appends`` (one parse), one ``take``,
  the run extended (the pipelined receive's path).

    python -m benchmarks.leader12_read [--run 16]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from itertools import repeat

import orjson

from trio_broker._cli._bench import PAYLOAD
from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._protocol import encode_frame
from trio_broker._protocol._codec import decode_client_request
from trio_broker._protocol._framing import FrameDecoder
from trio_broker._protocol._receive_appends import decode_plain_appends
from trio_broker._runtime._connections import _whole_frames
from trio_broker._runtime._limits import BufferBudget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=int, default=16)
    parser.add_argument("--number", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)
    payload = orjson.dumps({"operation": "APPEND", "queue_name": "Q-" + "0" * 32, "data": PAYLOAD})
    receive = encode_frame(payload) * args.run
    decoder = FrameDecoder()
    account = BufferBudget(1 << 40).account()
    run: list[object] = []
    run_info: list[tuple[str, float, int]] = []

    def one_by_one() -> None:
        decoder.feed(receive)
        started = time.perf_counter()
        while (frame := decoder.next_frame()) is not None:
            charged = len(frame)
            account.take(charged)
            run.append(decode_client_request(frame))
            run_info.append(("APPEND", started, charged))
        run.clear()
        run_info.clear()

    def together() -> None:
        decoder.feed(receive)
        started = time.perf_counter()
        frames = _whole_frames(decoder)
        plain = decode_plain_appends(frames)
        assert plain is not None
        account.take(sum(map(len, frames)))
        run.extend(plain)
        run_info.extend(zip(repeat("APPEND"), repeat(started), map(len, frames)))
        run.clear()
        run_info.clear()

    def best(part: Callable[[], None]) -> float:
        figures = []
        for _ in range(args.repeat):
            began = time.thread_time()
            for _ in range(args.number):
                part()
            figures.append((time.thread_time() - began) / (args.number * args.run) * 1e6)
        return min(figures)

    for _ in range(3):
        a, b = best(one_by_one), best(together)
        print(
            f"a receive of {args.run} APPENDs, us per APPEND (thread CPU, best of "
            f"{args.repeat}): one by one {a:.3f}, together {b:.3f}"
        )


if __name__ == "__main__":
    main()
