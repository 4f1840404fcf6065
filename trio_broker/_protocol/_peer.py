"""Broker-to-broker messages on the wire, and log entry payloads on disk.

The consensus core's message classes carry no serialization code; this module maps each one to
a frame whose ``operation`` is the design's name (``ELECTION_REQUEST``, ``REPLICATE``,
``PROMOTE_TO_LEADER``, ``HEARTBEAT``, ``CLUSTER_UPDATE``, ``DATA_SYNC``) plus the replies. The
sender is ``broker_id`` (``candidate_id`` in an ELECTION_REQUEST, as in the design's diagram 5),
the receiver ``to``.

Log entry payloads (queue commands, the leader's no-op, membership changes) have one JSON form,
used both inside REPLICATE frames and as the bytes of the on-disk log. A message value is
embedded in that JSON as it was stored, never re-encoded by hand.
"""

from __future__ import annotations

from typing import Any

import orjson

from .. import _core
from .._core import _commands as cmd
from .._core import _raft_messages as rm
from .._errors import ProtocolError
from ._codec import dumps_value

# -- log entry payloads ---------------------------------------------------------------------------


def config_to_obj(config: rm.Config) -> dict[str, Any]:
    return {
        "voters": sorted(config.voters),
        "learners": sorted(config.learners),
        "version": config.version,
    }


def config_from_obj(obj: dict[str, Any]) -> rm.Config:
    return rm.Config(
        voters=frozenset(_str_list(obj["voters"])),
        learners=frozenset(_str_list(obj.get("learners", []))),
        version=_int(obj["version"]),
    )


