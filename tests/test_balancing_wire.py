"""The balancer's operator operations on the wire: REBALANCE and DRAIN_BROKER and their
answers (docs/protocol.md, "Balancer operations")."""

from __future__ import annotations

import orjson
import pytest

from trio_broker._core._metadata import StartReplicaMove
from trio_broker._core._placement import TransferLeader
from trio_broker._errors import ProtocolError
from trio_broker._protocol import decode_request, decode_response, encode_request
from trio_broker._protocol._codec import encode_response
from trio_broker._protocol._messages import DrainBroker, DrainState, Rebalance, Rebalanced
from trio_broker._runtime import _balancing


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"operation":"REBALANCE"}', Rebalance()),
        (b'{"operation":"DRAIN_BROKER","broker_id":"B-AAAAA"}', DrainBroker("B-AAAAA")),
        (
            b'{"operation":"DRAIN_BROKER","broker_id":"B-AAAAA","draining":false}',
            DrainBroker("B-AAAAA", draining=False),
        ),
    ],
)
def test_the_operator_requests_decode_and_encode(payload, expected):
    assert decode_request(payload) == expected
    assert decode_request(encode_request(expected)) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b'{"operation":"DRAIN_BROKER"}',
        b'{"operation":"DRAIN_BROKER","broker_id":7}',
        b'{"operation":"DRAIN_BROKER","broker_id":"B-AAAAA","draining":"no"}',
        b'{"operation":"DRAIN_BROKER","broker_id":"B-AAAAA","draining":0}',
    ],
)
def test_a_malformed_drain_is_a_protocol_error(payload):
    with pytest.raises(ProtocolError, match="invalid DRAIN_BROKER request"):
        decode_request(payload)


def test_the_answers_keep_their_wire_shape():
    report = Rebalanced(
        map_version=7,
        moves=[
            _balancing.describe(StartReplicaMove("G-AAAAA", "B-AAAAA", "B-BBBBB"), "done"),
            _balancing.describe(TransferLeader("G-BBBBB", "B-CCCCC"), "failed", "no room"),
        ],
        moving_groups=1,
    )
    body = orjson.loads(encode_response(report))
    assert body == {
        "status": "success",
        "map_version": 7,
        "moving_groups": 1,
        "moves": [
            {
                "move": "START_REPLICA_MOVE",
                "group_id": "G-AAAAA",
                "outcome": "done",
                "broker_id": "B-BBBBB",
                "source": "B-AAAAA",
                "reason": None,
            },
            {
                "move": "TRANSFER_LEADER",
                "group_id": "G-BBBBB",
                "outcome": "failed",
                "broker_id": "B-CCCCC",
                "source": None,
                "reason": "no room",
            },
        ],
    }
    assert decode_response(encode_response(report), Rebalanced) == report
    state = DrainState("B-AAAAA", True, 3, 1, 9)
    assert decode_response(encode_response(state), DrainState) == state
