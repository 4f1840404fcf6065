"""What an applied command changes in the broker's in-memory views, decided once per type.

The driver tells the broker of every command it applies (every append of a grouped entry, on
every broker). Almost all are appends, which only wake the readers waiting on their queue, and
position moves, which change no view: :func:`applied_views` answers those two kinds by the
command's type and hands every other command (and any command whose result is one the views
read) to the broker's general callback, which decides it as before. ``tests/test_applied.py``
checks both give the same effects for every command and result of the core.

A COMMAND_GROUP holds up to thousands of commands, most often appends to one queue, and the
driver tells them through :func:`applied_group`: an append that follows an append to the same
queue (nothing else between) is not told again, since the first already woke that queue's
readers and no reader can have started waiting since (the callbacks run without yielding).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .._core import _commands as cmd
from .._core import _work_commands as work
from .._core._append_columns import AppendColumns
from .._core._appended_run import AppendedRun
from .._core._commands import MessageAppended


class _Waiters(Protocol):
    """The broker's wake-up events by queue id (a ``weakref.WeakValueDictionary``)."""

    data: dict[str, Any]
    """Its underlying dict (of weak references): a test of it costs what a dict's does."""

    def pop(self, queue_id: str, default: None, /) -> Any: ...


_UNTOLD: Any = object()

OnApplied = Callable[[Any, Any], None]
OnAppliedGroup = Callable[[Sequence[Any], Sequence[Any]], None]

APPENDS: frozenset[type] = frozenset({cmd.AppendMessage, cmd.AppendBatch, work.Publish})
"""Commands whose only effect on the views is to wake the readers waiting on their queue."""
QUIET: frozenset[type] = frozenset(
    {cmd.ReadNext, cmd.ReadBatch, cmd.Ack, cmd.Seek, work.ReadRecords}
)
"""Commands that change no view (they move a client's position)."""
VIEWED_RESULTS: frozenset[type] = frozenset(
    {
        cmd.RetentionSet,
        work.NamedQueue,
        work.QueueDeleted,
        work.LeasesChanged,
        work.LeasesExpired,
    }
)
"""Results that the general callback reads whatever the command (``Broker._on_applied``,
``WorkRoom.note_applied``): with one of these, the command goes there."""


def applied_views(general: OnApplied, appended: _Waiters, wake: Callable[[str], None]) -> OnApplied:
    """The driver's ``on_applied``: appends wake the long-polling readers of their queue (the
    events in ``appended``, then ``wake``, the work room's group readers), position moves do
    nothing, each by its type; the rest goes to ``general``."""

    # A queue nobody waits on (the most frequent case) costs a dict's test, not a pop of the
    # weak dictionary (a Python call: several times dearer); a dead entry left in its dict is
    # popped as before (and gives None).
    waiting = appended.data

    def on_applied(payload: Any, result: Any) -> None:
        kind = type(payload)
        if type(result) not in VIEWED_RESULTS:
            if kind in APPENDS:
                queue_id = payload.queue_id
                if queue_id in waiting:
                    event = appended.pop(queue_id, None)
                    if event is not None:
                        event.set()
                wake(queue_id)
                return
            if kind in QUIET:
                return
        general(payload, result)

    return on_applied


