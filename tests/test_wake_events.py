"""The long polls' wake-up events (``Broker._appended``, ``WorkRoom._changed``: weak
dictionaries, so that an entry goes with the last poll holding it) as the three places an
applied append reaches them use them: a waiting poll's event is set and popped; a queue nobody
waits on (the most frequent case, on every broker) is tested on the dictionary's own dict and
not popped (a weak dictionary's ``pop`` is a Python call, several times dearer than a dict's);
an entry whose event is gone but still in that dict (its removal deferred while the dictionary
is iterated) is handled as ``pop`` handles it.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from typing import Any

import trio

from trio_broker._core import _commands as cmd
from trio_broker._runtime._applied import applied_views
from trio_broker._runtime._broker import Broker
from trio_broker._runtime._work import WorkRoom


class _Counted(weakref.WeakValueDictionary):  # type: ignore[type-arg]
    """A weak dictionary that counts its pops."""

    pops = 0

    def pop(self, key: Any, *default: Any) -> Any:
        self.pops += 1
        return super().pop(key, *default)


def _general_views(appended: _Counted) -> types.SimpleNamespace:
    room = WorkRoom(None, None, None, None, lambda: True, lambda: 0)  # type: ignore[arg-type]
    return types.SimpleNamespace(
        addresses={},
        _queue_ids=set(),
        retention=types.SimpleNamespace(retained=set(), note_policy=lambda q, p: None),
        _appended=appended,
        work=room,
    )


def _wakers() -> dict[str, tuple[_Counted, Callable[[str], None]]]:
    """Each place that wakes the polls of a queue an append was applied to: its events, and
    how an append applied to a queue reaches it."""
    by_type = _Counted()
    on_applied = applied_views(lambda p, r: None, by_type, lambda queue_id: None)
    general = _Counted()
    views = _general_views(general)
    room = WorkRoom(None, None, None, None, lambda: True, lambda: 0)  # type: ignore[arg-type]
    room._changed = _Counted()

    def applied(call: Callable[[Any, Any], None]) -> Callable[[str], None]:
        return lambda queue_id: call(cmd.AppendMessage(queue_id, b"1"), cmd.MessageAppended(1))

    return {
        "applied_views": (by_type, applied(on_applied)),
        "Broker._on_applied": (
            general,
            applied(lambda p, r: Broker._on_applied(views, p, r)),  # type: ignore[arg-type]
        ),
        "WorkRoom.wake": (room._changed, room.wake),
    }


def test_a_waiting_poll_is_woken_and_a_queue_nobody_waits_on_costs_no_pop():
    for name, (events, wake) in _wakers().items():
        held = events["Q-1"] = trio.Event()  # (a poll holds it)
        wake("Q-2")
        assert events.pops == 0, name  # (nobody waits on Q-2)
        assert not held.is_set() and "Q-1" in events, name
        wake("Q-1")
        assert held.is_set() and "Q-1" not in events and events.pops == 1, name
        wake("Q-1")  # (woken once: its entry is gone)
        assert events.pops == 1, name


def test_an_entry_whose_event_is_gone_is_popped_without_error():
    """As an entry whose removal was deferred (its event went while the dictionary was
    iterated) is left: a dead reference in the underlying dict."""
    for name, (events, wake) in _wakers().items():
        events.data["Q-1"] = weakref.KeyedRef(trio.Event(), lambda ref: None, "Q-1")
        assert "Q-1" in events.data and "Q-1" not in events, name
        wake("Q-1")
        assert "Q-1" not in events.data and events.pops == 1, name
