"""Consensus messages between brokers, on the wire.

The consensus core's message classes carry no serialization code; they are a tagged union in
the one converter of ``_codec``, each frame's ``operation`` naming the class with the design's
names, written down in :data:`CONSENSUS_OPERATIONS` (``ELECTION_REQUEST``, ``REPLICATE``,
``PROMOTE_TO_LEADER``, ``HEARTBEAT``, ``CLUSTER_UPDATE``, ``DATA_SYNC``, and the replies). The
sender is ``broker_id`` (``candidate_id`` in an ELECTION_REQUEST, as in the design's diagram 5),
the receiver ``to``. Log entries travel in the form of :mod:`._entries`.
"""

from __future__ import annotations

from typing import Any

import attrs
import cattrs
import cattrs.gen
import orjson

from .._core import _raft_messages as rm
from .._errors import LocalProtocolError, RemoteProtocolError
from .._ids import CLUSTER_ID_RE
from ._codec import converter, describe_error, loads_object
from ._entries import entry_from_obj, entry_to_obj, peer_overrides, plain_str, strict_int

CONSENSUS_OPERATIONS: dict[str, type] = {
    "ELECTION_REQUEST": rm.ElectionRequest,
    "ELECTION_RESPONSE": rm.ElectionResponse,
    "REPLICATE": rm.Replicate,
    "PROMOTE_TO_LEADER": rm.PromoteToLeader,
    "REPLICATE_RESPONSE": rm.ReplicateResponse,
    "HEARTBEAT": rm.Heartbeat,
    "HEARTBEAT_RESPONSE": rm.HeartbeatResponse,
    "CLUSTER_UPDATE": rm.ClusterUpdate,
    "CLUSTER_UPDATE_RESPONSE": rm.ClusterUpdateResponse,
    "DATA_SYNC": rm.DataSync,
    "TIMEOUT_NOW": rm.TimeoutNow,
}
"""Wire names of the consensus messages (one-way, on a PEER_HELLO stream)."""
CONSENSUS_OPERATION_NAMES: dict[type, str] = {cls: n for n, cls in CONSENSUS_OPERATIONS.items()}

# -- the pieces ----------------------------------------------------------------------------------


def _entries_from(
    value: Any, _type: Any, encoded: list[bytes] | None = None
) -> tuple[rm.Entry, ...]:
    if not isinstance(value, list):
        raise TypeError("entries must be a list")
    if encoded is not None:
        return tuple(map(entry_from_obj, value, encoded))
    return tuple(entry_from_obj(e) for e in value)


converter.register_unstructure_hook_func(
    lambda t: t == tuple[rm.Entry, ...], lambda entries: [entry_to_obj(e) for e in entries]
)
converter.register_structure_hook_func(lambda t: t == tuple[rm.Entry, ...], _entries_from)


def _members_from(value: Any, _type: Any) -> tuple[rm.MemberView, ...]:
    if not isinstance(value, dict):
        raise TypeError("members must be an object")
    return tuple(
        rm.MemberView(plain_str(k), plain_str(v["role"]), plain_str(v["status"]))
        for k, v in sorted(value.items())
    )


converter.register_unstructure_hook_func(
    lambda t: t == tuple[rm.MemberView, ...],
    lambda members: {v.node_id: {"role": v.role, "status": v.status} for v in members},
)
converter.register_structure_hook_func(lambda t: t == tuple[rm.MemberView, ...], _members_from)
converter.register_structure_hook(
    rm.SnapshotMeta,
    cattrs.gen.make_dict_structure_fn(rm.SnapshotMeta, converter),
)


def _status(yes: str, no: str) -> cattrs.gen.AttributeOverride:
    """A boolean carried as the design's ``status`` string."""
    return cattrs.gen.override(
        rename="status",
        unstruct_hook=lambda value: yes if value else no,
        struct_hook=lambda value, _type: plain_str(value) == yes,
    )


