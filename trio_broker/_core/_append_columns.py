"""A decoded group of plain appends held as columns (:class:`AppendColumns`): the commands of
the :class:`~._commands.CommandGroup` a replica decodes from an ``APPEND_RUNS`` payload,
made only when something reads them one by one.

Under pipelined load nearly every REPLICATE a replica receives is one such group (hundreds of
appends to one queue in a few runs, each run one stamp). Its appends' only uses on a replica
are columns: the values' bytes and their stamps for the apply
(``_storage/_append_sql._append_columns``), their count and bytes for the apply's weight, the
log's memory and the apply lag, the first append for the views. Made as objects at decode, one
``AppendMessage`` per append cost each replica about 0.25 to 0.3 µs an append, plus the walks
over them (docs/performance-history.md, "A replica's CPU per append (ninth round)"). Held as
the runs' columns, a sequence equal to the tuple of those appends makes them, all at once and
in the same passes as before, only when something reads one (a replica elected leader that
sends the entry again, the mock cluster's memory store, a test).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import chain, repeat
from operator import attrgetter
from typing import Any

import attrs

from ._commands import AppendMessage, CommandGroup
from ._made_later import MadeLater

_new_command = object.__new__
_SET_QUEUE, _SET_DATA, _SET_PRODUCER, _SET_PRODUCER_SEQ, _SET_STAMP = (
    AppendMessage.__dict__[field].__set__
    for field in ("queue_id", "data", "producer_id", "producer_seq", "appended_ms")
)
if [field.name for field in attrs.fields(AppendMessage)] != [
    "queue_id",
    "data",
    "producer_id",
    "producer_seq",
    "appended_ms",
]:
    raise ImportError("AppendColumns sets AppendMessage's fields one by one: update it")
_consume = deque[object](maxlen=0).extend
_from_each = chain.from_iterable
_datas_of = attrgetter("datas")


class AppendColumns(MadeLater[AppendMessage]):
    """``AppendMessage(queues[i], data, None, None, stamps[i])`` for each of ``counts[i]``
    values of run ``i`` (their bytes in ``datas``, in order), as an immutable sequence: the
    objects are made, all at once, the first time an item is read (an index, an iteration, a
    comparison with another sequence), then kept. Equal to the tuple of those appends, with its
    hash. The columns read without making any: :attr:`datas`, :meth:`one_queue`,
    :meth:`stamp_column`, :meth:`data_bytes`, :meth:`head`.

    Built by the decoder from a checked ``APPEND_RUNS`` payload (``_protocol/_runs_decode``):
    at least one run, each of at least one value, a ``str`` queue id and an ``int`` stamp."""

    __slots__ = ("counts", "datas", "queues", "stamps")

    def __init__(
        self, queues: list[str], stamps: list[int], counts: list[int], datas: tuple[bytes, ...]
    ) -> None:
        if (
            not datas
            or sum(counts) != len(datas)
            or not (len(queues) == len(stamps) == len(counts))
        ):
            raise ValueError("runs' columns that do not agree")
        super().__init__()
        self.queues = queues
        self.stamps = stamps
        self.counts = counts
        self.datas = datas

    def _make(self) -> tuple[AppendMessage, ...]:
        """The appends, in passes of ``map`` in C: the objects, then each field through its
        slot's descriptor, as ``AppendMessage.__init__`` sets it; the queue's id and each
        run's stamp repeated in C."""
        total = len(self.datas)
        objects = list(map(_new_command, repeat(AppendMessage, total)))
        queue = self.one_queue()
        if queue is not None:
            _consume(map(_SET_QUEUE, objects, repeat(queue, total)))
        else:
            _consume(map(_SET_QUEUE, objects, _from_each(map(repeat, self.queues, self.counts))))
        _consume(map(_SET_DATA, objects, self.datas))
        _consume(map(_SET_PRODUCER, objects, repeat(None, total)))
        _consume(map(_SET_PRODUCER_SEQ, objects, repeat(None, total)))
        _consume(map(_SET_STAMP, objects, self.stamp_column()))
        return tuple(objects)

    def one_queue(self) -> str | None:
        """The queue of every append, when they are all of one (the usual case); else None."""
        queues = self.queues
        first = queues[0]
        return first if queues.count(first) == len(queues) else None

    def stamp_column(self) -> Iterator[int]:
        """Each append's stamp, in order."""
        return _from_each(map(repeat, self.stamps, self.counts))

    def data_bytes(self) -> int:
        """The values' bytes, all appends together."""
        return sum(map(len, self.datas))

    def head(self) -> AppendMessage:
        """The first append (the one :meth:`made` holds first, when made; else made alone)."""
        if self._made is not None:
            return self._made[0]
        return AppendMessage(self.queues[0], self.datas[0], None, None, self.stamps[0])

    def part(self, start: int, end: int) -> AppendColumns:
        """Appends ``start`` to ``end - 1`` of a run of one queue and one stamp (a leader's
        receive: ``_proposals.Proposals.add_columns``), as columns of their own."""
        if len(self.queues) != 1 or not 0 <= start < end <= len(self.datas):
            raise ValueError(f"no part {start}:{end} of these columns")
        return AppendColumns(self.queues, self.stamps, [end - start], self.datas[start:end])

    def __len__(self) -> int:
        return len(self.datas)

    def __reduce__(self) -> tuple[Any, ...]:
        return (AppendColumns, (self.queues, self.stamps, self.counts, self.datas))


def joined_columns(runs: list[AppendColumns]) -> AppendColumns:
    """The appends of ``runs`` (columns, in order) as one :class:`AppendColumns`, two runs
    next to each other of an equal queue and stamp joined into one (as ``APPEND_RUNS`` writes
    them): the group a leader proposes from the receives of plain appends it queued."""
    if len(runs) == 1:
        return runs[0]
    queues: list[str] = []
    stamps: list[int] = []
    counts: list[int] = []
    queue: Any = None
    stamp: Any = None
    for run in runs:
        if len(run.queues) == 1:  # (a receive's run, or a part of one: the usual piece)
            one, at_ms = run.queues[0], run.stamps[0]
            if one == queue and at_ms == stamp:
                counts[-1] += len(run.datas)
            else:
                queue, stamp = one, at_ms
                queues.append(one)
                stamps.append(at_ms)
                counts.append(len(run.datas))
            continue
        for at, (one, at_ms) in enumerate(zip(run.queues, run.stamps, strict=True)):
            if one == queue and at_ms == stamp:
                counts[-1] += run.counts[at]
            else:
                queue, stamp = one, at_ms
                queues.append(one)
                stamps.append(at_ms)
                counts.append(run.counts[at])
    return AppendColumns(queues, stamps, counts, tuple(_from_each(map(_datas_of, runs))))


_new_group = object.__new__
_SET_COMMANDS = CommandGroup.__dict__["commands"].__set__
if [field.name for field in attrs.fields(CommandGroup)] != ["commands"]:
    raise ImportError("columns_group sets CommandGroup's field itself: update it")


def columns_group(columns: AppendColumns) -> CommandGroup:
    """The :class:`CommandGroup` of ``columns``'s appends, its commands held as the columns
    (as a replica's decoder makes it, ``_protocol/_runs_decode``): without the group's check
    of its commands' types, which would make every append to read its type and holds here by
    construction (one or more commands, each an ``AppendMessage``)."""
    group = _new_group(CommandGroup)
    _SET_COMMANDS(group, columns)
    return group


__all__ = ["AppendColumns", "columns_group", "joined_columns"]
