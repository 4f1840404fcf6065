"""Log entries and consensus messages in the form brokers wrote before the converter took them
over: what is on disk, and what older brokers send, still decodes to the same values, and what
we write now is the same JSON (brokers of both versions read each other's)."""

from __future__ import annotations

import orjson
import pytest

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._errors import BrokerError, LocalProtocolError, ProtocolError, RemoteProtocolError
from trio_broker._protocol import Done, Joined, decode_response
from trio_broker._protocol._consensus import encode_message, message_from_obj
from trio_broker._protocol._entries import decode_payload, encode_payload, entry_checksum

# Each as the previous hand-written codec stored it, byte for byte.
STORED_PAYLOADS = [
    (
        b'{"type":"APPEND_MESSAGE","queue_id":"Q-AAAAABBBBB","data":{"a":[1,2]}}',
        cmd.AppendMessage("Q-AAAAABBBBB", b'{"a":[1,2]}'),
    ),
    (
        b'{"type":"APPEND_MESSAGE","queue_id":"Q-AAAAABBBBB","data":1,"producer_id":"P-1",'
        b'"producer_seq":4,"appended_ms":7}',
        cmd.AppendMessage("Q-AAAAABBBBB", b"1", "P-1", 4, appended_ms=7),
    ),
    (
        b'{"type":"APPEND_BATCH","queue_id":"Q-AAAAABBBBB","data":[1,[2]],"appended_ms":7}',
        cmd.AppendBatch("Q-AAAAABBBBB", (b"1", b"[2]"), appended_ms=7),
    ),
    (
        b'{"type":"APPEND_BATCH","queue_id":"Q-AAAAABBBBB","data":[1],"producer_id":"P",'
        b'"producer_seq":0}',
        cmd.AppendBatch("Q-AAAAABBBBB", (b"1",), "P", 0),
    ),
    (
        b'{"type":"READ_BATCH","queue_id":"Q-1","client_id":"C-1","max_messages":5,"peek":true,'
        b'"max_bytes":100}',
        cmd.ReadBatch("C-1", "Q-1", 5, True, 100),
    ),
    (
        b'{"type":"ACK","queue_id":"Q-1","client_id":"C-1","sequence_num":3}',
        cmd.Ack("C-1", "Q-1", 3),
    ),
    (
        b'{"type":"SEEK","queue_id":"Q-1","client_id":"C-1","next_sequence_num":null}',
        cmd.Seek("C-1", "Q-1", None),
    ),
    (
        b'{"type":"SEEK","queue_id":"Q-1","client_id":"C-1","next_sequence_num":4}',
        cmd.Seek("C-1", "Q-1", 4),
    ),
    (
        b'{"type":"UPDATE_POSITION","queue_id":"Q-1","client_id":"C-1"}',
        cmd.ReadNext("C-1", "Q-1"),
    ),
    (b'{"type":"CREATE_QUEUE","queue_id":"Q-1"}', cmd.CreateQueue("Q-1")),
    (
        b'{"type":"CREATE_QUEUE","queue_id":"Q-1","retention":{"max_messages":5,'
        b'"max_age_ms":null,"delete_acknowledged":true}}',
        cmd.CreateQueue("Q-1", cmd.RetentionPolicy(5, None, True)),
    ),
    (
        b'{"type":"SET_RETENTION","queue_id":"Q-1","retention":{"max_messages":null,'
        b'"max_age_ms":60,"delete_acknowledged":false}}',
        cmd.SetRetention("Q-1", cmd.RetentionPolicy(max_age_ms=60)),
    ),
    (b'{"type":"APPLY_RETENTION","now_ms":17}', cmd.ApplyRetention(17)),
    (
        b'{"type":"BROKER_ADDRESS","broker_id":"B-1","host":"h","port":9}',
        cmd.SetBrokerAddress("B-1", "h", 9),
    ),
    (b'{"type":"NOOP"}', rm.NoOp()),
    (
        b'{"type":"CLUSTER_CONFIG","config":{"voters":["B-1","B-2"],"learners":["B-3"],'
        b'"version":4},"change":{"action":"add_learner","broker_id":"B-3"}}',
        rm.ConfigEntry(
            rm.Config({"B-1", "B-2"}, {"B-3"}, 4),
            rm.ConfigChange(rm.ChangeAction.ADD_LEARNER, "B-3"),
        ),
    ),
    (
        b'{"type":"CLUSTER_CONFIG","config":{"voters":["B-1"],"learners":[],"version":1},'
        b'"change":null}',
        rm.ConfigEntry(rm.Config({"B-1"})),
    ),
    (
        b'{"type":"COMMAND_GROUP","commands":[{"type":"APPEND_MESSAGE","queue_id":"Q-1",'
        b'"data":[1],"appended_ms":5},{"type":"UPDATE_POSITION","queue_id":"Q-1",'
        b'"client_id":"C-1"}]}',
        cmd.CommandGroup(
            (cmd.AppendMessage("Q-1", b"[1]", appended_ms=5), cmd.ReadNext("C-1", "Q-1"))
        ),
    ),
]


