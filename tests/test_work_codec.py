"""The work-queue operations on the wire and in the log: decoding (strict for the new
operations, lenient for the old), duplicate keys refused for every operation, answers in their
documented shape, and the new log payloads round-tripping exactly (docs/protocol.md, "Work
queues")."""

from __future__ import annotations

import orjson
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._core import _work_commands as work
from trio_broker._errors import ErrorCode, ProtocolError, RemoteProtocolError
from trio_broker._protocol import _messages as m
from trio_broker._protocol._codec import (
    OPERATIONS,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from trio_broker._protocol._entries import ENTRY_TYPES, decode_payload, encode_payload

WORK_SAMPLES = [
    m.CreateNamedQueue("orders"),
    m.CreateNamedQueue("orders", "C-1", m.Retention(max_messages=5)),
    m.DeleteQueueRequest("orders", force=True),
    m.ResolveQueue("orders"),
    m.GroupJoin("orders", "workers", visibility_ms=5000, max_deliveries=3, dead_letter_queue="dlq"),
    m.GroupRead("orders", "workers", "w-1", max_messages=10, wait_ms=100),
    m.GroupAck("orders", "workers", "w-1", sequence_nums=[1, 2], ranges=[[4, 9]]),
    m.GroupNack("orders", "workers", "w-1", [3], delay_ms=50, error="boom"),
    m.GroupExtend("orders", "workers", "w-1", [3], visibility_ms=1000),
    m.GroupDelete("orders", "workers", force=True),
    m.ForgetPositionRequest("Q-AAAAABBBBB", "C-1"),
]


@pytest.mark.parametrize("request_", WORK_SAMPLES, ids=lambda r: type(r).__name__)
def test_each_work_request_round_trips(request_):
    assert decode_request(encode_request(request_)) == request_


def test_create_queue_with_a_name_is_the_named_variant():
    assert decode_request(b'{"operation":"CREATE_QUEUE","name":"orders"}') == m.CreateNamedQueue(
        "orders"
    )
    assert decode_request(b'{"operation":"CREATE_QUEUE","client_id":"C-1"}') == m.CreateQueue("C-1")
    assert orjson.loads(encode_request(m.CreateNamedQueue("orders")))["operation"] == (
        "CREATE_QUEUE"
    )


def _refused(payload: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode_request(payload)
    assert caught.value.code == ErrorCode.BAD_REQUEST
    return caught.value


@pytest.mark.parametrize("request_", WORK_SAMPLES, ids=lambda r: type(r).__name__)
def test_the_work_requests_refuse_an_unknown_field(request_):
    obj = orjson.loads(encode_request(request_))
    obj["visibilty_ms"] = 5
    error = _refused(orjson.dumps(obj))
    assert "visibilty_ms" in error.message
    # client_id is accepted by each (every client of the original design sends it).
    obj.pop("visibilty_ms")
    obj.setdefault("client_id", "C-9")
    assert decode_request(orjson.dumps(obj)) is not None


def test_the_old_operations_keep_ignoring_extra_fields():
    request = decode_request(
        b'{"operation":"APPEND","queue_name":"Q-1","data":1,"client_id":"C","priority":3}'
    )
    assert request == m.Append("Q-1", 1, client_id="C")
    assert decode_request(b'{"operation":"CREATE_QUEUE","client_id":"C","x":1}') == m.CreateQueue(
        "C"
    )


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_duplicate_key_is_refused_for_every_operation(operation):
    payload = b'{"operation":"%s","data":1,"data":[1]}' % operation.encode()
    assert "duplicate key 'data'" in _refused(payload).message


@pytest.mark.parametrize(
    "payload",
    [
        # nested, inside the value
        b'{"operation":"APPEND","queue_name":"Q-1","data":{"a":1,"a":2}}',
        # spaces before the colon must not hide a key from the count
        b'{"operation" :"APPEND","queue_name":"Q-1","data" :1,"data":2}',
        b'{"operation":"APPEND","queue_name":"Q-1","data"\n:1,"data":2}',
        # a duplicate in a list of objects, and in the headers
        b'{"operation":"APPEND_BATCH","queue_name":"Q-1","values":[{"x":1},{"y":1,"y":1}]}',
        b'{"operation":"APPEND","queue_name":"Q-1","data":1,"headers":{"h":"a","h":"b"}}',
        # the operation itself twice
        b'{"operation":"READ","operation":"APPEND","queue_name":"Q-1","data":1}',
    ],
)
def test_duplicate_keys_are_found_wherever_they_are(payload):
    assert "duplicate key" in _refused(payload).message


@pytest.mark.parametrize(
    "payload",
    [
        # strings that look like keys make the fast count differ: the exact parse clears them
        b'{"operation":"APPEND","queue_name":"Q-1","data":"x\\":y\\":z"}',
        b'{"operation" : "APPEND" , "queue_name" : "Q-1" , "data" : {"a" : [{"b" : 1}]}}',
        b'{"operation":"APPEND","queue_name":"Q-1","data":[{"a":1},{"a":1}]}',
    ],
)
def test_payloads_without_duplicates_are_accepted(payload):
    request = decode_request(payload)
    assert isinstance(request, m.Append)
    assert request.data == orjson.loads(payload)["data"]


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (
            b'{"operation":"GROUP_ACK","queue_name":"q","group":"g","member":"m","ranges":[[1]]}',
            "$.ranges",
        ),
        (
            b'{"operation":"GROUP_NACK","queue_name":"q","group":"g","member":"m",'
            b'"sequence_nums":[true]}',
            "$.sequence_nums",
        ),
        (b'{"operation":"GROUP_READ","queue_name":"q","group":"g"}', "member"),
        (b'{"operation":"GROUP_JOIN","queue_name":"q","group":7}', "$.group"),
        (b'{"operation":"DELETE_QUEUE","queue_name":"q","force":"yes"}', "$.force"),
        (b'{"operation":"APPEND","queue_name":"q","data":1,"headers":{"h":1}}', "$.headers"),
        (b'{"operation":"APPEND","queue_name":"q","data":1,"headers":["h"]}', "$.headers"),
        (
            b'{"operation":"APPEND","queue_name":"q","data":1,"producer_epoch":"1"}',
            "$.producer_epoch",
        ),
    ],
)
def test_mistyped_work_fields_say_where(payload, where):
    assert where in _refused(payload).message


