"""The one converter between wire bytes and message classes.

Decoding a request is strict where the contract is strict (types of fields are never coerced:
``"client_id": 7`` is an error, not ``"7"``) and lenient where old clients need it (unknown extra
fields are ignored by the operations of the original contract; the work-queue operations refuse
them). A request object with a duplicate key is refused whatever its operation: two parsers of
one frame must never disagree. Every way a payload can be wrong ends as one
:class:`ProtocolError` whose message says what and where, such as
``invalid value for type, expected str @ $.client_id``.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeGuard, TypeVar

import cattrs
import cattrs.gen
import orjson
from cattrs.preconf.orjson import make_converter

from .._errors import BrokerError, ErrorCode, ProtocolError, RemoteProtocolError, error_from_wire
from . import _messages as m
from ._answer_frames import _APPENDED
from ._answer_frames import (  # (answers' frames written straight: re-exported from here)
    appended_frame as appended_frame,
)
from ._answer_frames import appended_frames as appended_frames
from ._answer_frames import batch_appended_frame as batch_appended_frame
from ._answer_frames import columns_frame as columns_frame
from ._answer_frames import message_frame as message_frame
from ._answer_frames import messages_frame as messages_frame

converter = make_converter()

# Wire names of the operations: stable strings of the contract, never derived from class names.
OPERATIONS: dict[str, type] = {
    "CLUSTER_QUERY": m.ClusterQuery,
    "CREATE_QUEUE": m.CreateQueue,
    "APPEND": m.Append,
    "READ": m.Read,
    # Additions to the original contract (docs/protocol.md).
    "APPEND_BATCH": m.AppendBatch,
    "ACK": m.AckRequest,
    "SEEK": m.SeekRequest,
    "LIST_QUEUES": m.ListQueues,
    "SET_RETENTION": m.SetRetentionRequest,
    # Broker-to-broker and operator operations (docs/protocol.md, "Between brokers").
    "PEER_HELLO": m.PeerHello,
    "JOIN_CLUSTER": m.JoinCluster,
    "DATA_SYNC_REQUEST": m.DataSyncRequest,
    "FETCH_VALUES": m.FetchValues,
    "REMOVE_MEMBER": m.RemoveMember,
    # Authentication (docs/security.md).
    "AUTH_CHALLENGE": m.AuthChallenge,
    "AUTH": m.Auth,
    "TRANSFER_LEADERSHIP": m.TransferLeadership,
    "SNAPSHOT": m.TakeSnapshot,
    "ADD_MEMBER": m.AddMember,
    "METADATA_PROPOSE": m.ProposeMetadata,
    # The balancer (docs/protocol.md, "Balancer operations").
    "REBALANCE": m.Rebalance,
    "DRAIN_BROKER": m.DrainBroker,
    "SET_CLUSTER_SETTINGS": m.SetClusterSettings,
    # Work queues and the queue lifecycle (docs/protocol.md, "Work queues").
    **m.WORK_OPERATIONS,
}
OPERATION_NAMES: dict[type, str] = {cls: name for name, cls in OPERATIONS.items()}
OPERATION_NAMES[m.CreateNamedQueue] = "CREATE_QUEUE"  # CREATE_QUEUE with a ``name``

MAX_ID_LENGTH = 128


def _strict_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"longer than {MAX_ID_LENGTH} characters")
    return value


def _strict_int(value: Any, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_bool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(bool, _strict_bool)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(bool, _strict_bool)
converter.register_structure_hook(Any, lambda value, _type: value)


def _strict_list(value: Any, _type: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


converter.register_structure_hook_func(lambda t: t == list[Any], _strict_list)

_structure_retention = cattrs.gen.make_dict_structure_fn(
    m.Retention, converter, _cattrs_forbid_extra_keys=True
)


def _retention(value: Any, _type: Any) -> m.Retention:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {_json_type(value)}")
    return _structure_retention(value, _type)


converter.register_structure_hook(m.Retention, _retention)


def _strict_headers(value: Any, _type: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {_json_type(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise TypeError(f"expected a string, got {_json_type(item)} for header {key[:64]!r}")
    return value


converter.register_structure_hook_func(lambda t: t == dict[str, str], _strict_headers)


def _strict_int_list(value: Any, _type: Any) -> list[int]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {_json_type(value)}")
    for item in value:
        _strict_int(item, int)
    return value


def _strict_ranges(value: Any, _type: Any) -> list[list[int]]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {_json_type(value)}")
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise TypeError("expected a list of [first, last] pairs")
        _strict_int_list(item, None)
    return value


converter.register_structure_hook_func(lambda t: t == list[int], _strict_int_list)
converter.register_structure_hook_func(lambda t: t == list[list[int]], _strict_ranges)

# Integers the broker stores exactly: the union of the signed and unsigned 64-bit ranges, which
# is what orjson (and most JSON readers in other languages) round-trip without loss.
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


def _int_in_range(text: str) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise ProtocolError(
            f"integer {text[:40]} is outside the range the broker stores exactly "
            f"({INT_MIN} to {INT_MAX})"
        )
    return value


_KEY_END = re.compile(rb'"[ \t\n\r]*:')
"""What ends every key of a JSON text (and, rarely, an escaped quote inside a string)."""
_SPACED_COLON = re.compile(rb"[ \t\n\r]:")
_DIGITS_AS_ZEROS = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_ZEROS = b"0" * 19
"""A run of 19 digits (an integer orjson may have read as a float) is a run of 19 zeros
once every digit is translated to a zero: one pass in C, where the regular expression tries
a match at every digit (measured on this project's VM: 1.0 -> 0.3 us for a 150-byte APPEND,
76 -> 7 us for a 10 kB REPLICATE, 20 -> 0.7 ms for 1 MB)."""


def _has_long_digits(payload: bytes) -> bool:
    """Whether ``payload`` holds a run of 19 digits or more."""
    return _LONG_ZEROS in payload.translate(_DIGITS_AS_ZEROS)


def _key_ends(payload: bytes) -> int:
    """At least the number of keys in a JSON text: each key ends with a quote, maybe spaces,
    and a colon (a string holding an escaped quote before a colon adds one)."""
    quoted = payload.count(b'":')
    if quoted != payload.count(b":") and _SPACED_COLON.search(payload) is not None:
        # (Every colon right after a quote: none after a space, no search needed.)
        return len(_KEY_END.findall(payload))
    return quoted


def _key_count(value: Any) -> int:
    """The keys of the objects in a parsed JSON value, at every depth."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            count += len(item)
            item = item.values()
        for inner in item:
            kind = type(inner)
            if kind is dict or kind is list:
                stack.append(inner)
    return count


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ProtocolError(f"duplicate key {key[:64]!r} in an object of the payload")
        obj[key] = value
    return obj


