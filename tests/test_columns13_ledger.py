"""A leader's receive of plain appends queued as columns (``Proposals.add_columns``): the
ledger must cut, propose, refuse, requeue and hand back exactly what it does for the same
appends queued one command each (``add_many``), the groups made only of such receives
proposed as their columns joined (docs/performance-history.md, "The leader's receive held as columns
(thirteenth round)")."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest

from tests.test_pipelead_ledger import Log, random_command, random_text
from trio_broker._core._append_columns import AppendColumns, columns_group, joined_columns
from trio_broker._core._commands import AppendMessage, CommandGroup, GroupApplied, MessageAppended
from trio_broker._core._proposals import NotApplied, Proposals, encoded_bound
from trio_broker._core._raft import NotLeader


def _receive(rng: random.Random, queues: tuple[str, ...]) -> AppendColumns:
    """A receive's appends as columns: one queue, one stamp, values of any size."""
    sizes = (0, 10, 100, 600, 3000, 20_000)
    datas = tuple(b'"' + b"y" * rng.choice(sizes) + b'"' for _ in range(rng.choice((1, 2, 16, 40))))
    return AppendColumns([rng.choice(queues)], [rng.choice((5, 6))], [len(datas)], datas)


def _queued(rng: random.Random, count: int) -> list[tuple[str, Any]]:
    """What a leader queues between two Readies: receives as columns, runs of commands and
    single commands, mixed."""
    queues = (random_text(rng, "Q-", 40), random_text(rng, "Q-", 40), "Q-A")
    items: list[tuple[str, Any]] = []
    for _ in range(count):
        kind = rng.randrange(4)
        if kind < 2:
            items.append(("columns", _receive(rng, queues)))
        elif kind == 2:
            items.append(
                ("many", [random_command(rng, queues) for _ in range(rng.randrange(1, 5))])
            )
        else:
            items.append(("one", random_command(rng, queues)))
    return items


def _fill(items: list[tuple[str, Any]], as_columns: bool) -> tuple[Proposals[int], Any]:
    """Two ledgers' queues from ``items``: the receives as columns, or as their appends made
    one by one (what a leader queued before); the same tokens, in order."""
    return _fill_into(Proposals(max_group=MAX_GROUP[0], max_bytes=MAX_BYTES[0]), items, as_columns)


MAX_GROUP = [1024]
MAX_BYTES: list[int | None] = [None]


def _fill_into(
    ledger: Proposals[int], items: list[tuple[str, Any]], as_columns: bool
) -> tuple[Proposals[int], Any]:
    commands: list[Any] = []
    columned: list[Any] = []
    for kind, item in items:
        if kind == "columns":
            appends = [
                AppendMessage(item.queues[0], d, None, None, item.stamps[0]) for d in item.datas
            ]
            columned += appends
            tokens = list(range(len(commands), len(commands) + len(appends)))
            if as_columns:
                ledger.add_columns(item, tokens)
            else:
                ledger.add_many(appends, tokens)
            commands += appends
        elif kind == "many":
            ledger.add_many(item, list(range(len(commands), len(commands) + len(item))))
            commands += item
        else:
            ledger.add(item, len(commands))
            commands.append(item)
    return ledger, (commands, columned)


def _settings(rng: random.Random) -> None:
    MAX_GROUP[0] = rng.choice((1, 3, 16, 1024))
    MAX_BYTES[0] = rng.choice((None, 600, 5_000, 64_000))


