"""What ``Proposals.propose_queued`` settles before ``propose`` raises something other than
``NotLeader`` (a bug, a cancellation, the simulator's interruption) is not dropped: the
refusals of earlier groups and the entries a new leader's replaced are returned first by the
next call (the simulator proposes again), or taken by ``take_queued``/``take_all`` (the
driver's recovery answers them). Before, those tokens left the ledger with the exception and
nobody answered them."""

from __future__ import annotations

from typing import Any

import pytest

from trio_broker._core._append_columns import AppendColumns
from trio_broker._core._commands import AppendMessage
from trio_broker._core._proposals import NotApplied, Proposals
from trio_broker._core._raft import NotLeader


def append(n: int) -> AppendMessage:
    return AppendMessage("Q-A", b"%d" % n, None, None, 5)


def columns(values: range) -> AppendColumns:
    datas = tuple(b"%d" % n for n in values)
    return AppendColumns(["Q-A"], [5], [len(datas)], datas)


class Core:
    """A core that answers its calls from a script: ``"refuse"`` (NotLeader), ``"fail"`` (a
    bug), else the (term, index) given."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.payloads: list[Any] = []

    def propose(self, payload: Any) -> tuple[int, int]:
        step = self.script.pop(0)
        if step == "refuse":
            raise NotLeader("B-2")
        if step == "fail":
            raise RuntimeError("a bug")
        self.payloads.append(payload)
        return step


def one_per_group(as_columns: bool) -> Proposals[str]:
    """Three requests, one group each (two of them runs of columns when ``as_columns``)."""
    ledger: Proposals[str] = Proposals(max_group=1)
    if as_columns:
        ledger.add_columns(columns(range(1)), ["a"])
        ledger.add(append(2), "b")
        ledger.add_columns(columns(range(3, 4)), ["c"])
    else:
        ledger.add(append(1), "a")
        ledger.add(append(2), "b")
        ledger.add(append(3), "c")
    return ledger


@pytest.mark.parametrize("as_columns", [False, True])
def test_a_refusal_before_a_failure_is_returned_by_the_next_call(as_columns: bool) -> None:
    ledger = one_per_group(as_columns)
    with pytest.raises(RuntimeError):
        ledger.propose_queued(Core("refuse", "fail").propose)
    assert ledger.queued == len(ledger) == 3  # (a's answer, b and c)
    core = Core((4, 10), (4, 11))
    settled = ledger.propose_queued(core.propose)
    assert [(token, type(outcome)) for token, outcome in settled] == [("a", NotLeader)]
    assert len(core.payloads) == 2  # (b and c, proposed now)
    assert ledger.waiting(10) == (4, ["b"]) and ledger.waiting(11) == (4, ["c"])
    assert ledger.queued == 0 and len(ledger) == 2


@pytest.mark.parametrize("as_columns", [False, True])
def test_a_replaced_entry_before_a_failure_is_returned_by_the_next_call(as_columns: bool) -> None:
    ledger = one_per_group(as_columns)
    ledger.wait_for(7, 3, ["old"])  # (an earlier term's entry at 7, not committed)
    with pytest.raises(RuntimeError):
        ledger.propose_queued(Core((4, 7), "fail").propose)  # (a replaces it at 7)
    assert ledger.waiting(7) == (4, ["a"])
    settled = ledger.propose_queued(Core((4, 8), (4, 9)).propose)
    assert [(token, type(outcome)) for token, outcome in settled] == [("old", NotApplied)]
    assert len(ledger) == 3  # (a, b, c waiting)


@pytest.mark.parametrize("as_columns", [False, True])
def test_answers_kept_after_a_failure_are_taken_with_the_queued_requests(
    as_columns: bool,
) -> None:
    """The driver's recovery after the failure: every token is answered once."""
    for take in ("take_queued", "take_all"):
        ledger = one_per_group(as_columns)
        with pytest.raises(RuntimeError):
            ledger.propose_queued(Core("refuse", "fail").propose)
        assert getattr(ledger, take)() == ["a", "b", "c"]
        assert ledger.queued == len(ledger) == 0
        assert ledger.propose_queued(Core().propose) == []


def test_answers_kept_survive_a_second_failure_in_order() -> None:
    ledger = one_per_group(False)
    with pytest.raises(RuntimeError):
        ledger.propose_queued(Core("refuse", "fail").propose)
    with pytest.raises(RuntimeError):
        ledger.propose_queued(Core("refuse", "fail").propose)  # (b refused, c fails again)
    settled = ledger.propose_queued(Core((4, 12)).propose)
    assert [token for token, _ in settled] == ["a", "b"]
    assert ledger.waiting(12) == (4, ["c"])
