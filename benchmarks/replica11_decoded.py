"""A replica's Python per decoded append, from the frame to the views:
``python -m benchmarks.replica11_decoded``.

One REPLICATE of a group of ``--appends`` plain appends to one queue in the compact
``APPEND_RUNS`` form (the bench's pipelined shape: ``--appends 239 --receive 85``, about three
runs; 100 connections x 1: ``--appends 47 --receive 20``), then everything a replica does with
its entry but the log write and the fsync (``benchmarks.replica11_fixed`` measures those):

- decode: ``message_from_payload``, as ``_peers`` decodes a frame;
- walks: ``applies_later`` (the apply lag's test), ``apply_weight`` twice (``APPLY_AHEAD`` and
  ``light``, the second answered from its cache), ``held_size`` (the snapshot room's count);
- apply: ``apply_command`` of the group inside a transaction rolled back after each round (no
  fsync: the statements and the results alone);
- views: ``applied_group`` over the broker's callbacks, as ``benchmarks.replica_cost`` builds
  them.

Thread CPU per append (``time.thread_time``), the median of ``--rounds`` rounds after a
warm-up, each of ``--repeat`` frames. Run it on two trees (``PYTHONPATH=A``, ``PYTHONPATH=B``)
alternately to compare them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.replica11_results import views_told
from benchmarks.replica_cost import _frame, queue_store
from trio_broker._protocol._consensus import message_from_payload
from trio_broker._runtime._applied import applies_later
from trio_broker._runtime._save_place import apply_weight
from trio_broker._runtime._snapshots import held_size
from trio_broker._storage._queue_sql import apply_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=239)
    parser.add_argument("--receive", type=int, default=85)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    count, repeat = args.appends, args.repeat
    told = views_told()
    parts: dict[str, list[float]] = {k: [] for k in ("decode", "walks", "apply", "views")}
    cpu = time.thread_time
    with tempfile.TemporaryDirectory() as d, queue_store(d) as store:
        db = store._db
        index = 2
        for round_ in range(args.rounds + 10):
            frames = []
            for _ in range(repeat):
                frames.append(_frame(index, count, args.receive, 0, True)[0])
                index += 1
            spent = dict.fromkeys(parts, 0.0)
            entries: list[Any] = []

            def timed(part: str, f: Callable[[], Any]) -> Any:
                started = cpu()
                result = f()
                spent[part] += cpu() - started  # noqa: B023
                return result

            for frame in frames:
                (entry,) = timed("decode", lambda: message_from_payload(frame)[1]).entries  # noqa: B023
                entries.append(entry)
            committed = tuple(entries)

            def walks() -> None:
                for e in committed:  # noqa: B023
                    applies_later(e.payload)
                apply_weight(committed)  # noqa: B023
                apply_weight(committed)  # noqa: B023
                for e in committed:  # noqa: B023
                    held_size(e.payload)

            timed("walks", walks)
            db.execute("BEGIN")
            results = [timed("apply", lambda: apply_command(db, e.payload)) for e in entries]  # noqa: B023
            db.execute("ROLLBACK")
            for e, result in zip(entries, results, strict=True):
                timed("views", lambda: told(e.payload.commands, result.results))  # noqa: B023
            if round_ >= 10:
                for part, value in spent.items():
                    parts[part].append(value / (count * repeat))
    print(
        f"a replica's group of {count} appends (a stamp every {args.receive}), µs per append,"
        f" thread CPU, median of {args.rounds}"
    )
    total = 0.0
    for part, values in parts.items():
        total += statistics.median(values)
        print(f"  {part:<7} {statistics.median(values) * 1e6:6.3f}")
    print(f"  {'all':<7} {total * 1e6:6.3f}")


if __name__ == "__main__":
    main()
