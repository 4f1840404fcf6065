"""A pipelined receive of APPENDs read together (``ConnectionServer._read_requests`` with
``decode_plain_appends``): one parse for the receive's frames, the same requests as frame by
frame, and any receive that is not only such APPENDs read frame by frame as before, with
its errors in place (docs/performance-history.md, "The leader's CPU per pipelined append (twelfth
round)")."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from tests.test_poller_connections import (
    DEADLINE,
    Decisions,
    _append,
    _connect,
    _exchange,
    _server,
    _serving,
    pytestmark,  # noqa: F401  (skipped where there is no epoll)
)
from trio_broker._protocol import encode_frame
from trio_broker._protocol._codec import decode_client_request
from trio_broker._protocol._receive_appends import decode_plain_appends

_HEAD = b'{"operation":"APPEND","queue_name":'


async def test_a_receive_of_appends_is_decoded_in_one_parse(decodes: list[bytes]) -> None:
    values = [f"v{i}" for i in range(16)]
    got = await _exchange(_server(Decisions()), b"".join(_append("Q-WAIT", v) for v in values), 16)
    assert got == [f"many:{value}" for value in values]
    assert decodes == []  # (frame by frame: each of the 16 decoded alone)
    # Any other request in the receive: every frame read one by one, in order, each error
    # in its place.
    mixed = [
        _append("Q-WAIT", "a"),
        _append("Q-WAIT", "b", headers={"k": "v"}),
        encode_frame(b'{"operation":"APPEND","queue_name":"Q-WAIT","data":'),  # (cut short)
        _append("Q-WAIT", "c"),
    ]
    got = await _exchange(_server(Decisions()), b"".join(mixed), 4)
    assert got[:2] == ["many:a", "many:b"]
    assert "not valid UTF-8 JSON" in got[2]
    assert got[3] == "many:c"
    assert len(decodes) == 4


async def test_appends_then_a_frame_too_large_are_answered_then_closed(
    decodes: list[bytes],
) -> None:
    frames = _append("Q-WAIT", "a") + _append("Q-WAIT", "b") + (10_000).to_bytes(4, "big")
    server = _server(Decisions(), max_frame=1000)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(frames)
            got = await client.answers(3)
            assert await client.stream.receive_some(100) == b""  # (closed after the answers)
            await client.stream.aclose()
    assert got[:2] == ["many:a", "many:b"]
    assert "larger than the maximum" in got[2]
    assert decodes == []


def _payload(queue: str, data: Any) -> bytes:
    return orjson.dumps({"operation": "APPEND", "queue_name": queue, "data": data})


@pytest.mark.parametrize(
    "payloads",
    [
        [_payload("Q-1", "x"), _payload("Q-2", 'ü and \\ and " and \n'), _payload("Q-3", "")],
        [_payload("Q-" + "é" * 10, "v"), _payload("Q-1", "w")],
        [_payload("Q-1", "x" * 5000)] * 3,
    ],
)
def test_the_requests_are_those_of_each_frame_alone(payloads: list[bytes]) -> None:
    alone = [decode_client_request(payload) for payload in payloads]
    together = decode_plain_appends(payloads)
    assert together is None or together == alone
    plain = [_payload("Q-1", "x"), _payload("Q-2", "y" * 100)]
    assert decode_plain_appends(plain) == [decode_client_request(p) for p in plain]


@pytest.mark.parametrize(
    "payloads",
    [
        # one frame that leaves a list open, closed by the next: one element of two frames
        [_HEAD + b'"Q-1","data":["a"', _HEAD + b'"Q-1","data":"b"}]}'],
        # and one frame of two objects, so that the elements are as many as the frames
        [
            _HEAD + b'"Q-1","data":["a"',
            _HEAD + b'"Q-1","data":"b"}]}',
            _HEAD + b'"Q-1","data":"c"},' + _HEAD + b'"Q-1","data":"d"}',
        ],
        [_payload("Q-1", "x"), _HEAD + b' "Q-1","data":"y"}'],  # (a space)
        [_payload("Q-1", "x"), _HEAD + b'"Q-1","data":"y","data":"y"}'],  # (a key twice)
        [_payload("Q-1", "x"), _HEAD + b'"Q-1","data":"\\u0079"}'],  # (an escape)
        [_payload("Q-1", "x"), _payload("Q-1", 5)],  # (not a string)
        [_payload("Q-1", "x"), _HEAD + b'"Q-1","data":"y","z":1}'],  # (a fourth key)
        [_payload("Q-1", "x"), b'{"operation":"READ","queue_name":"Q-1","client_id":"c"}'],
        [_payload("Q-1", "x"), _payload("Q-" + "q" * 200, "y")],  # (a queue name too long)
        [_payload("Q-1", "x"), _HEAD + b'"Q-1","data":"y"'],  # (cut short)
        [_payload("Q-1", "x"), _HEAD + b'"Q-1","dat":"yy"}'],  # (no data)
    ],
)
def test_any_other_frame_leaves_the_receive_to_be_read_frame_by_frame(
    payloads: list[bytes],
) -> None:
    assert decode_plain_appends(payloads) is None
