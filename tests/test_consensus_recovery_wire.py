"""The fields protocol-aware recovery adds to REPLICATE and HEARTBEAT_RESPONSE: sent only when
they say something, so a peer that predates them reads every frame as before (and theirs,
without the fields, decode with the defaults: test_codec_compat.py)."""

from __future__ import annotations

import attrs
import orjson
import pytest

from trio_broker._core import _raft_messages as rm
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol._consensus import encode_message, message_from_obj

COMMON = {"src": "B-1", "dst": "B-2", "term": 3, "cluster_version": 2}


def replicate(**kwargs):
    return rm.Replicate(
        **COMMON, prev_log_index=4, prev_log_term=1, entries=(), leader_commit=4, **kwargs
    )


def test_replicate_carries_what_the_member_acknowledged_only_when_it_lost_it():
    told = replicate(acknowledged=9)
    obj = orjson.loads(encode_message(told))
    assert obj["acknowledged"] == 9
    assert message_from_obj(obj) == told
    assert "acknowledged" not in orjson.loads(encode_message(replicate()))


def test_heartbeat_response_carries_the_members_last_index():
    answer = rm.HeartbeatResponse(**COMMON, last_index=12)
    obj = orjson.loads(encode_message(answer))
    assert obj["last_index"] == 12 and obj["status"] == "success"
    assert message_from_obj(obj) == answer
    assert "last_index" not in orjson.loads(encode_message(rm.HeartbeatResponse(**COMMON)))


@pytest.mark.parametrize(
    "obj",
    [
        {**orjson.loads(encode_message(replicate())), "acknowledged": "9"},
        {**orjson.loads(encode_message(rm.HeartbeatResponse(**COMMON))), "last_index": "x"},
    ],
)
def test_a_malformed_recovery_field_is_a_remote_protocol_error(obj):
    with pytest.raises(RemoteProtocolError, match="malformed"):
        message_from_obj(obj)


def test_a_restarted_member_and_its_leader_exchange_the_start_only_while_it_matters():
    asks = rm.HeartbeatResponse(**COMMON, last_index=12, start_id=77)
    obj = orjson.loads(encode_message(asks))
    assert obj["start_id"] == 77 and message_from_obj(obj) == asks
    assert "start_id" not in orjson.loads(encode_message(rm.HeartbeatResponse(**COMMON)))
    answer = replicate(start_id=77, log_end=15)
    obj = orjson.loads(encode_message(answer))
    assert (obj["start_id"], obj["log_end"]) == (77, 15) and message_from_obj(obj) == answer
    plain = orjson.loads(encode_message(replicate()))
    assert "start_id" not in plain and "log_end" not in plain


def test_an_election_answer_carries_the_voters_log_end():
    answer = rm.ElectionResponse(
        **COMMON,
        pre_vote=False,
        granted=False,
        reason=rm.DenyReason.LOG_BEHIND,
        last_log_index=0,
        last_log_term=0,
        voter_term=3,
    )
    obj = orjson.loads(encode_message(answer))
    assert (obj["last_log_index"], obj["last_log_term"], obj["voter_term"]) == (0, 0, 3)
    assert message_from_obj(obj) == answer
    old = orjson.loads(encode_message(rm.ElectionResponse(**COMMON, pre_vote=False, granted=True)))
    assert not {"last_log_index", "last_log_term", "voter_term"} & set(old)
    assert message_from_obj(old).last_log_index is None  # from a peer that predates it


def test_a_probe_carries_its_number_and_the_answer_echoes_it():
    probe = replicate(probe=3)
    obj = orjson.loads(encode_message(probe))
    assert obj["probe"] == 3 and message_from_obj(obj) == probe
    answer = rm.ReplicateResponse(
        **COMMON, success=False, rejected_index=4, hint_index=2, hint_term=1, probe=3
    )
    obj = orjson.loads(encode_message(answer))
    assert obj["probe"] == 3 and message_from_obj(obj) == answer
    assert "probe" not in orjson.loads(encode_message(replicate()))
    old = orjson.loads(encode_message(attrs.evolve(answer, probe=0)))
    assert "probe" not in old and message_from_obj(old).probe == 0
