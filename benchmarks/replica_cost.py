"""A replica's work per pipelined append, piece by piece: ``python -m benchmarks.replica_cost``.

What a replica does with each REPLICATE of the bench's pipelined workload (one entry of a
group of ``--appends`` APPEND_MESSAGEs of a 100-byte value to one queue, a new stamp every
``--receive`` appends as the leader stamps each receive, in the compact ``APPEND_RUNS`` form
brokers of this version send each other; ``--group``: as a COMMAND_GROUP; with ``--batch
100``, the batch appends' shape instead: APPEND_BATCHes of 100 values, "per append" then
meaning per value), in the order it does it, on one thread with real SQLite in a temporary
directory (fsync on, as in the broker):

- decode: the frame's checks and the message (``message_from_payload``, as ``_peers`` decodes);
- save: ``Store.save`` persisting the new entry and applying the one before it, in one
  transaction (what a replica's Ready does under load: the commit index rides on the next
  REPLICATE), split into the same save without the apply and the apply's difference;
- views: the applied group told to the in-memory views (``applied_group`` over the read
  path's and the broker's callbacks, as ``Broker`` builds them; the snapshot's byte count is
  ``held_size``, under walks);
- ack: the REPLICATE_RESPONSE encoded;
- walks: what the driver and the snapshot room read of every command per Ready besides
  (``apply_weight`` twice, as ``_persist_after_frames`` asks it for ``APPLY_AHEAD`` and
  ``light``, and ``held_size`` as ``Snapshots.note_applied`` counts it);
- gc: the young-generation collections while all of the above ran, at the node's thresholds
  (each decoded append is one object that stays young until the log is compacted).

Each piece is CPU time of the thread (``time.thread_time``: the fsync's wait is not counted,
its system time is), median of ``--rounds`` frames after a warm-up, in microseconds per
append. The event loop's own costs (trio's scheduling, the socket calls, the hand-off to the
storage thread and back) are not in it: the bench's per-broker CPU less these pieces is them.
In the bench each piece also costs about twice what it costs here (docs/performance-history.md, "A
replica's CPU per append (third round)": the same code, measured inside a replica under load).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from trio_broker._cli._node import GC_THRESHOLDS
from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._consensus import encode_message, message_from_payload
from trio_broker._protocol._entries import payload_bytes
from trio_broker._runtime._applied import applied_group, applied_views
from trio_broker._runtime._reads import Exhausted
from trio_broker._runtime._save_place import apply_weight
from trio_broker._runtime._snapshots import held_size
from trio_broker._storage._store import Store

QUEUE = "Q-0123456789abcdef"


def create_queue(store: Store) -> None:
    """Write and apply the entry at index 1 that creates ``QUEUE``, as a new group's leader
    does."""
    create = rm.Entry(1, 1, cmd.CreateQueue(QUEUE))
    store.save(entries=[create], hard_state=rm.HardState(1, None, 0))
    store.save(committed=[create], hard_state=rm.HardState(1, None, 1))


@contextlib.contextmanager
def queue_store(directory: str) -> Iterator[Store]:
    """A store in ``directory`` whose log has created ``QUEUE`` (index 1, applied); closed
    after."""
    store = Store(directory)
    try:
        create_queue(store)
        yield store
    finally:
        store.close()


def _frame(
    index: int, count: int, receive: int, batch: int = 0, runs: bool = False
) -> tuple[bytes, rm.Entry]:
    value = dumps_value("x" * 100)
    stamp = 1_765_000_000_000 + index * count  # (never before the last frame's)
    commands: tuple[cmd.Command, ...]
    if batch:  # the batch appends' shape: APPEND_BATCHes of `batch` values, one stamp each
        commands = tuple(
            cmd.AppendBatch(QUEUE, (value,) * batch, None, None, stamp + i)
            for i in range(count // batch)
        )
    else:
        commands = tuple(
            cmd.AppendMessage(QUEUE, value, None, None, stamp + (i // receive if receive else 0))
            for i in range(count)
        )
    group = cmd.CommandGroup(commands)
    entry = rm.Entry(1, index, group)
    payload_bytes(entry, runs=runs)  # the leader's one encoding, embedded as it is
    message = rm.Replicate(
        src="B-AAAAA",
        dst="B-BBBBB",
        term=1,
        cluster_version=1,
        prev_log_index=index - 1,
        prev_log_term=1,
        leader_commit=index - 1,
        entries=(entry,),
    )
    return encode_message(message, append_runs=runs), entry


def _timed(f: Callable[[], Any]) -> tuple[float, Any]:
    started = time.thread_time()
    result = f()
    return time.thread_time() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=256)
    parser.add_argument(
        "--rounds",
        type=int,
        default=200,
        help="frames measured (200 x 256 appends: a young collection or two)",
    )
    parser.add_argument(
        "--receive",
        type=int,
        default=16,
        help="appends per stamp (one receive's, stamped by the leader's clock; 0: one stamp)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="values per APPEND_BATCH (the batch appends' shape, 100; 0: APPEND_MESSAGEs)",
    )
    parser.add_argument(
        "--gc-young",
        type=int,
        default=GC_THRESHOLDS[0],
        help="the young generation's threshold (the node's by default)",
    )
    parser.add_argument(
        "--held",
        type=int,
        default=180_000,
        help="appends the in-memory log holds before the oldest go (compaction: 64 MiB of "
        "compact_bytes at 358 bytes per append as held_size counts it)",
    )
    parser.add_argument(
        "--group",
        action="store_true",
        help="the entries as COMMAND_GROUPs (a leader with a peer that does not read the "
        "compact APPEND_RUNS form); by default APPEND_RUNS, as between brokers of this version",
    )
    args = parser.parse_args()
    gc.set_threshold(args.gc_young, *GC_THRESHOLDS[1:])  # as a node sets it
    count = args.appends
    runs = not args.group
    pieces: dict[str, list[float]] = {
        k: [] for k in ("decode", "save", "  of which the apply", "views", "ack", "walks")
    }
    collected = [0.0, 0.0]  # (the time a collection started, the total since the warm-up)
    longest: dict[int, list[float]] = {}  # generation -> [collections, the longest]

    def collecting(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collected[0] = time.thread_time()
        else:
            took = time.thread_time() - collected[0]
            collected[1] += took
            seen = longest.setdefault(info["generation"], [0, 0.0])
            seen[0] += 1
            seen[1] = max(seen[1], took)

    gc.callbacks.append(collecting)
    held: list[rm.Entry] = []
    exhausted = Exhausted()
    by_type = applied_views(lambda p, r: None, weakref.WeakValueDictionary(), lambda q: None)

    def noted(command: Any, result: Any) -> None:
        exhausted.note(command, result)
        by_type(command, result)

    told = applied_group(noted)
    with tempfile.TemporaryDirectory() as d:
        store = Store(d)
        try:
            create_queue(store)
            previous: rm.Entry | None = None
            for round_ in range(args.rounds + 5):
                index = 2 + 2 * round_
                frame, _ = _frame(index, count, args.receive, args.batch, runs)
                # without the apply: the log write alone (an entry of its own, never applied)
                _, spare = _frame(index + 1, count, args.receive, args.batch, runs)
                hs = rm.HardState(1, None, index - 1)
                bare, _ = _timed(lambda: store.save(entries=[spare], hard_state=hs))  # noqa: B023
                decode, (_, message) = _timed(lambda: message_from_payload(frame))  # noqa: B023
                (entry,) = message.entries
                committed = [previous] if previous is not None else []
                hs = rm.HardState(1, None, index - 2)
                save, results = _timed(
                    lambda: store.save(entries=[entry], hard_state=hs, committed=committed)  # noqa: B023
                )

                def views() -> None:
                    for e, result in zip(committed, results, strict=True):  # noqa: B023
                        told(e.payload.commands, result.results)

                viewed, _ = _timed(views)
                ack = rm.ReplicateResponse(
                    src="B-BBBBB",
                    dst="B-AAAAA",
                    term=1,
                    cluster_version=1,
                    success=True,
                    match_index=index,
                )
                acked, _ = _timed(lambda: encode_message(ack))  # noqa: B023

                ready_committed = tuple(committed)  # (a Ready's, asked twice)

                def walks() -> None:
                    apply_weight(ready_committed)  # noqa: B023
                    apply_weight(ready_committed)  # noqa: B023
                    for e in committed:  # noqa: B023
                        held_size(e.payload)

                walked, _ = _timed(walks)
                previous = entry
                held.append(entry)  # (the in-memory log holds it until a compaction)
                if len(held) * count > args.held:
                    del held[: len(held) // 2]  # (a compaction keeps the newest)
                if round_ == 4:
                    collected[1] = 0.0
                    longest.clear()
                if round_ >= 5 and committed:
                    pieces["decode"].append(decode)
                    pieces["save"].append(save)
                    pieces["  of which the apply"].append(save - bare)
                    pieces["views"].append(viewed)
                    pieces["ack"].append(acked)
                    pieces["walks"].append(walked)
        finally:
            store.close()
            gc.callbacks.remove(collecting)
    print(f"a replica's work per REPLICATE of {count} appends, CPU of the thread, median")
    total = 0.0
    for name, values in pieces.items():
        us = statistics.median(values) / count * 1e6
        if not name.startswith(" "):
            total += us
        print(f"  {name:<22} {us:6.2f} us per append")
    gc_us = collected[1] / (args.rounds * count) * 1e6  # (a mean: collections are rare)
    total += gc_us
    print(f"  {'gc (mean)':<22} {gc_us:6.2f} us per append")
    for generation, (n, most) in sorted(longest.items()):
        print(f"    generation {generation}: {n} collections, the longest {most * 1e3:.1f} ms")
    print(f"  {'total':<22} {total:6.2f} us per append")


if __name__ == "__main__":
    main()
