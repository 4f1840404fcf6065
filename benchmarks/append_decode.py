"""``decode_request``'s CPU per APPEND frame of the original contract, by shape.

    python -m benchmarks.append_decode [--number 20000] [--repeat 7]

Each shape is timed on its own thread's CPU (``time.thread_time``, best of ``--repeat`` runs of
``--number`` decodings), so the figures hold on a machine shared with other work: three fields
as this project's clients write them (the fast path), four with the ``client_id`` old clients
send on every request, each with a small and a 2 kB value. Runs on the code before a change too
(``PYTHONPATH`` to an export of it), so that two trees can be compared, alternated.
"""

from __future__ import annotations

import argparse
import time

from trio_broker._protocol import decode_request

QUEUE = b"Q-XYZ78K589Z"
BIG = b'{"k":"' + b"v" * 2000 + b'"}'
THREE = b'{"operation":"APPEND","queue_name":"%s","data":%s}'
FOUR = b'{"operation":"APPEND","queue_name":"%s","data":%s,"client_id":"C-AAAAA"}'
SHAPES = {
    "3 fields, small": THREE % (QUEUE, b"12345"),
    "4 fields, small": FOUR % (QUEUE, b"12345"),
    "3 fields, 2 kB": THREE % (QUEUE, BIG),
    "4 fields, 2 kB": FOUR % (QUEUE, BIG),
}


def best_us(frame: bytes, number: int, repeat: int) -> float:
    """The least thread CPU of one decoding of ``frame``, in microseconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(number):
            decode_request(frame)
        best = min(best, time.thread_time() - start)
    return best / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    for name, frame in SHAPES.items():
        print(f"{name:16s} {best_us(frame, args.number, args.repeat):.3f} us")


if __name__ == "__main__":
    main()
