"""A leader's decode of a client's APPEND_BATCH to its command, per batch:
``python -m benchmarks.batch14_decode``.

What a leader's connection does with each frame of the bench's batch appends before the
proposal: ``decode_client_request`` (the parse, the compact-JSON check, the request) and
``append_command`` (the values' stored bytes, the checks, the command). Thread CPU
(``time.thread_time_ns``) per batch, the median of ``--rounds`` rounds of ``--calls`` calls;
``--values`` values of ``--size`` characters (the bench's: 100 of 100). To compare two trees,
run it from outside both checkouts with ``PYTHONPATH`` set to an export of each, alternately
(docs/performance.md, "Batch appends per value: the save's parts, the checkpoint, the decode
(fourteenth round)").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import orjson

from trio_broker._protocol._codec import decode_client_request
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._operations import append_command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=100)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    values = ["x" * args.size] * args.values
    payload = orjson.dumps(
        {"operation": "APPEND_BATCH", "queue_name": "Q-0123456789abcdef", "values": values}
    )
    with tempfile.TemporaryDirectory() as directory:
        config = BrokerConfig(data_dir=directory, port=0)
        decode: list[float] = []
        command: list[float] = []
        for _ in range(args.rounds):
            began = time.thread_time_ns()
            for _ in range(args.calls):
                decode_client_request(payload)
            middle = time.thread_time_ns()
            for _ in range(args.calls):
                append_command(decode_client_request(payload), config, appended_ms=1)  # type: ignore[arg-type]
            ended = time.thread_time_ns()
            decode.append((middle - began) / args.calls / 1000)
            command.append((ended - middle) / args.calls / 1000)
    print(f"thread CPU per APPEND_BATCH of {args.values} values, median of {args.rounds} rounds")
    print(f"  decode_client_request             {statistics.median(decode):7.2f} us")
    print(f"  decode and append_command          {statistics.median(command):7.2f} us")


if __name__ == "__main__":
    main()
