"""Entries as the brokers carry them: encoded by the leader, decoded by each replica, stored
as bytes in every log and decoded again at a start, in every seed (with or without the wire).

The runtime never hands a replica the leader's objects: a leader encodes each new entry once
(``_runtime/_driver.py``: :func:`~trio_broker._protocol._entries.payload_bytes`, in the
``APPEND_RUNS`` form when every member reads it), its log stores those bytes and every
REPLICATE carries them; a replica decodes them (``entry_from_obj``: a group of plain appends
in runs becomes a :class:`~trio_broker._core._append_columns.AppendColumns`, its appends made
only when read), stores the bytes it received and applies what it decoded; a broker that
starts reads its log back (``_storage/_file_checks.read_log``: the checksum checked, the
payload decoded by :func:`~trio_broker._protocol._entries.decode_payload`), so after a start
even a leader's own entries are decoded ones. And the store's apply of a run of plain appends
to one queue answers with an :class:`~trio_broker._core._appended_run.AppendedRun`
(``_storage/_queue_sql._apply_group``), whose results are made only when read (a leader's
answers; a replica's do not).

Here the same, through the same functions, so that the forms the brokers meet are what each
broker's core, its pure state and the checker see, on every seed:

- :func:`received`: a REPLICATE's (or PROMOTE_TO_LEADER's) entries as the receiver decodes
  them, on the seeds without the wire (with the wire, ``_wire`` decodes the whole frame);
- :func:`stored` and :func:`read_back`: what a log holds of an entry (its bytes and checksum,
  ``stored_entry``) and what a start reads from it;
- :func:`store_result`: a group's result in the form the store gives it.

A broker id inside a membership entry is a small int here and a string on the wire and on
disk: such an entry is renamed on its way in and out (``_wire``'s ``broker_name``).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..._core._append_columns import AppendColumns
from ..._core._appended_run import AppendedRun
from ..._core._commands import GroupApplied, MessageAppended
from ..._core._raft_messages import ConfigEntry, Entry
from ..._errors import RemoteProtocolError
from ..._protocol import _entries as codec
from ..._storage._append_sql import _one_run
from ._params import SimulationFailure
from ._wire import _copy, _entries, _entry, broker_name, broker_of


def received(m: Any, runs: bool) -> Any:
    """``m`` (a REPLICATE or a PROMOTE_TO_LEADER) with its entries as its receiver decodes
    them: each written as the link writes it (``entry_to_obj``: in runs only for a peer that
    reads them, ``runs``), parsed, and read by ``entry_from_obj`` (the checksum checked, the
    payload decoded; the entry carries the bytes it arrived as)."""
    entries = m.entries
    if not entries:
        return m
    objs = [codec.entry_to_obj(e, runs) for e in _entries(entries, broker_name)]
    try:
        decoded = tuple(codec.entry_from_obj(obj) for obj in orjson.loads(orjson.dumps(objs)))
    except RemoteProtocolError as exc:
        raise SimulationFailure(f"{type(m).__name__} {m.src}>{m.dst} refused: {exc}") from None
    return _copy(m, {"entries": _entries(decoded, broker_of)})


def stored(e: Entry) -> Entry:
    """What a log holds of ``e``: a record with its bytes and their checksum, as the store
    writes them (``stored_entry``: the bytes the entry carries, else encoded now as a
    ``COMMAND_GROUP``). The record keeps the payload too, for the disk's faults (``_disk``),
    which read it; a start reads the bytes (:func:`read_back`)."""
    named = _entry(e, broker_name) if type(e.payload) is ConfigEntry else e
    encoded, checksum = codec.stored_entry(named)
    record = Entry(e.term, e.index, e.payload)
    record.remember_encoded(encoded, checksum)
    return record


def read_back(record: Entry) -> Entry:
    """A log's record as a start reads it (``_file_checks.read_log``): its checksum checked,
    its payload decoded from its bytes, with no bytes cached (as the store's). Bytes that
    fail their checksum or do not decode are a failure here: the disk's own faults
    (``_disk``) are found before, by their mark. A record without bytes (a log a test filled
    by hand with entries) is written first as the store would write it."""
    if record.encoded is None or record.checksum is None:
        record = stored(record)
    encoded, checksum = record.encoded, record.checksum
    assert encoded is not None and checksum is not None
    where = f"log entry {record.index} (term {record.term})"
    if codec.entry_checksum(record.term, record.index, encoded) != checksum:
        raise SimulationFailure(f"{where} does not match its checksum")
    try:
        payload = codec.decode_payload(encoded)
    except RemoteProtocolError as exc:
        raise SimulationFailure(f"{where} does not decode: {exc}") from None
    entry = Entry(record.term, record.index, payload)
    return _entry(entry, broker_of) if type(payload) is ConfigEntry else entry


def store_result(commands: Any, result: Any) -> Any:
    """A group's result as the store gives it: a run of plain appends to one queue (a
    replica's decoded columns, or what ``_append_sql._one_run`` takes) applied without a
    refusal answers with an :class:`AppendedRun` of its first number and count, as
    ``_append_sql._append_columns`` does; any other group as the pure state answered."""
    if type(result) is not GroupApplied:
        return result
    if type(commands) is AppendColumns:
        if len(commands) < 2 or commands.one_queue() is None:
            return result
    elif not _one_run(commands):
        return result
    results = result.results
    first = results[0]
    if type(first) is not MessageAppended or first.duplicate:
        return result
    number = first.sequence_num
    for k, one in enumerate(results):
        if type(one) is not MessageAppended or one.duplicate or one.sequence_num != number + k:
            return result
    return GroupApplied(AppendedRun(number, len(results)))  # type: ignore[arg-type]


__all__ = ["read_back", "received", "store_result", "stored"]
