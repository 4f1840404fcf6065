"""HEARTBEAT's round and its echo (ReadIndex, ``_core/_read_index.py``) on the peer wire:
absent when 0, so brokers of the previous version read our frames as before and we read
theirs (without rounds: their answers then never confirm a read, which takes the log)."""

from __future__ import annotations

import attrs
import cattrs
import orjson
import pytest

from trio_broker._core import _raft_messages as rm
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol._consensus import encode_message, message_from_obj

COMMON = {"src": "B-1", "dst": "B-2", "term": 3, "cluster_version": 2}
OLD_HEARTBEAT = (
    b'{"operation":"HEARTBEAT","broker_id":"B-1","to":"B-2","term":3,"cluster_version":2,'
    b'"commit":4,"role":"leader"}'
)
OLD_ANSWER = (
    b'{"operation":"HEARTBEAT_RESPONSE","broker_id":"B-1","to":"B-2","term":3,'
    b'"cluster_version":2,"last_index":9,"status":"success"}'
)


@attrs.frozen(kw_only=True)
class PreviousHeartbeat:
    """HEARTBEAT as the previous version declares it (no round)."""

    src: str
    dst: str
    term: int
    cluster_version: int
    commit: int


def previous_decode(obj: dict) -> PreviousHeartbeat:
    """How the previous version structures a HEARTBEAT: cattrs, unknown keys ignored."""
    fn = cattrs.gen.make_dict_structure_fn(
        PreviousHeartbeat,
        cattrs.Converter(),
        src=cattrs.gen.override(rename="broker_id"),
        dst=cattrs.gen.override(rename="to"),
    )
    return fn(obj, PreviousHeartbeat)


def test_a_heartbeat_carries_its_round_and_the_answer_echoes_it():
    beat = rm.Heartbeat(**COMMON, commit=4, round=7)
    obj = orjson.loads(encode_message(beat))
    assert obj["round"] == 7 and message_from_obj(obj) == beat
    echo = rm.HeartbeatResponse(**COMMON, last_index=9, round=7)
    obj = orjson.loads(encode_message(echo))
    assert obj["round"] == 7 and message_from_obj(obj) == echo


def test_without_a_round_the_frames_are_the_previous_versions_byte_for_byte():
    assert encode_message(rm.Heartbeat(**COMMON, commit=4)) == OLD_HEARTBEAT
    assert encode_message(rm.HeartbeatResponse(**COMMON, last_index=9)) == OLD_ANSWER


def test_frames_of_the_previous_version_decode_with_round_zero():
    assert message_from_obj(orjson.loads(OLD_HEARTBEAT)) == rm.Heartbeat(**COMMON, commit=4)
    answer = message_from_obj(orjson.loads(OLD_ANSWER))
    assert answer == rm.HeartbeatResponse(**COMMON, last_index=9) and answer.round == 0


def test_the_previous_version_reads_a_heartbeat_with_a_round():
    obj = orjson.loads(encode_message(rm.Heartbeat(**COMMON, commit=4, round=7)))
    assert previous_decode(obj) == PreviousHeartbeat(**COMMON, commit=4)


@pytest.mark.parametrize("cls", [rm.Heartbeat, rm.HeartbeatResponse])
def test_a_malformed_round_is_a_remote_protocol_error(cls):
    fields = {"commit": 4} if cls is rm.Heartbeat else {}
    obj = {**orjson.loads(encode_message(cls(**COMMON, **fields))), "round": "7"}
    with pytest.raises(RemoteProtocolError, match="malformed"):
        message_from_obj(obj)
