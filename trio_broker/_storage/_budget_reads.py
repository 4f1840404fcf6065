"""Byte-bounded reads applied where nobody waits for the answer (a replica; a leader applying
entries nobody waits for): a ``READ_BATCH`` or a ``READ_RECORDS`` with a byte budget, the
latter the form clients' batched READs take (``_runtime/_runs.py``, ``read_command_of``).

How far such a read moves the reader depends on the sizes of the values it passes, and a size
taken from SQLite's ``length(data)`` cannot be checked (the stored checksum covers the bytes,
not their count): a damaged row would move this broker's reader differently from the
leader's (docs/reliability.md, "Byte-bounded reads applied for nobody"). So every size used
here comes from bytes checked against their stored checksum: read and checked now
(:func:`intact_columns`), or, for a ``READ_RECORDS``, checked by an earlier read
on this connection and remembered with the checksum it matched (:class:`CheckedSizes`),
used only while the row still holds that checksum. What is left out is what only an answer
needs: a ``READ_RECORDS``' answer reaches nobody and holds its sequence numbers with empty
bytes (:class:`Deliveries`), as a ``READ`` applied for nobody does. The position moves by the
leader's own rules, called here, never written again: :func:`read_range`, then
:func:`read_result` (a ``READ_BATCH``: the values' bytes) or :func:`delivery_sizes` and
:func:`take_within`, the two steps of :func:`delivered_within` (a ``READ_RECORDS``: the bytes
and the headers).

Anything but a whole, intact range (a value missing or damaged, a page SQLite cannot read, a
refused command) answers None and writes nothing: the caller applies the command by the
checking path, which finds the damage and holds the transaction for a repair, as before.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import apsw

from .._core._commands import ReadBatch, Result, take_within
from .._core._queues import read_range, read_result
from .._core._work_commands import Delivered, ReadRecords
from ._integrity import DAMAGE_ERRORS
from ._read_columns import Deliveries, intact_columns, records_sizes

__all__ = ["Deliveries", "budgeted_read", "checked_sizes", "intact_columns"]


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
        seqs, datas, _, _ = columns
        return read_result(command, tuple(zip(seqs, datas, strict=True)))
    if command.max_messages < 1:
        return None  # (refused: the checking path answers it)
    queue_id = command.queue_id
    start, end = read_range(
        position, deleted, length, ReadBatch(command.client_id, queue_id, command.max_messages)
    )
    seqs = range(start, end + 1)
    sizes = checked_sizes(db, queue_id, seqs)
    if sizes is None:
        return None
    taken = seqs[: take_within(sizes, command.max_bytes)]
    moved_to = taken[-1] if taken and not command.peek else None
    return Delivered(Deliveries(taken)), moved_to  # type: ignore[arg-type]


def checked_sizes(db: apsw.Connection, queue_id: str, seqs: range) -> list[int] | None:
    """What the messages ``seqs`` of a queue count towards a work read's byte budget
    (:func:`records_sizes`), from bytes checked against their stored checksums: by an earlier
    read on this connection (:class:`CheckedSizes`), or read and checked now (then kept);
    None when some is not whole and intact (nothing noted: the caller takes the checking
    path). For reads nobody waits for: a ``READ_RECORDS`` (:func:`budgeted_read`) and the
    messages a ``GROUP_READ`` hands out for the first time (``_work_sql._group_read``)."""
    checked = _checked_sizes(db)
    sizes = checked.known(db, queue_id, seqs)
    if sizes is None:
        columns = intact_columns(db, queue_id, seqs.start, seqs.stop - 1)
        if columns is None:
            return None
        _, datas, headers, checksums = columns
        sizes, _ = records_sizes(seqs, datas, headers)
        checked.remember(queue_id, seqs, checksums, sizes)
    return sizes


MAX_CHECKED_SIZES = 1 << 15
"""Sizes :class:`CheckedSizes` keeps per connection, at most (then all are forgotten at once):
5.9 MB of Python objects when full (``tracemalloc``, checksums of 31 bits). Per-client reads
of one queue go over the same messages one reader after another, so a message checked for
the first reader is sized from here for the next ones."""


class CheckedSizes:
    """The sizes (:func:`delivery_sizes`) of messages whose bytes and headers this connection
    checked against their stored checksums, each with that checksum. A size is used again only
    while the row holds the same checksum, so it is the size of the bytes the checksum was
    computed from when the message was appended: the size every broker counts for it, since a
    message's row never changes once written. A row written again since (a queue deleted and
    created again under its id) holds another checksum, and is read and checked again (a
    match by chance is a CRC32C collision, what every other check of the store accepts). The
    bytes are not looked at: damage to them is the scrub's to find, as for a ``READ`` applied
    for nobody."""

    __slots__ = ("_count", "_sizes", "_sums")

    def __init__(self) -> None:
        self._sums: dict[str, dict[int, int]] = {}
        self._sizes: dict[str, dict[int, int]] = {}
        self._count = 0

    def known(self, db: apsw.Connection, queue_id: str, seqs: range) -> list[int] | None:
        """The sizes of the messages ``seqs`` of a queue, if every one was checked before and
        its row still holds the checksum it matched; None otherwise."""
        sums = self._sums.get(queue_id)
        if sums is None or not seqs:
            return None
        expected = list(map(sums.get, seqs))
        if None in expected:
            return None
        try:
            stored = db.execute(_CHECKSUMS, (queue_id, seqs.start, seqs[-1])).fetchall()
        except DAMAGE_ERRORS:
            return None
        if stored != list(zip(expected)):
            return None
        return list(map(self._sizes[queue_id].__getitem__, seqs))

    def remember(
        self, queue_id: str, seqs: range, checksums: Sequence[int], sizes: list[int]
    ) -> None:
        """Keep the sizes of messages just checked (all forgotten first if they would pass
        :data:`MAX_CHECKED_SIZES`)."""
        if self._count + len(seqs) > MAX_CHECKED_SIZES:
            self._sums.clear()
            self._sizes.clear()
            self._count = 0
        self._sums.setdefault(queue_id, {}).update(zip(seqs, checksums, strict=True))
        self._sizes.setdefault(queue_id, {}).update(zip(seqs, sizes, strict=True))
        self._count += len(seqs)  # (a message remembered twice counts twice: a safe bound)


_CHECKSUMS = "SELECT checksum FROM queue_data WHERE queue_id = ? AND sequence_num BETWEEN ? AND ?"
"""The stored checksums of a range, in sequence order (the unique index's order, as
``_integrity._READ_VALUES``): no value read."""

_BY_CONNECTION: weakref.WeakKeyDictionary[apsw.Connection, CheckedSizes] = (
    weakref.WeakKeyDictionary()
)


def _checked_sizes(db: apsw.Connection) -> CheckedSizes:
    """The connection's :class:`CheckedSizes` (one per store; gone with its connection)."""
    found = _BY_CONNECTION.get(db)
    if found is None:
        found = _BY_CONNECTION[db] = CheckedSizes()
    return found
