"""A leader's receives proposed as columns (``Proposing.propose_columns``) against the same
receives proposed as their appends (``propose_many``), through the driver's own settling
(``_flush_proposals``, ``_wait_for``, ``_settle_applied``): groups the core refuses, a
receive cut into several entries, entries another leader's log replaced (a change of term
between the proposal and the commit), a disk low on space refusing some appends, the rest
applied; every receive's results the same at
every index, and each unit of the in-flight limit given back exactly once
(docs/performance-history.md, "The leader's receive held as columns (thirteenth round)")."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_broker._core._append_columns import AppendColumns
from trio_broker._core._appended_run import AppendedRun
from trio_broker._core._commands import CommandGroup, GroupApplied, MessageAppended
from trio_broker._core._proposals import Proposals
from trio_broker._core._raft import NotLeader
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._runtime._disk_space import DiskState
from trio_broker._runtime._pending import Capacity, PendingGroup
from trio_broker._runtime._proposing import Proposing

TOTAL = 10_000


class _Node:
    is_leader = True
    transfer_target = None

    def __init__(self, refused: set[int]) -> None:
        self.calls = 0
        self.refused = refused
        self.log: list[Any] = []

    def propose(self, payload: Any) -> tuple[int, int]:
        self.calls += 1
        if self.calls in self.refused:
            raise NotLeader(None)
        self.log.append(payload)
        return 3, len(self.log)


class _Disk:
    """OK, or low: then it refuses every value whose index in its receive is 1."""

    def __init__(self, low: bool) -> None:
        self.state = DiskState.LOW if low else DiskState.OK

    def refusal(self, command: Any) -> Any:
        return (
            BrokerError(ErrorCode.UNAVAILABLE, "no room") if command.data.endswith(b'-1"') else None
        )


class _Driver:
    """What ``Proposing``'s methods read of the driver."""

    def __init__(self, max_group: int, refused: set[int], low: bool) -> None:
        self._capacity = Capacity(TOTAL)
        self.node = _Node(refused)
        self.disk = _Disk(low)
        self._ledger: Proposals[Any] = Proposals(max_group=max_group)
        self._lone = False

    def wake(self) -> None:
        pass

    def not_leader_error(self) -> BrokerError:
        return BrokerError(ErrorCode.NOT_LEADER, "not the leader")

    def transferring_error(self, leader: Any) -> BrokerError:
        raise AssertionError("no transfer here")

    _propose_refusing = Proposing._propose_refusing
    _flush_proposals = Proposing._flush_proposals
    _settle = Proposing._settle
    _settle_applied = Proposing._settle_applied
    _wait_for = Proposing._wait_for


def _await(coroutine: Any) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the proposal waited")


def _result(payload: Any, numbers: dict[str, int]) -> Any:
    """What the store's apply answers: a run (one queue) as an ``AppendedRun``, else each
    append its number."""
    commands = payload.commands if type(payload) is CommandGroup else (payload,)
    queues = {c.queue_id for c in commands}
    if type(payload) is CommandGroup and len(queues) == 1:
        (queue,) = queues
        first = numbers.get(queue, 1)
        numbers[queue] = first + len(commands)
        return GroupApplied(AppendedRun(first, len(commands)))  # type: ignore[arg-type]
    results = []
    for c in commands:
        number = numbers.get(c.queue_id, 1)
        numbers[c.queue_id] = number + 1
        results.append(MessageAppended(number))
    return GroupApplied(tuple(results)) if type(payload) is CommandGroup else results[0]


def _run(
    receives: list[tuple[str, int]],
    max_group: int,
    refused: set[int],
    replaced: set[int],
    as_columns: bool,
    low: bool = False,
) -> tuple[list[list[str]], int]:
    driver = _Driver(max_group, refused, low)
    groups: list[PendingGroup] = []
    for at, (queue, count) in enumerate(receives):
        datas = tuple(b'"%d-%d"' % (at, i) for i in range(count))
        run = AppendColumns([queue], [7], [count], datas)
        if as_columns:
            group = _await(Proposing.propose_columns(driver, run))  # type: ignore[arg-type]
        else:
            group = _await(Proposing.propose_many(driver, list(run)))  # type: ignore[arg-type]
        groups.append(group)
    driver._flush_proposals()  # type: ignore[attr-defined]
    assert driver._ledger.queued == 0
    numbers: dict[str, int] = {}
    for index, payload in enumerate(driver.node.log, start=1):
        if index in replaced:  # (a new leader's entry at this index, in term 4)
            driver._wait_for(index, 4, [])  # type: ignore[attr-defined]
            continue
        outcome = _result(payload, numbers)
        tokens, outcomes = driver._ledger.applied_columns(index, 3, outcome)
        driver._settle_applied(tokens, outcomes)  # type: ignore[attr-defined]
    assert len(driver._ledger) == 0
    assert all(g.done_at(i) for g in groups for i in range(len(g.results)))
    shown = [[repr(r) for r in g.results] for g in groups]
    return shown, driver._capacity.value


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    receives=st.lists(
        st.tuples(st.sampled_from(("Q-A", "Q-B")), st.integers(1, 9)), min_size=1, max_size=8
    ),
    max_group=st.sampled_from((1, 2, 3, 5, 1024)),
    refused=st.sets(st.integers(1, 10), max_size=3),
    replaced=st.sets(st.integers(1, 10), max_size=3),
    low=st.booleans(),
)
def test_columns_settle_each_request_once_as_their_appends(
    receives: list[tuple[str, int]],
    max_group: int,
    refused: set[int],
    replaced: set[int],
    low: bool,
) -> None:
    """Would catch a refused group's requests left unanswered or answered twice (a unit of
    the in-flight limit kept or given back twice), a receive cut into two entries whose
    second part takes the first's numbers, or an entry replaced in a new term whose requests
    are answered as appended."""
    got = _run(receives, max_group, refused, replaced, True, low)
    expected = _run(receives, max_group, refused, replaced, False, low)
    assert got == expected
    assert got[1] == TOTAL  # (every unit given back, once)


def test_a_receive_cut_across_a_change_of_term_is_answered_in_place() -> None:
    """A receive of five cut into entries of two: the first applied, the second replaced by
    a new leader's, the third refused; its results at each index say so."""
    shown, free = _run([("Q-A", 5)], 2, {3}, {2}, True)
    assert free == TOTAL
    (results,) = shown
    assert results[:2] == [repr(MessageAppended(1)), repr(MessageAppended(2))]
    assert all("NOT_APPLIED" in r or "not applied" in r.lower() for r in results[2:4])
    assert "NOT_LEADER" in results[4]
