"""The request metrics' cost per write of answers, on one thread.

    python -m benchmarks.metrics_writes [--writes N] [--repeat R]

What a connection's writer hands the metrics at each write (``BrokerMetrics.observe_batch``:
a tally of its answers per operation, outcome and receive start), timed on the thread's CPU
(``time.thread_time``, best of ``--repeat``) over ``--writes`` writes, then one read of the
series as a scrape reads them (so that counting left for the read is counted too). Three
shapes: one answer per write (100 connections x 1 in flight), each write's latency the same
or spread (seeded, 0.2 to 30 ms: over six buckets, in no order), and a receive of 16 APPENDs
per write (the pipelined workload). Runs on the code before a change too.

It measures under the node's garbage collector settings (``_cli._node.GC_THRESHOLDS``, and
what was built before the timings frozen, as the node freezes what its start-up built),
imported from there, not copied: a broker's writer runs at those, and at Python's defaults a
young collection every 700 net allocations would be charged to the path measured here, a cost
the broker does not pay (docs/performance-history.md, "Per-replica Python": 1.28 -> 0.18 us of
collections per append).
"""

from __future__ import annotations

import argparse
import gc
import random
import time

from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._runtime._metrics import BrokerMetrics


def _cost(per_write: int, writes: int, repeat: int, *, spread: bool = False) -> float:
    best = float("inf")
    rng = random.Random(7)
    took = [rng.uniform(0.0002, 0.03) if spread else 0.002 for _ in range(writes)]
    for _ in range(repeat):
        metrics = BrokerMetrics(broker=None)  # type: ignore[arg-type]
        tallies = [
            ({("APPEND", None, 1000.0 + i * 0.001): per_write}, 1000.0 + i * 0.001 + took[i])
            for i in range(writes)
        ]
        started = time.thread_time()
        for tally, now in tallies:
            metrics.observe_batch(tally, now)
        for _family in metrics.requests.collect():  # (a read: whatever waits is counted)
            pass
        best = min(best, time.thread_time() - started)
    return best / writes * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)  # (as the node runs: see the module's docstring)
    gc.freeze()
    one = _cost(1, args.writes, args.repeat)
    spread = _cost(1, args.writes, args.repeat, spread=True)
    sixteen = _cost(16, args.writes, args.repeat)
    print(
        f"request metrics per write (thread CPU, best of {args.repeat}): one answer "
        f"{one:.3f} us, latencies spread {spread:.3f}; 16 answers of one receive "
        f"{sixteen:.3f} us ({sixteen / 16:.3f} per answer)"
    )


if __name__ == "__main__":
    main()
