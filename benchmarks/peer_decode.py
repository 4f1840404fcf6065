"""A replica's decoding of one REPLICATE frame, on one core.

    python -m benchmarks.peer_decode [--appends 128]

Decodes a REPLICATE carrying one COMMAND_GROUP entry of ``--appends`` APPEND_MESSAGEs of a
100-byte value (the bench's pipelined workload) as ``read_peer_stream`` does: the frame's
checks (``loads_object``; ``--exact`` also times the exact checks it falls back to, for frames
orjson does not write back as they are), then the message
(``message_from_obj``), best of 7 in CPU time of
the thread (on a shared machine, less noisy than wall time), in microseconds per frame and
per append.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol import _codec
from trio_broker._protocol._codec import dumps_value, loads_object
from trio_broker._protocol._consensus import encode_message, message_from_obj


def _best_us(f: Callable[[], Any], number: int = 200) -> float:
    return min(timeit.repeat(f, number=number, repeat=7, timer=time.thread_time)) / number * 1e6


def _exact_checks(frame: bytes, obj: dict[str, Any]) -> bool:
    """What ``loads_object`` checks when orjson does not write the frame back as it is."""
    key_ends = _codec._key_ends(frame)
    return _codec._has_long_digits(frame) or (
        key_ends != len(obj) and key_ends != _codec._key_count(obj)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=128)
    count = parser.parse_args().appends
    value = dumps_value("x" * 100)
    group = cmd.CommandGroup(
        tuple(
            cmd.AppendMessage("Q-0123456789abcdef", value, None, None, 1_765_000_000_000 + i)
            for i in range(count)
        )
    )
    message = rm.Replicate(
        src="B-AAAAA",
        dst="B-BBBBB",
        term=3,
        cluster_version=1,
        prev_log_index=999,
        prev_log_term=3,
        leader_commit=998,
        entries=(rm.Entry(3, 1000, group),),
    )
    frame = encode_message(message)
    assert message_from_obj(loads_object(frame)) == message
    obj = loads_object(frame)
    rows = [
        ("orjson.loads alone", lambda: orjson.loads(frame)),
        ("loads_object", lambda: loads_object(frame)),
        ("  its exact checks (long digits, keys)", lambda: _exact_checks(frame, obj)),
        ("message_from_obj", lambda: message_from_obj(obj)),
        ("the whole frame", lambda: message_from_obj(loads_object(frame))),
    ]
    print(f"REPLICATE of {count} appends, {len(frame):,} bytes")
    for label, f in rows:
        us = _best_us(f)
        print(f"  {label:<36} {us:8.1f} us   {us / count:6.2f} us per append")


if __name__ == "__main__":
    main()
