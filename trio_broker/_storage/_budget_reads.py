"""Byte-bounded reads applied where nobody waits for the answer (a replica; a leader applying
entries nobody waits for): a ``READ_BATCH`` or a ``READ_RECORDS`` with a byte budget, the
form clients' batched READs take (``_runtime/_runs.py``, ``read_command_of``).

How far such a read moves the reader depends on the sizes of the values it passes, so the
values are read and checked here as on the leader (docs/reliability.md, "Byte-bounded reads
applied for nobody": sizes taken from SQLite's ``length(data)`` alone would let a damaged row
move this broker's position differently from the leader's). What is left out is what only an
answer needs: the checks run over the columns (:func:`._integrity.intact_columns`), and a
``READ_RECORDS``' deliveries are built only if something looks at them
(:class:`Deliveries`). The position moves by the leader's own rules, called here, never
written again: :func:`read_range`, and :func:`read_result` (a ``READ_BATCH``: the values'
bytes) or :func:`delivered_within` (a ``READ_RECORDS``: the bytes and the headers).

Anything but a whole, intact range (a value missing or damaged, a page SQLite cannot read, a
refused command) answers None and writes nothing: the caller applies the command by the
checking path, which finds the damage and holds the transaction for a repair, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any, overload

import apsw

from .._core._commands import ReadBatch, Result
from .._core._queues import read_range, read_result
from .._core._work_commands import Delivered, Delivery, ReadRecords
from .._core._work_rules import delivered_within
from ._integrity import intact_columns
from ._work_sql import decode_headers

Taken = list[tuple[int, bytes, tuple[tuple[str, str], ...]]]


def budgeted_read(
    db: apsw.Connection,
    command: ReadBatch | ReadRecords,
    position: int,
    deleted: int,
    length: int,
) -> tuple[Result, int | None] | None:
    """The result of a byte-bounded read by a reader at ``position`` in a queue of ``length``
    messages whose head is deleted through ``deleted``, and the position it moves to (None:
    it stays), as the checking path gives them; None when this path cannot tell (see the
    module's docstring). Writes nothing."""
    if type(command) is ReadBatch:
        start, end = read_range(position, deleted, length, command)
        columns = intact_columns(db, command.queue_id, start, end)
        if columns is None:
            return None
        seqs, datas, _ = columns
        return read_result(command, tuple(zip(seqs, datas, strict=True)))
    if command.max_messages < 1:
        return None  # (refused: the checking path answers it)
    start, end = read_range(
        position,
        deleted,
        length,
        ReadBatch(command.client_id, command.queue_id, command.max_messages),
    )
    columns = intact_columns(db, command.queue_id, start, end)
    if columns is None:
        return None
    seqs, datas, headers = columns
    decoded = repeat(()) if headers.count(None) == len(headers) else map(decode_headers, headers)
    # (strict=False: ``decoded`` may be an endless ``repeat``; the other two are alike.)
    candidates = list(zip(seqs, datas, decoded, strict=False))
    taken: Taken = delivered_within(candidates, command.max_bytes)
    moved_to = taken[-1][0] if taken and not command.peek else None
    return Delivered(Deliveries(taken)), moved_to  # type: ignore[arg-type]


class Deliveries(Sequence[Delivery]):
    """A ``READ_RECORDS``' deliveries (each delivered once), made from the messages it took
    only when looked at. Its answer reaches nobody here: what looks at it is whether it is
    empty (the read path's views); building 1,000 frozen :class:`Delivery` objects cost
    0.73 µs each, about half of the whole read (docs/performance.md, "Byte-bounded READs
    on replicas"). Equal to the tuple of the same deliveries, as the checking path's."""

    __slots__ = ("_taken",)

    def __init__(self, taken: Taken) -> None:
        self._taken = taken

    def __len__(self) -> int:
        return len(self._taken)

    @overload
    def __getitem__(self, index: int) -> Delivery: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Delivery, ...]: ...
    def __getitem__(self, index: int | slice) -> Delivery | tuple[Delivery, ...]:
        if isinstance(index, slice):
            return tuple(self)[index]
        seq, data, headers = self._taken[index]
        return Delivery(seq, data, headers, 1)

    def __iter__(self) -> Iterator[Delivery]:
        for seq, data, headers in self._taken:
            yield Delivery(seq, data, headers, 1)

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
