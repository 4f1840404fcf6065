"""A receive of whole frames is cut without copying it into a buffer first
(docs/performance-history.md, "The leader's pipelined appends (fourth round)"): its frames are
sliced out of the received bytes, one copy each; a frame left partial gathers the next receives in a
buffer, as before. And a stored value is a copy of orjson's bytes of its own size.
"""

from __future__ import annotations

import random
import tracemalloc

import orjson

from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._framing import FrameDecoder, encode_frame


def _drain(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def test_a_receive_of_whole_frames_is_not_copied_into_a_buffer():
    payloads = [b"%d" % index * 40 for index in range(4000)]
    received = b"".join(map(encode_frame, payloads))  # (about 600 kB, all whole)
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        decoder.feed(received)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < len(received) // 10  # (a buffer filled with it: its whole size)
    assert _drain(decoder) == payloads and decoder.buffered == 0


def test_frames_cut_anywhere_come_out_whole_and_in_order():
    rng = random.Random(7)
    payloads = [bytes([index % 256]) * rng.randrange(0, 300) for index in range(3000)]
    stream = b"".join(map(encode_frame, payloads))
    for _ in range(20):
        decoder = FrameDecoder()
        out: list[bytes] = []
        start = 0
        while start < len(stream):
            size = rng.choice([1, 3, 4, 5, 64, 700, 4096, 65536])
            chunk = stream[start : start + size]
            # (a bytearray fed is the caller's: it may change after, so it is copied)
            fed = bytearray(chunk) if rng.random() < 0.2 else chunk
            decoder.feed(fed)
            if type(fed) is bytearray:
                fed[:] = b"\xff" * len(fed)
            out.extend(_drain(decoder))
            start += size
        assert out == payloads and decoder.buffered == 0
        assert all(type(frame) is bytes for frame in out)


def test_a_stored_value_holds_its_own_size_not_orjsons_buffer():
    """``dumps_value`` copies orjson's bytes to an object of their size (a ``%b`` format since
    "The leader's pipelined appends"); a copy that kept orjson's object (``b"" + x``, which
    hands back ``x``) would hold its 4 KiB working buffer per value."""
    values = ["x" * 100, {"a": [1, 2.5, None]}, 12345, "é" * 30]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        held = [dumps_value(value) for _ in range(500) for value in values]
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held[: len(values)] == [orjson.dumps(value) for value in values]
    assert (after - before) / len(held) < 400  # (about 4,100 when orjson's object is kept)