def _producer_fields(payload: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if payload.producer_id is not None:
        fields = {"producer_id": payload.producer_id, "producer_seq": payload.producer_seq}
    if payload.appended_ms is not None:
        fields["appended_ms"] = payload.appended_ms
    return fields


def retention_to_obj(policy: cmd.RetentionPolicy) -> dict[str, Any]:
    return {
        "max_messages": policy.max_messages,
        "max_age_ms": policy.max_age_ms,
        "delete_acknowledged": policy.delete_acknowledged,
    }


def retention_from_obj(obj: Any) -> cmd.RetentionPolicy:
    if not isinstance(obj, dict):
        raise TypeError("a retention policy must be an object")
    max_messages, max_age_ms = obj.get("max_messages"), obj.get("max_age_ms")
    return cmd.RetentionPolicy(
        None if max_messages is None else _int(max_messages),
        None if max_age_ms is None else _int(max_age_ms),
        _bool(obj.get("delete_acknowledged", False)),
    )


def payload_to_obj(payload: Any) -> dict[str, Any]:
    if isinstance(payload, _core.AppendMessage):
        return {
            "type": "APPEND_MESSAGE",
            "queue_id": payload.queue_id,
            "data": orjson.Fragment(payload.data),
            **_producer_fields(payload),
        }
    if isinstance(payload, cmd.AppendBatch):
        return {
            "type": "APPEND_BATCH",
            "queue_id": payload.queue_id,
            "data": [orjson.Fragment(d) for d in payload.data],
            **_producer_fields(payload),
        }
    if isinstance(payload, cmd.ReadBatch):
        return {
            "type": "READ_BATCH",
            "queue_id": payload.queue_id,
            "client_id": payload.client_id,
            "max_messages": payload.max_messages,
            "peek": payload.peek,
            "max_bytes": payload.max_bytes,
        }
    if isinstance(payload, cmd.Ack):
        return {
            "type": "ACK",
            "queue_id": payload.queue_id,
            "client_id": payload.client_id,
            "sequence_num": payload.sequence_num,
        }
    if isinstance(payload, cmd.Seek):
        return {
            "type": "SEEK",
            "queue_id": payload.queue_id,
            "client_id": payload.client_id,
            "next_sequence_num": payload.next_sequence_num,
        }
    if isinstance(payload, _core.ReadNext):
        return {
            "type": "UPDATE_POSITION",
            "queue_id": payload.queue_id,
            "client_id": payload.client_id,
        }
    if isinstance(payload, _core.CreateQueue):
        if payload.retention is None:
            return {"type": "CREATE_QUEUE", "queue_id": payload.queue_id}
        return {
            "type": "CREATE_QUEUE",
            "queue_id": payload.queue_id,
            "retention": retention_to_obj(payload.retention),
        }
    if isinstance(payload, cmd.SetRetention):
        return {
            "type": "SET_RETENTION",
            "queue_id": payload.queue_id,
            "retention": retention_to_obj(payload.policy),
        }
    if isinstance(payload, cmd.ApplyRetention):
        return {"type": "APPLY_RETENTION", "now_ms": payload.now_ms}
    if isinstance(payload, _core.SetBrokerAddress):
        return {
            "type": "BROKER_ADDRESS",
            "broker_id": payload.broker_id,
            "host": payload.host,
            "port": payload.port,
        }
    if isinstance(payload, cmd.CommandGroup):
        return {"type": "COMMAND_GROUP", "commands": [payload_to_obj(c) for c in payload.commands]}
    if isinstance(payload, rm.NoOp):
        return {"type": "NOOP"}
    if isinstance(payload, rm.ConfigEntry):
        change = payload.change
        return {
            "type": "CLUSTER_CONFIG",
            "config": config_to_obj(payload.config),
            "change": None
            if change is None
            else {"action": change.action.value, "broker_id": change.node_id},
        }
    raise TypeError(f"cannot encode log payload {payload!r}")


def payload_from_obj(obj: Any) -> Any:
    if not isinstance(obj, dict):
        raise ProtocolError("a log entry payload must be an object")
    kind = obj.get("type")
    try:
        if kind == "APPEND_MESSAGE":
            return _core.AppendMessage(
                _str(obj["queue_id"]), dumps_value(obj["data"]), *_producer_from(obj)
            )
        if kind == "APPEND_BATCH":
            data = obj["data"]
            if not isinstance(data, list):
                raise TypeError("data must be a list")
            return cmd.AppendBatch(
                _str(obj["queue_id"]), tuple(dumps_value(d) for d in data), *_producer_from(obj)
            )
        if kind == "READ_BATCH":
            return cmd.ReadBatch(
                _str(obj["client_id"]),
                _str(obj["queue_id"]),
                _int(obj["max_messages"]),
                _bool(obj["peek"]),
                _int(obj["max_bytes"]),
            )
        if kind == "ACK":
            return cmd.Ack(_str(obj["client_id"]), _str(obj["queue_id"]), _int(obj["sequence_num"]))
        if kind == "SEEK":
            target = obj["next_sequence_num"]
            return cmd.Seek(
                _str(obj["client_id"]),
                _str(obj["queue_id"]),
                None if target is None else _int(target),
            )
        if kind == "UPDATE_POSITION":
            return _core.ReadNext(_str(obj["client_id"]), _str(obj["queue_id"]))
        if kind == "CREATE_QUEUE":
            retention = obj.get("retention")
            return _core.CreateQueue(
                _str(obj["queue_id"]), None if retention is None else retention_from_obj(retention)
            )
        if kind == "SET_RETENTION":
            return cmd.SetRetention(_str(obj["queue_id"]), retention_from_obj(obj["retention"]))
        if kind == "APPLY_RETENTION":
            return cmd.ApplyRetention(_int(obj["now_ms"]))
        if kind == "BROKER_ADDRESS":
            return _core.SetBrokerAddress(
                _str(obj["broker_id"]), _str(obj["host"]), _int(obj["port"])
            )
        if kind == "COMMAND_GROUP":
            commands = obj["commands"]
            if not isinstance(commands, list) or not commands:
                raise TypeError("commands must be a non-empty list")
            decoded = tuple(payload_from_obj(c) for c in commands)
            if not all(isinstance(c, cmd.SingleCommand) for c in decoded):
                raise TypeError("a command group holds queue commands only")
            return cmd.CommandGroup(decoded)
        if kind == "NOOP":
            return rm.NoOp()
        if kind == "CLUSTER_CONFIG":
            change = obj.get("change")
            return rm.ConfigEntry(
                config_from_obj(obj["config"]),
                None
                if change is None
                else rm.ConfigChange(rm.ChangeAction(change["action"]), _str(change["broker_id"])),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed {kind} log entry: {exc!r}") from None
    raise ProtocolError(f"unknown log entry type {kind!r}")


def _producer_from(obj: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    """producer_id, producer_seq and appended_ms (absent from entries older than retention)."""
    stamp = obj.get("appended_ms")
    stamp = None if stamp is None else _int(stamp)
    if obj.get("producer_id") is None:
        return None, None, stamp
    return _str(obj["producer_id"]), _int(obj["producer_seq"]), stamp


def encode_payload(payload: Any) -> bytes:
    """A log entry's payload as the bytes stored in the on-disk log."""
    return orjson.dumps(payload_to_obj(payload))


def decode_payload(raw: bytes) -> Any:
    return payload_from_obj(orjson.loads(raw))


def _entry_to_obj(entry: rm.Entry) -> dict[str, Any]:
    return {"index": entry.index, "term": entry.term, "payload": payload_to_obj(entry.payload)}


def _entry_from_obj(obj: Any) -> rm.Entry:
    if not isinstance(obj, dict):
        raise ProtocolError("an entry must be an object")
    return rm.Entry(_int(obj["term"]), _int(obj["index"]), payload_from_obj(obj["payload"]))


# -- strict field readers (peer input is validated like client input) -----------------------------


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return [_str(v) for v in value]


# -- consensus messages ---------------------------------------------------------------------------

PEER_OPERATIONS = (
    "ELECTION_REQUEST",
    "ELECTION_RESPONSE",
    "REPLICATE",
    "PROMOTE_TO_LEADER",
    "REPLICATE_RESPONSE",
    "HEARTBEAT",
    "HEARTBEAT_RESPONSE",
    "CLUSTER_UPDATE",
    "CLUSTER_UPDATE_RESPONSE",
    "DATA_SYNC",
    "TIMEOUT_NOW",
)


def _common(m: Any, operation: str, sender_field: str = "broker_id") -> dict[str, Any]:
    return {
        "operation": operation,
        sender_field: m.src,
        "to": m.dst,
        "term": m.term,
        "cluster_version": m.cluster_version,
    }


def message_to_obj(m: rm.Message) -> dict[str, Any]:
    """A consensus message as the JSON object of its frame."""
    if isinstance(m, rm.ElectionRequest):
        body = _common(m, "ELECTION_REQUEST", "candidate_id") | {
            "pre_vote": m.pre_vote,
            "last_log_index": m.last_log_index,
            "last_log_term": m.last_log_term,
        }
        if m.transfer:
            body["transfer"] = True  # absent means false: brokers without transfers agree
        return body
    if isinstance(m, rm.ElectionResponse):
        body = _common(m, "ELECTION_RESPONSE") | {
            "pre_vote": m.pre_vote,
            "status": "granted" if m.granted else "denied",
        }
        if m.reason is not None:
            body["reason"] = m.reason.value
        return body
    if isinstance(m, rm.Replicate):  # PromoteToLeader is a Replicate
        op = "PROMOTE_TO_LEADER" if isinstance(m, rm.PromoteToLeader) else "REPLICATE"
        return _common(m, op) | {
            "prev_log_index": m.prev_log_index,
            "prev_log_term": m.prev_log_term,
            "leader_commit": m.leader_commit,
            "entries": [_entry_to_obj(e) for e in m.entries],
        }
    if isinstance(m, rm.ReplicateResponse):
        return _common(m, "REPLICATE_RESPONSE") | {
            "status": "success" if m.success else "rejected",
            "match_index": m.match_index,
            "rejected_index": m.rejected_index,
            "hint_index": m.hint_index,
            "hint_term": m.hint_term,
        }
    if isinstance(m, rm.Heartbeat):
        return _common(m, "HEARTBEAT") | {"commit": m.commit, "role": "leader"}
    if isinstance(m, rm.HeartbeatResponse):
        return _common(m, "HEARTBEAT_RESPONSE") | {"status": "success"}
    if isinstance(m, rm.ClusterUpdate):
        return _common(m, "CLUSTER_UPDATE") | {
            "members": {v.node_id: {"role": v.role, "status": v.status} for v in m.members},
        }
    if isinstance(m, rm.ClusterUpdateResponse):
        return _common(m, "CLUSTER_UPDATE_RESPONSE") | {"status": "success"}
    if isinstance(m, rm.TimeoutNow):
        return _common(m, "TIMEOUT_NOW")
    if isinstance(m, rm.DataSync):
        return _common(m, "DATA_SYNC") | {
            "snapshot": {
                "index": m.snapshot.index,
                "term": m.snapshot.term,
                "config": config_to_obj(m.snapshot.config),
            },
            "data": m.data,
        }
    raise TypeError(f"cannot encode message {m!r}")


def message_from_obj(obj: dict[str, Any]) -> rm.Message:
    """A frame's JSON object as a consensus message, or :class:`ProtocolError`."""
    op = obj.get("operation")
    try:
        sender = obj["candidate_id"] if op == "ELECTION_REQUEST" else obj["broker_id"]
        common = {
            "src": _str(sender),
            "dst": _str(obj["to"]),
            "term": _int(obj["term"]),
            "cluster_version": _int(obj["cluster_version"]),
        }
        if op == "ELECTION_REQUEST":
            return rm.ElectionRequest(
                **common,
                pre_vote=_bool(obj["pre_vote"]),
                last_log_index=_int(obj["last_log_index"]),
                last_log_term=_int(obj["last_log_term"]),
                transfer=_bool(obj.get("transfer", False)),
            )
        if op == "ELECTION_RESPONSE":
            reason = obj.get("reason")
            return rm.ElectionResponse(
                **common,
                pre_vote=_bool(obj["pre_vote"]),
                granted=obj["status"] == "granted",
                reason=None if reason is None else rm.DenyReason(reason),
            )
        if op in ("REPLICATE", "PROMOTE_TO_LEADER"):
            cls = rm.PromoteToLeader if op == "PROMOTE_TO_LEADER" else rm.Replicate
            entries = obj["entries"]
            if not isinstance(entries, list):
                raise TypeError("entries must be a list")
            return cls(
                **common,
                prev_log_index=_int(obj["prev_log_index"]),
                prev_log_term=_int(obj["prev_log_term"]),
                leader_commit=_int(obj["leader_commit"]),
                entries=tuple(_entry_from_obj(e) for e in entries),
            )
        if op == "REPLICATE_RESPONSE":
            return rm.ReplicateResponse(
                **common,
                success=obj["status"] == "success",
                match_index=_int(obj["match_index"]),
                rejected_index=_int(obj["rejected_index"]),
                hint_index=_int(obj["hint_index"]),
                hint_term=_int(obj["hint_term"]),
            )
        if op == "HEARTBEAT":
            return rm.Heartbeat(**common, commit=_int(obj["commit"]))
        if op == "HEARTBEAT_RESPONSE":
            return rm.HeartbeatResponse(**common)
        if op == "CLUSTER_UPDATE":
            members = obj["members"]
            if not isinstance(members, dict):
                raise TypeError("members must be an object")
            return rm.ClusterUpdate(
                **common,
                members=tuple(
                    rm.MemberView(_str(k), _str(v["role"]), _str(v["status"]))
                    for k, v in sorted(members.items())
                ),
            )
        if op == "CLUSTER_UPDATE_RESPONSE":
            return rm.ClusterUpdateResponse(**common)
        if op == "TIMEOUT_NOW":
            return rm.TimeoutNow(**common)
        if op == "DATA_SYNC":
            snap = obj["snapshot"]
            return rm.DataSync(
                **common,
                snapshot=rm.SnapshotMeta(
                    _int(snap["index"]), _int(snap["term"]), config_from_obj(snap["config"])
                ),
                data=obj.get("data"),
            )
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"malformed {op} message: {exc!r}") from None
    raise ProtocolError(f"unknown peer operation {op!r}")


def encode_message(m: rm.Message) -> bytes:
    return orjson.dumps(message_to_obj(m))
