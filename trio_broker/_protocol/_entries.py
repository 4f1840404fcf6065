"""Log entry payloads: one JSON form, on disk and inside REPLICATE frames.

Queue commands, the leader's no-op and membership changes are a tagged union in the one
converter of ``_codec``: the ``type`` field names the class, with stable names written down in
:data:`ENTRY_TYPES` (never derived from class names), next to ``OPERATIONS``. A message value is
embedded in that JSON as it was stored, never re-encoded by hand.

Peer input is validated like client input (types are never coerced), except that identifiers
are not held to the client's length limit: what a leader replicates was checked when proposed.
Storage imports :func:`payload_bytes` (an entry's payload encoded once, cached on the entry,
the same bytes in the log and in every REPLICATE) and :func:`decode_payload`.

A group of plain appends has a second, compact form, ``APPEND_RUNS`` (:func:`_runs_from_obj`;
docs/replication.md, "A group of appends in runs"): read from anyone, written only where every
reader said it reads it (``payload_bytes(entry, runs=True)`` for a leader whose every member
did, ``entry_to_obj(entry, runs)`` per peer link).

Every entry carries a checksum (:func:`entry_checksum`: CRC32C of its term, index and payload
bytes), computed in the same step as the bytes and cached beside them: the log stores it with
the entry, every REPLICATE carries it (``"checksum"``, beside ``"payload"``), and a replica
checks it before the entry goes any further (:func:`entry_from_obj`). CRC32C through
``google-crc32c`` (hardware instructions where the CPU has them): 0.15 us per 1 KB payload on
this project's VMs, against 0.55 us for ``zlib.crc32``; it catches every burst error up to 32
bits, which is what flipped bits on a disk or a link look like.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
import cattrs
import cattrs.gen
import google_crc32c
import orjson

from .._core import _commands as cmd
from .._core import _metadata as md
from .._core import _raft_messages as rm
from .._core import _work_commands as work
from .._core._append_columns import AppendColumns
from .._core._proposals import MAX_GROUP
from .._errors import LocalProtocolError, RemoteProtocolError
from ._codec import converter, describe_error, dumps_value, dumps_values
from ._group_bytes import (
    _DEEP_FROM,
    _INT_HIGH,
    _INT_LOW,
    _RUN_FORM,
    APPEND_RUNS_HEAD,
    RUNS_DEPTH,
    _append_runs_bytes,
    _appends_group_bytes,
    _batch_bytes,
    _batches_group_bytes,
    _reads_group_bytes,
)
from ._runs_decode import _runs_from_obj

ENTRY_TYPES: dict[str, type] = {
    "APPEND_MESSAGE": cmd.AppendMessage,
    "APPEND_BATCH": cmd.AppendBatch,
    "READ_BATCH": cmd.ReadBatch,
    "ACK": cmd.Ack,
    "SEEK": cmd.Seek,
    "UPDATE_POSITION": cmd.ReadNext,
    "CREATE_QUEUE": cmd.CreateQueue,
    "SET_RETENTION": cmd.SetRetention,
    "APPLY_RETENTION": cmd.ApplyRetention,
    "BROKER_ADDRESS": cmd.SetBrokerAddress,
    "SET_GROUPS": cmd.SetGroups,
    "COMMAND_GROUP": cmd.CommandGroup,
    # Work queues and the queue lifecycle (schema version 5, docs/protocol.md "Work queues").
    "CREATE_NAMED_QUEUE": work.CreateNamedQueue,
    "DELETE_QUEUE": work.DeleteQueue,
    "PUBLISH": work.Publish,
    "READ_RECORDS": work.ReadRecords,
    "JOIN_GROUP": work.JoinGroup,
    "DELETE_GROUP": work.DeleteGroup,
    "GROUP_READ": work.GroupRead,
    "GROUP_ACK": work.GroupAck,
    "GROUP_NACK": work.GroupNack,
    "GROUP_EXTEND": work.GroupExtend,
    "EXPIRE_LEASES": work.ExpireLeases,
    "FORGET_POSITION": work.ForgetPosition,
    "FORGET_IDLE_POSITIONS": work.ForgetIdlePositions,
    "NOOP": rm.NoOp,
    "CLUSTER_CONFIG": rm.ConfigEntry,
}
"""Wire names of log entry payloads (the design's REPLICATE types, and additions)."""

METADATA_PAYLOADS: dict[str, type] = {
    "FOUND_CLUSTER": md.FoundCluster,
    "REGISTER_BROKER": md.RegisterBroker,
    "BROKER_ALIVE": md.SetBrokerAlive,
    "BROKER_DRAINING": md.SetBrokerDraining,
    "UNREGISTER_BROKER": md.UnregisterBroker,
    "PREFERRED_LEADER": md.SetPreferredLeader,
    "START_REPLICA_MOVE": md.StartReplicaMove,
    "ABANDON_REPLICA_MOVE": md.AbandonReplicaMove,
    "GROUP_REPLICAS": md.SetGroupReplicas,
    "PLACE_QUEUE": md.PlaceQueue,
    "DROP_QUEUE": md.DropQueue,
    "QUEUE_COUNT": md.SetQueueCount,
    "REPLICATION_FACTOR": md.SetReplicationFactor,
    "ADD_GROUPS": md.AddGroups,
    "METADATA_VOTERS": md.SetMetadataVoters,
}
"""The metadata group's commands (docs/replication.md, "The metadata group"), entries of the
cluster group's log: ``{"type": name, **fields}``, through the one converter."""
ENTRY_TYPES.update(METADATA_PAYLOADS)
ENTRY_TYPE_NAMES: dict[type, str] = {cls: name for name, cls in ENTRY_TYPES.items()}


# -- field readers for peer input ----------------------------------------------------------------


def plain_str(value: Any, _type: Any = str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _optional_str(value: Any, _type: Any) -> str | None:
    return None if value is None else plain_str(value)


def _str_list(value: Any, _type: Any = None) -> list[str]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return [plain_str(v) for v in value]


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return value


def peer_overrides(cls: type, **renames: str) -> dict[str, Any]:
    """cattrs overrides for a class read from another broker: its ``str`` fields without the
    client's length limit, and fields renamed on the wire (``field="wire_name"``)."""
    attrs.resolve_types(cls)
    overrides: dict[str, Any] = {}
    for field in attrs.fields(cls):
        hook = None
        if field.type is str:
            hook = plain_str
        elif field.type == (str | None):
            hook = _optional_str
        kwargs: dict[str, Any] = {}
        if hook is not None:
            kwargs["struct_hook"] = hook
        if field.name in renames:
            kwargs["rename"] = renames[field.name]
        if kwargs:
            overrides[field.name] = cattrs.gen.override(**kwargs)
    return overrides


# -- the pieces ----------------------------------------------------------------------------------

# A stored value: JSON bytes, embedded as they are; read back as the bytes the broker stores.
converter.register_unstructure_hook(bytes, orjson.Fragment)
converter.register_structure_hook(bytes, lambda value, _type: dumps_value(value))


def _stored_values(value: Any, _type: Any) -> tuple[bytes, ...]:
    """An APPEND_BATCH's values as they are stored: ``dumps_values``, the client's request's
    rule (the list written once and cut at its commas when no value holds one), each value's
    ``dumps_value`` bytes (docs/performance-history.md, "Batch appends: every broker's µs per
    message": 170 -> 100 ns a value on each replica, for values without a comma)."""
    if not isinstance(value, list):
        raise TypeError("data must be a list")
    return dumps_values(value)


converter.register_structure_hook_func(lambda t: t == tuple[bytes, ...], _stored_values)
converter.register_unstructure_hook_func(
    lambda t: t == tuple[bytes, ...], lambda data: [orjson.Fragment(d) for d in data]
)

_structure_policy = cattrs.gen.make_dict_structure_fn(cmd.RetentionPolicy, converter)
converter.register_structure_hook(
    cmd.RetentionPolicy,
    lambda value, _type: _structure_policy(_object(value), _type),
)


# Headers: [[name, value], ...] in the order the core keeps them (sorted by name).
def _headers_from_obj(value: Any, _type: Any = None) -> work.Headers:
    if not isinstance(value, list):
        raise TypeError("headers must be a list")
    pairs = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise TypeError("a header must be a [name, value] pair")
        pairs.append((plain_str(pair[0]), plain_str(pair[1])))
    return tuple(pairs)


converter.register_structure_hook_func(lambda t: t == work.Headers, _headers_from_obj)
converter.register_unstructure_hook_func(
    lambda t: t == work.Headers, lambda headers: [list(pair) for pair in headers]
)


def _record_to_obj(record: work.Record) -> dict[str, Any]:
    obj: dict[str, Any] = {"data": orjson.Fragment(record.data)}
    if record.headers:
        obj["headers"] = [list(pair) for pair in record.headers]
    return obj


def _record_from_obj(value: Any, _type: Any = None) -> work.Record:
    obj = _object(value)
    return work.Record(dumps_value(obj["data"]), _headers_from_obj(obj.get("headers", [])))


converter.register_unstructure_hook(work.Record, _record_to_obj)
converter.register_structure_hook(work.Record, _record_from_obj)


def _ranges_from_obj(value: Any, _type: Any = None) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        raise TypeError("ranges must be a list")
    ranges = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise TypeError("a range must be a [first, last] pair")
        ranges.append((strict_int(pair[0]), strict_int(pair[1])))
    return tuple(ranges)


def _ints_from_obj(value: Any, _type: Any = None) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return tuple(strict_int(v) for v in value)


converter.register_structure_hook_func(lambda t: t == tuple[tuple[int, int], ...], _ranges_from_obj)
# A list of ids (SET_GROUPS): a JSON list, never a string (which cattrs would split).
converter.register_structure_hook_func(
    lambda t: t == tuple[str, ...], lambda value, _type: tuple(_str_list(value))
)
converter.register_structure_hook_func(lambda t: t == tuple[int, ...], _ints_from_obj)
converter.register_unstructure_hook_func(
    lambda t: t == tuple[tuple[int, int], ...], lambda ranges: [list(r) for r in ranges]
)
converter.register_unstructure_hook_func(lambda t: t == tuple[int, ...], list)


# The metadata group's records (inside its commands, and the stored map): ``str`` fields
# without the client's length limit (a host may have 255 characters), every tuple of records
# a JSON list (never a string or an object, which cattrs would iterate).
_MAP_RECORDS = (
    md.BrokerAddress,
    md.GroupAssignment,
    md.BrokerRecord,
    md.ReplicaMove,
    md.GroupRecord,
    md.ClusterSettings,
    md.ClusterMap,
)
for _record in _MAP_RECORDS:
    _record_fn = cattrs.gen.make_dict_structure_fn(_record, converter, **peer_overrides(_record))
    converter.register_structure_hook(
        _record, lambda value, _type, _fn=_record_fn: _fn(_object(value), _type)
    )


def _is_record_tuple(t: Any) -> bool:
    args = getattr(t, "__args__", ())
    return (
        getattr(t, "__origin__", None) is tuple
        and len(args) == 2
        and args[1] is Ellipsis
        and args[0] in _MAP_RECORDS
    )


def _record_tuple(value: Any, t: Any) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return tuple(converter.structure(v, t.__args__[0]) for v in value)


converter.register_structure_hook_func(_is_record_tuple, _record_tuple)

_structure_settings = cattrs.gen.make_dict_structure_fn(work.GroupSettings, converter)
converter.register_structure_hook(
    work.GroupSettings, lambda value, _type: _structure_settings(_object(value), _type)
)


def _loose_policy_to_obj(policy: Any) -> Any:
    return None if policy is None else converter.unstructure(policy, cmd.RetentionPolicy)


def _loose_policy_from_obj(value: Any, _type: Any = None) -> cmd.RetentionPolicy | None:
    return None if value is None else converter.structure(value, cmd.RetentionPolicy)


def config_to_obj(config: rm.Config) -> dict[str, Any]:
    return {
        "voters": sorted(config.voters),
        "learners": sorted(config.learners),
        "version": config.version,
    }


def config_from_obj(obj: Any, _type: Any = None) -> rm.Config:
    obj = _object(obj)
    return rm.Config(
        voters=frozenset(_str_list(obj["voters"])),
        learners=frozenset(_str_list(obj.get("learners", []))),
        version=strict_int(obj["version"]),
    )


converter.register_unstructure_hook(rm.Config, config_to_obj)
converter.register_structure_hook(rm.Config, config_from_obj)
converter.register_unstructure_hook(
    rm.ConfigChange, lambda change: {"action": change.action.value, "broker_id": change.node_id}
)
converter.register_structure_hook(
    rm.ConfigChange,
    lambda value, _type: rm.ConfigChange(
        rm.ChangeAction(_object(value)["action"]), plain_str(value["broker_id"])
    ),
)

_OMITTED_WHEN_NONE = {"producer_id", "producer_seq", "appended_ms", "retention"}
"""Fields absent from the JSON when None (entries written before they existed lack them)."""
_RENAMED = {cmd.SetRetention: {"policy": "retention"}}

_QUEUE_FIRST = (cmd.ReadBatch, cmd.Ack, cmd.Seek, cmd.ReadNext)
"""Their fields start with ``client_id``; their JSON has always started with ``queue_id``, and
keeps doing so, so that the bytes on disk and on the wire stay exactly those of before."""

_unstructure: dict[type, Any] = {}
_structure: dict[type, Any] = {}
for _name, _cls in ENTRY_TYPES.items():
    if _cls is cmd.CommandGroup:
        continue
    attrs.resolve_types(_cls)
    _renames = _RENAMED.get(_cls, {})
    _unstructure[_cls] = cattrs.gen.make_dict_unstructure_fn(
        _cls,
        converter,
        **{
            f.name: cattrs.gen.override(
                omit_if_default=f.name in _OMITTED_WHEN_NONE,
                rename=_renames.get(f.name),
                unstruct_hook=_loose_policy_to_obj if f.type == (object | None) else None,
            )
            for f in attrs.fields(_cls)
        },
    )
    _overrides = peer_overrides(_cls, **_renames)
    for _field in attrs.fields(_cls):
        if _field.type == (object | None):  # a RetentionPolicy typed loosely (``_work_commands``)
            _overrides[_field.name] = cattrs.gen.override(struct_hook=_loose_policy_from_obj)
    _structure[_cls] = cattrs.gen.make_dict_structure_fn(_cls, converter, **_overrides)


# -- the hot path, by hand -----------------------------------------------------------------------


def _append_to_obj(payload: cmd.AppendMessage) -> dict[str, Any]:
    """APPEND_MESSAGE by hand, for speed: what every replicated write carries (64 of them in
    a grouped REPLICATE), and what the log stores per message.

    Measured with ``python -m benchmarks.codec`` (a shared 2-core VM, best of 7; the spread
    between runs is wide, the order never changes): one APPEND_MESSAGE payload encodes in
    0.26 us by hand against 0.50 us (+94%) through the converter's generated function, and
    decodes in 1.25 us against 1.74 us (+40%); for a REPLICATE of a 64-append COMMAND_GROUP,
    see :func:`._consensus._replicate_to_obj`. That is over the ~10% the converter may cost
    on this path, so this one form stays by hand; it is the converter's form (same keys,
    same checks).
    """
    obj: dict[str, Any] = {
        "type": "APPEND_MESSAGE",
        "queue_id": payload.queue_id,
        "data": orjson.Fragment(payload.data),
    }
    if payload.producer_id is not None:
        obj["producer_id"] = payload.producer_id
        obj["producer_seq"] = payload.producer_seq
    if payload.appended_ms is not None:
        obj["appended_ms"] = payload.appended_ms
    return obj


def _append_from_obj(obj: dict[str, Any]) -> cmd.AppendMessage:
    """The reverse of :func:`_append_to_obj` (see there for why it is by hand)."""
    producer_id, producer_seq, stamp = (
        obj.get("producer_id"),
        obj.get("producer_seq"),
        obj.get("appended_ms"),
    )
    return cmd.AppendMessage(
        plain_str(obj["queue_id"]),
        dumps_value(obj["data"]),
        None if producer_id is None else plain_str(producer_id),
        None if producer_seq is None else strict_int(producer_seq),
        None if stamp is None else strict_int(stamp),
    )


def strict_int(value: Any, _type: Any = int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


# -- the union -----------------------------------------------------------------------------------


def payload_to_obj(payload: Any) -> dict[str, Any]:
    """A log entry's payload as its JSON object, ``type`` first."""
    cls = type(payload)
    if cls is cmd.AppendMessage:
        return _append_to_obj(payload)
    name = ENTRY_TYPE_NAMES.get(cls)
    if name is None:
        raise LocalProtocolError(f"cannot encode log payload {payload!r}")
    if cls is cmd.CommandGroup:
        return {"type": name, "commands": [payload_to_obj(c) for c in payload.commands]}
    body = _unstructure[cls](payload)
    if cls in _QUEUE_FIRST:
        return {"type": name, "queue_id": body.pop("queue_id"), **body}
    return {"type": name, **body}


def payload_from_obj(obj: Any) -> Any:
    """A log entry payload's JSON object as the payload, or :class:`RemoteProtocolError`."""
    if not isinstance(obj, dict):
        raise RemoteProtocolError("a log entry payload must be an object")
    kind = obj.get("type")
    cls = ENTRY_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None and kind != APPEND_RUNS:
        raise RemoteProtocolError(f"unknown log entry type {kind!r}")
    try:
        if cls is None:
            return _runs_from_obj(obj)
        if cls is cmd.AppendMessage:
            return _append_from_obj(obj)
        if cls is cmd.CommandGroup:
            return _group_from_obj(obj)
        return _structure[cls](obj, cls)
    except RemoteProtocolError:
        raise
    except Exception as exc:
        raise RemoteProtocolError(f"malformed {kind} log entry: {describe_error(exc)}") from None


def _group_from_obj(obj: dict[str, Any]) -> cmd.CommandGroup:
    """A COMMAND_GROUP's commands. The usual ones, an APPEND_MESSAGE without a producer whose
    fields have their types, an APPEND_BATCH without a producer whose fields have their types
    and whose values are a non-empty list (its values' bytes :func:`_stored_values`', without
    cattrs' generated function per batch: 90 -> 70 ns a value for a batch of 100;
    docs/performance-history.md, "A replica's per-append path (seventh round)") and an
    UPDATE_POSITION (a single READ) whose ids are strings, are read here in the loop (a group holds
    up to thousands of them, each decoded on every replica); any other goes through
    :func:`payload_from_obj`, which decides it, or words its error, as before."""
    commands = obj["commands"]
    if not isinstance(commands, list) or not commands:
        raise TypeError("commands must be a non-empty list")
    if len(commands) > MAX_GROUP:  # (before any is decoded: a peer's group is bounded)
        raise TypeError(f"a group holds at most {MAX_GROUP} commands, not {len(commands)}")
    decoded: list[Any] = []
    add = decoded.append
    append_message, append_batch = cmd.AppendMessage, cmd.AppendBatch
    dumps, view = orjson.dumps, memoryview  # (dumps_value inline: no call per append)
    read_next = cmd.ReadNext
    last: cmd.ReadNext | None = None
    single = True
    for c in commands:
        if type(c) is dict and c.get("type") == "APPEND_MESSAGE" and "data" in c:
            queue, stamp = c.get("queue_id"), c.get("appended_ms")
            if (
                type(queue) is str
                and (stamp is None or type(stamp) is int)
                and c.get("producer_id") is None
                and c.get("producer_seq") is None
            ):
                add(append_message(queue, view(dumps(c["data"])).tobytes(), None, None, stamp))
                continue
        elif type(c) is dict and c.get("type") == "APPEND_BATCH":  # (batch appends' groups)
            queue, stamp, values = c.get("queue_id"), c.get("appended_ms"), c.get("data")
            if (
                type(queue) is str
                and (stamp is None or type(stamp) is int)
                and type(values) is list
                and values
                and c.get("producer_id") is None
                and c.get("producer_seq") is None
            ):
                add(append_batch(queue, dumps_values(values), None, None, stamp))
                continue
        elif type(c) is dict and c.get("type") == "UPDATE_POSITION":  # a single READ
            queue, client = c.get("queue_id"), c.get("client_id")
            if type(queue) is str and type(client) is str:
                if last is None or last.client_id != client or last.queue_id != queue:
                    last = read_next(client, queue)  # (a run of one reader's: one object)
                add(last)
                continue
        one = payload_from_obj(c)
        single = single and isinstance(one, cmd.SingleCommand)
        add(one)
    if not single:  # (after every command is decoded, as before: the same error first)
        raise TypeError("a command group holds queue commands only")
    return cmd.CommandGroup(tuple(decoded))


APPEND_RUNS = "APPEND_RUNS"
"""The compact form of a COMMAND_GROUP of plain appends (:func:`_runs_from_obj`): a type of
log payload, not a command; it decodes to the :class:`~.._core._commands.CommandGroup` its
COMMAND_GROUP form decodes to."""


def encode_payload(payload: Any, runs: bool = False) -> bytes:
    """A log entry's payload as the bytes stored in the on-disk log; with ``runs``, a group
    of plain appends in its compact ``APPEND_RUNS`` form (for a group whose every member
    reads it: the caller decides, ``payload_bytes``). An object of its size: the general
    form's bytes are copied (orjson's result keeps its 4 KiB buffer, ``dumps_value``), the
    hand-written ones, made by a join or a ``%`` and large, are not."""
    written = _hand_written(payload, runs)
    if written is not None:
        return written
    return memoryview(orjson.dumps(payload_to_obj(payload))).tobytes()


def _hand_written(payload: Any, runs: bool) -> bytes | None:
    """:func:`encode_payload`'s bytes for the payloads ``_group_bytes`` writes by hand; None
    for any other."""
    if type(payload) is cmd.CommandGroup:
        commands = payload.commands
        if runs and type(commands) is AppendColumns:
            written = _columns_runs_bytes(commands)
            if written is not None:
                return written
        written = _append_runs_bytes(commands) if runs else None
        if written is None:
            written = _appends_group_bytes(commands)
        if written is None:
            written = _batches_group_bytes(commands)
        if written is None:
            written = _reads_group_bytes(commands)
        return written
    if type(payload) is cmd.AppendBatch:
        return _batch_bytes(payload)
    return None


def _columns_runs_bytes(columns: AppendColumns) -> bytes | None:
    """:func:`_append_runs_bytes` of the appends ``columns`` holds (a leader's group of
    receives held as columns, ``_core/_proposals``), written from the columns: one ``%`` per
    run and a join of its values, no pass over the appends in Python (about 0.36 µs an append
    read back from ``AppendMessage``s: docs/performance-history.md, "The leader's CPU per
    pipelined append (twelfth round)"). Byte for byte what it writes for them
    (``tests/test_columns13_encoding.py``): two runs next to each other of an equal queue and
    stamp written as one, None where it gives None (a value that may nest too deep, a queue
    id that is not a string, a stamp orjson does not write), and the caller then writes the
    appends as before."""
    datas = columns.datas
    if max(map(len, datas)) >= _DEEP_FROM and any(
        len(data) >= _DEEP_FROM and data.count(b"[") + data.count(b"{") > RUNS_DEPTH
        for data in datas
    ):
        return None  # (as _append_runs_bytes: counted brackets bound a value's depth)
    runs: list[bytes] = []
    queue: Any = None
    stamp: Any = None
    head = b""
    start = end = 0
    for one, at, count in zip(columns.queues, columns.stamps, columns.counts, strict=True):
        if type(at) is not int or not _INT_LOW <= at < _INT_HIGH or type(one) is not str:
            return None
        if one != queue or at != stamp:
            if end > start:
                runs.append(_RUN_FORM % (head, stamp, b",".join(datas[start:end])))
            if one != queue:
                queue, head = one, orjson.dumps(one)
            stamp, start = at, end
        end += count
    runs.append(_RUN_FORM % (head, stamp, b",".join(datas[start:end])))
    return APPEND_RUNS_HEAD + b",".join(runs) + b"]}"


def decode_payload(raw: bytes) -> Any:
    """Bytes of the on-disk log (or of a REPLICATE's entry) as the payload."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RemoteProtocolError(f"a log entry payload is not valid JSON: {exc}") from None
    return payload_from_obj(obj)


_ENTRY_KEY = struct.Struct(">QQ")


def entry_checksum(term: int, index: int, payload: bytes) -> int:
    """CRC32C of an entry's term, index and payload bytes: what the log stores beside the
    entry and REPLICATE carries, so that bytes that moved, or changed, are caught."""
    return google_crc32c.extend(google_crc32c.value(_ENTRY_KEY.pack(term, index)), payload)


def payload_bytes(entry: rm.Entry, runs: bool = False) -> bytes:
    """An entry's payload as the bytes of the log and of REPLICATE: encoded once per entry.
    With ``runs`` (every member of the group reads ``APPEND_RUNS``: the driver asks its peer
    links), a group of plain appends is encoded in that form.

    The bytes are cached on the entry (:attr:`~.._core._raft_messages.Entry.encoded`), so the
    leader's log write and the REPLICATE to every replica (and every resend) share one
    encoding; a replica's entries carry the bytes of the frame they came in. The driver calls
    it for a Ready's new entries before sending its messages, so the encoding happens there,
    on the event loop; a miss elsewhere (the storage thread) computes the same bytes. The
    entry's checksum is computed with the bytes and cached with them (:func:`stored_entry`).
    """
    encoded = entry.encoded
    if encoded is None:
        encoded = encode_payload(entry.payload, runs)  # (an object of its size)
        entry.remember_encoded(encoded, entry_checksum(entry.term, entry.index, encoded))
    return encoded


def stored_entry(entry: rm.Entry) -> tuple[bytes, int]:
    """An entry's payload bytes and their checksum, as the log stores them: both cached."""
    encoded = payload_bytes(entry)
    checksum = entry.checksum
    if checksum is None:  # bytes cached by hand (a test), without their checksum
        checksum = entry_checksum(entry.term, entry.index, encoded)
        entry.remember_encoded(encoded, checksum)
    return encoded, checksum


_GROUP_HEAD = b'{"type":"COMMAND_GROUP"'


def entry_to_obj(entry: rm.Entry, runs: bool = False) -> dict[str, Any]:
    """An entry inside a REPLICATE: its payload embedded as its stored bytes, which are exactly
    what :func:`payload_to_obj` would serialize there (orjson writes a nested object as it
    writes it alone), and their checksum.

    ``runs``: the peer said it reads ``APPEND_RUNS`` (docs/replication.md, "A group of
    appends in runs"). To a peer that did not, a group's bytes in any form but COMMAND_GROUP
    (what a leader stored, or received, while every member read runs) are encoded again as a
    COMMAND_GROUP, with their own checksum: an older broker is never sent a form it cannot
    read, and stores only what it can. An entry whose bytes are no longer cached is sent as a
    COMMAND_GROUP to every peer (see below)."""
    encoded, checksum = entry.encoded, entry.checksum
    if encoded is None:
        # Not cached again: an entry already applied (its bytes forgotten) sent to a lagging
        # replica, or one read back from the log at start. Encoded as a COMMAND_GROUP whoever
        # the peer is: whether the group may write runs is the leader's rule (every member
        # reads them), which this link does not know; a replica catching up while a member of
        # the version before is in the group must store nothing that member's version cannot
        # read (it may have to go back to it). Not the hot path.
        encoded = encode_payload(entry.payload)
        checksum = None
    elif (
        not runs and type(entry.payload) is cmd.CommandGroup and not encoded.startswith(_GROUP_HEAD)
    ):
        encoded = encode_payload(entry.payload)
        checksum = None
    if checksum is None:
        checksum = entry_checksum(entry.term, entry.index, encoded)
    return {
        "index": entry.index,
        "term": entry.term,
        "checksum": checksum,
        "payload": orjson.Fragment(encoded),
    }


def entry_from_obj(obj: Any, encoded: bytes | None = None) -> rm.Entry:
    """An entry of a received REPLICATE, decoded once, carrying its payload's bytes for the
    log: the received payload written back by orjson, which for the compact JSON that brokers
    send is the received bytes themselves (frames hold no offsets to slice them out by, and
    one C call costs less than walking the frame in Python). Bytes that decode to what the
    broker applies, whoever sent them: they are the very object it decoded.

    The entry's checksum is computed from those bytes and checked against the one the leader
    sent (a broker of a version before checksums sends none): an entry that changed on the
    way is refused here, before it is persisted or applied.

    ``encoded``: those bytes, written already (``_consensus.message_from_payload`` writes each
    payload once, for the frame's check and for the log)."""
    if not isinstance(obj, dict):
        raise RemoteProtocolError("an entry must be an object")
    raw = obj["payload"]
    term, index = strict_int(obj["term"]), strict_int(obj["index"])
    if encoded is None:
        encoded = memoryview(orjson.dumps(raw)).tobytes()
    checksum = entry_checksum(term, index, encoded)
    sent = obj.get("checksum")
    if sent is not None and sent != checksum:
        raise RemoteProtocolError(
            f"log entry {index} (term {term}) arrived damaged: its checksum is {sent!r}, "
            f"its bytes give {checksum}"
        )
    entry = rm.Entry(term, index, payload_from_obj(raw))
    entry.remember_encoded(encoded, checksum)
    return entry
