"""A run of appended answers framed from its first number and its count
(``_answer.appended_run_frames``, ``PendingGroup.appended_frames``): the same bytes as the
frames written one number at a time, wherever the run starts and however it is cut."""

from __future__ import annotations

import random

import pytest

from trio_broker._protocol._codec import appended_frame, appended_frames
from trio_broker._runtime._pending import GroupRun, PendingGroup

EDGES = [0, 1, 8, 9, 10, 99, 100, 999_999, 10**9 - 2, 10**18 - 1, 2**63 - 3, 2**64 - 2, 2**64]
"""Run starts at and around powers of ten (a run that crosses one changes its frames' head),
and at the ends of orjson's integers (past 64 bits it writes none)."""


@pytest.mark.parametrize("first", EDGES)
@pytest.mark.parametrize("count", [1, 2, 3, 16, 64])
def test_a_run_is_the_frames_of_its_numbers(first: int, count: int) -> None:
    from trio_broker._runtime._answer import appended_run_frames

    numbers = list(range(first, first + count))
    assert appended_run_frames(first, count) == b"".join(map(appended_frame, numbers))
    assert appended_run_frames(first, count) == appended_frames(numbers)


def test_random_runs_are_the_frames_of_their_numbers() -> None:
    from trio_broker._runtime._answer import appended_run_frames

    rng = random.Random(14)
    for _ in range(2000):
        first = rng.choice([rng.randrange(10 ** rng.randrange(1, 20)), rng.choice(EDGES)])
        count = rng.randrange(1, 80)
        numbers = list(range(first, first + count))
        assert appended_run_frames(first, count) == b"".join(map(appended_frame, numbers))


def test_a_group_frames_each_stretch_from_its_numbers() -> None:
    """Stretches set apart (two entries' runs, numbers that jump, one crossing a power of
    ten), cut by the writer's limit at every place: the frames of exactly those numbers."""
    group = PendingGroup(12)
    assert group.set_appended(0, 3, 97)  # 97, 98, 99
    assert group.set_appended(3, 4, 998)  # 998, 999, 1000, 1001
    assert group.set_appended(7, 5, 20)  # 20 ... 24
    numbers = [97, 98, 99, 998, 999, 1000, 1001, 20, 21, 22, 23, 24]
    for start in range(12):
        for stop in range(start + 1, 13):
            got = group.appended_frames(start, stop)
            assert got == b"".join(map(appended_frame, numbers[start:stop])), (start, stop)
    for limit in range(1, 13):
        run = GroupRun(group, 0, 12)
        taken: list[bytes] = []
        while (left := len(run)) > 0:
            got = run.appended(limit)
            assert got is not None
            frames, count = got
            assert count == min(limit, left)
            taken.append(frames)
        assert b"".join(taken) == appended_frames(numbers)


def test_a_group_with_an_outcome_not_in_a_run_has_no_frames() -> None:
    group = PendingGroup(4)
    assert group.set_appended(0, 2, 5)
    group.set(2, object())  # (a refusal, a duplicate: not a number)
    assert group.appended_frames(0, 2) == appended_frames([5, 6])
    assert group.appended_frames(0, 3) is None
    assert group.appended_frames(2, 4) is None
