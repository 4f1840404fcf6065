"""An ``APPEND_RUNS`` payload decoded: the group of plain appends it stands for
(:func:`_runs_from_obj`, called by ``_entries.payload_from_obj``; the form is described there
and in docs/replication.md, "A group of appends in runs"). What every replica does with nearly
every REPLICATE under pipelined appends: its checks, its values' bytes, and one
:class:`~.._core._commands.AppendMessage` per append, made in passes of ``map`` in C over the
whole group (docs/performance-history.md, "A replica's CPU per append (ninth round)").
"""

from __future__ import annotations

from collections import deque
from itertools import chain, repeat
from typing import Any

import attrs
import orjson

from .._core import _commands as cmd
from .._core._append_columns import AppendColumns
from .._core._proposals import MAX_GROUP
from ._codec import dumps_values


def _runs_from_obj(obj: dict[str, Any]) -> cmd.CommandGroup:
    """An ``APPEND_RUNS`` payload (``{"type":"APPEND_RUNS","runs":[[queue_id, appended_ms,
    [value, ...]], ...]}``, docs/replication.md "A group of appends in runs") as the group of
    appends it stands for. Each value's stored bytes are the values' list written once and
    cut at its commas (``_codec.dumps_values``; one by one when a value holds a comma): no
    dict, no key and no ``orjson.dumps`` per append, where a COMMAND_GROUP has all three.
    The values were parsed with the frame (or the log row), so a value that is not JSON never
    gets here; every other field is checked as a COMMAND_GROUP's appends' are.

    The group is taken whole, not run by run: every run checked, then all its values written
    as one list (:func:`_written_values`) and its appends made in one set of passes
    (:func:`_appends_of_runs`; a group of 16 runs of 16, thread CPU: 477 to 489 -> 352 to 355
    ns an append, runs of one 2,212 to 2,436 -> 626 to 628; docs/performance-history.md
    "A replica's CPU per append (ninth round)"). A group that fails
    anywhere is decoded again run by run (:func:`_runs_by_run`, the code before), which
    raises the error it raised, in its order (a run's values written before the next run is
    checked)."""
    runs = obj["runs"]
    if type(runs) is not list or not runs:
        raise TypeError("runs must be a non-empty list")
    if len(runs) > MAX_GROUP:
        raise TypeError(f"a group holds at most {MAX_GROUP} appends, not {len(runs)} runs")
    try:
        values: list[Any] = []
        queues: list[str] = []
        stamps: list[int] = []
        counts: list[int] = []
        for run in runs:
            if type(run) is not list or len(run) != 3:
                raise TypeError
            queue, stamp, run_values = run
            if (
                type(queue) is not str
                or type(stamp) is not int
                or type(run_values) is not list
                or not run_values
                or len(values) + len(run_values) > MAX_GROUP
            ):
                raise TypeError
            values += run_values
            queues.append(queue)
            stamps.append(stamp)
            counts.append(len(run_values))
        datas = _written_values(values, runs)
    except Exception:
        return _runs_by_run(runs)
    return _appends_of_runs(queues, stamps, counts, datas)


def _written_values(values: list[Any], runs: list[Any]) -> tuple[bytes, ...]:
    """Each of a group's values (``values``: its runs' values, joined) written as
    ``dumps_value`` writes it: the list written once and cut at its commas when it holds no
    comma but the ones between its values (what ``dumps_values`` does for one list); when a
    value holds one, each run's values by ``dumps_values`` as before (only the runs with such
    values are then written one by one, not the whole group), and at once when the first value
    is one that usually holds commas (an object, a list: the group's values are most often
    alike)."""
    first = values[0]
    kind = type(first)
    if not (kind is dict or kind is list or (kind is str and "," in first)):
        try:
            pieces = orjson.dumps(values).split(b",")
        except orjson.JSONEncodeError:
            pieces = []
        if len(pieces) == len(values):
            pieces[0] = pieces[0][1:]  # (the list's "[")
            pieces[-1] = pieces[-1][:-1]  # (its "]"; the same piece when there is one value)
            return tuple(pieces)
    return tuple(_from_each(dumps_values(run[2]) for run in runs))


