"""A range of a queue's messages read as columns, checked over the columns, and answered from
them: what a batched read (``READ_RECORDS``, with or without a byte budget) costs per message
on the leader and where nobody waits (docs/performance-history.md, "Byte-bounded READs on replicas"
and "Batched READs on the leader: columns instead of objects").

:func:`intact_columns` reads and checks the values as strictly as
:func:`._integrity.read_values` (which stays the path for anything but a whole, intact range:
it finds the damage and raises it, or reads rows that came out of order one by one), and
:class:`Deliveries` holds the answer as those columns, making a :class:`Delivery` only if one
is looked at: the answer's frame is written from the columns (``_protocol/_codec.py``,
:func:`columns_frame`), never from 1,000 frozen objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any, overload

import apsw
import orjson

from .._core._work_commands import Delivery, Headers
from .._core._work_rules import delivery_sizes
from ._integrity import _HEADED, _PLAIN, DAMAGE_ERRORS, _crc32c, _place
from ._row_sums import plain_checksums
from ._schema import QUEUE_KEY


def intact_columns(
    db: apsw.Connection, queue_id: str, start: int, end: int
) -> tuple[range, tuple[bytes, ...], tuple[str | None, ...], tuple[int, ...]] | None:
    """The messages ``start..end`` of a queue as four columns (sequence numbers, bytes,
    headers, checksums), when every one is there, in order, and matches its checksum: what
    :func:`._integrity.read_values` returns for them, checked as strictly: for a batched read
    on the leader (``_work_sql._read_records``) and for a byte-bounded read nobody waits for
    (a replica's: how far it moves depends on the values' sizes, docs/reliability.md
    "Byte-bounded reads applied for nobody"). None otherwise (a row missing, moved, of the
    wrong type or damaged, a page SQLite cannot read), noting nothing and raising nothing: the
    caller then takes the checking path, which finds the damage and has it repaired (or, for
    rows that only came out of order, reads them as :func:`._integrity.read_values` does).

    The checks run over the columns in C where they can (the checksums of rows without
    headers made at once by :func:`._row_sums.plain_checksums`, as the writes made them; one
    comparison of the tuples) instead of a Python step per row. The rows'
    sequence numbers are not read: each row is checked as the one expected at its place,
    and its checksum covers its sequence number, so a row missing, moved or out of order
    fails its own or the count."""
    if end < start:
        return range(start, start), (), (), ()
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
            # (It refuses anything but bytes, a str, an int, None: a damaged row's type, with
            # a TypeError, as the ``%`` did.)
            found = tuple(plain_checksums(place, start, datas))
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
    return seqs, datas, headers, checksums


_READ_COLUMNS = (
    "SELECT data, headers, checksum FROM queue_data"
    f" WHERE key BETWEEN {QUEUE_KEY} + ?2 AND {QUEUE_KEY} + ?3"
)
"""What :func:`intact_columns` reads: ``_integrity._READ_VALUES`` but the sequence numbers (rows
come in their order, the index's: see there)."""


def decode_headers(text: str | None) -> Headers:
    return () if text is None else tuple(sorted(orjson.loads(text).items()))


def records_sizes(
    seqs: range, datas: Sequence[bytes], texts: Sequence[str | None]
) -> tuple[list[int], tuple[Headers, ...] | None]:
    """What each of messages read as columns (:func:`intact_columns`) counts
    towards a work read's byte budget (:func:`delivery_sizes`), and their decoded headers
    (None: no message has headers, and none is decoded)."""
    if texts.count(None) == len(texts):
        # (strict=False: ``repeat`` is endless; the other two are alike.)
        return delivery_sizes(list(zip(seqs, datas, repeat(()), strict=False))), None
    headers = tuple(map(decode_headers, texts))
    return delivery_sizes(list(zip(seqs, datas, headers, strict=True))), headers


class Deliveries(Sequence[Delivery]):
    """A ``READ_RECORDS``' deliveries as columns: its sequence numbers, their bytes and their
    decoded headers, each :class:`Delivery` made only if looked at (building 1,000 frozen
    :class:`Delivery` objects cost 0.73 µs each, about half of the whole read before:
    docs/performance-history.md, "Byte-bounded READs on replicas"). Without ``datas`` (a read
    applied for nobody: the answer reaches nobody; on a replica the read path's views only ask
    whether it is empty), every message has empty bytes; without ``headers``, none has headers.
    Equal to the tuple of the same deliveries (``delivery_count`` 1: a per-client read)."""

    __slots__ = ("datas", "headers", "seqs")

    def __init__(
        self,
        seqs: range,
        datas: Sequence[bytes] | None = None,
        headers: Sequence[Headers] | None = None,
    ) -> None:
        self.seqs = seqs
        self.datas = datas
        """The messages' bytes, in order (None: empty bytes for each)."""
        self.headers = headers
        """The messages' headers, in order (None: none has headers)."""

    def __len__(self) -> int:
        return len(self.seqs)

    @overload
    def __getitem__(self, index: int) -> Delivery: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Delivery, ...]: ...
    def __getitem__(self, index: int | slice) -> Delivery | tuple[Delivery, ...]:
        if isinstance(index, slice):
            return tuple(self)[index]
        datas, headers = self.datas, self.headers
        return Delivery(
            self.seqs[index],
            b"" if datas is None else datas[index],
            () if headers is None else headers[index],
            1,
        )

    def __iter__(self) -> Iterator[Delivery]:
        datas = repeat(b"") if self.datas is None else self.datas
        headers = repeat(()) if self.headers is None else self.headers
        # (strict=False: ``repeat`` is endless; the columns are of one length.)
        for seq, data, header in zip(self.seqs, datas, headers, strict=False):
            yield Delivery(seq, data, header, 1)

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