def loads_object(payload: bytes) -> dict[str, Any]:
    """Parse a frame payload that must hold one JSON object.

    orjson silently turns integers beyond 64 bits into floats, and keeps the last of
    duplicate keys silently where another parser may keep the first: a payload with such an
    integer, or with a duplicate key at any depth, is refused.

    First the check for compact JSON as orjson writes it (what brokers send, and this
    project's clients): when orjson writes the parsed object back as exactly the payload's
    bytes, the payload holds no duplicate key (orjson never writes one: the parsed object has
    each key once) and no integer beyond 64 bits (read as a float, it would be written back
    differently). One C call: for a 150-byte APPEND 1.26 -> 0.49 us, for a 25 kB REPLICATE of
    128 appends 120-180 -> 42-44 us (docs/performance-history.md, "Per-replica Python").

    Otherwise (spaces, escapes written differently, nesting deeper than orjson writes), the
    exact checks: a payload with a long run of digits is parsed a second time, exactly, to
    refuse integers beyond 64 bits instead of changing them. Each key of the text ends with a
    quote and a colon (:func:`_key_ends` counts them, at least once per key), so when that
    count equals the keys parsed, no key was dropped; only when they differ is the payload
    parsed again, exactly, to find a duplicate.
    """
    return _checked(_parsed(payload), payload)


