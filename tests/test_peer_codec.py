"""The decoding of peer frames: ``loads_object``'s check for the compact JSON brokers write
(orjson writes the parsed object back as the same bytes) and the COMMAND_GROUP loop for plain
appends refuse exactly what the exact checks and the converter's path refuse, and decode the
rest to the same values."""

from __future__ import annotations

import functools
import json

import orjson
import pytest
import trio
import trio.testing

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._errors import ProtocolError, RemoteProtocolError
from trio_broker._protocol import FrameDecoder, encode_frame, loads_object
from trio_broker._protocol._codec import dumps_value
from trio_broker._protocol._consensus import encode_message, message_from_obj
from trio_broker._protocol._entries import payload_from_obj
from trio_broker._runtime._peers import read_peer_stream


def _group(*commands):
    return cmd.CommandGroup(tuple(commands))


def _append(i, **kwargs):
    return cmd.AppendMessage("Q-1", dumps_value({"i": i, "x": "y" * i}), **kwargs)


GROUP = _group(
    _append(1, appended_ms=7),
    _append(2),
    _append(3, producer_id="P", producer_seq=4, appended_ms=8),
    cmd.Ack("C", "Q-1", 2),
    _append(4, appended_ms=2**64 - 1),
)


def _replicate(*payloads):
    entries = tuple(rm.Entry(2, 10 + i, p) for i, p in enumerate(payloads))
    return rm.Replicate(
        src="B-1",
        dst="B-2",
        term=2,
        cluster_version=1,
        prev_log_index=9,
        prev_log_term=2,
        leader_commit=9,
        entries=entries,
    )


MESSAGES = [
    _replicate(GROUP),
    _replicate(_append(9, appended_ms=1), rm.NoOp(), GROUP),
    rm.Heartbeat(src="B-1", dst="B-2", term=2, cluster_version=1, commit=3),
    rm.ElectionRequest(
        src="B-1",
        dst="B-2",
        term=3,
        cluster_version=1,
        pre_vote=False,
        last_log_index=4,
        last_log_term=2,
    ),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_a_brokers_frame_decodes_as_the_exact_checks_decode_it(message):
    frame = encode_message(message)
    assert orjson.dumps(orjson.loads(frame)) == frame  # (the compact check applies)
    assert loads_object(frame) == json.loads(frame)
    assert message_from_obj(loads_object(frame)) == message


@pytest.mark.parametrize("message", MESSAGES)
def test_a_frame_written_with_spaces_is_read_through_the_exact_checks(message):
    frame = json.dumps(orjson.loads(encode_message(message)), indent=1).encode()
    assert orjson.dumps(orjson.loads(frame)) != frame
    assert message_from_obj(loads_object(frame)) == message


def _frame_with(payload_text: bytes) -> bytes:
    """A REPLICATE whose one entry's payload is ``payload_text``, written compactly."""
    return (
        b'{"operation":"REPLICATE","broker_id":"B-1","to":"B-2","term":2,"cluster_version":1,'
        b'"prev_log_index":9,"prev_log_term":2,"leader_commit":9,'
        b'"entries":[{"index":10,"term":2,"payload":' + payload_text + b"}]}"
    )


@pytest.mark.parametrize(
    "frame",
    [
        # at the top, compact, as a broker would write it but for the duplicate
        b'{"operation":"HEARTBEAT","broker_id":"B-1","broker_id":"B-3","to":"B-2","term":2,'
        b'"cluster_version":1,"leader_commit":3}',
        # inside an entry's payload, inside a command, inside a value
        _frame_with(b'{"type":"APPEND_MESSAGE","queue_id":"Q-1","queue_id":"Q-2","data":1}'),
        _frame_with(
            b'{"type":"COMMAND_GROUP","commands":[{"type":"APPEND_MESSAGE","queue_id":"Q-1",'
            b'"data":{"a":1,"a":2}}]}'
        ),
        # with spaces, so that the compact check cannot apply either
        b'{"operation" : "HEARTBEAT", "term" : 1, "term" : 2}',
    ],
)
def test_a_duplicate_key_in_a_peer_frame_is_refused(frame):
    with pytest.raises(ProtocolError, match="duplicate key"):
        loads_object(frame)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b'{"operation":"HEARTBEAT","term":123456789012345678901}', "outside the range"),
        (b'{"operation":"HEARTBEAT","term":-9223372036854775809}', "outside the range"),
        (b"[1,2]", "must be a JSON object"),
        (b'"REPLICATE"', "must be a JSON object"),
        (b'{"operation":"HEARTBEAT"', "not valid UTF-8 JSON"),
        (b'{"a":"\xff"}', "not valid UTF-8 JSON"),
        (b"[" * 300 + b"]" * 300, "must be a JSON object"),
    ],
)
def test_a_malformed_peer_frame_is_a_protocol_error(frame, error):
    with pytest.raises(ProtocolError, match=error):
        loads_object(frame)


def test_a_frame_nested_deeper_than_orjson_writes_takes_the_exact_checks():
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(orjson.loads(deep))
    assert loads_object(deep) == json.loads(deep)
    duplicate = b'{"a":' * 300 + b'{"b":1,"b":2}' + b"}" * 300
    with pytest.raises(ProtocolError, match="duplicate key"):
        loads_object(duplicate)


