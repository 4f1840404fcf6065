"""The wire: framing, request decoding, response encoding (PROTOCOL.md is the contract)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_broker._errors import BrokerError, ErrorCode, NotLeaderError, ProtocolError
from trio_broker._protocol import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    Append,
    Appended,
    BrokerInfo,
    ClusterQuery,
    ClusterTopology,
    CreateQueue,
    FrameDecoder,
    FrameTooLarge,
    Message,
    NoMessages,
    QueueCreated,
    Read,
    converter,
    decode_request,
    dumps_value,
    encode_frame,
    encode_request,
    encode_response,
    loads_object,
    response_to_dict,
    stored_value,
)

# -- framing -------------------------------------------------------------------------------------


def _drain(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def _decode_chunks(chunks: list[bytes], max_frame: int = DEFAULT_MAX_FRAME) -> list[bytes]:
    decoder = FrameDecoder(max_frame)
    out: list[bytes] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out.extend(_drain(decoder))
    assert decoder.buffered == 0
    return out


def test_encode_frame_is_big_endian_length_prefix():
    assert HEADER_SIZE == 4
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b'{"a":1}') == b"\x00\x00\x00\x07" + b'{"a":1}'
    assert encode_frame(b"x" * 0x010203)[:4] == b"\x00\x01\x02\x03"


_payloads = st.lists(st.binary(max_size=40), max_size=6)


@given(_payloads)
def test_stream_cut_at_every_byte_boundary(payloads):
    stream = b"".join(encode_frame(p) for p in payloads)
    for cut in range(len(stream) + 1):
        assert _decode_chunks([stream[:cut], stream[cut:]]) == payloads
    # One byte at a time: every boundary at once.
    assert _decode_chunks([stream[i : i + 1] for i in range(len(stream))]) == payloads


@given(_payloads, st.data())
def test_stream_cut_into_arbitrary_chunks(payloads, data):
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert _decode_chunks(chunks) == payloads


def test_many_frames_in_one_feed():
    payloads = [orjson.dumps({"n": i, "pad": "x" * (i % 7)}) for i in range(500)]
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(p) for p in payloads))
    assert _drain(decoder) == payloads
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


def test_empty_feed_and_empty_payload():
    decoder = FrameDecoder()
    decoder.feed(b"")
    assert decoder.next_frame() is None
    decoder.feed(encode_frame(b""))
    assert decoder.next_frame() == b""
    assert decoder.next_frame() is None


def test_frame_of_exactly_the_maximum_is_accepted():
    decoder = FrameDecoder(max_frame=100)
    decoder.feed(encode_frame(b"y" * 100))
    assert decoder.next_frame() == b"y" * 100
    assert decoder.buffered == 0


def test_frame_beyond_the_maximum_is_refused_from_its_header():
    decoder = FrameDecoder(max_frame=100)
    # Only the header: the decoder must not wait for 101 bytes it will refuse anyway.
    decoder.feed((101).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    exc = info.value
    assert isinstance(exc, ProtocolError)
    assert exc.code == ErrorCode.TOO_LARGE
    assert (exc.length, exc.maximum) == (101, 100)
    assert "101" in exc.message and "100" in exc.message
    assert exc.to_wire()["status"] == "error"


def test_huge_length_prefix_refused_with_default_maximum():
    decoder = FrameDecoder()
    decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert info.value.length == 2**32 - 1
    assert info.value.maximum == DEFAULT_MAX_FRAME


def test_too_large_after_good_frames():
    decoder = FrameDecoder(max_frame=10)
    decoder.feed(encode_frame(b"ok") + encode_frame(b"0123456789") + encode_frame(b"x" * 11))
    assert decoder.next_frame() == b"ok"
    assert decoder.next_frame() == b"0123456789"
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_max_frame_must_be_positive():
    with pytest.raises(ValueError):
        FrameDecoder(0)


def test_buffered_reports_a_partial_frame():
    decoder = FrameDecoder()
    frame = encode_frame(b"hello world")
    decoder.feed(frame[:2])
    assert decoder.next_frame() is None
    assert decoder.buffered == 2
    decoder.feed(frame[2:9])
    assert decoder.next_frame() is None
    assert decoder.buffered == 9
    decoder.feed(frame[9:] + encode_frame(b"next")[:3])
    assert decoder.next_frame() == b"hello world"
    assert decoder.next_frame() is None
    assert decoder.buffered == 3


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, 4096])
def test_buffer_stays_bounded_while_frames_are_consumed(chunk_size):
    payloads = [orjson.dumps({"operation": "APPEND", "data": i}) for i in range(10_000)]
    stream = b"".join(encode_frame(p) for p in payloads)
    largest = max(len(p) for p in payloads) + HEADER_SIZE
    decoder = FrameDecoder()
    out = []
    peak = 0
    for start in range(0, len(stream), chunk_size):
        decoder.feed(stream[start : start + chunk_size])
        peak = max(peak, len(decoder._buf))
        out.extend(_drain(decoder))
    assert out == payloads
    assert decoder.buffered == 0
    # Consumed bytes are dropped: the buffer never holds much more than one chunk plus one
    # partial frame, nowhere near the whole stream.
    bound = 2 * (chunk_size + largest)
    assert peak <= bound, (peak, bound, len(stream))
    assert peak < len(stream) // 10


# -- request decoding ----------------------------------------------------------------------------


def _req(**fields: Any) -> bytes:
    return orjson.dumps(fields)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"operation": "CLUSTER_QUERY"}, ClusterQuery()),
        ({"operation": "CLUSTER_QUERY", "client_id": "C-ABCDE"}, ClusterQuery("C-ABCDE")),
        (
            {"operation": "CLUSTER_QUERY", "client_id": "C-ABCDE", "cluster_id": "G-XYZ78"},
            ClusterQuery("C-ABCDE", "G-XYZ78"),
        ),
        ({"operation": "CREATE_QUEUE"}, CreateQueue()),
        ({"operation": "CREATE_QUEUE", "client_id": "C-ABCDE"}, CreateQueue("C-ABCDE")),
        (
            {"operation": "APPEND", "queue_name": "Q-XYZ78K589Z", "data": 42},
            Append("Q-XYZ78K589Z", 42),
        ),
        (
            {"operation": "APPEND", "queue_name": "Q-XYZ78K589Z", "data": 42, "client_id": "C-1"},
            Append("Q-XYZ78K589Z", 42, "C-1"),
        ),
        (
            {"operation": "APPEND", "queue_name": "Q-XYZ78K589Z", "data": None},
            Append("Q-XYZ78K589Z", None),
        ),
        (
            {"operation": "READ", "queue_name": "Q-XYZ78K589Z", "client_id": "C-ABCDE"},
            Read("Q-XYZ78K589Z", "C-ABCDE"),
        ),
        # Old clients send client_id everywhere, and possibly other fields: ignored.
        (
            {
                "operation": "CREATE_QUEUE",
                "client_id": "C-ABCDE",
                "queue_name": "ignored",
                "extra": [1, {"x": None}],
            },
            CreateQueue("C-ABCDE"),
        ),
        (
            {
                "operation": "READ",
                "queue_name": "Q-XYZ78K589Z",
                "client_id": "C-ABCDE",
                "data": 7,
                "timestamp": 1.5,
            },
            Read("Q-XYZ78K589Z", "C-ABCDE"),
        ),
        (
            {"operation": "CLUSTER_QUERY", "client_id": "C-ABCDE", "brokers": "whatever"},
            ClusterQuery("C-ABCDE"),
        ),
    ],
)
def test_requests_decode_from_wire_shapes(fields, expected):
    request = decode_request(orjson.dumps(fields))
    assert request == expected
    assert type(request) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected_type"),
    [(1.5, float), (True, bool), (False, bool), ("7", str), (7, int), (1.0, float), (0, int)],
)
def test_append_data_keeps_its_json_type(value, expected_type):
    request = decode_request(_req(operation="APPEND", queue_name="Q-XYZ78K589Z", data=value))
    assert type(request.data) is expected_type
    assert request.data == value
    assert type(orjson.loads(dumps_value(request.data))) is expected_type


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"operation": "READ", "queue_name": 7, "client_id": "C-ABCDE"}, "queue_name"),
        ({"operation": "READ", "queue_name": "Q-XYZ78K589Z", "client_id": 7}, "client_id"),
        ({"operation": "READ", "queue_name": "Q-XYZ78K589Z", "client_id": True}, "client_id"),
        ({"operation": "READ", "queue_name": "Q-XYZ78K589Z", "client_id": None}, "client_id"),
        ({"operation": "READ", "queue_name": ["Q"], "client_id": "C-ABCDE"}, "queue_name"),
        ({"operation": "APPEND", "queue_name": 1.5, "data": 1}, "queue_name"),
        ({"operation": "APPEND", "queue_name": "Q-XYZ78K589Z", "data": 1, "client_id": 5}, ""),
        ({"operation": "CREATE_QUEUE", "client_id": 12345}, "client_id"),
        ({"operation": "CREATE_QUEUE", "client_id": {"id": "C"}}, "client_id"),
        ({"operation": "CLUSTER_QUERY", "cluster_id": 1}, "cluster_id"),
        # missing required fields
        ({"operation": "READ", "queue_name": "Q-XYZ78K589Z"}, "client_id"),
        ({"operation": "READ", "client_id": "C-ABCDE"}, "queue_name"),
        ({"operation": "APPEND", "data": 1}, "queue_name"),
    ],
)
def test_request_fields_are_never_coerced(fields, where):
    with pytest.raises(ProtocolError) as info:
        decode_request(orjson.dumps(fields))
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert fields["operation"] in info.value.message
    assert where in info.value.message


def test_client_id_longer_than_128_characters_is_refused():
    ok = decode_request(_req(operation="READ", queue_name="Q-XYZ78K589Z", client_id="c" * 128))
    assert ok == Read("Q-XYZ78K589Z", "c" * 128)
    for op in ("READ", "APPEND", "CREATE_QUEUE", "CLUSTER_QUERY"):
        fields = {"operation": op, "queue_name": "Q-XYZ78K589Z", "data": 1, "client_id": "c" * 129}
        with pytest.raises(ProtocolError) as info:
            decode_request(orjson.dumps(fields))
        assert info.value.code == ErrorCode.BAD_REQUEST
        assert "client_id" in info.value.message


def test_converter_is_strict_about_ints_and_strings():
    assert converter.structure(5, int) == 5
    for bad in (True, False, "5", 5.0, None):
        with pytest.raises(Exception, match="integer"):
            converter.structure(bad, int)
    with pytest.raises(Exception, match="string"):
        converter.structure(5, str)
    with pytest.raises(Exception, match="string"):
        converter.structure(b"x", str)
    # Where an int is expected inside a message, a bool is not an int.
    assert converter.structure({"sequence_num": 3}, Appended) == Appended(3)
    for bad in (True, "3", 3.0):
        with pytest.raises(Exception):  # noqa: B017 - cattrs wraps the TypeError
            converter.structure({"sequence_num": bad}, Appended)
    with pytest.raises(Exception):  # noqa: B017
        converter.structure({"queue_id": 7}, QueueCreated)


def test_missing_operation():
    for payload in (b"{}", _req(queue_name="Q-XYZ78K589Z", client_id="C-ABCDE")):
        with pytest.raises(ProtocolError) as info:
            decode_request(payload)
        assert info.value.code == ErrorCode.BAD_REQUEST
        assert "operation" in info.value.message


@pytest.mark.parametrize("op", [None, 5, True, ["READ"], {"x": 1}])
def test_operation_must_be_a_string(op):
    payload = orjson.dumps({"operation": op}) if op is not None else b'{"operation":null}'
    with pytest.raises(ProtocolError) as info:
        decode_request(payload)
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert "operation" in info.value.message


@pytest.mark.parametrize("op", ["PURGE_QUEUE", "read", "Append", "", "JOIN_CLUSTER "])
def test_unknown_operation(op):
    with pytest.raises(ProtocolError) as info:
        decode_request(_req(operation=op, client_id="C-ABCDE"))
    assert info.value.code == ErrorCode.UNKNOWN_OPERATION
    assert repr(op) in info.value.message


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"not json", b"\xff\xfe{}", b'{"a": NaN}', b'{"a": 1e400}', b"{'a': 1}"],
)
def test_payload_that_is_not_json_is_refused(payload):
    with pytest.raises(ProtocolError) as info:
        decode_request(payload)
    assert info.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("payload", "kind"),
    [(b"[]", "array"), (b'"READ"', "string"), (b"7", "number"), (b"null", "null")],
)
def test_payload_that_is_not_an_object_is_refused(payload, kind):
    with pytest.raises(ProtocolError) as info:
        loads_object(payload)
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert kind in info.value.message


# -- JSON values are stored exactly --------------------------------------------------------------

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


def _assert_same_json(got: Any, want: Any, path: str = "$") -> None:
    """Equality that also compares types (1 != 1.0 != True) and the sign of zero."""
    assert type(got) is type(want), f"{path}: {got!r} ({type(got)}) vs {want!r} ({type(want)})"
    if isinstance(want, dict):
        assert list(got) == list(want), path
        for key in want:
            _assert_same_json(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same_json(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == want and math.copysign(1, got) == math.copysign(1, want), path
    else:
        assert got == want, path


@settings(max_examples=300)
@given(json_values)
def test_any_json_value_survives_append_unchanged(value):
    payload = orjson.dumps(
        {"operation": "APPEND", "queue_name": "Q-XYZ78K589Z", "data": value, "client_id": "C-1"}
    )
    request = decode_request(payload)
    assert isinstance(request, Append)
    stored = dumps_value(request.data)
    _assert_same_json(orjson.loads(stored), value)
    # And as it goes back out in a READ response.
    response = orjson.loads(encode_response(Message(1, stored_value(stored))))
    _assert_same_json(response["data"], value)


def test_boundary_integers_are_kept_exactly():
    for value in (INT_MIN, INT_MAX, 2**63 - 1, 2**63, -1, 0):
        payload = b'{"operation":"APPEND","queue_name":"Q","data":' + str(value).encode() + b"}"
        request = decode_request(payload)
        assert type(request.data) is int
        assert request.data == value
        assert orjson.loads(dumps_value(request.data)) == value


_OUT_OF_RANGE = [2**64, -(2**63) - 1, 10**30, -(10**30), 2**64 + 12345, 10**300]


@pytest.mark.parametrize("big", _OUT_OF_RANGE)
@pytest.mark.parametrize(
    "template",
    [
        "{}",
        "[{}]",
        '{{"a": {}}}',
        '[1, "x", {{"b": [null, {}]}}]',
        '{{"deep": [[[[{{"k": {}}}]]]]}}',
    ],
)
def test_integers_outside_the_range_are_refused_not_coerced(big, template):
    data = template.format(big)
    payload = b'{"operation":"APPEND","queue_name":"Q-XYZ78K589Z","data":' + data.encode() + b"}"
    with pytest.raises(ProtocolError) as info:
        decode_request(payload)
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert "outside the range" in info.value.message


@pytest.mark.parametrize("big", _OUT_OF_RANGE)
def test_out_of_range_integers_refused_in_any_field(big):
    # Not only in data: an ignored extra field must not smuggle a coerced value through either.
    payload = (
        b'{"operation":"CREATE_QUEUE","client_id":"C-ABCDE","extra":' + str(big).encode() + b"}"
    )
    with pytest.raises(ProtocolError, match="outside the range"):
        decode_request(payload)


def test_integer_beyond_double_range_is_refused():
    # orjson refuses this one itself (it would be infinity as a double): refused either way.
    payload = b'{"operation":"APPEND","queue_name":"Q-XYZ78K589Z","data":[' + b"9" * 400 + b"]}"
    with pytest.raises(ProtocolError) as info:
        decode_request(payload)
    assert info.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "data",
    [
        '"18446744073709551616"',
        '"' + "9" * 500 + '"',
        '{"1000000000000000000000000000000": "key is a string"}',
        '["x 123456789012345678901234567890 y", 1]',
        "1.8446744073709552e+19",
        "123456789012345678901234.5",
        "-9223372036854775808",
        "18446744073709551615",
    ],
)
def test_long_digit_runs_that_are_not_big_integers_are_accepted(data):
    payload = b'{"operation":"APPEND","queue_name":"Q-XYZ78K589Z","data":' + data.encode() + b"}"
    request = decode_request(payload)
    _assert_same_json(orjson.loads(dumps_value(request.data)), orjson.loads(data))


def test_deeply_nested_payload_with_long_digit_run_is_a_protocol_error_or_accepted():
    # orjson accepts nesting up to 1023 levels; the same payload with a short number decodes.
    depth = 1020
    data = b"[" * depth + b'"12345678901234567890"' + b"]" * depth
    payload = b'{"operation":"APPEND","queue_name":"Q-XYZ78K589Z","data":' + data + b"}"
    assert len(payload) < DEFAULT_MAX_FRAME
    short = payload.replace(b"12345678901234567890", b"1")
    assert isinstance(decode_request(short), Append)
    try:
        request = decode_request(payload)
    except ProtocolError:
        return
    assert isinstance(request, Append)


# -- responses -----------------------------------------------------------------------------------


def test_no_messages_shape_is_exact():
    assert orjson.loads(encode_response(NoMessages())) == {
        "status": "success",
        "message": "no_messages",
    }
    assert response_to_dict(NoMessages()) == {"status": "success", "message": "no_messages"}


def test_success_response_shapes():
    assert orjson.loads(encode_response(QueueCreated("Q-XYZ78K589Z"))) == {
        "status": "success",
        "queue_id": "Q-XYZ78K589Z",
    }
    assert orjson.loads(encode_response(Appended(3))) == {"status": "success", "sequence_num": 3}
    read = orjson.loads(encode_response(Message(4, stored_value(b'{"k":[1.5,true,"7"]}'))))
    assert read == {"status": "success", "sequence_num": 4, "data": {"k": [1.5, True, "7"]}}
    assert type(read["data"]["k"][1]) is bool


def test_cluster_topology_shape():
    topology = ClusterTopology(
        cluster_id="G-XYZ78",
        cluster_version=3,
        self_role="leader",
        brokers=[
            BrokerInfo("B-AAAAA", "10.0.0.1", 9000, "leader", "active"),
            BrokerInfo("B-BBBBB", "10.0.0.2", 9001, "replica", "inactive"),
        ],
    )
    body = orjson.loads(encode_response(topology))
    # Optional fields left as None are omitted rather than sent as null.
    assert body == {
        "status": "success",
        "cluster_id": "G-XYZ78",
        "cluster_version": 3,
        "self_role": "leader",
        "brokers": [
            {
                "broker_id": "B-AAAAA",
                "host": "10.0.0.1",
                "port": 9000,
                "role": "leader",
                "status": "active",
            },
            {
                "broker_id": "B-BBBBB",
                "host": "10.0.0.2",
                "port": 9001,
                "role": "replica",
                "status": "inactive",
            },
        ],
    }
    with_ids = orjson.loads(
        encode_response(
            ClusterTopology("G-XYZ78", 1, "replica", [], self_id="B-BBBBB", leader_id="B-AAAAA")
        )
    )
    assert with_ids["self_id"] == "B-BBBBB"
    assert with_ids["leader_id"] == "B-AAAAA"


def test_error_envelope():
    body = orjson.loads(encode_response(ProtocolError("bad field")))
    assert body == {"status": "error", "message": "bad field", "code": "BAD_REQUEST"}
    body = orjson.loads(
        encode_response(NotLeaderError(ErrorCode.NOT_LEADER, "not the leader", leader_id="B-AAAAA"))
    )
    assert body["status"] == "error"
    assert body["code"] == "NOT_LEADER"
    assert isinstance(body["message"], str) and body["message"]
    assert body["leader_id"] == "B-AAAAA"
    body = orjson.loads(encode_response(BrokerError("QUEUE_NOT_FOUND", "no such queue")))
    assert set(body) == {"status", "message", "code"}


def test_protocol_error_from_decoding_encodes_as_envelope():
    with pytest.raises(ProtocolError) as info:
        decode_request(b"[1, 2]")
    body = orjson.loads(encode_response(info.value))
    assert body["status"] == "error"
    assert body["code"] == "BAD_REQUEST"
    assert "object" in body["message"]


# -- encode_request / decode_request round trip ---------------------------------------------------

_ids = st.none() | st.text(max_size=128)
_requests = st.one_of(
    st.builds(ClusterQuery, client_id=_ids, cluster_id=_ids),
    st.builds(CreateQueue, client_id=_ids),
    st.builds(Append, queue_name=st.text(max_size=128), data=json_values, client_id=_ids),
    st.builds(Read, queue_name=st.text(max_size=128), client_id=st.text(max_size=128)),
)


@given(_requests)
def test_encode_request_round_trips(request):
    wire = encode_request(request)
    assert isinstance(orjson.loads(wire)["operation"], str)
    decoded = decode_request(wire)
    assert type(decoded) is type(request)
    assert decoded == request
    if isinstance(request, Append):
        _assert_same_json(decoded.data, request.data)


@pytest.mark.parametrize(
    ("request_", "operation"),
    [
        (ClusterQuery(), "CLUSTER_QUERY"),
        (CreateQueue("C-ABCDE"), "CREATE_QUEUE"),
        (Append("Q-XYZ78K589Z", None), "APPEND"),
        (Read("Q-XYZ78K589Z", "C-ABCDE"), "READ"),
    ],
)
def test_encode_request_uses_contract_names(request_, operation):
    body = orjson.loads(encode_request(request_))
    assert body["operation"] == operation
    if isinstance(request_, Append):
        # data: null must be sent, since APPEND requires the field.
        assert "data" in body and body["data"] is None
    assert decode_request(encode_request(request_)) == request_


# -- nothing but ProtocolError -------------------------------------------------------------------

_fields = st.dictionaries(
    st.sampled_from(["operation", "queue_name", "client_id", "cluster_id", "data", "x"]),
    st.sampled_from(["APPEND", "READ", "CREATE_QUEUE", "CLUSTER_QUERY", "NOPE"]) | json_values,
    max_size=5,
)


@given(st.one_of(st.binary(max_size=64), _fields.map(orjson.dumps)), st.data())
def test_any_payload_decodes_or_raises_protocol_error(payload, data):
    cut = data.draw(st.integers(0, len(payload)))
    for candidate in (payload, payload[:cut], payload[:cut] + b"9" * 25 + payload[cut:]):
        try:
            request = decode_request(candidate)
        except ProtocolError as exc:
            assert exc.to_wire()["status"] == "error"
        else:
            assert type(request) in (ClusterQuery, CreateQueue, Append, Read)


def test_timeout_now_and_transfer_vote_round_trip_through_the_peer_codec():
    """Leadership transfer's messages on the wire; an old vote request (no ``transfer``
    field) still decodes, as a request without the flag."""
    from trio_broker._core import _raft_messages as rm
    from trio_broker._protocol._consensus import message_from_obj, message_to_obj

    timeout_now = rm.TimeoutNow(src="B-AAAAA", dst="B-BBBBB", term=4, cluster_version=3)
    obj = message_to_obj(timeout_now)
    assert obj["operation"] == "TIMEOUT_NOW"
    assert message_from_obj(obj) == timeout_now
    vote = rm.ElectionRequest(
        src="B-BBBBB",
        dst="B-CCCCC",
        term=5,
        cluster_version=3,
        pre_vote=False,
        last_log_index=9,
        last_log_term=4,
        transfer=True,
    )
    obj = message_to_obj(vote)
    assert obj["transfer"] is True
    assert message_from_obj(obj) == vote
    plain = message_to_obj(attrs.evolve(vote, transfer=False))
    assert "transfer" not in plain
    assert message_from_obj(plain).transfer is False


def test_admin_requests_decode_strictly_and_are_listed():
    from trio_broker._protocol import (
        ADMIN_REQUESTS,
        AddMember,
        RemoveMember,
        TakeSnapshot,
        TransferLeadership,
    )
    from trio_broker._protocol._messages import DrainBroker, Rebalance, SetClusterSettings

    assert set(ADMIN_REQUESTS) == {
        RemoveMember,
        TransferLeadership,
        TakeSnapshot,
        AddMember,
        Rebalance,
        DrainBroker,
        SetClusterSettings,
    }
    assert decode_request(b'{"operation": "TRANSFER_LEADERSHIP"}') == TransferLeadership()
    assert decode_request(
        b'{"operation": "TRANSFER_LEADERSHIP", "broker_id": "B-AAAAA"}'
    ) == TransferLeadership(broker_id="B-AAAAA")
    assert decode_request(b'{"operation": "SNAPSHOT", "cluster_id": "G-AAAAA"}') == TakeSnapshot(
        "G-AAAAA"
    )
    assert decode_request(
        b'{"operation": "ADD_MEMBER", "host": "127.0.0.1", "port": 9004}'
    ) == AddMember("127.0.0.1", 9004)
    for bad in (
        b'{"operation": "ADD_MEMBER", "host": "127.0.0.1"}',
        b'{"operation": "ADD_MEMBER", "host": "127.0.0.1", "port": "9004"}',
        b'{"operation": "TRANSFER_LEADERSHIP", "broker_id": 7}',
    ):
        with pytest.raises(ProtocolError) as info:
            decode_request(bad)
        assert info.value.code == ErrorCode.BAD_REQUEST
