"""Answers' frames written straight from their results, without a response object or the
general encoder: an APPEND's (one or a run of them), an APPEND_BATCH's, a READ's. Each is the
bytes ``encode_frame(encode_response(...))`` writes for its response (the tests named in each
function check them). Re-exported by :mod:`._codec`, where the request path imports them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

_APPENDED = b'{"status":"success","sequence_num":%d}'
"""An APPEND's answer as orjson writes it (``duplicate`` left out when false)."""


def appended_frame(sequence_num: int) -> bytes:
    """The whole frame of the answer to an APPEND that was not a duplicate: the bytes of
    ``encode_frame(encode_response(Appended(sequence_num)))`` (tests/test_answer_encoding.py),
    without the response object or the general encoder (docs/performance-history.md, "The leader's
    request path")."""
    body = _APPENDED % sequence_num
    return len(body).to_bytes(4, "big") + body


_APPENDED_HEADS = [
    len(_APPENDED % (10 ** (digits - 1))).to_bytes(4, "big") + _APPENDED.partition(b"%d")[0]
    for digits in range(1, 21)
]
"""For each count of digits (1 to 20: every sequence number, a 64-bit integer), what an
appended answer's frame holds before its number: the length prefix and the body's start."""


def appended_frames(sequence_nums: list[int]) -> bytes:
    """The frames of the answers to several APPENDs that were not duplicates, one after the
    other: ``b"".join(map(appended_frame, sequence_nums))`` (tests/test_answer_runs.py), in
    one join (a connection's run of appends has consecutive numbers: one count of digits,
    hence one head, for all of them, unless it crosses a power of ten)."""
    digits = [b"%d" % sequence_num for sequence_num in sequence_nums]
    width = len(b"%d" % min(sequence_nums))
    if width == len(b"%d" % max(sequence_nums)):  # (numbers >= 0: one count of digits)
        head = _APPENDED_HEADS[width - 1]
        return head + (b"}" + head).join(digits) + b"}"
    return b"".join([_APPENDED_HEADS[len(number) - 1] + number + b"}" for number in digits])


_BATCH_APPENDED = b'{"status":"success","sequence_nums":%b}'


def batch_appended_frame(first: int, count: int) -> bytes:
    """The whole frame of the answer to an APPEND_BATCH that was not a duplicate (``count``
    messages from ``first``): the bytes of ``encode_frame(encode_response(BatchAppended(...)))``
    (tests/test_answer_encoding_batches.py), without cattrs."""
    body = _BATCH_APPENDED % orjson.dumps(list(range(first, first + count)))
    return len(body).to_bytes(4, "big") + body


_MESSAGE = b'{"status":"success","sequence_num":%d,"data":%b}'
_NO_MESSAGES_FRAME = (
    len(b'{"status":"success","message":"no_messages"}').to_bytes(4, "big")
    + b'{"status":"success","message":"no_messages"}'
)


def message_frame(sequence_num: int | None, data: bytes | None) -> bytes:
    """The whole frame of a single-message READ's answer: the message (``data``, the value's
    stored JSON bytes, embedded as they are) or, with ``sequence_num`` None, no message. The
    bytes ``encode_frame(encode_response(...))`` writes for ``Message`` (without headers) and
    ``NoMessages`` (tests/test_answer_encoding.py)."""
    if sequence_num is None:
        return _NO_MESSAGES_FRAME
    body = _MESSAGE % (sequence_num, data)
    return len(body).to_bytes(4, "big") + body


_BATCH_MESSAGE = b'{"sequence_num":%d,"data":%b}'
_HEADED_MESSAGE = b'{"sequence_num":%d,"data":%b,"headers":%b}'
_MESSAGES = b'{"status":"success","messages":[%b]}'


def messages_frame(messages: Sequence[Any]) -> bytes:
    """The whole frame of a READ's ``messages`` answer, written from its messages (objects
    with ``sequence_num``, ``data``, the value's stored JSON bytes embedded as they are, and
    ``headers``, pairs of strings, empty for none): the bytes ``encode_frame(encode_response(
    ...))`` writes for ``MessageBatch``, or ``HeadedMessageBatch`` when some message has headers
    (tests/test_answer_encoding_batches.py), without a response object or cattrs per message
    (docs/performance-history.md, "Batches in and out"). Both write a message without headers alike
    (``headers`` left out), so one pass decides each message's shape alone."""
    parts = [
        _HEADED_MESSAGE % (d.sequence_num, d.data, orjson.dumps(dict(d.headers)))
        if d.headers
        else _BATCH_MESSAGE % (d.sequence_num, d.data)
        for d in messages
    ]
    body = _MESSAGES % b",".join(parts)
    return len(body).to_bytes(4, "big") + body


def columns_frame(
    seqs: Sequence[int], datas: Sequence[bytes], headers: Sequence[Any] | None
) -> bytes:
    """The frame :func:`messages_frame` writes for messages given as columns: their sequence
    numbers, their stored JSON bytes and their headers (pairs of strings, empty for none; None:
    no message has headers), the same bytes (tests/test_bleader_reads.py). Messages without
    headers are written in one pass in C (``map`` of ``bytes.__mod__``), with no object or
    Python step per message (docs/performance-history.md, "Batched READs on the leader: columns
    instead of objects")."""
    if headers is None:
        parts: Any = map(_BATCH_MESSAGE.__mod__, zip(seqs, datas, strict=True))
    else:
        parts = [
            _HEADED_MESSAGE % (seq, data, orjson.dumps(dict(header)))
            if header
            else _BATCH_MESSAGE % (seq, data)
            for seq, data, header in zip(seqs, datas, headers, strict=True)
        ]
    body = _MESSAGES % b",".join(parts)
    return len(body).to_bytes(4, "big") + body
