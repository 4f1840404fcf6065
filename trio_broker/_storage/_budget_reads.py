"""Byte-bounded reads applied where nobody waits for the answer (a replica; a leader applying
entries nobody waits for): a ``READ_BATCH`` or a ``READ_RECORDS`` with a byte budget, the
latter the form clients' batched READs take (``_runtime/_runs.py``, ``read_command_of``).

How far such a read moves the reader depends on the sizes of the values it passes, and a size
taken from SQLite's ``length(data)`` cannot be checked (the stored checksum covers the bytes,
not their count): a damaged row would move this broker's reader differently from the
leader's (docs/reliability.md, "Byte-bounded reads applied for nobody"). So every size used
here comes from bytes read and checked against their stored checksum in the same pass
(:func:`intact_columns`). What is left out is what only an answer needs: a
``READ_RECORDS``' answer reaches nobody and holds its sequence numbers with empty bytes
(:class:`Deliveries`), as a ``READ`` applied for nobody does. The position moves by the
leader's own rules, called here, never written again: :func:`read_range`, then
:func:`read_result` (a ``READ_BATCH``: the values' bytes) or :func:`delivery_sizes` and
:func:`take_within`, the two steps of :func:`delivered_within` (a ``READ_RECORDS``: the bytes
and the headers).

Anything but a whole, intact range (a value missing or damaged, a page SQLite cannot read, a
refused command) answers None and writes nothing: the caller applies the command by the
checking path, which finds the damage and holds the transaction for a repair, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any, overload

import apsw

from .._core._commands import ReadBatch, Result, take_within
from .._core._queues import read_range, read_result
from .._core._work_commands import Delivered, Delivery, ReadRecords
from .._core._work_rules import delivery_sizes
from ._integrity import _HEADED, _PLAIN, DAMAGE_ERRORS, _crc32c, _place
from ._work_sql import decode_headers


def budgeted_read(
    db: apsw.Connection,
    command: ReadBatch | ReadRecords,
    position: int,
    deleted: int,
    length: int,
) -> tuple[Result, int | None] | None:
    """The result of a byte-bounded read by a reader at ``position`` in a queue of ``length``
    messages whose head is deleted through ``deleted``, and the position it moves to (None:
    it stays), as the checking path moves it; None when this path cannot tell (see the
    module's docstring). Writes nothing to the database."""
    if type(command) is ReadBatch:
        start, end = read_range(position, deleted, length, command)
        columns = intact_columns(db, command.queue_id, start, end)
        if columns is None:
            return None
        seqs, datas, _ = columns
        return read_result(command, tuple(zip(seqs, datas, strict=True)))
    if command.max_messages < 1:
        return None  # (refused: the checking path answers it)
    queue_id = command.queue_id
    start, end = read_range(
        position, deleted, length, ReadBatch(command.client_id, queue_id, command.max_messages)
    )
    columns = intact_columns(db, queue_id, start, end)
    if columns is None:
        return None
    seqs, datas, headers = columns
    plain = headers.count(None) == len(headers)
    decoded = repeat(()) if plain else map(decode_headers, headers)
    # (strict=False: ``decoded`` may be an endless ``repeat``; the other two are alike.)
    sizes = delivery_sizes(list(zip(seqs, datas, decoded, strict=False)))
    taken = seqs[: take_within(sizes, command.max_bytes)]
    moved_to = taken[-1] if taken and not command.peek else None
    return Delivered(Deliveries(taken)), moved_to  # type: ignore[arg-type]


def intact_columns(
    db: apsw.Connection, queue_id: str, start: int, end: int
) -> tuple[range, tuple[bytes, ...], tuple[str | None, ...]] | None:
    """The messages ``start..end`` of a queue as three columns (sequence numbers, bytes,
    headers), when every one is there, in order, and matches its checksum: what
    :func:`._integrity.read_values` returns for them, checked as strictly, for a read whose answer
    nobody waits for (a replica's byte-bounded batch: how far it moves depends on the
    values' sizes, docs/reliability.md "Byte-bounded reads applied for nobody"). None
    otherwise (a row missing, moved, of the wrong type or damaged, a page SQLite cannot
    read), noting nothing and raising nothing: the caller then takes the checking path,
    which finds the damage and has it repaired (or, for rows that only came out of order,
    reads them as :func:`._integrity.read_values` does).

    The checks run over the columns in C where they can (``map`` of ``bytes.__mod__`` and
    ``_crc32c``, one comparison of the tuples) instead of a Python step per row. The rows'
    sequence numbers are not read: each row is checked as the one expected at its place,
    and its checksum covers its sequence number, so a row missing, moved or out of order
    fails its own or the count."""
    if end < start:
        return range(start, start), (), ()
    try:
        rows = db.execute(_READ_COLUMNS, (queue_id, start, end)).fetchall()
    except DAMAGE_ERRORS:
        return None
    count = end - start + 1
    if len(rows) != count:
        return None
    datas, headers, checksums = zip(*rows, strict=True)
    seqs = range(start, end + 1)
    place = _place(queue_id)
    try:
        if headers.count(None) == count:
            # ``%b`` refuses anything but bytes (a str, an int, None: a damaged row's type).
            found = tuple(map(_crc32c, map(_PLAIN.__mod__, zip(repeat(place), seqs, datas))))
        else:
            found = tuple(
                _crc32c(_PLAIN % (place, seq, data))
                if text is None
                else _crc32c(_HEADED % (place, seq, data, text.encode()))
                for seq, data, text in zip(seqs, datas, headers, strict=True)
            )
    except (TypeError, AttributeError):
        return None
    if found != checksums:
        return None
    return seqs, datas, headers


_READ_COLUMNS = (
    "SELECT data, headers, checksum FROM queue_data WHERE queue_id = ?"
    " AND sequence_num BETWEEN ? AND ?"
)
"""What :func:`intact_columns` reads: ``_integrity._READ_VALUES`` but the sequence numbers (rows
come in their order, the index's: see there)."""


class Deliveries(Sequence[Delivery]):
    """A ``READ_RECORDS``' deliveries applied for nobody: its sequence numbers, each with empty
    bytes and no headers (the answer reaches nobody: on a replica the read path's views only
    ask whether it is empty), each made only if looked at; building 1,000 frozen
    :class:`Delivery` objects cost 0.73 µs each, about half of the whole read before
    (docs/performance.md, "Byte-bounded READs on replicas"). Equal to the tuple of the same
    deliveries."""

    __slots__ = ("_seqs",)

    def __init__(self, seqs: range) -> None:
        self._seqs = seqs

    def __len__(self) -> int:
        return len(self._seqs)

    @overload
    def __getitem__(self, index: int) -> Delivery: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Delivery, ...]: ...
    def __getitem__(self, index: int | slice) -> Delivery | tuple[Delivery, ...]:
        if isinstance(index, slice):
            return tuple(self)[index]
        return Delivery(self._seqs[index], b"", (), 1)

    def __iter__(self) -> Iterator[Delivery]:
        for seq in self._seqs:
            yield Delivery(seq, b"", (), 1)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Deliveries | tuple):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __reduce__(self) -> Any:
        return tuple, (tuple(self),)
