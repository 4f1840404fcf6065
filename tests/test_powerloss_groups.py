"""Several groups per broker on one shared log, under power cuts and injected I/O errors
(``trio_broker.testing._powerloss_groups``), and the double faults of the shared log it is
built to find: a failed COMMIT that leaves its transaction open, a failed reset of
``PRAGMA synchronous``, a failed save's row whose delete failed too."""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Any

import pytest

from tests.long_runs import LONG
from trio_broker._core._raft_messages import Config, Entry, HardState, NoOp
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog, TurnCommitter, _Job
from trio_broker._storage._store import Store
from trio_broker.testing._powerloss_groups import (
    FAULT_KINDS,
    Faults,
    FaultyConnection,
    InjectedError,
    run_seed,
)
from trio_broker.testing._powerloss_groups_mutants import MUTANTS, mutant_caught


def _faults(*kinds: str) -> Faults:
    """Faults of ``kinds`` that hit every time they are asked, once armed."""
    return Faults(random.Random(0), 1.0, kinds)


def _entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, NoOp()) for i in range(first, last + 1)]


def _synchronous(db: Any) -> int:
    ((level,),) = db.execute("PRAGMA synchronous").fetchall()
    return int(level)


def test_a_commit_left_open_does_not_leave_the_store_at_normal(tmp_path: Path) -> None:
    """An apply's COMMIT fails and SQLite keeps its transaction open (``SQLITE_BUSY``): the
    transaction is rolled back and the store is at ``FULL`` again (before: SQLite refused the
    reset, ``cannot change safety level inside a transaction``, and the store stayed at
    ``NORMAL`` inside a transaction that nothing would ever commit)."""
    store = Store(tmp_path / "g")
    try:
        store.bootstrap(Config(frozenset({"a"})))
        store.save(hard_state=HardState(1, "a", 0), entries=_entries(1, 2))
        faults = _faults("open")
        store._db = FaultyConnection(store._db, faults)  # type: ignore[assignment]
        faults.on = True
        with pytest.raises(InjectedError):
            store.save(hard_state=HardState(1, "a", 2), committed=_entries(1, 2))
        faults.on = False
        assert store._db.getautocommit()
        assert _synchronous(store._db) == 2  # FULL
        store.save(hard_state=HardState(1, "a", 2), entries=_entries(3, 3))
        assert store.raft_state().entries[-1].index == 3
    finally:
        store.close()


def test_a_failed_reset_to_full_is_made_before_the_next_durable_commit(tmp_path: Path) -> None:
    """The reset of ``synchronous`` to ``FULL`` after an apply fails: the next save that must
    be durable sets ``FULL`` first (before: it committed at ``NORMAL``, no fsync)."""
    store = Store(tmp_path / "g")
    try:
        store.save(hard_state=HardState(1, "a", 0), entries=_entries(1, 2))
        real = store._db
        faults = _faults("pragma")
        store._db = FaultyConnection(real, faults)  # type: ignore[assignment]
        original = store._db.execute

        def execute(sql: str, *args: Any) -> Any:  # only the reset fails
            faults.on = sql.replace(" ", "").upper() == "PRAGMASYNCHRONOUS=FULL"
            return original(sql, *args)

        store._db.execute = execute  # type: ignore[method-assign]
        with pytest.raises(InjectedError):
            store.save(hard_state=HardState(1, "a", 2), committed=_entries(1, 2))
        assert _synchronous(real) == 1  # NORMAL, for now
        store._db = real  # type: ignore[assignment]
        store.save(hard_state=HardState(1, "a", 2), entries=_entries(3, 3))
        assert _synchronous(real) == 2
    finally:
        store.close()


class _TwoGroups:
    """A broker's shared log and two group stores on it, the log's connection faulty."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = _faults()
        self.log = SharedLog(root / SHARED_LOG_FILE)
        self.log._db = FaultyConnection(self.log._db, self.faults)  # type: ignore[assignment]
        self.committer = TurnCommitter(None, self.log)  # type: ignore[arg-type]
        self.stores = [self.open(g) for g in ("g0", "g1")]

    def open(self, name: str) -> Store:
        return Store(self.root / name, shared=self.log)

    def batch(self, first: int, last: int, term: int = 1) -> list[Any]:
        """Both groups save entries ``first..last`` of ``term`` in one shared transaction."""
        saves = [
            functools.partial(
                s.save, hard_state=HardState(term, "a", 0), entries=_entries(first, last, term)
            )
            for s in self.stores
        ]
        return self.committer._commit([_Job(s, False, None, 1) for s in saves])

    def fail_apply_of_g0(self) -> Faults:
        """g0's group transactions fail at their COMMIT (rolled back) while the faults
        returned are on."""
        g0 = self.stores[0]
        faults = _faults("commit")
        g0._db = FaultyConnection(g0._db, faults)  # type: ignore[assignment]
        return faults

    def close(self) -> None:
        self.faults.on = False
        for s in self.stores:
            s.close()
        self.log.close()


def test_a_shared_commit_left_open_is_rolled_back(tmp_path: Path) -> None:
    """The shared log's COMMIT fails and its transaction stays open: rolled back, so that the
    next batch's rows commit (before: they went into a savepoint of the open transaction,
    never durable, while their groups' files committed at NORMAL and were acknowledged)."""
    groups = _TwoGroups(tmp_path)
    try:
        groups.faults.kinds, groups.faults.on = ("open",), True
        assert all(o.error for o in groups.batch(1, 2))  # type: ignore[union-attr]
        groups.faults.on = False
        assert groups.log._db.getautocommit()
        assert [o.unwrap() for o in groups.batch(1, 2)] == [[], []]
        assert sum(groups.log.group_rows().values()) == 2
    finally:
        groups.close()


