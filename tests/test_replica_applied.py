"""A COMMAND_GROUP's applied commands told through ``applied_group`` (``_runtime/_applied.py``)
have exactly the effects of telling each command, as the driver did before, on the broker's
whole callback: the read path's exhausted hints, then the views by type, then the general
callback. Appends to one queue in a row are told once."""

from __future__ import annotations

import random
import types
import weakref

import pytest
import trio

from trio_broker._core import _commands as cmd
from trio_broker._core import _work_commands as work
from trio_broker._runtime._applied import applied_group, applied_views
from trio_broker._runtime._broker import Broker
from trio_broker._runtime._reads import Exhausted
from trio_broker._runtime._work import WorkRoom

QUEUES = ("Q-1", "Q-2")
CLIENTS = ("C-1", "C-2")


def _broker_callback() -> tuple[types.SimpleNamespace, Exhausted, object]:
    """The driver's ``on_applied`` as a broker builds it, over fresh views with a waiter (a
    long-polling reader, a group reader) on every queue and every client's reads exhausted."""
    room = WorkRoom(None, None, None, None, lambda: True, lambda: 0)  # type: ignore[arg-type]
    changed = {q: trio.Event() for q in QUEUES}
    events = {q: trio.Event() for q in QUEUES}
    room._changed = weakref.WeakValueDictionary(changed)  # (the broker's kind: held by events)
    appended = weakref.WeakValueDictionary(events)
    views = types.SimpleNamespace(
        events=(events, changed),
        addresses={},
        _queue_ids=set(),
        retention=types.SimpleNamespace(retained=set(), note_policy=lambda q, p: None),
        _appended=appended,
        work=room,
    )
    exhausted = Exhausted()
    for client in CLIENTS:
        for queue in QUEUES:
            exhausted.note(cmd.ReadNext(client, queue), cmd.MessageRead(None, None))

    def general(payload: object, result: object) -> None:
        Broker._on_applied(views, payload, result)  # type: ignore[arg-type]

    by_type = applied_views(general, appended, room.wake)

    def noted(command: object, result: object) -> None:  # ReadPath.watching's shape
        exhausted.note(command, result)
        by_type(command, result)

    return views, exhausted, noted


def _state(views: types.SimpleNamespace, exhausted: Exhausted) -> object:
    return (
        {q: e.is_set() for q, e in views.events[0].items()},
        {q: e.is_set() for q, e in views.events[1].items()},
        (set(views._appended), set(views.work._changed)),
        {(c, q) for c in CLIENTS for q in QUEUES if (c, q) in exhausted},
        len(exhausted._clients),
        {q: set(g) for q, g in exhausted.groups.by_queue.items() if g},
    )


def _random_group(rng: random.Random) -> tuple[list[object], list[object]]:
    commands: list[object] = []
    results: list[object] = []
    for _ in range(rng.randint(1, 12)):
        queue, client = rng.choice(QUEUES), rng.choice(CLIENTS)
        kind = rng.randrange(5)
        if kind == 0:
            commands.append(cmd.AppendMessage(queue, b"1"))
            results.append(cmd.MessageAppended(rng.randint(1, 9)))
        elif kind == 1:
            commands.append(work.Publish(queue, (work.Record(b"1", ()),)))
            results.append(work.Published(rng.randint(1, 9), 1))
        elif kind == 2:  # a read that found nothing: the pair becomes exhausted again
            commands.append(cmd.ReadNext(client, queue))
            results.append(cmd.MessageRead(None, None))
        elif kind == 3:
            commands.append(cmd.ReadNext(client, queue))
            results.append(cmd.MessageRead(3, b"1"))
        else:
            commands.append(cmd.Ack(client, queue, 2))
            results.append(None)
    return commands, results


@pytest.mark.parametrize("seed", range(200))
def test_a_group_told_at_once_has_each_commands_effects(seed):
    commands, results = _random_group(random.Random(seed))
    each_views, each_exhausted, each = _broker_callback()
    for command, result in zip(commands, results, strict=True):
        each(command, result)  # type: ignore[operator]
    group_views, group_exhausted, noted = _broker_callback()
    applied_group(noted)(commands, results)  # type: ignore[arg-type]
    assert _state(group_views, group_exhausted) == _state(each_views, each_exhausted)


def test_appends_to_one_queue_in_a_row_are_told_once():
    told: list[tuple[object, object]] = []
    a1, a2 = cmd.AppendMessage("Q-1", b"1"), cmd.AppendMessage("Q-2", b"2")
    read = cmd.ReadNext("C-1", "Q-1")
    empty = cmd.MessageRead(None, None)
    ok = cmd.MessageAppended(1)
    deleted = work.QueueDeleted("Q-1")  # a result the views read: always told
    commands = [a1, a1, a1, a2, a2, a1, read, a1, a1, a1, a1]
    results = [ok, ok, ok, ok, ok, ok, empty, ok, deleted, ok, ok]
    applied_group(lambda c, r: told.append((c, r)))(commands, results)
    assert told == [(a1, ok), (a2, ok), (a1, ok), (read, empty), (a1, ok), (a1, deleted), (a1, ok)]


def test_a_group_with_results_of_another_length_is_refused():
    told: list[object] = []
    with pytest.raises(ValueError, match="2 commands applied with 1 results"):
        applied_group(told.append)(  # type: ignore[arg-type]
            [cmd.AppendMessage("Q-1", b"1")] * 2, [cmd.MessageAppended(1)]
        )
    assert told == []