_EXTRA: dict[type, dict[str, str]] = {
    rm.Heartbeat: {"role": "leader"},
    rm.HeartbeatResponse: {"status": "success"},
    rm.ClusterUpdateResponse: {"status": "success"},
}
"""Constant fields of the design's messages, written for readers of traces, never read."""
_FIELDS: dict[type, dict[str, cattrs.gen.AttributeOverride]] = {
    rm.ElectionRequest: {"transfer": cattrs.gen.override(omit_if_default=True)},
    rm.ElectionResponse: {
        "granted": _status("granted", "denied"),
        "reason": cattrs.gen.override(omit_if_default=True),
        "last_log_index": cattrs.gen.override(omit_if_default=True),
        "last_log_term": cattrs.gen.override(omit_if_default=True),
        "voter_term": cattrs.gen.override(omit_if_default=True),
    },
    rm.ReplicateResponse: {
        "success": _status("success", "rejected"),
        "probe": cattrs.gen.override(omit_if_default=True),
    },
    rm.Heartbeat: {"round": cattrs.gen.override(omit_if_default=True)},
    rm.HeartbeatResponse: {
        "last_index": cattrs.gen.override(omit_if_default=True),
        "start_id": cattrs.gen.override(omit_if_default=True),
        "round": cattrs.gen.override(omit_if_default=True),
    },
    rm.DataSync: {"data": cattrs.gen.override(struct_hook=lambda value, _type: value)},
}

_unstructure: dict[type, Any] = {}
_structure: dict[type, Any] = {}
for _name, _cls in CONSENSUS_OPERATIONS.items():
    attrs.resolve_types(_cls)
    _sender = "candidate_id" if _cls is rm.ElectionRequest else "broker_id"
    _overrides = peer_overrides(_cls)
    _overrides["src"] = cattrs.gen.override(rename=_sender, struct_hook=plain_str)
    _overrides["dst"] = cattrs.gen.override(rename="to", struct_hook=plain_str)
    _overrides.update(_FIELDS.get(_cls, {}))
    _unstructure[_cls] = cattrs.gen.make_dict_unstructure_fn(_cls, converter, **_overrides)
    _structure[_cls] = cattrs.gen.make_dict_structure_fn(_cls, converter, **_overrides)


# -- the hot path, by hand -----------------------------------------------------------------------


def _replicate_to_obj(m: rm.Replicate, operation: str, runs: bool = False) -> dict[str, Any]:
    """REPLICATE (and PROMOTE_TO_LEADER, its first of a term) by hand, for speed: every write
    travels in one, often as a COMMAND_GROUP of up to 64 appends.

    Measured with ``python -m benchmarks.codec`` (a shared 2-core VM, best of 7; the spread
    between runs is wide, the order never changes): a REPLICATE of one COMMAND_GROUP entry of
    64 appends encodes in 22 us by hand against 62 us (+178%) through the converter's
    generated functions, and decodes in 92 us against 132 us (+44%); one with a single-append
    entry encodes in 1.3 us against 2.8 us (+113%), and decodes in 4.8 us against 7.6 us
    (+58%). That is over the ~10% the converter may cost on this path, so this one message
    (and the APPEND_MESSAGE payload, :func:`._entries._append_to_obj`) stays by hand; it is
    the converter's form (same keys, same checks).

    Those figures are an entry's first encoding. In the broker the driver encodes each new
    entry's payload once, before its first REPLICATE leaves, and caches the bytes on the entry
    (:func:`._entries.payload_bytes`); every REPLICATE carrying it, to any replica, embeds
    them as they are; ``runs``: the peer reads a group of appends as ``APPEND_RUNS``
    (:func:`._entries.entry_to_obj`).
    """
    obj = {
        "operation": operation,
        "broker_id": m.src,
        "to": m.dst,
        "term": m.term,
        "cluster_version": m.cluster_version,
        "prev_log_index": m.prev_log_index,
        "prev_log_term": m.prev_log_term,
        "leader_commit": m.leader_commit,
        "entries": [entry_to_obj(e, runs) for e in m.entries],
    }
    if m.acknowledged:
        # Only to a member whose log went backwards: absent otherwise, as from older peers.
        obj["acknowledged"] = m.acknowledged
    if m.start_id:
        # Only to a member that restarted and has not heard yet what it may have acknowledged.
        obj["start_id"] = m.start_id
        obj["log_end"] = m.log_end
    if m.probe:
        obj["probe"] = m.probe
    return obj