def _failed_save_kept_row(groups: _TwoGroups) -> None:
    """Both groups save 1..2; then a batch where g0's group transaction fails and the delete
    of its row fails too: the row of entries 3..4 stays in the shared log."""
    assert [o.unwrap() for o in groups.batch(1, 2)] == [[], []]
    g0_faults = groups.fail_apply_of_g0()
    groups.faults.kinds = ("delete",)
    groups.faults.on = g0_faults.on = True
    g0_db = groups.stores[0]._db
    results = groups.batch(3, 4)
    groups.faults.on = g0_faults.on = False
    assert isinstance(results[0].error, InjectedError)  # type: ignore[union-attr]
    assert results[1].unwrap() == []
    groups.stores[0]._db = g0_db._db  # type: ignore[attr-defined]
    assert [e.index for e in groups.stores[0].raft_state().entries] == [1, 2]


def test_a_failed_saves_row_whose_delete_failed_is_not_replayed_at_reopen(tmp_path: Path) -> None:
    """g0 is closed (its file synced) and opened again: the row of the save that failed is not
    replayed (before: the close's mark stopped below it, so the redo put entries 3..4 that
    g0 never committed back into its log)."""
    groups = _TwoGroups(tmp_path)
    try:
        _failed_save_kept_row(groups)
        groups.stores[0].close()
        groups.stores[0] = groups.open("g0")
        assert [e.index for e in groups.stores[0].raft_state().entries] == [1, 2]
    finally:
        groups.close()


def test_a_failed_saves_row_whose_delete_failed_goes_with_the_groups_next_row(
    tmp_path: Path,
) -> None:
    """g0's core restarts from its file (entries 1..2), is given entries 3 of term 2, which
    its next batch saves: that transaction deletes the failed row, so that a power cut that
    loses g0's NORMAL commit replays 3 of term 2 alone (before: the old row too, first, and
    entry 4 of term 1 stayed after entry 3 of term 2)."""
    groups = _TwoGroups(tmp_path)
    try:
        _failed_save_kept_row(groups)
        assert groups.log.group_rows()[groups.stores[0]._incarnation] == 2
        assert [o.unwrap() for o in groups.batch(3, 3, term=2)] == [[], []]
        rows = groups.log.ops_after(groups.stores[0]._incarnation, 0)
        assert [[(i, t) for i, t, *_ in entries] for _, _, _, entries in rows] == [
            [(1, 1), (2, 1)],
            [(3, 2)],
        ]
    finally:
        groups.close()


# -- the runner ----------------------------------------------------------------------------------

FAST = [(4, 1), (9, 1), (11, 1), (12, 1)]
"""(seed, cuts): a few short seeds for the default suite. Seed 4 loses acknowledged appends
when a failed COMMIT's open transaction is not rolled back (``roll_back_open`` a no-op: the
stores' resets to FULL refused, the later saves savepoints never committed); of seeds 1..20
(one cut, 40 steps) it is the only one to, with the schedule of the replicas' apply lag. 9
and 12 caught it before the apply lag changed the schedule; they stay, as 11 does."""


@pytest.mark.parametrize(("seed", "cuts"), FAST)
def test_groups_on_a_shared_log_survive_power_cuts_and_io_errors(seed: int, cuts: int) -> None:
    """Three brokers, 2 to 4 groups each on one shared log: every acknowledged append of
    every group survives the cuts and errors, once, with its value; every store is sound."""
    stats = run_seed(seed, cuts=cuts, steps_between=40)
    assert stats.cuts == cuts and stats.acked


@pytest.mark.parametrize("fail_stop", [True, False], ids=["fail-stop", "rebuild as before"])
def test_a_failed_fsync_that_drops_writes_loses_acknowledged_appends_unless_the_broker_stops(
    fail_stop: bool,
) -> None:
    """The "fsyncgate" model (a failed fsync drops the writes it should have made durable,
    reads still see them): a broker that stops at its failed fsync loses nothing acknowledged;
    one whose groups restart from their files and go on, as before, loses acknowledged
    appends once a later trim's sync succeeds over the dropped writes and deletes their rows
    (seed 4, fsync errors only, the same schedule for both; seeds 6 and 9, which did before
    a clean close kept the WAL and before the runner took the replicas' apply lag, no longer
    drop writes that a trim then forgets: ``_powerloss_groups_mutants.FSYNC_SEEDS``)."""
    if fail_stop:
        stats = run_seed(4, cuts=3, steps_between=60, faults=("fsync",))
        assert stats.stopped == 1 and stats.dropped and stats.acked
    else:
        assert mutant_caught("rebuild_after_failed_fsync", (4,))


@LONG
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_runner_catches_each_mutant(mutant: str) -> None:
    """Each mutant of the shared log's rules (``_powerloss_groups_mutants``) fails a seed
    that passes without it (1 to 3 s each: a long run)."""
    assert mutant_caught(mutant)


@LONG
@pytest.mark.parametrize("first", range(1, 201, 20))
def test_many_seeds_of_groups_on_a_shared_log(first: int) -> None:
    for seed in range(first, first + 20):
        run_seed(seed, faults=FAULT_KINDS)
