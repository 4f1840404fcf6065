"""A Ready that applies nothing (a replica's while its apply waits, ``APPLY_LAG``: three
Readies of four at 100 connections x 1) costs the driver's bookkeeping nothing beyond its
counts: ``RaftDriver._applied`` enters no ``settling`` block and ``_saved`` does not walk the
(empty) committed entries nor tell the snapshots' byte count, while a Ready that applies
entries still does all of it."""

from __future__ import annotations

from typing import Any

from tests.lone_driver import lone_driver
from trio_broker._core import _raft_messages as rm
from trio_broker._core._commands import AppendMessage
from trio_broker._core._raft_ready import Ready
from trio_broker._runtime import _driver as driver_module
from trio_broker._runtime._driver import RaftDriver

_NOTHING = Ready(None, None, (), None, (), (), (), ())


class _CountedSettling:
    """``settling`` as the driver enters it, counted."""

    entered = 0

    def __enter__(self) -> None:
        type(self).entered += 1

    def __exit__(self, *exc_info: object) -> None:
        pass


def _driver(tmp_path: Any, applied: list[Any]) -> RaftDriver:
    return lone_driver(tmp_path, lambda payload, result: applied.append((payload, result)))


def test_a_ready_that_applies_nothing_enters_no_settling_and_tells_no_snapshot(
    tmp_path, monkeypatch
):
    applied: list[Any] = []
    driver = _driver(tmp_path, applied)
    monkeypatch.setattr(driver_module, "settling", _CountedSettling)
    _CountedSettling.entered = 0
    told: list[Any] = []
    monkeypatch.setattr(driver.snapshots, "note_applied", told.append)
    for _ in range(20):
        driver._saved(_NOTHING, (), durable=True, took=0.001)
        driver._applied((), ())
    assert _CountedSettling.entered == 0
    assert told == []
    assert applied == []
    assert driver.transactions == 20
    assert driver.entries_applied == 0
    assert driver.commands_applied == 0

    # A Ready that applies an entry: all of it, as before.
    entry = rm.Entry(1, 1, AppendMessage("q", b'"v"'))
    entry.remember_encoded(b"{}", 7)
    driver._saved(_NOTHING, (entry,), durable=False, took=0.001)
    driver._applied((entry,), ("result",))
    assert _CountedSettling.entered == 1
    assert told == [(entry,)]
    assert entry.encoded is None  # (stored and sent: the payload's bytes forgotten)
    assert applied == [(entry.payload, "result")]
    assert driver.entries_applied == 1
    assert driver.commands_applied == 1
