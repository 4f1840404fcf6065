"""A READ's ``messages`` answer written straight as its frame (``messages_frame`` in
``_protocol/_codec.py``, ``ConvertedAnswer.frame`` in ``_runtime/_runs.py``) is the frame the
general path writes for it (``read_answer``, ``response_for``, ``encode_response``): the
original contract's shape (../shared/PROTOCOL.md and docs/protocol.md, "READ: batches"), with
headers when some message has any, for every value and header the protocol lets through."""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_broker._core import _commands as cmd
from trio_broker._core import _work_commands as work
from trio_broker._core._commands import CreateQueue
from trio_broker._core._work_commands import MAX_HEADER_VALUE, MAX_HEADERS, Publish, Record
from trio_broker._protocol._codec import (
    INT_MAX,
    INT_MIN,
    dumps_value,
    encode_response,
)
from trio_broker._protocol._framing import DEFAULT_MAX_FRAME, encode_frame
from trio_broker._runtime._answer import Answer, response_for
from trio_broker._runtime._operations import MAX_BATCH_VALUES, MAX_READ_MESSAGES
from trio_broker._runtime._pending import Pending, PendingGroup
from trio_broker._runtime._runs import ConvertedAnswer, ReadAnswer, RunAnswer
from trio_broker._runtime._work import Mapped, read_answer
from trio_broker._storage import Store

Q = "Q-AAAAABBBBB"

TEXT = st.text(st.characters(codec="utf-8"))  # every code point a JSON string can carry
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
HEADERS = st.dictionaries(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=8),
    st.text(st.characters(codec="utf-8"), max_size=8),
    max_size=3,
).map(lambda h: tuple(sorted(h.items())))
"""Headers as the store hands them back (``decode_headers``: sorted pairs, empty for none)."""


def _general(result: work.Delivered) -> bytes:
    """What the connection's writer sends for this result without a frame of its own."""
    return encode_frame(encode_response(response_for(read_answer(result))))


def _frame(result: work.Delivered) -> bytes | None:
    group = PendingGroup(1)
    answer = ConvertedAnswer(group, 0, read_answer)
    assert answer.frame() is None  # not known yet
    group.set(0, result)
    return answer.frame()


def _delivered(values: list[object], headers: list[tuple[tuple[str, str], ...]] | None = None):
    headers = headers or [()] * len(values)
    return work.Delivered(
        tuple(
            work.Delivery(seq, dumps_value(value), h, 1)
            for seq, (value, h) in enumerate(zip(values, headers, strict=True), 1)
        )
    )


@settings(max_examples=150)
@given(st.lists(st.tuples(JSON, HEADERS | st.just(())), max_size=12), st.integers(1, 2**62))
def test_a_batched_read_writes_the_general_paths_frame(messages, first):
    """Empty, one or many messages, any JSON value (unicode included), with or without
    headers: the frame is the general path's, byte for byte."""
    result = work.Delivered(
        tuple(
            work.Delivery(seq, dumps_value(value), headers, 1)
            for seq, (value, headers) in enumerate(messages, first)
        )
    )
    frame = _frame(result)
    assert frame == _general(result)
    body = orjson.loads(frame[4:])  # type: ignore[index]
    assert len(frame) - 4 == int.from_bytes(frame[:4], "big")  # type: ignore[index]
    assert body["status"] == "success"
    assert [m["sequence_num"] for m in body["messages"]] == [
        d.sequence_num for d in result.messages
    ]
    with_headers = any(d.headers for d in result.messages)
    for message, delivery in zip(body["messages"], result.messages, strict=True):
        assert orjson.dumps(message["data"]) == delivery.data
        if with_headers and delivery.headers:
            assert message["headers"] == dict(delivery.headers)
        else:
            assert "headers" not in message
        assert "delivery_count" not in message


def test_an_empty_batch_is_an_empty_list():
    frame = _frame(work.Delivered(()))
    assert frame == _general(work.Delivered(()))
    assert frame[4:] == b'{"status":"success","messages":[]}'  # type: ignore[index]