@pytest.mark.parametrize("seed", range(60))
def test_groups_of_columns_are_the_groups_of_their_appends(seed: int) -> None:
    """The same groups, in the same order, with the same tokens waiting on each index;
    a group of more than one append that holds only receives' appends is proposed as
    columns (no ``AppendMessage`` made), any other as before. Would catch a run cut where
    the one-by-one ledger does not cut it (a bound summed wrong, the first command of a
    group refused), a token matched to another command, or a group of mixed commands
    that loses the order of its pieces."""
    rng = random.Random(seed)
    _settings(rng)
    items = _queued(rng, rng.randrange(1, 30))
    columns, (commands, _) = _fill(items, True)
    reference, appends = _fill(items, False)
    columned = {id(c) for c in appends[1]}  # (the receives' appends in the reference)
    assert columns.queued == reference.queued == len(commands) == len(columns)
    log, expected = Log(), Log()
    assert columns.propose_queued(log.propose) == reference.propose_queued(expected.propose) == []
    held = [  # (before any comparison, which makes the appends)
        type(p) is CommandGroup and type(p.commands) is AppendColumns and p.commands._made is None
        for p in log.payloads
    ]
    receives_only = [
        type(p) is CommandGroup and all(c in columned for c in map(id, p.commands))
        for p in expected.payloads
    ]
    assert held == receives_only
    assert log.payloads == expected.payloads
    assert columns.queued == 0 and columns.grouped == reference.grouped
    for index in range(1, log.last + 1):
        assert columns.waiting(index) == reference.waiting(index)
    made = [c for p in log.payloads for c in getattr(p, "commands", (p,))]
    assert made == commands


class _Failing:
    """A core that refuses every other group and fails (a bug) at its ``fail_at``-th call."""

    def __init__(self, fail_at: int) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def propose(self, payload: Any) -> tuple[int, int]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("a bug")
        if self.calls % 2:
            raise NotLeader(None)
        return 3, self.calls


@pytest.mark.parametrize("seed", range(20))
def test_refusals_and_a_failure_leave_the_same_requests(seed: int) -> None:
    """A group the core refuses settles the same tokens with its refusal; a failure in the
    middle (a bug, a cancellation) leaves the same requests queued, in order, ahead of newer
    ones, and proposing them later gives the same groups. Would catch a split run whose
    rest is dropped or queued twice on the failure, or tokens shifted against the pieces."""
    rng = random.Random(1000 + seed)
    _settings(rng)
    items = _queued(rng, rng.randrange(5, 30))
    outcomes = []
    for as_columns in (True, False):
        ledger, _ = _fill(items, as_columns)
        propose = _Failing(fail_at=1 + seed % 3).propose
        settled: list[Any] = []
        with contextlib.suppress(RuntimeError):
            settled = ledger.propose_queued(propose)
        queued = ledger.queued
        ledger.add(AppendMessage("Q-LATE", b'"z"', None, None, 9), -1)
        log = Log()
        later = ledger.propose_queued(log.propose)
        outcomes.append(
            (
                [(t, type(o)) for t, o in settled],
                queued,
                log.payloads,
                [ledger.waiting(i) for i in range(1, log.last + 1)],
                # (a refusal before the failure comes back here, the core's exception
                # object compared by what it says)
                [
                    (t, (NotLeader, o.leader_id) if isinstance(o, NotLeader) else o)
                    for t, o in later
                ],
            )
        )
    assert outcomes[0] == outcomes[1]


def test_what_is_taken_counts_each_append_of_the_columns() -> None:
    ledger: Proposals[int] = Proposals()
    run = AppendColumns(["Q-A"], [5], [3], (b"1", b"2", b"3"))
    ledger.add_columns(run, [0, 1, 2])
    ledger.add(AppendMessage("Q-A", b"4", None, None, 5), 3)
    assert ledger.queued == len(ledger) == 4
    assert ledger.take_queued() == [0, 1, 2, 3] and ledger.queued == 0
    ledger.add_columns(run, [4, 5, 6])
    assert ledger.take_all() == [4, 5, 6]
    log = Log()
    assert ledger.propose_queued(log.propose) == [] and log.payloads == []
    ledger.add(AppendMessage("Q-A", b"4", None, None, 5), 7)  # (no columns left counted)
    assert ledger.propose_queued(log.propose) == [] and len(log.payloads) == 1


