"""A run of one reader's single READs (one ``ReadNext`` object, repeated, as the leader
proposes and a replica decodes them) is told through ``applied_group`` by its first and last
READ only (``_runtime/_applied.py``), with exactly the effects of telling each READ: the same
exhausted hints (the forgetting of all of them at the bound included), views and wake-ups."""

from __future__ import annotations

import random

import pytest

from tests.test_replica_applied import CLIENTS, QUEUES, _broker_callback, _state
from trio_broker._core import _commands as cmd
from trio_broker._core._commands import queue_not_found
from trio_broker._core._queues import read_next_run
from trio_broker._runtime import _reads
from trio_broker._runtime._applied import applied_group


def _run_results(rng: random.Random, count: int) -> list[object]:
    """What the core answers to ``count`` READs of one reader in a row: some messages, then
    nothing (``read_next_run``); or, for a queue that is not there, a refusal for each."""
    if rng.randrange(6) == 0:
        return [queue_not_found("Q-1") for _ in range(count)]
    found = rng.randint(0, count)
    results, _ = read_next_run(rng.randint(1, 9), [b"v"] * found, count)
    return list(results)


def _group_with_runs(rng: random.Random) -> tuple[list[object], list[object]]:
    commands: list[object] = []
    results: list[object] = []
    for _ in range(rng.randint(1, 8)):
        queue, client = rng.choice(QUEUES), rng.choice(CLIENTS)
        kind = rng.randrange(4)
        if kind < 2:  # a run of one reader's READs: one object, repeated
            read = cmd.ReadNext(client, queue)
            count = rng.randint(1, 6)
            commands += [read] * count
            results += _run_results(rng, count)
        elif kind == 2:
            commands.append(cmd.AppendMessage(queue, b"1"))
            results.append(cmd.MessageAppended(rng.randint(1, 9)))
        else:
            commands.append(cmd.Ack(client, queue, 2))
            results.append(None)
    return commands, results


@pytest.mark.parametrize("bound", [3, 4, 5, _reads.MAX_EXHAUSTED])
@pytest.mark.parametrize("seed", range(100))
def test_a_run_of_reads_told_by_its_ends_has_each_reads_effects(seed, bound, monkeypatch):
    # Every (client, queue) pair starts exhausted: 4 hints, so a bound of 3 or 4 makes the
    # next new hint forget all of them (the case where which READ marks first matters).
    monkeypatch.setattr(_reads, "MAX_EXHAUSTED", bound)
    rng = random.Random(seed)
    commands, results = _group_with_runs(rng)
    each_views, each_exhausted, each = _broker_callback()
    group_views, group_exhausted, noted = _broker_callback()
    if rng.randrange(2):  # some hints gone first: each run meets other starting points
        for command in commands[: rng.randint(0, len(commands))]:
            if type(command) is cmd.ReadNext:
                for exhausted in (each_exhausted, group_exhausted):
                    exhausted.note(command, cmd.MessageRead(1, b"v"))
    assert _state(group_views, group_exhausted) == _state(each_views, each_exhausted)
    for command, result in zip(commands, results, strict=True):
        each(command, result)  # type: ignore[operator]
    applied_group(noted)(commands, results)  # type: ignore[arg-type]
    assert _state(group_views, group_exhausted) == _state(each_views, each_exhausted)


def test_a_run_is_told_by_its_first_and_last_read():
    told: list[tuple[object, object]] = []
    read, other = cmd.ReadNext("C-1", "Q-1"), cmd.ReadNext("C-2", "Q-1")
    append = cmd.AppendMessage("Q-1", b"1")
    ok = cmd.MessageAppended(1)
    run, _ = read_next_run(1, [b"a", b"b"], 5)
    one, _ = read_next_run(3, [b"c"], 1)
    same = cmd.ReadNext("C-1", "Q-1")  # equal, not the same object: told on its own
    commands = [*[read] * 5, append, *[read] * 1, other, other, same, read]
    results = [*run, ok, *one, run[0], run[1], run[2], run[3]]
    applied_group(lambda c, r: told.append((c, r)))(commands, results)
    assert told == [
        (read, run[0]),
        (read, run[4]),
        (append, ok),
        (read, one[0]),
        (other, run[0]),
        (other, run[1]),
        (same, run[2]),
        (read, run[3]),
    ]
    assert told[-2][0] is same and told[-1][0] is read
