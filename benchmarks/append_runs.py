"""A group of appends as a COMMAND_GROUP and as APPEND_RUNS: the leader's encoding, a
replica's decoding and the bytes, on one core.

    python -m benchmarks.append_runs [--appends 512] [--stamps 8] [--queues 1]

A group of ``--appends`` plain appends of a 100-byte value (the bench's pipelined workload:
``"x" * 100``, 102 bytes of JSON) to ``--queues`` queues, stamped with ``--stamps`` distinct
milliseconds in order (a leader stamps each request as it arrives: a few per group). For each
form: the leader's ``payload_bytes`` (the group encoded once for its log and every REPLICATE),
a replica's ``message_from_payload`` of the REPLICATE frame carrying it (what
``read_peer_stream`` does per frame: parse, check, decode, keep the bytes for the log), and
the payload's bytes per append (what the log stores and REPLICATE carries). Best and median
of 7 in CPU time of the thread (``time.thread_time``: on a shared machine, less noisy than
wall time), in microseconds per append.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._consensus import encode_message, message_from_payload
from trio_broker._protocol._entries import payload_bytes


def _per_append_us(f: Callable[[], Any], count: int, number: int = 40) -> tuple[float, float]:
    runs = []
    for _ in range(7):
        started = time.thread_time()
        for _ in range(number):
            f()
        runs.append((time.thread_time() - started) / number / count * 1e6)
    return min(runs), statistics.median(runs)


def _group(count: int, stamps: int, queues: int) -> cmd.CommandGroup:
    ids = [f"Q-{n:05d}ABCDEFGHIJK" for n in range(queues)]
    return cmd.CommandGroup(
        tuple(
            cmd.AppendMessage(
                ids[i * queues // count],
                dumps_value("x" * 100),
                None,
                None,
                1_765_000_000_000 + i * stamps // count,
            )
            for i in range(count)
        )
    )


def _replicate(entry: rm.Entry) -> rm.Replicate:
    return rm.Replicate(
        src="B-AAAAA",
        dst="B-BBBBB",
        term=3,
        cluster_version=1,
        prev_log_index=entry.index - 1,
        prev_log_term=3,
        leader_commit=entry.index - 1,
        entries=(entry,),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=512)
    parser.add_argument("--stamps", type=int, default=8)
    parser.add_argument("--queues", type=int, default=1)
    args = parser.parse_args()
    count = args.appends
    group = _group(count, args.stamps, args.queues)
    print(
        f"a group of {count} appends of a 102-byte value, {args.stamps} stamps, "
        f"{args.queues} queue(s); us per append, best / median of 7 (thread CPU)"
    )
    for label, runs in (("COMMAND_GROUP", False), ("APPEND_RUNS", True)):
        entry = rm.Entry(3, 1000, group)
        encoded = payload_bytes(entry, runs)
        frame = encode_message(_replicate(entry), append_runs=runs)
        (received,) = message_from_payload(frame)[1].entries  # type: ignore[union-attr]
        assert received == entry and received.encoded == encoded

        def encode(runs: bool = runs) -> None:
            payload_bytes(rm.Entry(3, 1000, group), runs)

        def decode(frame: bytes = frame) -> None:
            message_from_payload(frame)

        leader = _per_append_us(encode, count)
        replica = _per_append_us(decode, count)
        print(
            f"  {label:<14} leader encode {leader[0]:.3f} / {leader[1]:.3f}   "
            f"replica decode {replica[0]:.3f} / {replica[1]:.3f}   "
            f"payload {len(encoded) / count:.1f} B, REPLICATE frame {len(frame) / count:.1f} B"
        )


if __name__ == "__main__":
    main()