def _parsed(payload: bytes) -> dict[str, Any]:
    """:func:`loads_object`'s parse: the payload's object, not checked yet (:func:`_checked`)."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"payload must be a JSON object, got {_json_type(obj)}")
    return obj


def _is_compact(obj: dict[str, Any], payload: bytes) -> bool:
    """Whether orjson writes ``obj`` back as exactly ``payload`` (False when it nests deeper
    than orjson writes)."""
    try:
        return orjson.dumps(obj) == payload
    except orjson.JSONEncodeError:
        return False


def _checked(obj: dict[str, Any], payload: bytes, compact: bool | None = None) -> dict[str, Any]:
    """:func:`loads_object`'s checks of ``obj``, parsed from ``payload`` (``compact``:
    :func:`_is_compact`'s answer when the caller knows it): ``obj``, or :class:`ProtocolError`."""
    if compact is None:
        compact = _is_compact(obj, payload)
    if compact:
        return obj
    long_digits = _has_long_digits(payload)
    key_ends = _key_ends(payload)
    exact = key_ends != len(obj) and key_ends != _key_count(obj)
    if long_digits or exact:
        try:
            json.loads(
                payload,
                parse_int=_int_in_range if long_digits else None,
                object_pairs_hook=_no_duplicates if exact else None,
            )
        except RecursionError:
            raise ProtocolError("payload nests deeper than the broker accepts") from None
    return obj


def _json_type(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _format_exception(exc: BaseException, type_: Any) -> str:
    # Our strict hooks say precisely what is wrong; cattrs' default drops their text.
    own = (
        isinstance(exc, TypeError | ValueError)
        and not isinstance(exc, cattrs.BaseValidationError)
        and exc.args
        and isinstance(exc.args[0], str)
        and exc.args[0].startswith(("expected", "longer than"))
    )
    if own:
        return f"invalid value: {exc.args[0]}"
    return cattrs.v.format_exception(exc, type_)


def describe_error(exc: Exception) -> str:
    """What a structuring error says, for a person: ``invalid value ... @ $.field``."""
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, format_exception=_format_exception))
    return str(exc)


_READ_START = b'{"operation":"READ",'
_READS: dict[bytes, m.Read] = {}
"""The original contract's READs (operation, queue and client only) decoded lately, by their
frame's bytes: a reader sends the same bytes for every READ of a queue, and the request is a
frozen object that depends on nothing but them, so one decoding serves every repeat (a hit
costs a dictionary lookup, about a tenth of the decoding: docs/performance-history.md, "Single
READs: the leader's request path"). Only frames starting as clients write a READ are looked up, so
other requests pay one ``startswith``."""
MAX_READS_REMEMBERED = 1024
"""At most this many remembered READs (each frame under :data:`MAX_READ_REMEMBERED_BYTES`);
emptied when full."""
MAX_READ_REMEMBERED_BYTES = 512


_APPEND_START = b'{"operation":"APPEND",'


def decode_request(payload: bytes) -> m.Request:
    """Bytes of one frame to a request message, or :class:`ProtocolError`."""
    # (The type first: a memoryview, a bytearray or a str decodes as before, never looked up.)
    remembered = False
    if type(payload) is bytes and payload.startswith(_APPEND_START):
        # The original contract's APPEND as clients write it, the most frequent request of
        # all: what the general path below makes of it (loads_object's compact-JSON check,
        # then the three-field case), without its calls. Any other frame starting so (another
        # field such as old clients' client_id, spaces, not JSON) goes on with the object
        # parsed here and loads_object's checks, with their errors: no frame is parsed twice.
        # (_parsed and _is_compact written out: no call on the fast path)
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"payload is not valid UTF-8 JSON: {exc}") from None
        compact = None
        if len(obj) == 3:  # (an object: the frame starts with one)
            try:
                compact = orjson.dumps(obj) == payload
            except orjson.JSONEncodeError:
                compact = False
            if compact:
                queue = obj.get("queue_name")
                if type(queue) is str and len(queue) <= MAX_ID_LENGTH and "data" in obj:
                    return m.Append(queue, obj["data"])
        return _append_object(obj, payload, compact)
    else:
        remembered = (
            type(payload) is bytes
            and payload.startswith(_READ_START)
            and len(payload) <= MAX_READ_REMEMBERED_BYTES
        )
        if remembered:
            read = _READS.get(payload)
            if read is not None:
                return read
        obj = loads_object(payload)
    if len(obj) == 3:
        # The original contract's APPEND (operation, queue_name, data) and READ (operation,
        # queue_name, client_id), the most frequent requests of all: what _fast_append and
        # _fast_read make of them, with no call to get there.
        operation, queue = obj.get("operation"), obj.get("queue_name")
        if type(queue) is str and len(queue) <= MAX_ID_LENGTH:
            if operation == "APPEND" and "data" in obj:
                return m.Append(queue, obj["data"])
            if operation == "READ":
                client = obj.get("client_id")
                if type(client) is str and len(client) <= MAX_ID_LENGTH:
                    read = m.Read(queue, client)
                    if remembered:
                        if len(_READS) >= MAX_READS_REMEMBERED:
                            _READS.clear()
                        _READS[payload] = read
                    return read
    return request_from_dict(obj)