def test_the_largest_batches_write_the_general_paths_frame():
    """The protocol's limits: 1,000 messages; one value of the largest size a frame takes;
    the most headers, each of the longest value, in characters that take 4 bytes."""
    many = _delivered([{"n": i, "s": "é" * 50} for i in range(MAX_READ_MESSAGES)])
    assert _frame(many) == _general(many)
    big = _delivered(["x" * (DEFAULT_MAX_FRAME - 300)])
    assert _frame(big) == _general(big)
    headers = tuple((f"h{i:02d}", "\U0001f600" * MAX_HEADER_VALUE) for i in range(MAX_HEADERS))
    headed = _delivered(["a", '"quoted"\\\n\x00', 7], [headers, (), (("k", "\x1f"),)])
    assert _frame(headed) == _general(headed)


def test_a_store_read_of_the_messages_form_writes_the_general_paths_frame(tmp_path: Path):
    """What the store really hands back for a READ of the messages form (moving and peeking),
    values with and without headers, is written as the general path writes it."""
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(Q)])
        records = tuple(
            Record(dumps_value(v), (("trace", "t-\u00e9"),) if i % 3 == 0 else ())
            for i, v in enumerate([1, 1.5, True, None, "7", {"a": [1, "ü"]}, "\U0001f600"])
        )
        store.apply([Publish(Q, records, appended_ms=1000)])
        results = store.apply(
            [
                work.ReadRecords("C-PEEK", Q, 1000, peek=True),
                work.ReadRecords("C-MOVE", Q, 4),
                work.ReadRecords("C-MOVE", Q, 1000),
                work.ReadRecords("C-MOVE", Q, 1000),
            ]
        )
    finally:
        store.close()
    assert [type(r) for r in results] == [work.Delivered] * 4
    assert [len(r.messages) for r in results] == [7, 4, 3, 0]
    for result in results:
        assert _frame(result) == _general(result)


def test_a_read_decided_alone_writes_the_general_paths_frame():
    """A READ that a receive carried alone is answered through the broker's ``_read``
    (``ReadAnswer``): its frame is the general path's too, for the messages form, a single
    message and no message; a refusal takes the general path."""
    results = [
        _delivered([1, "ü", {"a": None}], [(), (("k", "v"),), ()]),
        _delivered([]),
        cmd.MessageRead(5, b'"five"'),
        cmd.MessageRead(None, None),
    ]
    for result in results:
        pending = Pending()
        answer = ReadAnswer(later=Mapped(pending, read_answer))
        assert answer.frame() is None  # not known yet
        pending.set(result)
        general = encode_frame(encode_response(Answer(later=Mapped(pending, read_answer)).known()))
        assert answer.frame() == general
    refused = Pending()
    refused.set(cmd.CommandRejected("QUEUE_NOT_FOUND", "no such queue"))
    assert ReadAnswer(later=Mapped(refused, read_answer)).frame() is None


# -- APPEND_BATCH's answer ---------------------------------------------------------------------


@given(st.integers(1, 2**62), st.integers(1, MAX_BATCH_VALUES), st.booleans())
def test_a_batch_append_answer_writes_the_general_paths_frame(first, count, duplicate):
    """An APPEND_BATCH's answer written from its first sequence number and count is the
    general path's frame; a duplicate's (``"duplicate": true``) takes the general path."""
    result = cmd.BatchAppended(first, count, duplicate)
    group = PendingGroup(1)
    answer = RunAnswer(group, 0)
    assert answer.frame() is None  # not known yet
    group.set(0, result)
    general = encode_frame(encode_response(response_for(result)))
    if duplicate:
        assert answer.frame() is None
        return
    assert answer.frame() == general
    assert orjson.loads(general[4:]) == {
        "status": "success",
        "sequence_nums": list(range(first, first + count)),
    }