def _replicate_from_obj(
    obj: dict[str, Any], cls: type[rm.Replicate], encoded: list[bytes] | None = None
) -> rm.Replicate:
    """The reverse of :func:`_replicate_to_obj` (see there for why it is by hand);
    ``encoded``: each entry's payload bytes, written already (:func:`message_from_payload`)."""
    return cls(
        src=plain_str(obj["broker_id"]),
        dst=plain_str(obj["to"]),
        term=strict_int(obj["term"]),
        cluster_version=strict_int(obj["cluster_version"]),
        prev_log_index=strict_int(obj["prev_log_index"]),
        prev_log_term=strict_int(obj["prev_log_term"]),
        leader_commit=strict_int(obj["leader_commit"]),
        entries=_entries_from(obj["entries"], None, encoded),
        acknowledged=strict_int(obj.get("acknowledged", 0)),
        start_id=strict_int(obj.get("start_id", 0)),
        log_end=strict_int(obj.get("log_end", 0)),
        probe=strict_int(obj.get("probe", 0)),
    )


def _replicate_response_to_obj(m: rm.ReplicateResponse) -> dict[str, Any] | None:
    """A REPLICATE_RESPONSE's frame object by hand, ``operation`` first: the dict the
    converter's generated function writes (the same keys in the same order, ``probe`` left
    out when 0), without its calls per field. Every REPLICATE is answered with one, on each
    replica (docs/performance-history.md, "Pipelined appends and 100 connections (eighth round)").
    None when a sender or receiver is not a plain ``str`` or ``success`` not a ``bool``: the
    converter decides those, as before."""
    src, dst, success = m.src, m.dst, m.success
    if type(src) is not str or type(dst) is not str or type(success) is not bool:
        return None
    obj = {
        "operation": "REPLICATE_RESPONSE",
        "broker_id": src,
        "to": dst,
        "term": m.term,
        "cluster_version": m.cluster_version,
        "status": "success" if success else "rejected",
        "match_index": m.match_index,
        "rejected_index": m.rejected_index,
        "hint_index": m.hint_index,
        "hint_term": m.hint_term,
    }
    if m.probe != 0:
        obj["probe"] = m.probe
    return obj


_response_new = object.__new__
_RESPONSE_FIELDS = (
    "src",
    "dst",
    "term",
    "cluster_version",
    "success",
    "match_index",
    "rejected_index",
    "hint_index",
    "hint_term",
    "probe",
)
(
    _SET_SRC,
    _SET_DST,
    _SET_TERM,
    _SET_VERSION,
    _SET_SUCCESS,
    _SET_MATCH,
    _SET_REJECTED,
    _SET_HINT_INDEX,
    _SET_HINT_TERM,
    _SET_PROBE,
) = (rm.ReplicateResponse.__dict__[field].__set__ for field in _RESPONSE_FIELDS)
if (
    tuple(field.name for field in attrs.fields(rm.ReplicateResponse)) != _RESPONSE_FIELDS
    or any(field.validator or field.converter for field in attrs.fields(rm.ReplicateResponse))
    or hasattr(rm.ReplicateResponse, "__attrs_post_init__")
):
    raise ImportError("_replicate_response_from_obj sets ReplicateResponse's fields: update it")