def _append_object(obj: dict[str, Any], payload: bytes, compact: bool | None) -> m.Request:
    """What :func:`decode_request` makes of a frame starting ``{"operation":"APPEND",``
    that its fast path did not take, from the object parsed (``compact``: the compact check's
    answer, when known): ``loads_object``'s checks, then the three-field APPEND or the
    general path, with their errors."""
    obj = _checked(obj, payload, compact)
    if len(obj) == 3:  # (its operation is "APPEND": a second key of that name is refused)
        queue = obj.get("queue_name")
        if type(queue) is str and len(queue) <= MAX_ID_LENGTH and "data" in obj:
            return m.Append(queue, obj["data"])
    return request_from_dict(obj)


PlainAppend = tuple[str, bytes, Any]
"""The original contract's APPEND (operation, queue_name, data) as a connection hands it on
(:func:`decode_client_request`): its queue, its value's stored bytes (exactly what
:func:`dumps_value` writes of the value: sliced from the compact frame orjson wrote back),
and its value (for the depth check of a long value, :func:`nests_too_deep`, and for
:func:`as_request`). A plain tuple: no :class:`~._messages.Append` built and no value written
again per APPEND (docs/performance-history.md, "The leader's request path without an object per
APPEND")."""

_APPEND_QUEUE_START = b'{"operation":"APPEND","queue_name":'
_DATA_KEY = b',"data":'


def decode_client_request(payload: bytes) -> m.Request | PlainAppend:
    """:func:`decode_request`, but the original contract's APPEND written as orjson writes it
    (its keys in that order, the queue's JSON without escapes) comes as a
    :data:`PlainAppend`: what a connection hands to ``Runs`` (and the groups' routing). Any
    other frame decodes, or is refused, exactly as :func:`decode_request` decodes it.

    The frame is compact (orjson writes the parsed object back as exactly its bytes: no
    duplicate key, no integer beyond 64 bits, as for :func:`decode_request`), so the value's
    bytes in it are orjson's writing of the value: :func:`dumps_value`'s bytes. They start
    right after ``,"data":``, which follows the queue's JSON; that is ``len(queue) + 2``
    bytes long when the queue holds nothing JSON escapes and only ASCII, else longer, and
    then no ``,"data":`` starts there (inside a JSON string a quote follows a backslash, and
    after its closing quote comes a comma), so the test of that place is the test of both.

    A string value (the usual one) needs no writing back: an object of these three keys and
    two string values is written in at least ``48 + len(queue) + len(value)`` bytes, exactly
    that many only with each character in one byte (ASCII), none escaped, no space and no key
    twice, which is how orjson writes it (it escapes only quotes, backslashes and control
    characters, which a frame can only hold escaped). A frame of that length is therefore the
    compact one, its value's bytes the quoted string before the closing brace (0.97 -> 0.78
    us per 150-byte APPEND: docs/performance-history.md, "The leader's request path (seventh
    round)").
    """
    if type(payload) is bytes and payload.startswith(_APPEND_QUEUE_START):
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"payload is not valid UTF-8 JSON: {exc}") from None
        compact = None
        if len(obj) == 3:  # (an object: the frame starts with one)
            queue, value = obj["queue_name"], obj.get("data")  # (queue_name: as it starts)
            if (
                type(value) is str
                and type(queue) is str
                and len(payload) == 48 + len(queue) + len(value)
                and len(queue) <= MAX_ID_LENGTH
            ):  # (a string value, the frame as short as its object can be written: above)
                return (queue, payload[45 + len(queue) : -1], value)
            try:
                compact = orjson.dumps(obj) == payload
            except orjson.JSONEncodeError:
                compact = False
            if compact and type(queue) is str and len(queue) <= MAX_ID_LENGTH:
                end = 37 + len(queue)  # (35 + the queue's JSON written plainly)
                if payload.startswith(_DATA_KEY, end):  # (then its third key is data)
                    return (queue, payload[end + 8 : -1], value)
        return _append_object(obj, payload, compact)
    return decode_request(payload)


