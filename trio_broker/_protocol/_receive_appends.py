"""A receive's APPENDs decoded together: one parse for the frames of one receive.

Under pipelined load a client connection's receive holds many frames (16 at the bench's 16 in
flight), each the original contract's APPEND as orjson writes it. Decoding them one by one
(:func:`~._codec.decode_client_request`) pays a call into orjson and the calls around it per
frame; parsing them as one JSON array pays the call once per receive (docs/performance-history.md,
"The leader's CPU per pipelined append (twelfth round)").
"""

from __future__ import annotations

from itertools import repeat

import orjson

from ._codec import _APPEND_QUEUE_START, MAX_ID_LENGTH, PlainAppend

_starts_with = bytes.startswith


def decode_plain_appends(payloads: list[bytes]) -> list[PlainAppend] | None:
    """What :func:`~._codec.decode_client_request` makes of each of ``payloads`` (the frames
    of one receive, in order) when every one is the original contract's APPEND of a string
    value written as orjson writes it: its :data:`~._codec.PlainAppend`, the same tuple.
    None when any frame is not (or is not valid JSON): the caller then decodes each frame by
    itself, as before, with its errors.

    Why one parse of ``[`` + the payloads joined by commas + ``]`` proves each frame: every
    element is checked to be an object of exactly three keys, ``operation`` equal to
    ``"APPEND"``, string ``queue_name`` and ``data``; such an object is written in at least
    ``48 + len(queue) + len(value)`` bytes (the proof in
    :func:`~._codec.decode_client_request`), and each payload is checked to be exactly that
    long. The array's text is the payloads' bytes, the commas and the brackets; its parse
    spends at least that many bytes on each element, so on none more and on no whitespace
    between them: element ``j`` is exactly payload ``j``'s bytes (a whole JSON value by
    itself), written compactly with every character in one byte. Each payload starts with
    ``{"operation":"APPEND","queue_name":``, so its third key is ``data``, and its value's
    bytes are the slice the one-frame path takes."""
    if not all(map(_starts_with, payloads, repeat(_APPEND_QUEUE_START))):
        return None
    try:
        objects = orjson.loads(b"[" + b",".join(payloads) + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(objects) != len(payloads):
        return None
    decoded: list[PlainAppend] = []
    add = decoded.append
    try:
        for obj, payload in zip(objects, payloads, strict=True):
            queue, value = obj["queue_name"], obj["data"]
            if (
                type(value) is not str
                or type(queue) is not str
                or len(obj) != 3
                or len(payload) != 48 + len(queue) + len(value)
                or len(queue) > MAX_ID_LENGTH
                or obj["operation"] != "APPEND"
            ):
                return None
            add((queue, payload[45 + len(queue) : -1], value))
    except (KeyError, TypeError):  # (a key missing; an element that is not an object)
        return None
    return decoded


__all__ = ["decode_plain_appends"]
