"""One worker of a consumer group, as a process of its own (tests/test_work_process.py).

    python -m tests.work_worker LOG QUEUE GROUP [--slow] SEED...

Writes one line per event to LOG, flushed at once (the test reads it while the worker runs,
and after a SIGKILL): ``got SEQ COUNT`` when a message is received, ``ack SEQ True|False``
with the answer of its ACK, ``ack-unknown SEQ`` when an ACK's outcome was lost in a failover
(the ACK is sent again). With ``--slow`` the worker never finishes a message: it holds its
leases until it is killed.
"""

from __future__ import annotations

import sys
from typing import TextIO

import trio

from trio_broker import OutcomeUnknownError, UnavailableError, connect

WORK_SECONDS = 0.02


async def main(log: TextIO, queue: str, group: str, slow: bool, seeds: list[str]) -> None:
    async with connect(seeds) as client:
        prefetch = 3 if slow else 1
        async with client.consumer_group(queue, group, prefetch=prefetch, wait=0.5) as worker:
            while True:
                try:
                    message = await worker.__anext__()
                except UnavailableError:
                    # A read lost in a failover: whatever it leased comes back after the
                    # lease runs out.
                    continue
                print(f"got {message.sequence_num} {message.delivery_count}", file=log)
                if slow:
                    await trio.sleep_forever()
                await trio.sleep(WORK_SECONDS)
                for _ in range(100):
                    try:
                        done = await message.ack()
                    except OutcomeUnknownError:
                        print(f"ack-unknown {message.sequence_num}", file=log)
                        continue
                    print(f"ack {message.sequence_num} {done}", file=log)
                    break


if __name__ == "__main__":
    args = sys.argv[1:]
    slow = "--slow" in args
    args = [a for a in args if a != "--slow"]
    with open(args[0], "a", buffering=1) as log_file:
        trio.run(main, log_file, args[1], args[2], slow, args[3:])