def as_request(request: m.Request | PlainAppend) -> m.Request:
    """The request a :data:`PlainAppend` stands for (an :class:`~._messages.Append`, as
    :func:`decode_request` decodes its frame); any other request as it is."""
    if type(request) is tuple:
        return m.Append(request[0], request[2])
    return request  # type: ignore[return-value]


def request_from_dict(obj: dict[str, Any]) -> m.Request:
    op = obj.get("operation")
    if op is None:
        raise ProtocolError('missing field "operation"')
    if not isinstance(op, str):
        raise ProtocolError(f'"operation" must be a string, got {_json_type(op)}')
    cls = OPERATIONS.get(op)
    if cls is None:
        raise ProtocolError(f"unknown operation {op[:64]!r}", code=ErrorCode.UNKNOWN_OPERATION)
    if cls is m.CreateQueue and "name" in obj:
        cls = m.CreateNamedQueue
    fast = _FAST.get(cls)
    if fast is not None:
        quick: m.Request | None = fast(obj)
        if quick is not None:
            return quick
    try:
        strict = _STRICT.get(cls)
        if strict is not None:
            fields = {k: v for k, v in obj.items() if k != "operation"}
            request: m.Request = strict(fields, cls)
            return request
        structure = _STRUCTURE.get(cls)
        if structure is None:
            structure = _STRUCTURE[cls] = converter.get_structure_hook(cls)
        request = structure(obj, cls)
        return request
    except Exception as exc:
        raise ProtocolError(f"invalid {op} request: {describe_error(exc)}") from None


def _is_id(value: Any) -> TypeGuard[str]:
    return type(value) is str and len(value) <= MAX_ID_LENGTH


def _is_int_or_none(value: Any) -> bool:
    return value is None or type(value) is int


_APPEND_KEYS = frozenset({"operation", "queue_name", "data", "client_id"})
_READ_KEYS = frozenset({"operation", "queue_name", "client_id", "max_messages", "mode", "wait_ms"})


def _fast_append(obj: dict[str, Any]) -> m.Append | None:
    """The converter's APPEND for the original contract's fields, when each has its type;
    None for anything else (the converter then decides, and says what is wrong)."""
    if not obj.keys() <= _APPEND_KEYS or "data" not in obj:
        return None
    queue, client = obj.get("queue_name"), obj.get("client_id")
    if not _is_id(queue):
        return None
    if client is not None and not _is_id(client):
        return None
    return m.Append(queue, obj["data"], client)


def _fast_read(obj: dict[str, Any]) -> m.Read | None:
    """As :func:`_fast_append`, for READ."""
    if not obj.keys() <= _READ_KEYS:
        return None
    queue, client, mode = obj.get("queue_name"), obj.get("client_id"), obj.get("mode")
    count, wait = obj.get("max_messages"), obj.get("wait_ms")
    if not _is_id(queue) or not _is_id(client):
        return None
    if not (_is_int_or_none(count) and _is_int_or_none(wait)):
        return None
    if mode is not None and not _is_id(mode):
        return None
    return m.Read(queue, client, count, mode, wait)


_FAST: dict[type, Any] = {m.Append: _fast_append, m.Read: _fast_read}
"""The most frequent requests, structured without the converter when every field they carry
has its type (``tests/test_answer_encoding.py`` checks them against it)."""
_STRUCTURE: dict[type, Any] = {}
"""Each request class's structuring function, looked up once (one per operation: bounded)."""
_STRICT: dict[type, Any] = {
    cls: cattrs.gen.make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)
    for cls in m.WORK_REQUESTS
}
"""The work-queue requests: an unknown field is refused, not ignored (docs/protocol.md)."""


# A message without headers keeps the original contract's exact shape.
converter.register_unstructure_hook(
    m.Message,
    cattrs.gen.make_dict_unstructure_fn(
        m.Message, converter, headers=cattrs.gen.override(omit_if_default=True)
    ),
)


def encode_request(request: m.Request) -> bytes:
    body = converter.unstructure(request)
    body = {k: v for k, v in body.items() if v is not None or k == "data"}
    body["operation"] = OPERATION_NAMES[type(request)]
    return orjson.dumps(body)