def _runs_by_run(runs: list[Any]) -> cmd.CommandGroup:
    """:func:`_runs_from_obj` run by run, each checked and written before the next: its
    errors, in their order."""
    commands: list[cmd.AppendMessage] = []
    add = commands.extend
    for run in runs:
        if type(run) is not list or len(run) != 3:
            raise TypeError("a run must be a [queue_id, appended_ms, values] list")
        queue, stamp, values = run
        if type(queue) is not str:
            raise TypeError(f"a run's queue_id must be a string, got {type(queue).__name__}")
        if type(stamp) is not int:
            raise TypeError(f"a run's appended_ms must be an integer, got {type(stamp).__name__}")
        if type(values) is not list or not values:
            raise TypeError("a run's values must be a non-empty list")
        if len(commands) + len(values) > MAX_GROUP:  # (before the run's values are written)
            raise TypeError(f"a group holds at most {MAX_GROUP} appends; its runs hold more")
        add(_appends_of_run(queue, stamp, dumps_values(values)))
    return cmd.CommandGroup(tuple(commands))


_new_command = object.__new__
_SET_QUEUE, _SET_DATA, _SET_PRODUCER, _SET_PRODUCER_SEQ, _SET_STAMP = (
    cmd.AppendMessage.__dict__[field].__set__
    for field in ("queue_id", "data", "producer_id", "producer_seq", "appended_ms")
)
if [field.name for field in attrs.fields(cmd.AppendMessage)] != [
    "queue_id",
    "data",
    "producer_id",
    "producer_seq",
    "appended_ms",
]:
    raise ImportError("_appends_of_run sets AppendMessage's fields one by one: update it")
_consume = deque[object](maxlen=0).extend


def _appends_of_run(queue: str, stamp: int, datas: tuple[bytes, ...]) -> list[cmd.AppendMessage]:
    """``[AppendMessage(queue, data, None, None, stamp) for data in datas]``, made in passes
    of ``map`` in C over the run (the objects, then each field through its slot's descriptor,
    as ``AppendMessage.__init__`` sets it) instead of a call of ``__init__`` per append: one
    per append of every REPLICATE in this form, on each replica (a run of 16: 0.34 -> 0.30 us
    an append, thread CPU; docs/performance-history.md, "A replica's per-append path (seventh
    round)")."""
    count = len(datas)
    made = list(map(_new_command, repeat(cmd.AppendMessage, count)))
    _consume(map(_SET_QUEUE, made, repeat(queue, count)))
    _consume(map(_SET_DATA, made, datas))
    _consume(map(_SET_PRODUCER, made, repeat(None, count)))
    _consume(map(_SET_PRODUCER_SEQ, made, repeat(None, count)))
    _consume(map(_SET_STAMP, made, repeat(stamp, count)))
    return made


_from_each = chain.from_iterable


_SET_COMMANDS = cmd.CommandGroup.__dict__["commands"].__set__
if [field.name for field in attrs.fields(cmd.CommandGroup)] != ["commands"]:
    raise ImportError("_appends_of_runs sets CommandGroup's field itself: update it")


def _appends_of_runs(
    queues: list[str], stamps: list[int], counts: list[int], datas: tuple[bytes, ...]
) -> cmd.CommandGroup:
    """The group of what :func:`_appends_of_run` gives for each run (``counts[i]`` appends
    of ``queues[i]`` stamped ``stamps[i]``, their bytes in ``datas``, at least one), its
    commands held as these columns (:class:`~.._core._append_columns.AppendColumns`: the
    ``AppendMessage``s are made only when read, which a replica's apply, views and walks do
    not). The group is made without :class:`~.._core._commands.CommandGroup`'s check of its
    commands' types (a set of them: 23 to 46 ns an append), which holds here by construction:
    one or more commands, each an ``AppendMessage``."""
    group = _new_command(cmd.CommandGroup)
    _SET_COMMANDS(group, AppendColumns(queues, stamps, counts, datas))
    return group