@pytest.mark.parametrize(("raw", "payload"), STORED_PAYLOADS)
def test_log_payloads_of_the_previous_codec_decode_and_encode_byte_for_byte(raw, payload):
    assert decode_payload(raw) == payload
    assert encode_payload(payload) == raw


_COMMON = {"src": "B-1", "dst": "B-2", "term": 3, "cluster_version": 2}

SENT_MESSAGES = [
    (
        b'{"operation":"ELECTION_REQUEST","candidate_id":"B-1","to":"B-2","term":3,'
        b'"cluster_version":2,"pre_vote":true,"last_log_index":4,"last_log_term":2}',
        rm.ElectionRequest(**_COMMON, pre_vote=True, last_log_index=4, last_log_term=2),
    ),
    (
        b'{"operation":"ELECTION_RESPONSE","broker_id":"B-1","to":"B-2","term":3,'
        b'"cluster_version":2,"pre_vote":true,"status":"denied","reason":"log_behind"}',
        rm.ElectionResponse(
            **_COMMON, pre_vote=True, granted=False, reason=rm.DenyReason.LOG_BEHIND
        ),
    ),
    (
        b'{"operation":"REPLICATE","broker_id":"B-1","to":"B-2","term":3,"cluster_version":2,'
        b'"prev_log_index":1,"prev_log_term":1,"leader_commit":1,"entries":[{"index":2,'
        b'"term":3,"payload":{"type":"COMMAND_GROUP","commands":[{"type":"APPEND_MESSAGE",'
        b'"queue_id":"Q-1","data":[1],"appended_ms":5},{"type":"UPDATE_POSITION",'
        b'"queue_id":"Q-1","client_id":"C-1"}]}}]}',
        rm.Replicate(
            **_COMMON,
            prev_log_index=1,
            prev_log_term=1,
            entries=(
                rm.Entry(
                    3,
                    2,
                    cmd.CommandGroup(
                        (
                            cmd.AppendMessage("Q-1", b"[1]", appended_ms=5),
                            cmd.ReadNext("C-1", "Q-1"),
                        )
                    ),
                ),
            ),
            leader_commit=1,
        ),
    ),
    (
        b'{"operation":"PROMOTE_TO_LEADER","broker_id":"B-1","to":"B-2","term":3,'
        b'"cluster_version":2,"prev_log_index":1,"prev_log_term":1,"leader_commit":1,'
        b'"entries":[{"index":2,"term":3,"payload":{"type":"NOOP"}}]}',
        rm.PromoteToLeader(
            **_COMMON,
            prev_log_index=1,
            prev_log_term=1,
            entries=(rm.Entry(3, 2, rm.NoOp()),),
            leader_commit=1,
        ),
    ),
    (
        b'{"operation":"REPLICATE_RESPONSE","broker_id":"B-1","to":"B-2","term":3,'
        b'"cluster_version":2,"status":"rejected","match_index":0,"rejected_index":4,'
        b'"hint_index":2,"hint_term":1}',
        rm.ReplicateResponse(**_COMMON, success=False, rejected_index=4, hint_index=2, hint_term=1),
    ),
    (
        b'{"operation":"HEARTBEAT","broker_id":"B-1","to":"B-2","term":3,"cluster_version":2,'
        b'"commit":4,"role":"leader"}',
        rm.Heartbeat(**_COMMON, commit=4),
    ),
    (
        b'{"operation":"HEARTBEAT_RESPONSE","broker_id":"B-1","to":"B-2","term":3,'
        b'"cluster_version":2,"status":"success"}',
        rm.HeartbeatResponse(**_COMMON),
    ),
    (
        b'{"operation":"CLUSTER_UPDATE","broker_id":"B-1","to":"B-2","term":3,'
        b'"cluster_version":2,"members":{"B-1":{"role":"leader","status":"active"},'
        b'"B-2":{"role":"replica","status":"inactive"}}}',
        rm.ClusterUpdate(
            **_COMMON,
            members=(
                rm.MemberView("B-1", "leader", "active"),
                rm.MemberView("B-2", "replica", "inactive"),
            ),
        ),
    ),
    (
        b'{"operation":"CLUSTER_UPDATE_RESPONSE","broker_id":"B-1","to":"B-2","term":3,'
        b'"cluster_version":2,"status":"success"}',
        rm.ClusterUpdateResponse(**_COMMON),
    ),
    (
        b'{"operation":"TIMEOUT_NOW","broker_id":"B-1","to":"B-2","term":3,"cluster_version":2}',
        rm.TimeoutNow(**_COMMON),
    ),
    (
        b'{"operation":"DATA_SYNC","broker_id":"B-1","to":"B-2","term":3,"cluster_version":2,'
        b'"snapshot":{"index":5,"term":2,"config":{"voters":["B-1"],"learners":[],'
        b'"version":1}},"data":{"snapshot_id":"x","size":3,"sha256":"y"}}',
        rm.DataSync(
            **_COMMON,
            snapshot=rm.SnapshotMeta(5, 2, rm.Config({"B-1"})),
            data={"snapshot_id": "x", "size": 3, "sha256": "y"},
        ),
    ),
]


