"""The codec's shortcuts for the most frequent requests and answers (``_protocol/_codec.py``)
give what the general path gives: answers encoded without building their object first are the
general path's bytes, which are the original contract's shapes (../shared/PROTOCOL.md);
APPEND and READ decoded without the converter are the converter's requests, or refused like
it; long runs of digits are found as the regular expression finds them."""

from __future__ import annotations

import re
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trio_broker._core import _commands as cmd
from trio_broker._core import _work_commands as work
from trio_broker._errors import ErrorCode, ProtocolError
from trio_broker._protocol import _messages as m
from trio_broker._protocol._codec import (
    INT_MAX,
    INT_MIN,
    MAX_ID_LENGTH,
    _has_long_digits,
    _key_ends,
    appended_frame,
    converter,
    decode_request,
    dumps_value,
    encode_response,
    request_from_dict,
    response_to_dict,
    stored_value,
)
from trio_broker._protocol._framing import encode_frame
from trio_broker._runtime._answer import Answer, response_for
from trio_broker._runtime._pending import PendingGroup
from trio_broker._runtime._runs import ConvertedAnswer, RunAnswer
from trio_broker._runtime._work import appended_answer, read_answer

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
SEQUENCE = st.integers(1, 2**63 - 1)


def general(response: m.Response) -> bytes:
    return orjson.dumps(response_to_dict(response))


@given(SEQUENCE, st.booleans())
def test_an_append_answer_is_the_contracts_bytes(sequence_num, duplicate):
    response = response_for(cmd.MessageAppended(sequence_num, duplicate))
    assert response == m.Appended(sequence_num, duplicate)
    encoded = encode_response(response)
    assert encoded == general(response)
    expected = {"status": "success", "sequence_num": sequence_num}
    assert orjson.loads(encoded) == (expected | {"duplicate": True} if duplicate else expected)


@given(SEQUENCE, st.booleans())
def test_a_run_answer_writes_an_appended_frame_as_the_general_path(sequence_num, duplicate):
    """The writer's frame of an appended message is the frame of its general answer; a
    duplicate's answer (``"duplicate": true``) takes the general path."""
    result = cmd.MessageAppended(sequence_num, duplicate)
    group = PendingGroup(2)
    answer = RunAnswer(group, 1)
    assert answer.frame() is None  # not known yet
    group.set(1, result)
    general_frame = encode_frame(encode_response(response_for(result)))
    assert answer.known() == response_for(result)
    if duplicate:
        assert answer.frame() is None
    else:
        assert answer.frame() == general_frame == appended_frame(sequence_num)


@given(SEQUENCE, JSON)
def test_a_read_answer_writes_its_message_frame_as_the_general_path(sequence_num, value):
    """The writer's frame of a single-message READ is the frame of its general answer, for a
    message (its stored bytes embedded as they are) and for no message."""
    group = PendingGroup(2)
    message, empty = (ConvertedAnswer(group, i, read_answer) for i in range(2))
    assert message.frame() is None  # not known yet
    results = [cmd.MessageRead(sequence_num, dumps_value(value)), cmd.MessageRead(None, None)]
    for index, result in enumerate(results):
        group.set(index, result)
    for answer, result in zip((message, empty), results, strict=True):
        assert answer.frame() == encode_frame(encode_response(response_for(result)))
        assert encode_response(answer.known()) == encode_response(response_for(result))
    assert orjson.loads(message.frame()[4:]) == {  # type: ignore[index]
        "status": "success",
        "sequence_num": sequence_num,
        "data": orjson.loads(dumps_value(value)),
    }


def test_other_converted_answers_have_no_frame_of_their_own():
    """A READ of the messages form, an append with headers, a refusal: the general path."""
    group = PendingGroup(3)
    group.set(0, cmd.MessagesRead([(3, b'"x"')]))
    group.set(1, cmd.CommandRejected(ErrorCode.QUEUE_NOT_FOUND, "no such queue"))
    group.set(2, work.Published(9, 1))
    request = m.Append("Q-AAAAABBBBB", "x", headers={"a": "b"})
    answers = [
        ConvertedAnswer(group, 0, read_answer),
        ConvertedAnswer(group, 1, read_answer),
        ConvertedAnswer(group, 2, appended_answer(request)),
    ]
    assert [a.frame() for a in answers] == [None, None, None]
    assert all(a.known() is not None for a in answers)


def test_other_answers_have_no_frame_of_their_own():
    """Every other result, and every other kind of answer, is encoded by the writer."""
    group = PendingGroup(3)
    group.set(0, cmd.PositionSet(7))
    group.set(1, cmd.CommandRejected(ErrorCode.QUEUE_NOT_FOUND, "no such queue"))
    group.set(2, None)
    assert [RunAnswer(group, i).frame() for i in range(3)] == [None, None, None]
    assert Answer(now=m.Appended(5)).frame() is None


