"""Byte-bounded reads applied where nobody waits for the answer (a replica; a leader applying
entries nobody waits for): a ``READ_BATCH`` or a ``READ_RECORDS`` with a byte budget, the
latter the form clients' batched READs take (``_runtime/_runs.py``, ``read_command_of``).

How far such a read moves the reader depends on the sizes of the values it passes, and a size
taken from SQLite's ``length(data)`` cannot be checked (the stored checksum covers the bytes,
not their count): a damaged row would move this broker's reader differently from the
leader's (docs/reliability.md, "Byte-bounded reads applied for nobody"). So every size used
here comes from bytes read and checked against their stored checksum now
(:func:`intact_columns`). What is left out is what only an answer
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

import apsw

from .._core._commands import ReadBatch, Result, take_within
from .._core._queues import read_range, read_result
from .._core._work_commands import Delivered, ReadRecords
from ._read_columns import Deliveries, intact_columns, records_sizes

__all__ = ["budgeted_read", "checked_sizes"]


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
    (:func:`records_sizes`), from bytes read and checked against their stored checksums now;
    None when some is not whole and intact (nothing noted: the caller takes the checking
    path). For reads nobody waits for: a ``READ_RECORDS`` (:func:`budgeted_read`) and the
    messages a ``GROUP_READ`` hands out for the first time (``_work_sql._group_read``).
    (Sizes remembered from an earlier check were tried and removed: docs/performance-history.md,
    "Byte-bounded READs on replicas".)"""
    columns = intact_columns(db, queue_id, seqs.start, seqs.stop - 1)
    if columns is None:
        return None
    _, datas, headers, _ = columns
    sizes, _ = records_sizes(seqs, datas, headers)
    return sizes
