"""A lone proposal's checks on the driver (``Proposing.propose``, docs/performance-history.md, "The
leader's request path (seventh round)"): its unit taken without a coroutine to take it, the
disk asked only when it is not OK, and every refusal as before, its unit given back."""

from __future__ import annotations

from typing import Any

import pytest

from trio_broker._core._commands import AppendMessage
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._runtime import _proposing
from trio_broker._runtime._disk_space import DiskState
from trio_broker._runtime._pending import Capacity, Pending
from trio_broker._runtime._proposing import Proposing

COMMAND = AppendMessage("Q-AAAAABBBBB", b'"x"', None, None, 1_700_000_000_000)
NOT_LEADER = BrokerError(ErrorCode.NOT_LEADER, "not the leader")
TRANSFERRING = BrokerError(ErrorCode.NOT_LEADER, "transferring")
LOW = BrokerError(ErrorCode.UNAVAILABLE, "out of disk space")


class _Node:
    def __init__(self, leader: bool, transfer_target: Any) -> None:
        self.is_leader = leader
        self.transfer_target = transfer_target


class _Disk:
    def __init__(self, state: DiskState) -> None:
        self.state = state
        self.asked = 0

    def refusal(self, command: Any) -> BrokerError | None:
        self.asked += 1
        return None if self.state is DiskState.OK else LOW


class _Driver:
    def __init__(self, leader: bool, transfer_target: Any, state: DiskState) -> None:
        self._capacity = Capacity(4)
        self.node = _Node(leader, transfer_target)
        self.disk = _Disk(state)
        self.added: list[Any] = []
        self._ledger = self
        self._lone = False
        self.woken = 0

    _propose_taken = Proposing._propose_taken

    def add(self, command: Any, pending: Any) -> None:
        self.added.append((command, pending))

    def wake(self) -> None:
        self.woken += 1

    def not_leader_error(self) -> BrokerError:
        return NOT_LEADER

    def transferring_error(self, target: Any) -> BrokerError:
        assert target == "b2"
        return TRANSFERRING


def _propose(driver: _Driver) -> Any:
    coroutine = Proposing.propose(driver, COMMAND)  # type: ignore[arg-type]
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("propose waited with a unit free")


@pytest.fixture
def no_acquire(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(semaphore: Any) -> None:
        raise AssertionError("a coroutine took the unit")

    monkeypatch.setattr(_proposing, "acquire", refused)


@pytest.mark.usefixtures("no_acquire")
def test_a_lone_proposal_on_a_leader_with_room_takes_a_unit_and_asks_no_disk():
    driver = _Driver(True, None, DiskState.OK)
    pending = _propose(driver)
    assert type(pending) is Pending and driver.added == [(COMMAND, pending)]
    assert driver._capacity.value == 3 and driver.woken == 1
    assert driver.disk.asked == 0  # (OK refuses nothing: not asked)


@pytest.mark.usefixtures("no_acquire")
@pytest.mark.parametrize(
    ("leader", "target", "state", "refusal", "asked"),
    [
        (False, None, DiskState.OK, NOT_LEADER, 0),
        (False, "b2", DiskState.FULL, NOT_LEADER, 0),
        (True, "b2", DiskState.OK, TRANSFERRING, 0),
        (True, "b2", DiskState.LOW, TRANSFERRING, 0),
        (True, None, DiskState.LOW, LOW, 1),
        (True, None, DiskState.FULL, LOW, 1),
    ],
)
def test_a_lone_proposal_refused_gives_its_unit_back(leader, target, state, refusal, asked):
    driver = _Driver(leader, target, state)
    assert _propose(driver) is refusal
    assert driver._capacity.value == 4 and driver.added == []
    assert driver.disk.asked == asked
