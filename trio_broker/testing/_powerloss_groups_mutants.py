"""Mutants of the shared log's durability rules, to show that the groups' power-loss runner
(:mod:`._powerloss_groups`) catches each (as :mod:`._sim_mutants` does for the simulator).

- ``own_save_at_normal``: a save alone in its fsync (``own_save``: a batch of one, an
  in-step save) commits its group's file at ``NORMAL`` where it must be ``FULL``: it writes
  no shared-log row, so nothing else makes it durable.
- ``trim_before_commit``: a trim (or a close) forgets a group's rows without first committing
  its file at ``FULL``: rows whose group transactions ran at ``NORMAL`` are deleted before
  those transactions are durable.

Usage::

    python -m trio_broker.testing._powerloss_groups_mutants
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

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


def mutant_caught(name: str, seeds: tuple[int, ...] | None = None) -> bool:
    """Whether a seed of ``seeds`` (the mutant's own by default) fails with the mutant."""
    mutate, own = MUTANTS[name]
    for seed in own if seeds is None else seeds:
        try:
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