def applied_group(on_applied: OnApplied) -> OnAppliedGroup:
    """The driver's call for a COMMAND_GROUP's commands and their results, in order:
    ``on_applied`` for each, except an append (of :data:`APPENDS`, with a result that no view
    reads) right after an append to the same queue, whose effects the first one had.

    That holds for the broker's ``on_applied`` (:func:`applied_views` inside the read path's
    :meth:`~._reads.ReadPath.watching`): an append pops the events of its queue's waiting
    readers and sets them, and forgets that its readers found the queue empty; once done, a
    second append finds nothing to pop or forget until another command (a read) adds it back,
    or a reader starts waiting, which needs this call to return first. In a group of 64
    appends to one queue that is one call instead of 64 (on every broker, for every group).

    A group applied as one run of appends (its results an ``AppendedRun``: every command an
    append to one queue, none of whose results a view reads) is told by its first alone, as
    the walk would, without walking it or making its results (a replica never reads them).

    A run of single READs of one reader (one :class:`~.._core._commands.ReadNext` object,
    repeated: what the leader proposes for a reader's READs of one receive and what a replica
    decodes, ``_protocol/_entries.py``) is told twice, its first READ and its last, however
    long it is. Neither the views nor the wake-ups see a READ (:data:`QUIET`: its result is a
    message or a refusal, never one of :data:`VIEWED_RESULTS`); what it changes is the read
    path's hint (:meth:`~._reads.Exhausted.note`), which marks the (reader, queue) pair
    exhausted when the READ read nothing and unmarks it otherwise. A READ that reads nothing
    moves nothing, so with nothing between them the READs after it read nothing too (the core's
    ``read_next_run`` answers a run so): a run is some READs that read a message, then some
    that read nothing, so the hint's changes are some unmarks of one pair, then some marks of
    it. A mark of a marked pair and an unmark of an unmarked one change nothing (not even
    the bound :data:`~._reads.MAX_EXHAUSTED`'s forgetting, tested after), so each repeat
    after the first is a no-op: noting the first READ and the last leaves the hints as noting
    each, in every case (all unmarks, all marks, or unmarks then marks; a run of one READ is
    told once; ``tests/test_readrest_applied.py`` compares both over such runs)."""

    def on_group(commands: Sequence[Any], results: Sequence[Any]) -> None:
        if len(commands) != len(results):
            raise ValueError(f"{len(commands)} commands applied with {len(results)} results")
        if type(results) is AppendedRun:
            # A group applied as one run: appends to one queue, each a MessageAppended (not
            # of VIEWED_RESULTS), so the loop below would tell its first alone; told so
            # without making the run's results, nor a decoded group's appends (a replica
            # never reads the others).
            head = commands.head() if type(commands) is AppendColumns else commands[0]
            if type(head) is cmd.AppendMessage:
                on_applied(head, MessageAppended(results.first))
                return
        told = None  # the queue of the last append told, while only appends follow it
        run = None  # the ReadNext told last, while the same object follows it
        last = _UNTOLD  # the result of the run's latest READ not told yet
        for command, result in zip(commands, results, strict=True):
            if type(command) in APPENDS and type(result) not in VIEWED_RESULTS:
                # (Tested first, as before: appends are the hot path.)
                queue_id = command.queue_id
                if queue_id == told:  # (never while a run's READ waits: told is None)
                    continue
                if last is not _UNTOLD:
                    on_applied(run, last)
                    last = _UNTOLD
                run = None
                on_applied(command, result)
                told = queue_id
            elif command is run and type(result) not in VIEWED_RESULTS:
                last = result
            else:
                if last is not _UNTOLD:
                    on_applied(run, last)
                    last = _UNTOLD
                on_applied(command, result)
                told = None
                run = command if type(command) is cmd.ReadNext else None
        if last is not _UNTOLD:
            on_applied(run, last)

    return on_group


APPLY_LAG = 4
"""A replica applies committed appends once this many entries wait, or once the leader goes
idle (``RaftNode.apply_lag``): in the sequential workload its fsynced transaction then writes
the new entry alone, and four appends' apply share one transaction
(docs/performance-history.md, "One client, one append at a time (ninth round)"); at 100
connections x 1 in flight, each entry a group of a cycle's lone appends, the same for groups
(:data:`LAG_GROUP_APPENDS`)."""
LAG_GROUP_APPENDS = 100
"""A COMMAND_GROUP of lone appends waits unapplied on a replica only with at most this many
(a cycle of 100 connections x 1 in flight brings 5 to 95, median about 44) ..."""
LAG_GROUP_BYTES = 32 * 1024
"""... and at most this many bytes of values: fewer than ``APPLY_LAG`` entries wait, so at
most 300 appends and 96 KiB of values wait unapplied on a replica (docs/performance-history.md, "A
replica's apply lag for small groups (ninth round)"). A pipelined client's groups (64 to 512
appends, median 256) are mostly larger, and applied at once."""

_data = operator.attrgetter("data")
_judged: dict[int, tuple[Any, bool]] = {}
""":func:`applies_later`'s answers for the last groups asked, by identity (with the group, so
its identity is not reused): a replica asks of the same waiting entries at each Ready."""


def applies_later(payload: Any) -> bool:
    """Whether a committed entry's apply may wait on a replica (``RaftNode.apply_later``):
    a lone append, or a group of lone appends within :data:`LAG_GROUP_APPENDS` and
    :data:`LAG_GROUP_BYTES`, whose apply no request on a replica reads (its clients' requests
    go to the leader). A command whose effect a broker reads from its own store (the
    cluster's map, a queue's name, membership) is applied at once, as before; so are batches,
    groups holding anything else, and larger groups (a pipelined client's), where the apply's
    weight decides its place (``_save_place.APPLY_AHEAD``)."""
    kind = type(payload)
    if kind is cmd.AppendMessage:
        return True
    if kind is not cmd.CommandGroup:
        return False
    known = _judged.get(id(payload))
    if known is not None and known[0] is payload:
        return known[1]
    commands = payload.commands
    if type(commands) is AppendColumns:  # (a replica's decoded group: appends, as columns)
        later = len(commands) <= LAG_GROUP_APPENDS and commands.data_bytes() <= LAG_GROUP_BYTES
    else:
        later = (
            len(commands) <= LAG_GROUP_APPENDS
            and set(map(type, commands)) == _LONE
            and sum(map(len, map(_data, commands))) <= LAG_GROUP_BYTES
        )
    if len(_judged) >= 8:
        _judged.clear()
    _judged[id(payload)] = (payload, later)
    return later


_LONE = {cmd.AppendMessage}
