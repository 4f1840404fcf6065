"""The leader's ledger without a pair per request: a run's commands and tokens queued as two
lists, cut into groups by slices with a plain append's bound written out, and an applied
entry's proposals settled together (docs/performance.md, "The leader's ledger by columns")."""

from __future__ import annotations

import random

import pytest

from trio_broker._core._commands import (
    AppendMessage,
    CreateQueue,
    GroupApplied,
    MessageAppended,
)
from trio_broker._core._proposals import NotApplied, Proposals, encoded_bound
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._runtime._pending import Capacity, Pending, PendingGroup
from trio_broker._runtime._proposing import Proposing


def reference_cuts(commands: list[object], max_group: int, max_bytes: int | None) -> list[int]:
    """Group sizes as the ledger cut them before: :func:`encoded_bound` for every command."""
    sizes, start = [], 0
    while start < len(commands):
        end, size = start, 0
        while end < len(commands) and end - start < max_group:
            size += encoded_bound(commands[end])
            if end > start and max_bytes is not None and size > max_bytes:
                break
            end += 1
        sizes.append(end - start)
        start = end
    return sizes


def random_command(rng: random.Random) -> object:
    queue = "Q-" + "A" * rng.randrange(1, 40)
    data = b'"' + b"x" * rng.choice((0, 10, 100, 3000, 20_000)) + b'"'
    kind = rng.randrange(4)
    if kind == 0:
        return CreateQueue(queue)
    if kind == 1:
        return AppendMessage(queue, data, "p" * rng.randrange(1, 30), rng.randrange(9), 5)
    return AppendMessage(queue, data, None, None, rng.choice((None, 7)))


class Log:
    def __init__(self) -> None:
        self.last = 0
        self.payloads: list[object] = []

    def propose(self, payload: object) -> tuple[int, int]:
        self.last += 1
        self.payloads.append(payload)
        return 3, self.last


@pytest.mark.parametrize("seed", range(40))
def test_groups_are_cut_where_encoded_bound_cuts_them(seed: int) -> None:
    rng = random.Random(seed)
    commands = [random_command(rng) for _ in range(rng.randrange(1, 300))]
    max_group = rng.choice((1, 3, 16, 1024))
    max_bytes = rng.choice((None, 600, 5_000, 64_000))
    ledger: Proposals[int] = Proposals(max_group=max_group, max_bytes=max_bytes)
    cut = 0
    while cut < len(commands):  # queued as runs and as single requests, mixed
        step = rng.randrange(1, 20)
        run = commands[cut : cut + step]
        if len(run) == 1:
            ledger.add(run[0], cut)
        else:
            ledger.add_many(run, list(range(cut, cut + len(run))))
        cut += len(run)
    assert ledger.queued == len(commands)
    log = Log()
    assert ledger.propose_queued(log.propose) == []
    assert ledger.queued == 0
    sizes = [len(getattr(p, "commands", (p,))) for p in log.payloads]
    assert sizes == reference_cuts(commands, max_group, max_bytes)
    tokens = [ledger.waiting(index)[1] for index in range(1, log.last + 1)]  # type: ignore[index]
    assert [t for group in tokens for t in group] == list(range(len(commands)))


def test_applied_columns_match_applied_pairs_and_refuse_a_short_result() -> None:
    ledger: Proposals[str] = Proposals()
    log = Log()
    for name in "abc":
        ledger.add(AppendMessage("Q", b"1", None, None, 1), name)
    ledger.propose_queued(log.propose)
    results = GroupApplied(tuple(MessageAppended(n) for n in range(3)))
    tokens, outcomes = ledger.applied_columns(1, 3, results)
    assert tokens == ["a", "b", "c"] and outcomes == results.results
    assert ledger.applied_columns(1, 3, results) == ([], ())  # settled once
    for name in "de":
        ledger.add(CreateQueue("Q"), name)
    ledger.propose_queued(log.propose)
    tokens, outcomes = ledger.applied_columns(2, 4, results)  # another term's entry
    assert tokens == ["d", "e"] and all(isinstance(o, NotApplied) for o in outcomes)
    ledger.add(CreateQueue("Q"), "f")
    ledger.add(CreateQueue("Q"), "g")
    ledger.propose_queued(log.propose)
    with pytest.raises(ValueError, match="3 results for 2 requests"):
        ledger.applied_columns(3, 3, results)


class Driver(Proposing):
    """The parts of RaftDriver that settling reads."""

    def __init__(self) -> None:
        self._capacity = Capacity(10)

    def not_leader_error(self) -> BrokerError:  # pragma: no cover - not reached here
        raise AssertionError


def test_settle_applied_sets_each_outcome_and_gives_the_capacity_back() -> None:
    driver = Driver()
    driver._capacity.acquire_nowait(5)
    group, single = PendingGroup(4), Pending()
    tokens = [(group, 2), (group, 0), single, (group, 1), (group, 3)]
    outcomes = [MessageAppended(n) for n in range(5)]
    driver._settle_applied(tokens, outcomes)
    assert group.results == [outcomes[1], outcomes[3], outcomes[0], outcomes[4]]
    assert single.done and single.result == outcomes[2]
    assert driver._capacity.value == 10
    driver._settle_applied([], ())
    assert driver._capacity.value == 10


def test_settle_applied_answers_not_applied_as_a_retry_on_the_leader() -> None:
    driver = Driver()
    driver._capacity.acquire_nowait(2)
    group = PendingGroup(2)
    outcome = NotApplied("another leader's entry was committed")
    driver._settle_applied([(group, 0), (group, 1)], [outcome, outcome])
    assert all(
        isinstance(r, BrokerError) and r.code == ErrorCode.NOT_LEADER and "not applied" in str(r)
        for r in group.results
    )
    assert driver._capacity.value == 10
