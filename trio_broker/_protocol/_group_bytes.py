"""COMMAND_GROUP payloads written by hand: a group of plain appends
(:func:`_appends_group_bytes`) and a group of single READs (:func:`_reads_group_bytes`), the
two shapes a leader groups under load, formatted with ``%`` instead of going through the
converter per command (docs/performance-history.md, "A replica's per-append cost and the leader's
peer links" and "Single READs: the leader's request path").

Byte for byte what the general encoder (``_entries.payload_to_obj`` then ``orjson.dumps``)
writes for the same group, and None for any group they do not cover, which
``_entries.encode_payload`` (their one caller) then writes the general way.
``tests/test_replica_codec.py`` and ``tests/test_read_leader_path.py`` hold both forms to the
same bytes.

And the compact form of a group of plain appends, ``APPEND_RUNS`` (:func:`_append_runs_bytes`,
docs/replication.md "A group of appends in runs"): each run of appends to one queue with one
stamp written as ``[queue_id, appended_ms, [value, ...]]``, the values as they are stored. A
leader writes it only when every member of the group said it reads it (``_entries``).
"""

from __future__ import annotations

from operator import countOf
from typing import Any

import orjson

from .._core import _commands as cmd

_APPEND_HEAD = b'{"type":"APPEND_MESSAGE","queue_id":'
_GROUP_HEAD = b'{"type":"COMMAND_GROUP","commands":['
_APPEND_FORM = b'%b%b,"appended_ms":%d}'
_INT_LOW, _INT_HIGH = -(2**63), 2**64  # the integers orjson writes (it refuses the others)
_NO_QUEUE: Any = object()
"""No queue yet: no ``queue_id`` is this, so the first append's is always checked."""


def _appends_group_bytes(commands: tuple[Any, ...]) -> bytes | None:
    """A COMMAND_GROUP of plain appends (no producer, a stamp: what a leader groups under
    load) as exactly the bytes orjson writes for its :func:`payload_to_obj` form, formatted
    by hand: one ``%`` per append, the queue's part of it written once per run of one queue,
    where the general form builds a dict and a ``Fragment`` per append (128 appends: 42 ->
    33 us; docs/performance-history.md, "A replica's per-append cost and the leader's peer links").
    None for any other group, which the general form writes (and refuses as it does).
    ``tests/test_replica_codec.py`` holds both to the same bytes."""
    parts: list[bytes] = []
    add = parts.append
    append_message = cmd.AppendMessage
    form = _APPEND_FORM
    low, high = _INT_LOW, _INT_HIGH
    queue = _NO_QUEUE
    head = b""
    for c in commands:
        if type(c) is not append_message or c.producer_id is not None:
            return None
        data, stamp = c.data, c.appended_ms
        if type(data) is not bytes or type(stamp) is not int or not low <= stamp < high:
            return None
        if c.queue_id is not queue:
            queue = c.queue_id
            if type(queue) is not str:
                return None
            head = _APPEND_HEAD + orjson.dumps(queue) + b',"data":'
        add(form % (head, data, stamp))
    if not parts:
        return None
    return _GROUP_HEAD + b",".join(parts) + b"]}"


_BATCH_HEAD = b'{"type":"APPEND_BATCH","queue_id":'
_BATCH_FORM = b'%b[%b],"appended_ms":%d}'


def _plain_batch(command: Any) -> bool:
    """Whether ``command`` is an APPEND_BATCH the hand-written forms write: no producer, a
    stamp orjson writes, a queue id that is a ``str``, its values a tuple of ``bytes`` each
    (``b",".join`` takes any buffer, a bytearray, a memoryview, a subclass of bytes, where the
    general form's ``orjson.Fragment`` refuses them)."""
    if type(command) is not cmd.AppendBatch or command.producer_id is not None:
        return False
    data, stamp = command.data, command.appended_ms
    return (
        command.producer_seq is None
        and type(stamp) is int
        and _INT_LOW <= stamp < _INT_HIGH
        and type(command.queue_id) is str
        and type(data) is tuple
        and countOf(map(type, data), bytes) == len(data)
    )


def _batch_bytes(command: Any) -> bytes | None:
    """One plain APPEND_BATCH (no producer, a stamp: what a leader's batch appends are) as
    exactly the bytes orjson writes for its :func:`payload_to_obj` form: the values joined by
    commas in one call, where the general form makes an ``orjson.Fragment`` per value and a
    dict through the converter per batch (a group of 19 batches of 100: 72 -> 15 ns a value,
    docs/performance-history.md "Batch appends per message (fifth round)"; each value's type checked
    adds about 13). None for any other command, which the general form writes (and refuses
    as it does)."""
    if not _plain_batch(command):
        return None
    try:
        queue_text = orjson.dumps(command.queue_id)
    except TypeError:  # (a queue id orjson refuses: the general form decides, and its error
        return None  # is the whole group's first, not this one)
    head = _BATCH_HEAD + queue_text + b',"data":'
    return _BATCH_FORM % (head, b",".join(command.data), command.appended_ms)


_BATCH_TAIL = b'],"appended_ms":%d},'


