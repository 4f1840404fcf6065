"""Two per-message costs of the eighth round, thread CPU, best of ``--repeat``:
``python -m benchmarks.ack_and_pump``.

- a REPLICATE_RESPONSE written (``encode_message``: each replica, once per REPLICATE) and
  read (``message_from_payload``: the leader, once per replica per REPLICATE), and read from
  its parsed object alone (``message_from_obj``, the converter's part of the read);
- ``AnswerWriter.pump`` with a head not known yet (the reader's kick after it queued a
  proposal's answer: once per request at one request in flight).

docs/performance-history.md, "Pipelined appends and 100 connections (eighth round)". Runs on
any tree of this round (PYTHONPATH pointing at an export of it)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson

from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._consensus import encode_message, message_from_obj, message_from_payload
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import Pending
from trio_broker._runtime._runs import AppendAnswer
from trio_broker._runtime._writer import AnswerWriter


def _best(part: Callable[[], Any], number: int, repeat: int) -> float:
    """Microseconds of thread CPU per call, the best of ``repeat`` timings."""
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(number):
            part()
        times.append((time.thread_time() - start) / number * 1e6)
    return min(times)


class _Socket:
    def send_now(self, data: bytes) -> int:
        return len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--number", type=int, default=5000)
    args = parser.parse_args()
    ack = rm.ReplicateResponse(
        src="B-BBBBB", dst="B-AAAAA", term=3, cluster_version=1, success=True, match_index=123456
    )
    frame = encode_message(ack, "G-AAAAA")
    obj = orjson.loads(encode_message(ack))

    outbox = Outbox(BufferBudget(1 << 30).account())
    writer = AnswerWriter(
        _Socket(),  # type: ignore[arg-type]
        outbox,
        observe=lambda tally, now: None,
        plaintext_hint=None,
    )
    writer._on_known = writer.pump  # (as on a DirectSocket)
    writer._idle = True
    outbox.put("APPEND", 1.0, AppendAnswer(Pending()), 100)

    parts = {
        "ack written": lambda: encode_message(ack, "G-AAAAA"),
        "ack read": lambda: message_from_payload(frame),
        "ack read from its object": lambda: message_from_obj(dict(obj)),
        "pump, head not known": writer.pump,
    }
    for name, part in parts.items():
        print(f"{name:<26} {_best(part, args.number, args.repeat):7.3f} us per call")


if __name__ == "__main__":
    main()
