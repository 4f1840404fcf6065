"""Mutants of the shared log's durability rules, to show that the groups' power-loss runner
(:mod:`._powerloss_groups`) catches each (as :mod:`._sim_mutants` does for the simulator).

- ``own_save_at_normal``: a save alone in its fsync (``own_save``: a batch of one, an
  in-step save) commits its group's file at ``NORMAL`` where it must be ``FULL``: it writes
  no shared-log row, so nothing else makes it durable.
- ``trim_before_commit``: a trim (or a close) forgets a group's rows without first committing
  its file at ``FULL``: rows whose group transactions ran at ``NORMAL`` are deleted before
  those transactions are durable.
- ``rebuild_after_failed_fsync``: the behaviour before the fail-stop (docs/reliability.md,
  "A failed fsync stops the broker"): a failed fsync restarts the group's core from its file
  and the broker goes on; a trim keeps the error for the next, and a batch trims after it.
  Under the "fsyncgate" model (a failed fsync drops the writes it should have made durable,
  reads still see them) a later trim's sync succeeds over the dropped writes and deletes the
  shared-log rows that were their only durable copy: a power cut loses acknowledged appends.
  Run with fsync errors only (the other mutants: power cuts only).

Usage::

    python -m trio_broker.testing._powerloss_groups_mutants
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import apsw

from .._storage import _shared_log
from .._storage._store import Store
from ._powerloss_cluster import PowerLossFailure
from ._powerloss_groups import run_seed


def own_save_at_normal(store: Store) -> None:
    real = store.save

    def save(**kw: Any) -> Any:
        if kw.get("stage") not in (None, "own"):
            return real(**kw)
        store._db.execute("PRAGMA synchronous = NORMAL")
        try:
            return real(**kw)
        finally:
            store._db.execute("PRAGMA synchronous = FULL")

    store.save = save  # type: ignore[method-assign]


def trim_before_commit(store: Store) -> None:
    """(The trim runs after each of the group's transactions at ``NORMAL``: in the runner a
    trim comes every 50 turns or so, and a lone save at ``FULL`` syncs the group's file
    before most of them.)"""
    store.sync_shared = lambda: store._shared_last  # type: ignore[method-assign]
    real = store.save

    def save(**kw: Any) -> Any:
        results = real(**kw)
        if kw.get("stage") == "apply" and store._shared is not None:
            store._shared.trim()
        return results

    store.save = save  # type: ignore[method-assign]


MUTANTS: dict[str, tuple[Callable[[Store], None], tuple[int, ...]]] = {
    "own_save_at_normal": (own_save_at_normal, (1, 2)),
    "trim_before_commit": (trim_before_commit, (1, 2)),
}
"""Each mutant, and the seeds (power cuts only, short) that must catch it."""

FSYNC_SEEDS: tuple[int, ...] = (4, 21)
"""The seeds (fsync errors only, short) that must catch ``rebuild_after_failed_fsync``: of
seeds 1 to 40, 4 and 21 do, while the real code stops the failed broker on both and loses
none (45,320 and 20,600 bytes dropped). The failed fsync must land on a group whose dropped
writes no later save rewrites before a trim's sync succeeds over them and deletes the shared
log's rows: rare. 6 and 27 caught it until a clean close kept the WAL (its restart commit is
one more sync point of every close: other draws); 8 and 9 before the runner's cores took the
replicas' apply lag, which moved every seed's schedule the same way."""


def rebuild_after_failed_fsync(store: Store) -> None:
    """(Marks the run: see :func:`mutant_caught`; the stores are left as they are.)"""


MUTANTS[rebuild_after_failed_fsync.__name__] = (rebuild_after_failed_fsync, FSYNC_SEEDS)


@contextlib.contextmanager
def _trims_as_before() -> Iterator[None]:
    """The shared log's batches and trims as before the fail-stop: every ``apsw.Error`` of a
    trim kept for the next one, a batch's trim run whatever its saves met."""
    saved = (_shared_log.any_lost, _shared_log.suppress_unless_lost)
    _shared_log.any_lost = lambda results: False
    _shared_log.suppress_unless_lost = lambda: contextlib.suppress(apsw.Error)
    try:
        yield
    finally:
        _shared_log.any_lost, _shared_log.suppress_unless_lost = saved


def mutant_caught(name: str, seeds: tuple[int, ...] | None = None) -> bool:
    """Whether a seed of ``seeds`` (the mutant's own by default) fails with the mutant."""
    mutate, own = MUTANTS[name]
    for seed in own if seeds is None else seeds:
        try:
            if mutate is rebuild_after_failed_fsync:
                with _trims_as_before():
                    run_seed(seed, cuts=3, steps_between=60, faults=("fsync",), fail_stop=False)
            else:
                run_seed(seed, cuts=3, steps_between=60, faults=(), on_open=mutate)
        except PowerLossFailure:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Which of seeds 1..N (``argv``: N, 10 by default) catch each mutant."""
    missed = 0
    last = int(argv[0]) if argv else 10
    for name in MUTANTS:
        caught = [s for s in range(1, last + 1) if mutant_caught(name, (s,))]
        print(f"{name}: caught by seeds {caught}")
        missed += not caught
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
