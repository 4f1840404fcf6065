"""The periodic scrub's pace (docs/reliability.md, "Repairing damaged values"): never more
than 20 storage jobs a second, however short ``scrub_period``; and its first pass, paced from
the start-up pass's count of jobs, takes about one period whatever the values' sizes."""

from __future__ import annotations

import itertools
import types
from pathlib import Path

import trio

from trio_broker._runtime._repair import PERIODIC_MIN_PAUSE

from .test_repair import Q, _repair_room


def _store_of(tmp_path: Path, rows: int, value_bytes: int, calls: list):
    """A store of ``rows`` values of ``value_bytes`` each, scanned as ``damaged_values`` does:
    at most ``limit`` values, and no more once ``max_bytes`` of them are read."""

    def damaged_values(after, limit, max_bytes=None):
        first = after[1] + 1
        take = limit if max_bytes is None else min(limit, -(-max_bytes // value_bytes))
        last = min(first + max(take, 1) - 1, rows)
        calls.append((trio.current_time(), limit, max_bytes, last))
        return [], None if last >= rows else (Q, last)

    return types.SimpleNamespace(data_dir=tmp_path, damaged_values=damaged_values)


async def test_a_short_period_runs_at_most_20_jobs_a_second(tmp_path, autojump_clock):
    calls: list = []
    store = _store_of(tmp_path, 1000, 100, calls)
    repair = _repair_room(tmp_path, store, [], 0.001)
    with trio.move_on_after(10):
        await repair.scrub()
    periodic = [c[0] for c in calls if c[0] > 0]
    gaps = [b - a for a, b in itertools.pairwise(periodic)]
    assert len(periodic) >= 100  # (pass after pass: 5 jobs each)
    assert min(gaps) >= PERIODIC_MIN_PAUSE - 1e-9  # (the sum of float sleeps)
    assert len(periodic) <= 10 / PERIODIC_MIN_PAUSE


async def test_the_first_periodic_pass_over_large_values_takes_about_one_period(
    tmp_path, autojump_clock
):
    """Values of 100 KiB: a periodic job holds 11 of them (1 MiB), against 500 a start-up job
    used to (it had no byte bound), so the first pass, paced from the start-up pass's count,
    ran 19 periods."""
    period, rows = 100.0, 2000
    calls: list = []
    store = _store_of(tmp_path, rows, 100 << 10, calls)
    repair = _repair_room(tmp_path, store, [], period)
    with trio.move_on_after(3 * period):
        await repair.scrub()
    ends = [c[0] for c in calls if c[3] >= rows]
    assert ends[0] == 0  # the start-up pass, at once
    assert len(ends) >= 3, ends  # the first periodic pass, and the next, within 3 periods
    assert 0.8 * period <= ends[1] <= 1.2 * period
    periodic = [c for c in calls if c[0] > 0]
    assert all(c[3] - prev[3] <= 11 for prev, c in itertools.pairwise(periodic) if c[3] > prev[3])
