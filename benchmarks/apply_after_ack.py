"""A replica's transaction per sequential append, with its apply in it or after the
acknowledgement: ``python -m benchmarks.apply_after_ack [--rounds N]``.

In the sequential workload a replica's Ready persists append N and applies append N-1 (the
commit index rides on the next REPLICATE). Two ways to run it, alternated round by round on
one store in a temporary directory (fsync on, as in a broker):

- together: one durable transaction writes N and applies N-1; the acknowledgement of N
  waits for all of it;
- apart: a durable transaction writes N (the acknowledgement leaves then), then one at
  ``NORMAL`` applies N-1.

CPU time of the thread (``time.thread_time``: the fsync's wait is not counted, its system
time is) before the acknowledgement and in all, median over the rounds, in µs per append;
the wall time before the acknowledgement too (it holds the fsync's wait: noisy on a shared
disk).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from benchmarks.replica_cost import QUEUE, queue_store
from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._entries import payload_bytes


def _entry(index: int) -> rm.Entry:
    value = dumps_value("x" * 100)
    entry = rm.Entry(1, index, cmd.AppendMessage(QUEUE, value, None, None, 1_765_000_000_000))
    payload_bytes(entry)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    cpu = time.thread_time
    wall = time.perf_counter
    seen: dict[str, list[tuple[float, float, float]]] = {"together": [], "apart": []}
    with tempfile.TemporaryDirectory() as d, queue_store(d) as store:
        previous = _entry(2)
        store.save(entries=[previous], hard_state=rm.HardState(1, None, 1))
        for n in range(args.rounds + 20):
            entry = _entry(3 + n)
            hs = rm.HardState(1, None, previous.index)
            way = "together" if n % 2 else "apart"
            started, began = cpu(), wall()
            if way == "together":
                store.save(entries=[entry], hard_state=hs, committed=[previous])
                acked, acked_wall = cpu(), wall()
            else:
                store.save(entries=[entry], hard_state=hs)
                acked, acked_wall = cpu(), wall()
                store.save(committed=[previous])
            done = cpu()
            if n >= 20:
                seen[way].append((acked - started, done - started, acked_wall - began))
            previous = entry
    print("a replica's transaction(s) per sequential append, median µs (thread CPU)")
    print(f"  {'':<10} {'CPU to ack':>11} {'CPU in all':>11} {'wall to ack':>12}")
    for way, rows in seen.items():
        to_ack, total, wall_ack = (statistics.median(col) * 1e6 for col in zip(*rows, strict=True))
        print(f"  {way:<10} {to_ack:11.0f} {total:11.0f} {wall_ack:12.0f}")


if __name__ == "__main__":
    main()