def test_answers_omit_absent_headers_and_delivery_counts():
    batch = m.GroupMessages(
        [m.HeadedMessage(1, "a", None, 1), m.HeadedMessage(2, "b", {"t": "x"}, 2)], in_flight=2
    )
    assert orjson.loads(encode_response(batch)) == {
        "status": "success",
        "messages": [
            {"sequence_num": 1, "data": "a", "delivery_count": 1},
            {"sequence_num": 2, "data": "b", "headers": {"t": "x"}, "delivery_count": 2},
        ],
        "in_flight": 2,
    }
    read = m.HeadedMessageBatch([m.HeadedMessage(1, "a"), m.HeadedMessage(2, 2, {"t": "x"})])
    assert orjson.loads(encode_response(read))["messages"] == [
        {"sequence_num": 1, "data": "a"},
        {"sequence_num": 2, "data": 2, "headers": {"t": "x"}},
    ]
    assert decode_response(encode_response(batch), m.GroupMessages) == batch


WORK_PAYLOADS = [
    work.CreateNamedQueue("Q-1", "orders"),
    work.CreateNamedQueue("Q-1", "orders", cmd.RetentionPolicy(max_messages=5)),
    work.DeleteQueue("Q-1", True, 7),
    work.Publish(
        "Q-1", (work.Record(b'{"a":1}', (("k", "v"), ("z", "y"))), work.Record(b"2")), "P", 3, 4, 9
    ),
    work.Publish("Q-1", (work.Record(b"1"),)),
    work.ReadRecords("C", "Q-1", 5, True, 100),
    work.JoinGroup("Q-1", "g"),
    work.JoinGroup("Q-1", "g", work.GroupSettings(1000, 3, "Q-2", 5)),
    work.DeleteGroup("Q-1", "g", False, 5),
    work.GroupRead("Q-1", "g", "m", 10, 123, 1000),
    work.GroupAck("Q-1", "g", "m", ((1, 2), (5, 5))),
    work.GroupNack("Q-1", "g", "m", (1, 2), 5, 10, "boom"),
    work.GroupExtend("Q-1", "g", "m", (1,), 5, None),
    work.ExpireLeases(5),
    work.ForgetPosition("C", "Q-1"),
    work.ForgetIdlePositions(5, 6),
    cmd.CommandGroup((work.Publish("Q-1", (work.Record(b"1"),)), cmd.AppendMessage("Q-1", b"2"))),
]


def test_every_work_command_has_a_log_payload():
    assert set(work.WORK_COMMANDS) <= set(ENTRY_TYPES.values())
    assert set(work.WORK_COMMANDS) <= {type(p) for p in WORK_PAYLOADS}


@pytest.mark.parametrize("payload", WORK_PAYLOADS, ids=lambda p: type(p).__name__)
def test_work_log_payloads_round_trip(payload):
    raw = encode_payload(payload)
    assert decode_payload(raw) == payload
    assert encode_payload(decode_payload(raw)) == raw


def test_a_publish_keeps_its_values_and_headers_as_json():
    raw = encode_payload(WORK_PAYLOADS[3])
    assert orjson.loads(raw)["records"] == [
        {"data": {"a": 1}, "headers": [["k", "v"], ["z", "y"]]},
        {"data": 2},
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"GROUP_ACK","queue_id":"Q","group":"g","member":"m","ranges":[[1]]}',
        b'{"type":"PUBLISH","queue_id":"Q","records":[{"data":1,"headers":[["a",1]]}]}',
        b'{"type":"PUBLISH","queue_id":"Q","records":[{"headers":[]}]}',
        b'{"type":"GROUP_NACK","queue_id":"Q","group":"g","member":"m","sequence_nums":[true],'
        b'"now_ms":1}',
        b'{"type":"JOIN_GROUP","queue_id":"Q","group":"g","settings":[]}',
        b'{"type":"EXPIRE_LEASES"}',
    ],
)
def test_malformed_work_payloads_are_the_peers_fault(raw):
    with pytest.raises(RemoteProtocolError):
        decode_payload(raw)
