"""What an applied command changes in the broker's in-memory views, decided once per type.

The driver tells the broker of every command it applies (every append of a grouped entry, on
every broker). Almost all are appends, which only wake the readers waiting on their queue, and
position moves, which change no view: :func:`applied_views` answers those two kinds by the
command's type and hands every other command (and any command whose result is one the views
read) to the broker's general callback, which decides it as before. ``tests/test_applied.py``
checks both give the same effects for every command and result of the core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .._core import _commands as cmd
from .._core import _work_commands as work


class _Waiters(Protocol):
    def pop(self, queue_id: str, default: None, /) -> Any: ...


OnApplied = Callable[[Any, Any], None]

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

    def on_applied(payload: Any, result: Any) -> None:
        kind = type(payload)
        if type(result) not in VIEWED_RESULTS:
            if kind in APPENDS:
                queue_id = payload.queue_id
                event = appended.pop(queue_id, None)
                if event is not None:
                    event.set()
                wake(queue_id)
                return
            if kind in QUIET:
                return
        general(payload, result)

    return on_applied
