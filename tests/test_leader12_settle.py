"""The leader's settle of an applied run of plain appends (``Proposing._settle_applied`` with an
``AppendedRun``): each receive's stretch of the entry set as numbers, its answers framed from
them, and the ``MessageAppended`` objects made only when something reads them, by the group,
equal to the run's (docs/performance-history.md, "The leader's CPU per pipelined append (twelfth
round)")."""

from __future__ import annotations

from itertools import repeat
from typing import Any

from trio_broker._core._appended_run import AppendedRun
from trio_broker._core._commands import MessageAppended
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol._codec import appended_frames
from trio_broker._runtime._pending import (
    Capacity,
    GroupRun,
    Pending,
    PendingGroup,
    RunAnswer,
    settling,
)
from trio_broker._runtime._proposing import Proposing


class _Driver:
    def __init__(self) -> None:
        self._capacity = Capacity(1000)
        self._capacity.value = 0

    def _settle(self, pending: Any, outcome: Any) -> None:
        raise AssertionError(f"settled as not applied: {outcome!r}")


def _tokens(group: PendingGroup, start: int, stop: int) -> list[Any]:
    return list(zip(repeat(group), range(start, stop)))


def test_an_applied_run_is_answered_from_its_numbers() -> None:
    """Three receives in two entries (the second cut across two), each answered with its own
    numbers in order; no result object made, and the capacity given back per request."""
    driver = _Driver()
    a, b, c = PendingGroup(4), PendingGroup(5), PendingGroup(3)
    first = _tokens(a, 0, 4) + _tokens(b, 0, 2)
    second = _tokens(b, 2, 5) + _tokens(c, 0, 3)
    runs = [AppendedRun(100, len(first)), AppendedRun(106, len(second))]
    done: list[str] = []
    for group, name in ((a, "a"), (b, "b"), (c, "c")):
        group.when_done(lambda name=name: done.append(name))  # type: ignore[misc]
    with settling():
        Proposing._settle_applied(driver, first, runs[0])  # type: ignore[arg-type]
        assert done == []  # (called on leaving the block)
    assert done == ["a"]
    with settling():
        Proposing._settle_applied(driver, second, runs[1])  # type: ignore[arg-type]
    assert done == ["a", "b", "c"]
    assert driver._capacity.value == 12
    answers = [GroupRun(a, 0, 4), GroupRun(b, 0, 5), GroupRun(c, 0, 3)]
    assert answers[0].appended(100) == (appended_frames([100, 101, 102, 103]), 4)
    assert answers[1].appended(3) == (appended_frames([104, 105, 106]), 3)  # (two entries')
    assert answers[1].appended(100) == (appended_frames([107, 108]), 2)
    assert answers[2].appended(100) == (appended_frames([109, 110, 111]), 3)
    assert [run._made for run in runs] == [None, None]


def test_results_read_are_the_runs_messages() -> None:
    """What reads a group's outcomes (an answer one by one, a member, the list) gets the
    run's ``MessageAppended``s, made by the group from the numbers, not from the run; a token
    set already (a refusal) keeps its outcome, and a lone ``Pending`` (another entry) is set
    with its result as before."""
    driver = _Driver()
    group = PendingGroup(4)
    refused = BrokerError(ErrorCode.BAD_REQUEST, "refused before")
    group.set(0, refused)
    run = AppendedRun(7, 3)
    Proposing._settle_applied(driver, _tokens(group, 1, 4), run)  # type: ignore[arg-type]
    expected = [MessageAppended(7), MessageAppended(8), MessageAppended(9)]
    assert RunAnswer(group, 2).frame() == appended_frames([8])
    assert group.member(3).result == expected[2]
    assert group.results == [refused, *expected]
    assert run._made is None
    assert GroupRun(group, 1, 4).appended(10) == (appended_frames([7, 8, 9]), 3)
    assert GroupRun(group, 0, 4).appended(10) is None  # (a refusal at its head)
    lone = Pending()
    Proposing._settle_applied(driver, [lone], AppendedRun(10, 1))  # type: ignore[arg-type]
    assert lone.result == MessageAppended(10)
    assert driver._capacity.value == 4


def test_a_stretch_known_already_is_set_one_by_one() -> None:
    """A group's outcome known before its entry is applied keeps it (an outcome is set
    once): the others of the stretch are set one by one, each its own number."""
    driver = _Driver()
    group = PendingGroup(3)
    group.set(1, "known")
    assert not group.set_appended(0, 3, 50)
    Proposing._settle_applied(driver, _tokens(group, 0, 3), AppendedRun(50, 3))  # type: ignore[arg-type]
    assert group.results == [MessageAppended(50), "known", MessageAppended(52)]
