"""The mark a save alone in its fsync records (``_shared_log.own_save``: the group's last
shared-log row as the file's ``shared_seq``) must name only rows that were committed: a row
number a failed shared commit rolled back is handed out again, and a mark over it hides the
row that later gets it from the redo at open."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import apsw
import outcome
import pytest

from tests.long_runs import LONG
from tests.test_groups_in_step import lone_save
from tests.test_shared_log import Broker, _images, check_images, imaged_broker, vfs_broker
from trio_broker._storage._shared_log import SharedLog, _Job


class _CommitFails:
    """The shared log whose next outermost commit fails for lack of space (rolled back)."""

    def __init__(self, log: SharedLog) -> None:
        self.log = log
        self.depth = 0
        self.transaction = self

    def __enter__(self) -> None:
        self.depth += 1
        self.log.transaction.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        self.depth -= 1
        if self.depth == 0 and exc[0] is None:
            full = apsw.FullError("database or disk is full")
            self.log.transaction.__exit__(type(full), full, None)
            raise full
        return self.log.transaction.__exit__(*exc)

    def maybe_trim(self) -> None:
        pass


def test_a_save_alone_after_a_failed_shared_commit_marks_no_rolled_back_row(
    tmp_path: Path,
) -> None:
    """Two groups' batch fails at the shared log's commit (the disk full: every row rolled
    back, their numbers free again); each driver saves its Ready again, alone in its fsync;
    the next batch of both writes rows that get those same numbers, applied at NORMAL and
    acknowledged. A power cut then must keep them: the lone saves' marks may not cover them
    (before: the mark was the rolled-back row's number, so the redo skipped the new row)."""
    with vfs_broker(tmp_path, "own-marks") as (broker, vfs, checker):
        assert broker.log is not None
        committer = broker.committer
        first, second, _ = broker.groups
        numbers = broker._appends([first, second])
        saves = [g.propose([Broker._append(n) for n in ns]) for g, ns in numbers]
        committer._log = _CommitFails(broker.log)  # type: ignore[assignment]
        failed = committer._commit([_Job(s, False, None, 1) for s in saves])
        committer._log = broker.log
        assert all(isinstance(o.error, apsw.FullError) for o in failed)  # type: ignore[union-attr]
        for save in saves:  # (each driver retries its Ready: a batch of one each)
            broker.turn([save])
        assert committer.own == 2
        for g, _ in numbers:
            broker.turn([g.apply()])
        broker._applied([])
        for g, ns in numbers:
            broker.acked[broker.groups.index(g)].extend(ns)
        numbers = broker._appends([first, second])
        broker.turn([g.propose([Broker._append(n) for n in ns]) for g, ns in numbers])
        broker._applied(numbers)  # (applied at NORMAL, in one batch: acknowledged)
        dest = tmp_path / "image"
        _images(vfs, broker.root, dest)
        assert check_images([(dest, [list(a) for a in broker.acked])], checker) == 1


def _failed_turn(broker: Broker, rng: random.Random) -> None:
    """Two or three groups' durable saves in one batch whose shared commit fails (rolled back);
    each driver saves its Ready again (the same save: ``DiskSpace.retrying``), alone or in a
    batch with the others, as the next turns come; then the applies; acknowledged after."""
    assert broker.log is not None
    groups = rng.sample(broker.groups, rng.choice([2, 3]))
    numbers = broker._appends(groups)
    saves = [g.propose([Broker._append(n) for n in ns]) for g, ns in numbers]
    committer = broker.committer
    committer._log = _CommitFails(broker.log)  # type: ignore[assignment]
    try:
        failed = committer._commit([_Job(s, False, None, 1) for s in saves])
    finally:
        committer._log = broker.log
    assert all(isinstance(o, outcome.Error) for o in failed)
    if rng.random() < 0.5:
        for save in saves:
            broker.turn([save])
    else:
        broker.turn(saves)
    broker._applied(numbers)


def run_with_failed_commits(tmp_path: Path, seed: int, steps: int) -> tuple[int, int]:
    """Three groups, one shared log: random turns of batches, lone saves (``lone_save``),
    trims, and batches whose shared commit fails then saved again; a crash image checked at
    every sync point. Returns (images checked, failed batches)."""
    rng = random.Random(seed)
    checked = failures = 0
    with imaged_broker(
        tmp_path,
        f"own-marks-{seed}",
        vfs_seed=seed + 1,
        broker_seed=seed + 2,
        where=f"seed {seed}, ",
    ) as (broker, check):
        for _ in range(steps):
            r = rng.random()
            if r < 0.3:
                broker.step()
            elif r < 0.4:
                assert broker.log is not None
                broker.log.trim()
            elif r < 0.7:
                g = rng.choice(broker.groups)
                start = broker.next_value
                broker.next_value += rng.randrange(1, 4)
                lone_save(broker, g, range(start, broker.next_value), split=rng.random() < 0.4)
            else:
                _failed_turn(broker, rng)
                failures += 1
            checked += check()
    return checked, failures


def test_random_turns_with_failed_shared_commits_keep_every_acknowledged_append(
    tmp_path: Path,
) -> None:
    """Batches whose shared commit fails, their saves made again alone or together, between
    batches, lone saves and trims: every crash image restarts with every acknowledged append
    (before: a lone save's mark could name a rolled-back row's number, which a later batch's
    row then got, and the redo at open skipped it)."""
    checked, failures = run_with_failed_commits(tmp_path, 2, 6)
    assert checked > 5 and failures >= 1, (checked, failures)


@LONG
@pytest.mark.parametrize("seed", range(40, 50))
def test_random_turns_with_failed_shared_commits_long(tmp_path: Path, seed: int) -> None:
    checked, failures = run_with_failed_commits(tmp_path, seed, 30)
    assert checked > 30 and failures > 0, (checked, failures)