COMMANDS = [
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": {"k": [1, 2]}, "appended_ms": 5},
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": None},
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": 3, "extra": 1},
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": 3, "producer_id": "P", "producer_seq": 0},
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": 3, "producer_seq": 2},
    {"type": "ACK", "queue_id": "Q-1", "client_id": "C", "sequence_num": 2},
]
BAD_COMMANDS = [
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1"},
    {"type": "APPEND_MESSAGE", "data": 1},
    {"type": "APPEND_MESSAGE", "queue_id": 7, "data": 1},
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": 1, "appended_ms": "5"},
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": 1, "appended_ms": True},
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": 1, "appended_ms": 1.5},
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": 1, "producer_id": 3},
    {"type": "APPEND_MESSAGE", "queue_id": "Q-1", "data": 1, "producer_seq": "x"},
    {"type": "NOT_A_COMMAND"},
    ["APPEND_MESSAGE"],
]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_groups_commands_decode_as_each_alone(command):
    plain = {"type": "APPEND_MESSAGE", "queue_id": "Q-2", "data": "v", "appended_ms": 9}
    group = payload_from_obj({"type": "COMMAND_GROUP", "commands": [plain, command, plain]})
    alone = payload_from_obj(command)
    assert group == _group(payload_from_obj(plain), alone, payload_from_obj(plain))
    assert [type(c) for c in group.commands] == [cmd.AppendMessage, type(alone), cmd.AppendMessage]


@pytest.mark.parametrize("command", BAD_COMMANDS)
def test_a_malformed_command_in_a_group_is_refused_as_it_is_alone(command):
    with pytest.raises(RemoteProtocolError) as alone:
        payload_from_obj(command)
    plain = {"type": "APPEND_MESSAGE", "queue_id": "Q-2", "data": "v"}
    with pytest.raises(RemoteProtocolError) as grouped:
        payload_from_obj({"type": "COMMAND_GROUP", "commands": [plain, command]})
    assert grouped.value.message == alone.value.message


def test_a_group_holding_a_no_op_is_refused_after_its_commands_are_read():
    inner = {"type": "NOOP"}
    plain = {"type": "APPEND_MESSAGE", "queue_id": "Q-2", "data": "v"}
    with pytest.raises(RemoteProtocolError, match="queue commands only"):
        payload_from_obj({"type": "COMMAND_GROUP", "commands": [plain, inner, plain]})
    bad = {"type": "APPEND_MESSAGE", "queue_id": "Q-1"}
    with pytest.raises(RemoteProtocolError, match="'data'"):
        payload_from_obj({"type": "COMMAND_GROUP", "commands": [inner, bad]})


async def _read(frames: list[bytes]) -> tuple[bool, list[rm.Message]]:
    sender, receiver = trio.testing.memory_stream_pair()
    stepped: list[rm.Message] = []
    await sender.send_all(b"".join(encode_frame(f) for f in frames))
    await sender.aclose()
    with trio.fail_after(5):
        closed = await read_peer_stream(
            receiver,
            FrameDecoder(),
            stepped.append,
            peer="127.0.0.1:1",
            sender="B-1",
            self_id="B-2",
            max_frame=1 << 20,
        )
    return closed, stepped


async def test_a_peer_stream_stops_at_a_duplicate_key_after_what_came_before():
    good = [encode_message(m) for m in MESSAGES]
    bad = _frame_with(b'{"type":"APPEND_MESSAGE","queue_id":"Q-1","queue_id":"Q-2","data":1}')
    closed, stepped = await _read([*good, bad, good[0]])
    assert closed is False
    assert stepped == MESSAGES


async def test_a_peer_stream_stops_at_a_malformed_entry():
    bad = _frame_with(b'{"type":"COMMAND_GROUP","commands":[{"type":"APPEND_MESSAGE","data":1}]}')
    closed, stepped = await _read([encode_message(MESSAGES[0]), bad])
    assert closed is False
    assert stepped == [MESSAGES[0]]


async def test_a_peer_stream_reads_every_message_until_the_peer_closes():
    closed, stepped = await _read([encode_message(m) for m in MESSAGES])
    assert closed is True
    assert stepped == MESSAGES


async def test_a_peer_link_sends_its_queue_as_frames_and_counts_it_down_to_zero():
    """What a link queues (entries counted by their encoded bytes) leaves as one frame per
    message, in order, and the link's count of queued bytes goes back to zero."""
    from trio_broker._protocol._entries import payload_bytes
    from trio_broker._runtime._network import TCP
    from trio_broker._runtime._peers import PeerFleet

    received: list[rm.Message] = []
    greeted, done = trio.Event(), trio.Event()
    messages = [m for m in MESSAGES for _ in range(20)]
    for message in messages:
        for entry in getattr(message, "entries", ()):
            payload_bytes(entry)  # (as the driver does before sending new entries)

    async def peer(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        while (payload := decoder.next_frame()) is None:
            decoder.feed(await stream.receive_some(65536))
        assert loads_object(payload)["operation"] == "PEER_HELLO"
        await stream.send_all(encode_frame(b'{"status":"success"}'))
        greeted.set()
        while len(received) < len(messages):
            while (payload := decoder.next_frame()) is not None:
                received.append(message_from_obj(loads_object(payload)))
            if len(received) < len(messages):
                decoder.feed(await stream.receive_some(65536))
        done.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, peer, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        fleet = PeerFleet(
            "B-1", "K-1", nursery, lambda _peer: ("127.0.0.1", port), ("127.0.0.1", 1), TCP.connect
        )
        fleet.ensure({"B-2"})
        with trio.fail_after(10):
            await greeted.wait()
            await trio.testing.wait_all_tasks_blocked()  # (the link has read the answer)
            assert fleet.statistics().any_connected
            for message in messages:
                fleet.send(message)
            assert fleet._links["B-2"].queued_bytes > 0
            await done.wait()
        assert received == messages
        assert fleet._links["B-2"].queued_bytes == 0
        assert fleet.statistics().dropped("B-2") == 0
        nursery.cancel_scope.cancel()