def _replicate_response_from_obj(obj: dict[str, Any]) -> rm.ReplicateResponse | None:
    """A REPLICATE_RESPONSE's frame object read by hand when each field the converter reads
    is of its exact type (the senders and ``status`` strings, every number an ``int``, the
    optional ones absent or ``int``): the message the converter's generated function makes of
    it, without its per-field ``try`` blocks, error notes and keyword call. None for any other
    object: the converter reads it, with its answer or its error, as before."""
    src = obj.get("broker_id")
    dst = obj.get("to")
    term = obj.get("term")
    version = obj.get("cluster_version")
    status = obj.get("status")
    match = obj.get("match_index", 0)
    rejected = obj.get("rejected_index", 0)
    hint_index = obj.get("hint_index", 0)
    hint_term = obj.get("hint_term", 0)
    probe = obj.get("probe", 0)
    if (
        type(src) is not str
        or type(dst) is not str
        or type(status) is not str
        or type(term) is not int
        or type(version) is not int
        or type(match) is not int
        or type(rejected) is not int
        or type(hint_index) is not int
        or type(hint_term) is not int
        or type(probe) is not int
    ):
        return None
    # (Each slot through its descriptor, as attrs' frozen __init__ sets it, without the
    # keyword call: the class has no validator, converter or post-init, checked at import.)
    made = _response_new(rm.ReplicateResponse)
    _SET_SRC(made, src)
    _SET_DST(made, dst)
    _SET_TERM(made, term)
    _SET_VERSION(made, version)
    _SET_SUCCESS(made, status == "success")
    _SET_MATCH(made, match)
    _SET_REJECTED(made, rejected)
    _SET_HINT_INDEX(made, hint_index)
    _SET_HINT_TERM(made, hint_term)
    _SET_PROBE(made, probe)
    return made


# -- the union -----------------------------------------------------------------------------------


def message_to_obj(message: rm.Message, runs: bool = False) -> dict[str, Any]:
    """A consensus message as the JSON object of its frame, ``operation`` first (``runs``:
    see :func:`encode_message`)."""
    cls = type(message)
    if cls is rm.Replicate:
        return _replicate_to_obj(message, "REPLICATE", runs)  # type: ignore[arg-type]
    name = CONSENSUS_OPERATION_NAMES.get(cls)
    if name is None:
        raise LocalProtocolError(f"cannot encode message {message!r}")
    if cls is rm.PromoteToLeader:
        return _replicate_to_obj(message, name, runs)  # type: ignore[arg-type]
    if cls is rm.ReplicateResponse:
        obj = _replicate_response_to_obj(message)  # type: ignore[arg-type]
        if obj is not None:
            return obj
    body = {"operation": name, **_unstructure[cls](message)}
    extra = _EXTRA.get(cls)
    if extra is not None:
        body.update(extra)
    return body


def message_from_obj(obj: dict[str, Any], encoded: list[bytes] | None = None) -> rm.Message:
    """A frame's JSON object as a consensus message, or :class:`RemoteProtocolError`
    (``encoded``: a REPLICATE's payload bytes, see :func:`_replicate_from_obj`)."""
    op = obj.get("operation")
    cls = CONSENSUS_OPERATIONS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown peer operation {op!r}")
    try:
        if cls is rm.ReplicateResponse:
            read = _replicate_response_from_obj(obj)
            if read is not None:
                return read
        elif cls is rm.Replicate or cls is rm.PromoteToLeader:
            return _replicate_from_obj(obj, cls, encoded)
        return _structure[cls](obj, cls)
    except RemoteProtocolError:
        raise
    except Exception as exc:
        raise RemoteProtocolError(f"malformed {op} message: {describe_error(exc)}") from None


def encode_message(
    message: rm.Message, group_id: str | None = None, *, append_runs: bool = False
) -> bytes:
    """A consensus message's frame payload; ``group_id`` names the replication group it
    belongs to on a link that carries several (docs/replication.md, "Peer links"). Without
    it, the frame is the group's that the link's PEER_HELLO named, as from older brokers.

    ``append_runs``: the peer said it reads a group of appends as ``APPEND_RUNS`` (its answer
    to PEER_HELLO, docs/replication.md "A group of appends in runs"). Without it, an entry
    held in that form leaves as a COMMAND_GROUP (encoded again, with its own checksum)."""
    obj = message_to_obj(message, append_runs)
    if group_id is not None:
        obj["group_id"] = group_id
    return orjson.dumps(obj)


