"""The stored checksums of a run of values, per value: ``python -m benchmarks.batch13_checksums``.

What every broker's apply computes for the values of the bench's batch appends
(``_storage/_row_sums.plain_checksums``: a run of ``--values`` values of ``--size`` bytes,
numbered from ``--first``), and a batched READ's check of the same rows: the checksums made
by ``extend`` from each prefix's checksum (``plain_checksums`` now) against the joins they
replaced (``_joined_sums``, the code before, kept for the values ``extend`` refuses).

Thread CPU (``time.thread_time_ns``) per value, the median of ``--repeat`` calls, the two
alternated within each of ``--rounds`` rounds; every round printed, then the medians
(docs/performance-history.md, "Batch appends per value on every broker (thirteenth round)").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from trio_broker._storage._row_sums import _joined_sums, plain_checksums

PLACE = b"Q-0123456789abcdef\0"


def _per_value(
    fn: Callable[[bytes, int, list[bytes]], list[int]], first: int, data: list[bytes], repeat: int
) -> float:
    spent = []
    for _ in range(repeat):
        began = time.thread_time_ns()
        fn(PLACE, first, data)
        spent.append((time.thread_time_ns() - began) / len(data))
    return statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1900)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--first", type=int, default=1_000_001)
    parser.add_argument("--repeat", type=int, default=101)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = [os.urandom(args.size) for _ in range(args.values)]
    if plain_checksums(PLACE, args.first, data) != _joined_sums(PLACE, args.first, data):
        raise SystemExit("the two ways disagree")
    before, after = [], []
    for n in range(args.rounds):
        before.append(_per_value(_joined_sums, args.first, data, args.repeat))
        after.append(_per_value(plain_checksums, args.first, data, args.repeat))
        print(f"round {n + 1}: joins {before[-1]:.1f}  extend {after[-1]:.1f} ns per value")
    print(
        f"median: joins {statistics.median(before):.1f}  extend {statistics.median(after):.1f}"
        f" ns per value ({args.values} values of {args.size} bytes from {args.first})"
    )


if __name__ == "__main__":
    main()
