"""The in-memory views' callback by command type (``_runtime/_applied.py``) has exactly the
effects of the broker's general callback (``Broker._on_applied``, then the work room's
``note_applied``), for every command it answers itself and every kind of result."""

from __future__ import annotations

import types
import weakref

import pytest
import trio

from trio_broker._core import _commands as cmd
from trio_broker._core import _work_commands as work
from trio_broker._runtime._applied import APPENDS, QUIET, VIEWED_RESULTS, applied_views
from trio_broker._runtime._broker import Broker
from trio_broker._runtime._work import WorkRoom

POLICY = cmd.RetentionPolicy(max_messages=5)

PAYLOADS = [
    cmd.AppendMessage("Q-1", b"1"),
    cmd.AppendBatch("Q-2", (b"1", b"2")),
    work.Publish("Q-1", (work.Record(b"1", (("h", "v"),)),)),
    cmd.ReadNext("C", "Q-1"),
    cmd.ReadBatch("C", "Q-2", 3),
    cmd.Ack("C", "Q-1", 2),
    cmd.Seek("C", "Q-1", 1),
    work.ReadRecords("C", "Q-2", 2),
    # decided by the general callback: the by-type answer must hand them over unchanged
    cmd.CreateQueue("Q-3", POLICY),
    cmd.SetBrokerAddress("B-2", "127.0.0.1", 4),
    work.GroupRead("Q-1", "g", "m", 1, 5),
    work.GroupNack("Q-2", "g", "m", (1,), 5, None, None),
]
RESULTS = [
    cmd.MessageAppended(3),
    cmd.BatchAppended(3, 2),
    work.Published(3, 1),
    cmd.CommandRejected("BAD_REQUEST", "no"),
    None,
    cmd.QueueCreated("Q-3"),
    # the results the general callback reads whatever the command
    cmd.RetentionSet("Q-2", POLICY),
    work.NamedQueue("Q-2", "orders", True),
    work.QueueDeleted("Q-1"),
    work.LeasesChanged((1,), ()),
    work.LeasesExpired(1, 0),
]


class _Retention:
    def __init__(self) -> None:
        self.retained = {"Q-1", "Q-2"}
        self.policies: list[tuple[str, cmd.RetentionPolicy]] = []

    def note_policy(self, queue_id: str, policy: cmd.RetentionPolicy) -> None:
        self.policies.append((queue_id, policy))


def _views() -> types.SimpleNamespace:
    """The state the general callback reads and changes, with a waiter on every queue."""
    room = WorkRoom(None, None, None, None, lambda: True, lambda: 0)  # type: ignore[arg-type]
    room._names = {"orders": "Q-1", "other": "Q-2"}
    changed = {q: trio.Event() for q in ("Q-1", "Q-2", "Q-3")}
    appended = {q: trio.Event() for q in ("Q-1", "Q-2", "Q-3")}
    room._changed = weakref.WeakValueDictionary(changed)  # (the broker's kind: held by events)
    return types.SimpleNamespace(
        events=(appended, changed),
        addresses={},
        _queue_ids=set(),
        retention=_Retention(),
        _appended=weakref.WeakValueDictionary(appended),
        work=room,
    )


def _effects(views: types.SimpleNamespace) -> dict[str, object]:
    room = views.work
    return {
        "addresses": views.addresses,
        "queue_ids": views._queue_ids,
        "retained": views.retention.retained,
        "policies": views.retention.policies,
        "appended": {q: e.is_set() for q, e in views.events[0].items()},
        "changed": {q: e.is_set() for q, e in views.events[1].items()},
        "waiting": (set(views._appended), set(room._changed)),
        "names": room._names,
        "names_generation": room._names_generation,
        "leases_changed": room._leases_changed.is_set(),
    }


def _outcome(call, views, payload, result):
    try:
        call(views, payload, result)
    except Exception as exc:
        return type(exc)
    return None


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: type(r).__name__)
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_by_type_has_the_general_callbacks_effects(payload, result):
    general = _views()
    expected = _outcome(Broker._on_applied, general, payload, result)

    by_type = _views()
    handed: list[tuple[object, object]] = []

    def fallback(p: object, r: object) -> None:
        handed.append((p, r))
        Broker._on_applied(by_type, p, r)  # type: ignore[arg-type]

    on_applied = applied_views(fallback, by_type._appended, by_type.work.wake)
    # (some pairs never happen: the general callback's failure is then the one to give)
    assert _outcome(lambda _views, p, r: on_applied(p, r), by_type, payload, result) == expected
    assert _effects(by_type) == _effects(general)
    answered_by_type = type(payload) in APPENDS | QUIET and type(result) not in VIEWED_RESULTS
    assert handed == ([] if answered_by_type else [(payload, result)])


def test_an_append_wakes_its_queues_readers_only():
    views = _views()
    applied_views(lambda p, r: None, views._appended, views.work.wake)(
        cmd.AppendMessage("Q-2", b"1"), cmd.MessageAppended(1)
    )
    assert _effects(views)["appended"] == {"Q-1": False, "Q-2": True, "Q-3": False}
    assert _effects(views)["changed"] == {"Q-1": False, "Q-2": True, "Q-3": False}