@pytest.mark.parametrize(("raw", "message"), SENT_MESSAGES)
def test_consensus_messages_of_the_previous_codec_decode_and_encode_the_same(raw, message):
    decoded = message_from_obj(orjson.loads(raw))
    assert decoded == message
    if isinstance(message, rm.DataSync):
        assert decoded.data == message.data  # not part of DataSync's equality
    assert encode_message(message) == _with_checksums(raw)


def _with_checksums(raw: bytes) -> bytes:
    """The previous codec's frame as brokers now send it: each entry also carries its checksum
    (schema version 6, docs/reliability.md), just before its payload; nothing else changes."""
    for entry in orjson.loads(raw).get("entries", []):
        head = b'"index":%d,"term":%d,' % (entry["index"], entry["term"])
        checksum = entry_checksum(entry["term"], entry["index"], orjson.dumps(entry["payload"]))
        assert raw.count(head + b'"payload":') == 1
        raw = raw.replace(head, head + b'"checksum":%d,' % checksum)
    return raw


@pytest.mark.parametrize(
    "obj",
    [
        {
            "operation": "HEARTBEAT",
            "broker_id": "B-1",
            "to": "B-2",
            "term": "3",
            "cluster_version": 2,
            "commit": 4,
        },
        {
            "operation": "HEARTBEAT",
            "broker_id": 1,
            "to": "B-2",
            "term": 3,
            "cluster_version": 2,
            "commit": 4,
        },
        {
            "operation": "REPLICATE",
            "broker_id": "B-1",
            "to": "B-2",
            "term": 3,
            "cluster_version": 2,
            "prev_log_index": 1,
            "prev_log_term": 1,
            "leader_commit": 1,
            "entries": {},
        },
        {
            "operation": "CLUSTER_UPDATE",
            "broker_id": "B-1",
            "to": "B-2",
            "term": 3,
            "cluster_version": 2,
            "members": [],
        },
        {"operation": "NOT_A_MESSAGE"},
    ],
)
def test_a_peers_malformed_message_is_a_remote_protocol_error(obj):
    with pytest.raises(RemoteProtocolError) as caught:
        message_from_obj(obj)
    assert isinstance(caught.value, ProtocolError)


def test_our_own_misuse_is_a_local_protocol_error_that_no_peer_fault_handler_catches():
    """h11's split: a value we cannot encode is our bug, not a peer's bad input."""
    with pytest.raises(LocalProtocolError) as caught:
        encode_payload(object())
    assert not isinstance(caught.value, BrokerError)
    with pytest.raises(LocalProtocolError):
        encode_message(object())  # type: ignore[arg-type]


def test_answers_from_other_brokers_decode_to_their_type_or_to_the_error():
    joined = decode_response(
        b'{"status":"success","cluster_id":"G-AAAAA","cluster_version":3,"leader_id":"B-1",'
        b'"brokers":[{"broker_id":"B-1","host":"h","port":1,"role":"leader",'
        b'"status":"active","membership":null,"lag":null}],"later_field":1}',
        Joined,
    )
    assert isinstance(joined, Joined) and joined.brokers[0].port == 1
    error = decode_response({"status": "error", "code": "NOT_LEADER", "message": "m"}, Joined)
    assert isinstance(error, BrokerError) and error.code == "NOT_LEADER"
    assert decode_response({"status": "success"}, Done) == Done()
    for bad in ({"status": "maybe"}, {"status": "success", "cluster_id": 7}):
        with pytest.raises(RemoteProtocolError):
            decode_response(bad, Joined)
