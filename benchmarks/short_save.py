"""How long a replica's transaction holds the thread that runs it, by group size:
``python -m benchmarks.short_save``.

``Store.save`` of a new entry of N 100-byte appends (one COMMAND_GROUP, as ``replica_cost``
builds it) with the apply of the entry before, its fsync included: what a replica runs on its
event loop's thread for a frame of at most ``SHORT_COMMANDS`` commands (``_runtime/_save_place``).
Wall time (what the loop waits) and the thread's CPU, after 20 saves of warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from benchmarks.replica_cost import _frame, queue_store
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._consensus import message_from_payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 640])
    parser.add_argument("--saves", type=int, default=100)
    parser.add_argument("--dir", default=None, help="where the store is made (a temporary one)")
    args = parser.parse_args()
    for count in args.sizes:
        walls: list[float] = []
        cpus: list[float] = []
        with tempfile.TemporaryDirectory(dir=args.dir) as d, queue_store(d) as store:
            previous: rm.Entry | None = None
            for round_ in range(args.saves + 20):
                index = 2 + round_
                frame, _ = _frame(index, count, 16)
                (_, message) = message_from_payload(frame)
                assert isinstance(message, rm.Replicate)
                (entry,) = message.entries
                committed = [previous] if previous is not None else []
                hs = rm.HardState(1, None, index - 1)
                wall, cpu = time.perf_counter(), time.thread_time()
                store.save(entries=[entry], hard_state=hs, committed=committed)
                if round_ >= 20:
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.thread_time() - cpu)
                previous = entry
        p90 = statistics.quantiles(walls, n=10)[-1]
        print(
            f"{count:5} appends: wall median {statistics.median(walls) * 1e3:.2f} ms, "
            f"p90 {p90 * 1e3:.2f}, longest {max(walls) * 1e3:.2f}; "
            f"CPU median {statistics.median(cpus) * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
