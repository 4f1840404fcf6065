"""A group applied as one run of appends answers with an ``AppendedRun``
(``_core/_appended_run.py``): equal to the tuple of its ``MessageAppended``s, made only when
read; the views are told of it as the walk over its results would tell them, without making
them (``_runtime/_applied.applied_group``)."""

from __future__ import annotations

import pickle
import random

import pytest

from trio_broker._core import _commands as cmd
from trio_broker._core._appended_run import AppendedRun
from trio_broker._runtime._applied import applied_group
from trio_broker._storage import Store

STAMP = 1_765_000_000_000


def _appends(queue: str, count: int, every: int = 3) -> tuple[cmd.AppendMessage, ...]:
    return tuple(
        cmd.AppendMessage(queue, b'"v%d"' % i, None, None, STAMP + i // every) for i in range(count)
    )


@pytest.mark.parametrize("first, size", [(1, 1), (1, 2), (7, 64), (2**40, 300)])
def test_a_run_is_the_tuple_of_its_results(first, size):
    want = tuple(cmd.MessageAppended(n) for n in range(first, first + size))
    run = AppendedRun(first, size)
    assert len(run) == size and run._made is None
    assert (run.first, run.size) == (first, size) and run._made is None  # (read, none made)
    assert run == want and want == run and hash(run) == hash(want) and repr(run) == repr(want)
    assert run[0] == want[0] and run[-1] == want[-1] and run[1:3] == want[1:3]
    assert list(run) == list(want) and tuple(run) == want
    assert run == AppendedRun(first, size) and run != AppendedRun(first + 1, size)
    assert run != list(want)  # (a tuple's equality: a list is not a tuple)
    assert pickle.loads(pickle.dumps(run)) == want
    assert cmd.GroupApplied(run) == cmd.GroupApplied(want)
    assert hash(cmd.GroupApplied(run)) == hash(cmd.GroupApplied(want))
    assert len({id(r) for r in run}) == size and run[0] is run[0]  # (made once, kept)


def test_a_run_holds_at_least_one_append():
    with pytest.raises(ValueError, match="at least one"):
        AppendedRun(1, 0)


def test_a_group_of_one_run_answers_with_a_run_that_makes_nothing_until_read(tmp_path):
    store = Store(tmp_path)
    try:
        store.apply([cmd.CreateQueue("Q-1"), cmd.CreateQueue("Q-2")])
        one_run = cmd.CommandGroup(_appends("Q-1", 10))
        two_queues = cmd.CommandGroup(_appends("Q-1", 3) + _appends("Q-2", 2))
        (applied, mixed) = store.apply([one_run, two_queues])
    finally:
        store.close()
    assert type(applied.results) is AppendedRun and applied.results._made is None
    assert applied.results == tuple(cmd.MessageAppended(n) for n in range(1, 11))
    assert type(mixed.results) is tuple  # (several runs: their results joined, as before)
    assert mixed.results == (
        *(cmd.MessageAppended(n) for n in range(11, 14)),
        *(cmd.MessageAppended(n) for n in range(1, 3)),
    )


def test_the_views_are_told_of_a_run_as_of_its_results_without_making_them():
    """The group's calls with its results a run, against the walk over the same results as
    a tuple: the same calls, and the run's results never made."""
    rng = random.Random(11)
    for _ in range(40):
        first, size = rng.randrange(1, 10**6), rng.randrange(1, 300)
        commands = _appends(rng.choice(["Q-1", "Q-a,b"]), size, rng.randrange(1, 40))
        told_run: list[tuple[object, object]] = []
        told_walk: list[tuple[object, object]] = []
        run = AppendedRun(first, size)
        applied_group(lambda c, r: told_run.append((c, r)))(commands, run)  # noqa: B023
        assert run._made is None
        walked = tuple(cmd.MessageAppended(n) for n in range(first, first + size))
        applied_group(lambda c, r: told_walk.append((c, r)))(commands, walked)  # noqa: B023
        assert told_run == told_walk == [(commands[0], cmd.MessageAppended(first))]


def test_a_run_with_commands_of_another_count_is_refused():
    with pytest.raises(ValueError, match="3 commands applied with 2 results"):
        applied_group(lambda c, r: None)(_appends("Q-1", 3), AppendedRun(1, 2))