def test_an_applied_group_of_columns_settles_its_tokens() -> None:
    ledger: Proposals[int] = Proposals()
    ledger.add_columns(AppendColumns(["Q-A"], [5], [2], (b"1", b"2")), [10, 11])
    ledger.add_columns(AppendColumns(["Q-A"], [5], [1], (b"3",)), [12])
    ledger.add_columns(AppendColumns(["Q-B"], [6], [1], (b"4",)), [13])
    log = Log()
    ledger.propose_queued(log.propose)
    (payload,) = log.payloads
    columns = payload.commands  # type: ignore[attr-defined]
    assert type(columns) is AppendColumns and columns._made is None
    assert (columns.queues, columns.stamps, columns.counts) == (["Q-A", "Q-B"], [5, 6], [3, 1])
    results = GroupApplied(tuple(MessageAppended(n) for n in range(1, 5)))
    assert ledger.applied(1, 3, results) == list(zip(range(10, 14), results.results, strict=True))
    ledger.add_columns(AppendColumns(["Q-A"], [5], [1], (b"5",)), [14])
    ledger.propose_queued(log.propose)
    assert log.payloads[-1] == AppendMessage("Q-A", b"5", None, None, 5)  # (one: the command)
    assert ledger.applied(2, 4, MessageAppended(5)) == [
        (14, NotApplied(reason="another leader's entry was committed"))
    ]


def test_columns_are_refused_where_they_would_not_match_their_tokens() -> None:
    ledger: Proposals[int] = Proposals()
    two_runs = AppendColumns(["Q-A", "Q-B"], [5, 5], [1, 1], (b"1", b"2"))
    with pytest.raises(ValueError, match="one run"):
        ledger.add_columns(two_runs, [0, 1])
    with pytest.raises(ValueError, match="tokens"):
        ledger.add_columns(AppendColumns(["Q-A"], [5], [2], (b"1", b"2")), [0])
    with pytest.raises(ValueError, match="groups are made"):
        ledger.add(two_runs, 0)
    with pytest.raises(ValueError, match="groups are made"):
        ledger.add_many([two_runs], [0])
    assert ledger.queued == 0


def test_joined_columns_and_parts_hold_the_same_appends() -> None:
    a = AppendColumns(["Q-A"], [5], [3], (b"1", b"2", b"3"))
    b = AppendColumns(["Q-A"], [5], [1], (b"4",))
    c = AppendColumns(["Q-B"], [5], [1], (b"5",))
    joined = joined_columns([a.part(1, 3), b, c, a.part(0, 1)])
    assert (joined.queues, joined.stamps, joined.counts) == (
        ["Q-A", "Q-B", "Q-A"],
        [5, 5, 5],
        [3, 1, 1],
    )
    assert joined == (*a[1:], *b, *c, a[0])
    assert columns_group(joined) == CommandGroup(tuple(joined))
    with pytest.raises(ValueError):
        a.part(2, 2)
    with pytest.raises(ValueError):
        joined.part(0, 1)


@pytest.mark.parametrize("before", [0, 1, 2])
@pytest.mark.parametrize("fill", [-1, 0, 1])
def test_a_run_that_fills_a_group_exactly_is_cut_where_its_appends_are(
    before: int, fill: int
) -> None:
    """A group's bound reaching ``max_bytes`` exactly, one byte short of it and one past it,
    after other appends or none, the run taken whole or cut: the cuts of its appends one by
    one. Would catch a bound compared with ``>=`` where the ledger compares with ``>`` (an
    append moved to the next group)."""
    bound = encoded_bound(AppendMessage("Q-A", b"12345", None, None, 5))
    ledger, reference = (
        Proposals[int](max_bytes=3 * bound + fill),
        Proposals[int](max_bytes=3 * bound + fill),
    )
    lone = [AppendMessage("Q-A", b"12345", None, None, 5) for _ in range(before)]
    for one in (ledger, reference):
        one.add_many(list(lone), list(range(before)))
    run = AppendColumns(["Q-A"], [5], [5], (b"12345",) * 5)
    ledger.add_columns(run, list(range(before, before + 5)))
    reference.add_many(list(run), list(range(before, before + 5)))
    logs = Log(), Log()
    ledger.propose_queued(logs[0].propose)
    reference.propose_queued(logs[1].propose)
    assert [len(getattr(p, "commands", (p,))) for p in logs[0].payloads] == [
        len(getattr(p, "commands", (p,))) for p in logs[1].payloads
    ]
    assert logs[0].payloads == logs[1].payloads