def response_to_dict(response: m.Response) -> dict[str, Any]:
    if isinstance(response, m.NoMessages):
        return {"status": "success", "message": "no_messages"}
    if isinstance(response, m.Done):
        return {"status": "success"}
    body = converter.unstructure(response)
    if isinstance(response, m.ClusterTopology):
        body = {k: v for k, v in body.items() if v is not None}
        body["brokers"] = [{k: v for k, v in b.items() if v is not None} for b in body["brokers"]]
        if "groups" in body:
            body["groups"] = [{k: v for k, v in g.items() if v is not None} for g in body["groups"]]
    elif isinstance(response, m.Appended | m.BatchAppended) and not response.duplicate:
        del body["duplicate"]  # the original contract's exact shape
    elif isinstance(response, m.HeadedMessageBatch | m.GroupMessages):
        for message in body["messages"]:
            if message["headers"] is None:
                del message["headers"]
            if message["delivery_count"] is None:
                del message["delivery_count"]
    return {"status": "success", **body}


def encode_response(response: m.Response | BrokerError) -> bytes:
    kind = type(response)
    if kind is m.Appended and not response.duplicate:  # type: ignore[union-attr]
        # The bytes orjson writes for this answer (tests/test_answer_encoding.py), without
        # building the object first: an APPEND's answer is the most frequent of all.
        return _APPENDED % response.sequence_num  # type: ignore[union-attr]
    if kind is m.Message and response.headers is None:  # type: ignore[union-attr]
        return orjson.dumps(
            {
                "status": "success",
                "sequence_num": response.sequence_num,  # type: ignore[union-attr]
                "data": response.data,  # type: ignore[union-attr]
            }
        )
    if isinstance(response, BrokerError):
        return orjson.dumps(response.to_wire())
    return orjson.dumps(response_to_dict(response))


def dumps_value(value: Any) -> bytes:
    """A JSON value as the bytes the broker stores (and keeps in its in-memory log).

    orjson hands back bytes that keep its whole 4 KiB working buffer allocated; copied to an
    object of the exact size, a 100-byte value costs 135 bytes of memory instead of 4 KiB.
    The copy is a ``%b`` format (107 ns for a 100-byte value; a ``memoryview``'s ``tobytes``
    took 188: docs/performance-history.md, "The leader's pipelined appends").

    A value nested deeper than orjson writes (:data:`WRITTEN_DEPTH`) is refused with
    :class:`ProtocolError` (``BAD_REQUEST``). A client's value is taken by the stricter
    :func:`client_value`.
    """
    try:
        return b"%b" % orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise ProtocolError(
            f"a value nests deeper than the broker stores (at most {WRITTEN_DEPTH} levels)"
        ) from None


MAX_VALUE_DEPTH = 200
"""The deepest nesting of arrays and objects the broker takes in a client's value
(:func:`client_value`). orjson writes at most :data:`WRITTEN_DEPTH` levels, and a stored value
travels inside messages a replica parses and writes back to check them (a REPLICATE of a
group of appends holds it six levels deeper, a log entry's payload one to three): a value
taken at orjson's own limit would be refused by every replica, its entry never committed and
every entry after it held behind it. The room left, :data:`_ROOM` levels, is several times
the deepest such message."""

WRITTEN_DEPTH = 254
"""The deepest nesting orjson writes (it reads up to 1024): :func:`dumps_value`'s limit, which
the log's own entries and the replicas' decoding keep (an entry stored by an earlier version
stays readable)."""

_ROOM = WRITTEN_DEPTH - MAX_VALUE_DEPTH
DEEP_FROM = 2 * MAX_VALUE_DEPTH
"""A value nested deeper than :data:`MAX_VALUE_DEPTH` opens and closes that many brackets and
more: its JSON is longer than this (the check of every shorter value is one comparison)."""


def nests_too_deep(value: Any, data: bytes) -> bool:
    """Whether ``value`` (written as ``data``) nests deeper than :data:`MAX_VALUE_DEPTH`:
    counted brackets first (an upper bound: brackets inside strings count too), then, for the
    few values that pass it, orjson itself, writing the value :data:`_ROOM` levels deeper."""
    if len(data) <= DEEP_FROM or data.count(b"[") + data.count(b"{") <= MAX_VALUE_DEPTH:
        return False
    wrapped = value
    for _ in range(_ROOM):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        return True
    return False


def too_deep() -> ProtocolError:
    """The refusal of a client's value nested deeper than :data:`MAX_VALUE_DEPTH`."""
    return ProtocolError(
        f"a value nests deeper than the broker takes (at most {MAX_VALUE_DEPTH} levels)"
    )


