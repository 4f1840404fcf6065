"""``FrameDecoder.next_frame`` reading its buffer and position once per frame
(docs/performance-history.md, "The leader's request path (seventh round)"), against a frozen copy of
it before: frames cut at every byte boundary (one cut and every two), several frames per receive,
bytes and bytearray receives, receives taken whole, a frame larger than the maximum after whole
ones, and a PEER_HELLO whose receive carries the peer's first frames (handed on with the
decoder)."""

from __future__ import annotations

import random

import orjson
import pytest

from trio_broker._protocol._framing import (
    _HEADER,
    HEADER_SIZE,
    FrameDecoder,
    FrameTooLarge,
    encode_frame,
)

MAX = 64


class _Before(FrameDecoder):
    """``next_frame`` as it was before the seventh round (7e2755c)."""

    def next_frame(self) -> bytes | None:
        avail = len(self._buf) - self._pos
        if avail < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(self._buf, self._pos)
        if length > self.max_frame:
            raise FrameTooLarge(length, self.max_frame)
        end = self._pos + HEADER_SIZE + length
        if len(self._buf) < end:
            return None
        if type(self._buf) is bytes:
            payload = self._buf[self._pos + HEADER_SIZE : end]
            self._pos = end
            return payload
        with memoryview(self._buf) as view, view[self._pos + HEADER_SIZE : end] as part:
            payload = part.tobytes()
        self._pos = end
        return payload


def _drain(decoder: FrameDecoder) -> list[object]:
    out: list[object] = []
    try:
        while (frame := decoder.next_frame()) is not None:
            assert type(frame) is bytes
            out.append(frame)
    except FrameTooLarge as exc:
        out.append(("too large", exc.length, exc.maximum))
    out.append(("buffered", decoder.buffered))
    return out


def _receive(decoder: FrameDecoder, chunk: bytes, as_bytearray: bool) -> list[object]:
    """A receive as a connection takes it: whole when it is one frame, else fed and cut."""
    if as_bytearray:
        fed = bytearray(chunk)
        decoder.feed(fed)
        fed[:] = b"\xff" * len(fed)  # (the caller's buffer, reused: must not show through)
        return _drain(decoder)
    whole = decoder.take_whole(chunk)
    return [whole, ("buffered", decoder.buffered)] if whole is not None else _drain(decoder)


def _both(chunks: list[bytes], as_bytearray: bool = False) -> list[object]:
    now, before = FrameDecoder(MAX), _Before(MAX)
    seen: list[object] = []
    for chunk in chunks:
        got = _receive(now, chunk, as_bytearray)
        assert got == _receive(before, chunk, as_bytearray), chunks
        seen.extend(got)
    return [item for item in seen if type(item) is bytes]


PAYLOADS = [b"", b"{}", b"a" * MAX, b'{"x":1}', b"z"]
STREAM = b"".join(map(encode_frame, PAYLOADS))


@pytest.mark.parametrize("as_bytearray", [False, True])
def test_frames_cut_at_every_byte_and_every_two_bytes_come_out_whole(as_bytearray):
    for cut in range(len(STREAM) + 1):
        assert _both([STREAM[:cut], STREAM[cut:]], as_bytearray) == PAYLOADS
    small = b"".join(map(encode_frame, PAYLOADS[:3]))
    for first in range(len(small) + 1):
        for second in range(first, len(small) + 1):
            chunks = [small[:first], small[first:second], small[second:]]
            assert _both(chunks, as_bytearray) == PAYLOADS[:3]


def test_random_receives_of_several_frames_each():
    rng = random.Random(11)
    payloads = [bytes([index % 256]) * rng.randrange(MAX + 1) for index in range(400)]
    stream = b"".join(map(encode_frame, payloads))
    for _ in range(10):
        chunks, start = [], 0
        while start < len(stream):
            size = rng.choice([1, 4, 5, 70, 200, 1000])
            chunks.append(stream[start : start + size])
            start += size
        assert _both(chunks, rng.random() < 0.3) == payloads


def test_a_frame_too_large_after_whole_ones_is_refused_where_it_starts():
    over = _HEADER.pack(MAX + 1) + b"b" * (MAX + 1)
    stream = STREAM + over
    for cut in range(len(stream) + 1):
        for as_bytearray in (False, True):
            now = FrameDecoder(MAX)
            got = _receive(now, stream[:cut], as_bytearray) + _receive(
                now, stream[cut:], as_bytearray
            )
            frames = [item for item in got if type(item) is bytes]
            assert frames == PAYLOADS
            assert ("too large", MAX + 1, MAX) in got
            with pytest.raises(FrameTooLarge):  # (again: the stream cannot go on)
                now.next_frame()
            assert now.buffered == len(stream) - len(STREAM)
            before = _Before(MAX)
            assert got == _receive(before, stream[:cut], as_bytearray) + _receive(
                before, stream[cut:], as_bytearray
            )


def test_a_peer_hello_then_the_peers_frames_in_one_receive():
    """The connection takes the PEER_HELLO; the same decoder, handed on, holds the peer's
    frames that came with it (and the start of one more), and gives them in order."""
    hello = orjson.dumps({"operation": "PEER_HELLO", "broker_id": "B-AAAAA"})
    peer = [b'{"type":"HEARTBEAT","n":%d}' % n for n in range(3)]
    stream = encode_frame(hello) + b"".join(map(encode_frame, peer))
    for cut in range(len(encode_frame(hello)) + 1, len(stream) + 1):
        for decoder in (FrameDecoder(), _Before()):
            assert decoder.take_whole(stream[:cut]) is None  # (more than one frame)
            assert decoder.next_frame() == hello
            assert decoder.buffered == cut - len(encode_frame(hello))
            out = _drain(decoder)
            decoder.feed(stream[cut:])
            out += _drain(decoder)
            assert [item for item in out if type(item) is bytes] == peer
            assert decoder.buffered == 0
