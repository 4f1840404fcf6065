"""The results of a run of plain appends as one object (:class:`AppendedRun`): what every
broker's apply of a pipelined group answers, made only when something reads them.

A group of appends to one queue (``_storage/_append_sql._append_run``, the common group
under pipelined load) answers with one :class:`~._commands.MessageAppended` per append,
numbered ``first``, ``first + 1``, ... On a leader each is an answer to a request; on a
replica nothing reads them but the views, which need to know only that the group was appends
to one queue (``_runtime/_applied.applied_group``: one wake-up of its readers). Made at once,
they cost each replica about 0.16 µs an append, and the views' walk over them about 0.25 more
(docs/performance-history.md, "A replica's CPU per append (ninth round)"); held as the run's
first number and count, a replica makes none, and a leader makes them all at once, in the
same passes as before, when its answers first read them.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat
from typing import Any

import attrs

from ._commands import MessageAppended
from ._made_later import MadeLater

_new_result = object.__new__
_set_sequence_num, _set_duplicate = (
    MessageAppended.__dict__[field].__set__ for field in ("sequence_num", "duplicate")
)
if [field.name for field in attrs.fields(MessageAppended)] != ["sequence_num", "duplicate"]:
    raise ImportError("appended_results sets MessageAppended's fields one by one: update it")
_consume = deque[object](maxlen=0).extend
"""Runs an iterator to its end, keeping nothing: the passes of :func:`appended_results`."""


def appended_results(first: int, count: int) -> list[MessageAppended]:
    """``[MessageAppended(n) for n in range(first, first + count)]``: each object made without
    attrs' frozen ``__init__`` (``object.__setattr__`` per field), its slots set through their
    descriptors ("A replica's CPU per append (third round)": 0.27 -> 0.20 us each), in passes
    of ``map`` in C over the run, not a Python call per result (256 results, 0.195 -> 0.157 us
    each, "A replica's per-append path (seventh round)")."""
    results: list[MessageAppended] = list(map(_new_result, repeat(MessageAppended, count)))
    _consume(map(_set_sequence_num, results, range(first, first + count)))
    _consume(map(_set_duplicate, results, repeat(False, count)))
    return results


class AppendedRun(MadeLater[MessageAppended]):
    """``MessageAppended(first)``, ..., ``MessageAppended(first + size - 1)``, the results of
    a run of ``size`` appends to one queue (never a duplicate: no producer), as an immutable
    sequence: the objects are made, all at once, the first time anything reads an item (an
    index, an iteration, a comparison with another sequence), then kept. Equal to the tuple
    (or the other run) of the same results, with its hash; :attr:`first` and :attr:`size`
    read without making any."""

    __slots__ = ("first", "size")

    def __init__(self, first: int, size: int) -> None:
        if size < 1:
            raise ValueError(f"a run holds at least one append, not {size}")
        super().__init__()
        self.first = first
        self.size = size

    def _make(self) -> tuple[MessageAppended, ...]:
        return tuple(appended_results(self.first, self.size))

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        if type(other) is AppendedRun:  # (two runs: their numbers, nothing made)
            return (self.first, self.size) == (other.first, other.size)
        return super().__eq__(other)

    __hash__ = MadeLater.__hash__

    def __reduce__(self) -> tuple[Any, ...]:
        return (AppendedRun, (self.first, self.size))


__all__ = ["AppendedRun", "appended_results"]