def client_value(value: Any) -> bytes:
    """A client's value as the broker stores it (:func:`dumps_value`), refused with
    :class:`ProtocolError` (``BAD_REQUEST``) when it nests deeper than
    :data:`MAX_VALUE_DEPTH`: what every request that stores a client's value takes it by."""
    data = dumps_value(value)
    if len(data) > DEEP_FROM and nests_too_deep(value, data):
        raise too_deep()
    return data


def client_values(values: list[Any]) -> tuple[bytes, ...]:
    """:func:`client_value` for a batch's values (:func:`dumps_values`, then the depth of the
    few long enough to nest too deep)."""
    datas = dumps_values(values)
    if datas and max(map(len, datas)) > DEEP_FROM:
        for value, data in zip(values, datas, strict=True):
            if nests_too_deep(value, data):
                raise too_deep()
    return datas


def dumps_values(values: list[Any]) -> tuple[bytes, ...]:
    """``tuple(map(dumps_value, values))`` for a batch's values (at least one), in fewer
    calls when it can: the list written once and cut at its commas, when it holds no comma
    but the ``len(values) - 1`` that separate its values (JSON writes one between each two,
    so when that is every comma of the text, no value holds one). orjson writes a value in a
    list as it writes it alone, so each piece is that value's ``dumps_value`` bytes, an object
    of its own size. Values with commas (an object of several keys, a list, a string with a
    comma) are written one by one, and so are values nested as deep as orjson writes alone
    (in the list, one level deeper, it would refuse them): a value nested deeper still is
    refused as :func:`dumps_value` refuses it. A batch whose first value holds a comma (an
    object of several keys, most often a batch of such) is written one by one at once: the
    list written first would only be written again (+45 to 50% a value).

    The commas are counted by the cut itself (``len(values)`` pieces: ``len(values) - 1``
    commas), and the list's brackets taken off its first and last pieces rather than off
    the whole text (a copy of it): 98 -> 69 ns a value for 100 values of 100 bytes
    (docs/performance-history.md, "A replica's per-append path (seventh round)")."""
    first = values[0] if values else None
    kind = type(first)
    if kind is dict or kind is list or (kind is str and "," in first):  # type: ignore[operator]
        return tuple(map(dumps_value, values))
    try:
        pieces = orjson.dumps(values).split(b",")
    except orjson.JSONEncodeError:
        pieces = []
    if len(pieces) == len(values) and pieces:
        pieces[0] = pieces[0][1:]  # (the list's "[")
        pieces[-1] = pieces[-1][:-1]  # (its "]"; the same piece when there is one value)
        return tuple(pieces)
    return tuple(map(dumps_value, values))


def stored_value(raw: bytes) -> orjson.Fragment:
    """Stored JSON bytes, embedded as they are in a response."""
    return orjson.Fragment(raw)


T = TypeVar("T")


def _plain_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


# A chunk's base64 text is far longer than an identifier; it is still checked to be a string.
converter.register_structure_hook(
    m.SnapshotChunk,
    cattrs.gen.make_dict_structure_fn(
        m.SnapshotChunk, converter, data=cattrs.gen.override(struct_hook=_plain_str)
    ),
)


converter.register_structure_hook(
    m.StoredValues,
    cattrs.gen.make_dict_structure_fn(
        m.StoredValues, converter, rows=cattrs.gen.override(struct_hook=_plain_str)
    ),
)


def decode_response(answer: bytes | dict[str, Any], cls: type[T]) -> T | BrokerError:
    """Another broker's answer (a frame's payload, or its object) as ``cls``, or its error
    envelope as a :class:`BrokerError`. Raises :class:`RemoteProtocolError` for an answer that
    is neither (unknown extra fields are ignored, as brokers of a later version may add some)."""
    obj = loads_object(answer) if isinstance(answer, bytes) else answer
    status = obj.get("status")
    if status == "error":
        return error_from_wire(obj)
    if status != "success":
        raise RemoteProtocolError(f"an answer's status must be success or error, not {status!r}")
    if cls is m.Done:
        return m.Done()  # type: ignore[return-value]
    try:
        return converter.structure(obj, cls)
    except Exception as exc:
        name = cls.__name__
        raise RemoteProtocolError(f"invalid {name} answer: {describe_error(exc)}") from None