def message_from_frame(
    obj: dict[str, Any], encoded: list[bytes] | None = None
) -> tuple[str | None, rm.Message]:
    """A peer frame's object as ``(group_id, message)``: ``group_id`` None when the frame
    names none. Raises :class:`RemoteProtocolError` for a ``group_id`` that is not a group
    id, as for a malformed message."""
    group_id = obj.pop("group_id", None)
    if group_id is not None and (
        type(group_id) is not str or CLUSTER_ID_RE.fullmatch(group_id) is None
    ):
        raise RemoteProtocolError(f"malformed group_id {group_id!r}: expected G-XXXXX")
    return group_id, message_from_obj(obj, encoded)


_REPLICATE_STARTS = (b'{"operation":"REPLICATE",', b'{"operation":"PROMOTE_TO_LEADER",')
"""How a REPLICATE's frame starts as brokers write it (``operation`` first, compact)."""
WRITTEN_ONCE_FROM = 2048
"""The smallest frame :func:`message_from_payload` writes once: below, its few more Python
steps (about 0.5 us) cost more than the second writing saves (about 0.4 ns a byte)."""


def message_from_payload(payload: bytes) -> tuple[str | None, rm.Message]:
    """A peer frame's payload as ``(group_id, message)``: what
    ``message_from_frame(loads_object(payload))`` gives, the same message or the same error,
    with a REPLICATE's entries' payloads written once instead of twice.

    :func:`~._codec.loads_object` parses a frame and writes it back whole, to find that it is
    compact JSON as orjson writes it (then it holds no duplicate key and no integer beyond 64
    bits, which orjson would change); :func:`~._entries.entry_from_obj` then writes each
    entry's payload back alone, the bytes the replica stores and checks against the leader's
    checksum. Nearly all of a REPLICATE is its entries' payloads, so that was each written
    twice. Here a REPLICATE (as brokers write it, :data:`_REPLICATE_STARTS`) is parsed once,
    each payload written back once, and the frame written with those bytes embedded as they
    are (``orjson.Fragment``): orjson writes a nested object as it writes it alone, so that is
    the frame written back whole, byte for byte, and when it equals the payload the frame is
    what :func:`~._codec.loads_object` accepts at once; the entries keep those bytes (the
    checksum is checked against them as before). Any other frame, or a REPLICATE that is not
    written so (spaces, a duplicate key, a long integer, nesting orjson does not write, not
    JSON), takes ``message_from_frame(loads_object(payload))``, with its checks and errors
    (``tests/test_readrest_replicate.py``); so does a frame under :data:`WRITTEN_ONCE_FROM`."""
    if len(payload) >= WRITTEN_ONCE_FROM and payload.startswith(_REPLICATE_STARTS):
        checked = _written_once(payload)
        if checked is not None:
            return message_from_frame(*checked)
    return message_from_frame(loads_object(payload))


def _written_once(payload: bytes) -> tuple[dict[str, Any], list[bytes]] | None:
    """The REPLICATE frame's object and each entry's payload bytes when orjson writes the
    object back as exactly ``payload`` (see :func:`message_from_payload`); None otherwise."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    entries = obj.get("entries")
    if type(entries) is not list:
        return None
    encoded: list[bytes] = []
    raws: list[Any] = []
    try:
        # Each payload replaced by its bytes while the frame is written, then put back (the
        # object is this call's own: cheaper than copies of each entry and of the frame).
        for entry in entries:
            if type(entry) is not dict or "payload" not in entry:
                return None
            raw = entry["payload"]
            raws.append(raw)
            # (Copied to an object of its size: orjson's result keeps its 4 KiB buffer.)
            written = memoryview(orjson.dumps(raw)).tobytes()
            encoded.append(written)
            entry["payload"] = orjson.Fragment(written)
        if orjson.dumps(obj) != payload:
            return None
    except orjson.JSONEncodeError:  # nests deeper than orjson writes: loads_object decides
        return None
    finally:
        for entry, raw in zip(entries, raws, strict=False):
            entry["payload"] = raw
    return obj, encoded