def _batches_group_bytes(commands: tuple[Any, ...]) -> bytes | None:
    """A COMMAND_GROUP of plain APPEND_BATCHes (what a leader groups under batch appends:
    about 18 in each entry of the bench's) as exactly the bytes orjson writes for its
    :func:`payload_to_obj` form: each batch's values joined by commas, then the group's
    pieces (its head, and each batch's head, values and stamp) in one join. Each batch
    written whole by :func:`_batch_bytes` and the group then joined and closed copied every
    value four times more (about 200 KB an entry, each copy a new buffer): 41 -> 30 ns a
    value (docs/performance-history.md, "Batch appends per message (eighth round)"). None for any
    other group, as :func:`_batch_bytes` decides each batch. ``tests/test_batch_bytes.py``
    holds both forms to the same bytes."""
    pieces: list[bytes] = [_GROUP_HEAD]
    add = pieces.append
    queue: Any = _NO_QUEUE
    head = b""
    for c in commands:
        if not _plain_batch(c):
            return None
        if c.queue_id != queue:  # (equal ids are written alike: once per run of one queue)
            try:
                head = _BATCH_HEAD + orjson.dumps(c.queue_id) + b',"data":['
            except TypeError:  # (as in _batch_bytes)
                return None
            queue = c.queue_id
        add(head)
        add(b",".join(c.data))
        add(_BATCH_TAIL % c.appended_ms)
    if len(pieces) == 1:
        return None
    pieces[-1] = pieces[-1][:-1] + b"]}"  # (the last batch's comma: the group's end instead)
    return b"".join(pieces)


APPEND_RUNS_HEAD = b'{"type":"APPEND_RUNS","runs":['
"""How an ``APPEND_RUNS`` payload starts (its one writer writes ``type`` first, compact)."""
_RUN_FORM = b"[%b,%d,[%b]]"
RUNS_DEPTH = 250
"""The deepest value a group in runs holds: a value sits one level deeper in a run than in a
COMMAND_GROUP's append, and orjson writes at most 254 levels (``_codec.WRITTEN_DEPTH``),
which a replica's frame (the entry's payload written back alone) must stay within. A group
with a value that may nest deeper keeps its COMMAND_GROUP form."""
_DEEP_FROM = 2 * (RUNS_DEPTH + 1)
"""The shortest value that can nest deeper than :data:`RUNS_DEPTH` (a bracket to open and
one to close per level): shorter ones are never counted."""


def _append_runs_bytes(commands: tuple[Any, ...]) -> bytes | None:
    """A COMMAND_GROUP of plain appends (the groups :func:`_appends_group_bytes` writes) in
    its compact form: ``{"type":"APPEND_RUNS","runs":[[queue_id, appended_ms, [value, ...]],
    ...]}``, a run per stretch of appends to one queue with one stamp, each value embedded as
    it is stored: about 103 bytes per 102-byte value where the COMMAND_GROUP takes 185 to 192
    (docs/performance-history.md, "A group of appends in runs"). None for any other group. Exactly
    the bytes orjson writes for that object (``tests/test_append_runs.py``)."""
    runs: list[bytes] = []
    values: list[bytes] = []
    append_message = cmd.AppendMessage
    low, high = _INT_LOW, _INT_HIGH
    queue: Any = _NO_QUEUE
    stamp: Any = None
    head = b""
    for c in commands:
        if type(c) is not append_message or c.producer_id is not None:
            return None
        data, at = c.data, c.appended_ms
        if type(data) is not bytes or type(at) is not int or not low <= at < high:
            return None
        if len(data) >= _DEEP_FROM and data.count(b"[") + data.count(b"{") > RUNS_DEPTH:
            return None  # (it may nest too deep: counted brackets bound its depth)
        if c.queue_id != queue or at != stamp:
            if values:
                runs.append(_RUN_FORM % (head, stamp, b",".join(values)))
                values = []
            if c.queue_id != queue:
                queue = c.queue_id
                if type(queue) is not str:
                    return None
                head = orjson.dumps(queue)
            stamp = at
        values.append(data)
    if not values:
        return None
    runs.append(_RUN_FORM % (head, stamp, b",".join(values)))
    return APPEND_RUNS_HEAD + b",".join(runs) + b"]}"


_READ_NEXT_FORM = b'{"type":"UPDATE_POSITION","queue_id":%b,"client_id":%b}'


def _reads_group_bytes(commands: tuple[Any, ...]) -> bytes | None:
    """A COMMAND_GROUP of single READs (UPDATE_POSITION: what a leader groups under a READ
    load) as exactly the bytes orjson writes for its :func:`payload_to_obj` form, each READ
    formatted by hand and written once per run of one reader, where the general form goes
    through the converter per READ (docs/performance-history.md, "Single READs: the leader's request
    path"). None for any other group. ``tests/test_read_leader_path.py`` holds both to the
    same bytes."""
    parts: list[bytes] = []
    add = parts.append
    read_next = cmd.ReadNext
    client: Any = _NO_QUEUE
    queue: Any = _NO_QUEUE
    item = b""
    for c in commands:
        if type(c) is not read_next:
            return None
        client_id, queue_id = c.client_id, c.queue_id
        if type(client_id) is not str or type(queue_id) is not str:
            return None
        if client_id != client or queue_id != queue:  # (equal strings, other objects)
            client, queue = client_id, queue_id
            item = _READ_NEXT_FORM % (orjson.dumps(queue), orjson.dumps(client))
        add(item)
    if not parts:
        return None
    return _GROUP_HEAD + b",".join(parts) + b"]}"