@given(SEQUENCE, JSON)
def test_a_read_answer_carries_the_stored_value_as_it_is(sequence_num, value):
    stored = dumps_value(value)
    response = response_for(cmd.MessageRead(sequence_num, stored))
    encoded = encode_response(response)
    assert encoded == general(response)
    assert encoded == b'{"status":"success","sequence_num":%d,"data":%s}' % (sequence_num, stored)


@given(SEQUENCE, JSON, st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
def test_a_message_with_headers_takes_the_general_path(sequence_num, value, headers):
    response = m.Message(sequence_num, stored_value(dumps_value(value)), headers)
    assert encode_response(response) == general(response)
    assert "headers" in orjson.loads(encode_response(response))


def test_an_exhausted_read_is_no_messages():
    response = response_for(cmd.MessageRead(None, None))
    assert encode_response(response) == b'{"status":"success","message":"no_messages"}'


# -- requests decoded without the converter ---------------------------------------------------

IDS = st.sampled_from(
    ["Q-AAAAABBBBB", "x" * MAX_ID_LENGTH, "x" * (MAX_ID_LENGTH + 1), "", 7, None, True, ["a"]]
)
INTS = st.sampled_from([None, 0, 5, -1, True, False, 1.5, "5", 2**70, [1]])
FIELDS = {
    "queue_name": IDS,
    "client_id": IDS,
    "producer_id": IDS,
    "mode": IDS,
    "data": JSON,
    "producer_seq": INTS,
    "max_messages": INTS,
    "wait_ms": INTS,
    "headers": st.sampled_from([None, {}, {"a": "b"}, {"a": 1}, "x"]),
}


def _field_values(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={name: FIELDS[name] for name in names})


@settings(max_examples=400)
@given(
    _field_values(["queue_name", "data", "client_id", "producer_id", "producer_seq", "headers"]),
    st.dictionaries(st.sampled_from(["extra", "ttl"]), JSON, max_size=1),
)
def test_an_append_decodes_as_the_converter_decodes_it(fields, extra):
    _same_as_the_converter({"operation": "APPEND", **fields, **extra}, m.Append)


@settings(max_examples=300)
@given(IDS, IDS, JSON, st.sampled_from(["APPEND", "READ", "append", 7, None]))
def test_three_field_requests_decode_as_the_converter_decodes_them(queue, client, data, operation):
    """The frame path's own check of an APPEND or a READ of the original contract's three
    fields (and of objects that only look like one) decides as the general path does."""
    for obj in (
        {"operation": operation, "queue_name": queue, "data": data},
        {"queue_name": queue, "data": data, "operation": operation},
        {"operation": operation, "queue_name": queue, "ttl": data},
        {"operation": operation, "queue_name": queue, "client_id": client},
        {"client_id": client, "operation": operation, "queue_name": queue},
        {"operation": operation, "client_id": client, "mode": data},
    ):
        try:
            expected: Any = request_from_dict(obj)
        except ProtocolError as exc:
            expected = exc.message
        try:
            decoded: Any = decode_request(orjson.dumps(obj))
        except ProtocolError as exc:
            decoded = exc.message
        assert decoded == expected


@settings(max_examples=400)
@given(
    _field_values(["queue_name", "client_id", "max_messages", "mode", "wait_ms"]),
    st.dictionaries(st.sampled_from(["extra", "data"]), JSON, max_size=1),
)
def test_a_read_decodes_as_the_converter_decodes_it(fields, extra):
    _same_as_the_converter({"operation": "READ", **fields, **extra}, m.Read)


def _same_as_the_converter(obj: dict[str, Any], cls: type) -> None:
    try:
        expected: Any = converter.structure(obj, cls)
    except Exception:
        expected = ProtocolError
    try:
        decoded: Any = request_from_dict(obj)
    except ProtocolError:
        decoded = ProtocolError
    assert decoded == expected
    try:
        payload = orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return  # (an integer beyond 64 bits: no frame carries one)
    try:  # the frame's own path (decode_request's APPEND without a call to get there)
        from_frame: Any = decode_request(payload)
    except ProtocolError:
        from_frame = ProtocolError
    assert from_frame == expected


@given(st.binary(max_size=64), st.integers(0, 40))
def test_long_digit_runs_are_found_as_the_regular_expression_finds_them(noise, digits):
    payload = noise[: len(noise) // 2] + b"7" * digits + noise[len(noise) // 2 :]
    assert _has_long_digits(payload) == (re.search(rb"[0-9]{19,}", payload) is not None)


@settings(max_examples=400)
@example([b'{"a" : 1, "b":2}'])
@example([b'{"a":"x:y", "b"\t\t:2}'])
@given(st.lists(st.sampled_from([b'"', b":", b" ", b"\t", b"a", b"{", b'" :']), max_size=30))
def test_key_ends_are_counted_as_the_regular_expression_counts_them(parts):
    payload = b"".join(parts)
    assert _key_ends(payload) == len(re.findall(rb'"[ \t\n\r]*:', payload))
