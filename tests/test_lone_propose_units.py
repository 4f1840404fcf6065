"""``Proposing.propose``'s capacity units (docs/performance-history.md, "The leader's request path
(seventh round)"): the lone proposal takes its unit without a coroutine when one is free, reads
the leader once and asks the disk only when it is not OK. Every refusal is the one the checks
gave before (a frozen copy of them, with the real ``DiskSpace``), and every unit taken comes
back: refused at once, refused after waiting for a unit, or cancelled while waiting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_broker._core._commands import Ack, AppendMessage, CommandGroup, CreateQueue
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._runtime._disk_space import DiskSpace, DiskState
from trio_broker._runtime._pending import Capacity, Pending, acquire
from trio_broker._runtime._proposing import Proposing
from trio_broker._runtime._reads import READ_CANDIDATES

APPEND = AppendMessage("Q-AAAAABBBBB", b'"x"', None, None, 1_700_000_000_000)
COMMANDS = [APPEND, Ack("C-AAAAA", "Q-AAAAABBBBB", 1), CreateQueue("Q-AAAAABBBBB")]


async def _propose_before(self: Any, payload: Any) -> Pending | BrokerError:
    """``Proposing.propose`` before the seventh round (7e2755c)."""
    if isinstance(payload, CommandGroup):
        return BrokerError(ErrorCode.BAD_REQUEST, "groups are made by the driver; propose commands")
    await acquire(self._capacity)
    if self.node.is_leader and self.node.transfer_target is not None:
        self._capacity.release()
        return self.transferring_error(self.node.transfer_target)
    if not self.node.is_leader:
        self._capacity.release()
        return self.not_leader_error()
    refusal = self.disk.refusal(payload)
    if refusal is not None:
        self._capacity.release()
        return refusal
    pending = Pending()
    if type(payload) in READ_CANDIDATES and self.reads.qualifies(payload):
        self.reads.submit(payload, pending)
    else:
        self._ledger.add(payload, pending)
        if self._lone and self._may_propose_here(1):
            self._proposed()
            return pending
    self.wake()
    return pending


class _Node:
    def __init__(self, leader: bool, transfer_target: str | None) -> None:
        self.is_leader = leader
        self.transfer_target = transfer_target


class _Driver:
    """What ``propose`` reads of a ``RaftDriver``, with the real capacity and disk."""

    def __init__(self, leader: bool, target: str | None, state: DiskState, lone: bool) -> None:
        self._capacity = Capacity(2)
        self.node = _Node(leader, target)
        self.disk = DiskSpace("B-AAAAA", Path("/nonexistent"), 1.0, measure=lambda _: (0, 1))
        self.disk.state = state
        self.disk.free_bytes = 12
        self._ledger = self
        self._lone = lone
        self.events: list[Any] = []

    _propose_taken = Proposing._propose_taken

    def add(self, command: Any, pending: Any) -> None:
        self.events.append(("added", command))

    def wake(self) -> None:
        self.events.append("woken")

    def _may_propose_here(self, count: int) -> bool:
        return True

    def _proposed(self) -> None:
        self.events.append("proposed")

    def not_leader_error(self) -> BrokerError:
        return BrokerError(ErrorCode.NOT_LEADER, "not the leader", leader_id="B-BBBBB")

    def transferring_error(self, target: str) -> BrokerError:
        return BrokerError(ErrorCode.NOT_LEADER, f"handing over to {target}", leader_id=target)


def _run(propose: Any, driver: _Driver, command: Any) -> Any:
    coroutine = propose(driver, command)
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("propose waited with a unit free")


def _seen(outcome: Any, driver: _Driver) -> tuple[Any, ...]:
    if isinstance(outcome, BrokerError):
        answer: Any = (outcome.code, outcome.message, outcome.details)
    else:
        answer = (type(outcome), outcome.done)
    return answer, driver._capacity.value, driver.events


@pytest.mark.parametrize("lone", [False, True])
@pytest.mark.parametrize("state", list(DiskState))
@pytest.mark.parametrize("target", [None, "B-CCCCC"])
@pytest.mark.parametrize("leader", [True, False])
def test_a_lone_proposal_is_answered_and_charged_as_before(leader, target, state, lone):
    for command in COMMANDS:
        before = _Driver(leader, target, state, lone)
        now = _Driver(leader, target, state, lone)
        seen = _seen(_run(Proposing.propose, now, command), now)
        assert seen == _seen(_run(_propose_before, before, command), before)
        refused = isinstance(seen[0][0], str)
        assert now._capacity.value == (2 if refused else 1)  # (a refusal gives its unit back)


async def _proposing(driver: _Driver, command: Any, into: list[Any]) -> None:
    into.append(await Proposing.propose(driver, command))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda driver: setattr(driver.node, "is_leader", False), "not the leader"),
        (lambda driver: setattr(driver.node, "transfer_target", "B-CCCCC"), "handing over"),
        (lambda driver: setattr(driver.disk, "state", DiskState.LOW), "out of disk space"),
        (lambda driver: setattr(driver.disk, "state", DiskState.FULL), "out of disk space"),
    ],
)
async def test_proposals_refused_after_waiting_for_units_give_them_back(change, code):
    """The capacity exhausted, proposals wait; refused once they have their unit (the broker
    stopped leading meanwhile, or hands over, or its disk filled), each gives it back."""
    driver = _Driver(True, None, DiskState.OK, lone=False)
    capacity = driver._capacity
    capacity.acquire_nowait(2)
    answers: list[Any] = []
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(_proposing, driver, APPEND, answers)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [] and capacity.value == 0
        change(driver)
        capacity.release()  # (one unit: each refused proposal hands it to the next)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()  # (any still waiting: a unit kept by a refusal)
    assert len(answers) == 3 and all(code in answer.message for answer in answers)
    assert capacity.value == 1 and driver.events == []
    capacity.release()
    assert capacity.value == capacity.total


async def test_a_proposal_cancelled_while_waiting_for_a_unit_takes_none():
    driver = _Driver(True, None, DiskState.OK, lone=False)
    capacity = driver._capacity
    capacity.acquire_nowait(2)
    answers: list[Any] = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(_proposing, driver, APPEND, answers)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert answers == [] and capacity.value == 0
    capacity.release(2)
    assert capacity.value == capacity.total
    # (and the next proposal takes a free unit at once, nobody left waiting)
    pending = _run(Proposing.propose, driver, APPEND)
    assert type(pending) is Pending and capacity.value == 1


@pytest.mark.parametrize("lone", [False, True])
@pytest.mark.parametrize("state", list(DiskState))
@pytest.mark.parametrize("target", [None, "B-CCCCC"])
@pytest.mark.parametrize("leader", [True, False])
def test_a_proposal_without_a_coroutine_is_answered_and_charged_as_before(
    leader, target, state, lone
):
    """``propose_now`` (a connection's lone APPEND, docs/performance-history.md, "The leader's CPU
    per request (ninth round)") with a unit free: the outcome, the units and the driver's
    calls of ``propose`` before, for every command, a group refused as before."""
    for command in [*COMMANDS, CommandGroup((APPEND,))]:
        before = _Driver(leader, target, state, lone)
        now = _Driver(leader, target, state, lone)
        seen = _seen(Proposing.propose_now(now, command), now)  # type: ignore[arg-type]
        assert seen == _seen(_run(_propose_before, before, command), before)


def test_a_proposal_without_a_coroutine_takes_nothing_when_no_unit_is_free():
    """No unit free (or a waiter before it): None, nothing taken, nothing proposed; the
    waiting ``propose`` then takes its turn."""
    driver = _Driver(True, None, DiskState.OK, lone=False)
    capacity = driver._capacity
    capacity.acquire_nowait(2)
    assert Proposing.propose_now(driver, APPEND) is None  # type: ignore[arg-type]
    assert capacity.value == 0 and driver.events == []
    capacity.release()
    capacity._waiters.append((1, None))  # type: ignore[arg-type]  (one waits for a unit)
    assert Proposing.propose_now(driver, APPEND) is None  # type: ignore[arg-type]
    assert capacity.value == 1 and driver.events == []
