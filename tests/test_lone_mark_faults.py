"""The lone save's mark written only when it changed (``Store._marked``,
docs/performance-history.md, "Several groups: the leader's save (eighth round)"), under
faults: ``_marked`` must always be the ``shared_seq`` the group's file last committed (a save
that skips an unchanged mark relies on it), and a crash image at every sync point must restart
with every acknowledged append.

Random turns of three groups on one shared log: batches (their rows, then each group's
transaction at NORMAL marking its row; some rows truncating from their first entry, so that a
mark left behind would replay a truncation over later entries), lone saves at FULL, group
transactions that fail after writing their mark or their hard state (the driver saves the
same Ready again), WAL checkpoints, compactions and snapshot installs, trims, and clean
reopens."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import outcome
import pytest

from tests.long_runs import LONG
from tests.test_shared_log import Broker, Group, imaged_broker
from trio_broker._storage._shared_log import _Job
from trio_broker._storage._store import Store


@contextlib.contextmanager
def _fails_once(store: Store) -> Iterator[list[bool]]:
    """The store's next metadata write inside a save (its hard state, its applied index or its
    mark) fails after its statement ran: the transaction rolls back, ``fired[0]`` says whether
    it happened."""
    real = store._set_meta
    fired = [False]

    def failing(items: dict[str, Any]) -> None:
        real(items)
        if not fired[0]:
            fired[0] = True
            raise apsw.FullError("injected: the group's file is full")

    store._set_meta = failing  # type: ignore[method-assign]
    try:
        yield fired
    finally:
        del store._set_meta


@contextlib.contextmanager
def _drop_fails(broker: Broker) -> Iterator[None]:
    """The shared log's drop of a failed save's row fails: the row stays, and the group's
    next mark must cover it (else a restart replays it over what the group saved after)."""
    log = broker.log
    assert log is not None

    def failing(seq: int) -> None:
        raise apsw.FullError("injected: the shared log is full")

    log.drop = failing  # type: ignore[method-assign]
    try:
        yield
    finally:
        del log.drop


def _marks_agree(broker: Broker) -> None:
    for g in broker.groups:
        assert g.store._marked == g.store.get_meta("shared_seq", 0), (
            g.store._marked,
            g.store.get_meta("shared_seq"),
        )


def _batch(broker: Broker, rng: random.Random) -> None:
    groups = rng.sample(broker.groups, rng.choice([2, 3]))
    numbers = broker._appends(groups)
    saves = []
    for g, ns in numbers:
        save = g.propose([Broker._append(n) for n in ns])
        if rng.random() < 0.4:  # (a row that truncates: replayed over later entries, it cuts)
            save = functools.partial(save, truncate_from=g.new[0].index)
        saves.append(save)
    victim = rng.randrange(len(saves)) if rng.random() < 0.4 else None
    with contextlib.ExitStack() as stack:
        fired = None
        if victim is not None:
            fired = stack.enter_context(_fails_once(numbers[victim][0].store))
            if rng.random() < 0.5:  # (and its row's drop fails too: the row stays)
                stack.enter_context(_drop_fails(broker))
        outcomes = broker.committer._commit([_Job(s, False, None, 1) for s in saves])
    for i, result in enumerate(outcomes):
        if isinstance(result, outcome.Error):
            # The victim's injected failure, or a failed drop met by another save's journal
            # stage (a failed save's row is deleted with its group's next row): its driver
            # saves the same Ready again, alone.
            assert isinstance(result.error, apsw.FullError), result.error
            assert i == victim or fired is not None
            broker.turn([saves[i]])
        else:
            result.unwrap()
    broker._applied(numbers)


def _lone(broker: Broker, rng: random.Random) -> None:
    g = rng.choice(broker.groups)
    (numbers,) = broker._appends([g])
    for save in (g.propose([Broker._append(n) for n in numbers[1]]), None):
        save = g.apply() if save is None else save
        if rng.random() < 0.3:
            with _fails_once(g.store) as fired:
                try:
                    broker.turn([save])
                except apsw.FullError:
                    assert fired[0]
                else:
                    assert not fired[0]
                    continue
            broker.turn([save])  # (the same Ready again)
        else:
            broker.turn([save])
    broker.acked[broker.groups.index(g)].extend(numbers[1])


def _reopen(broker: Broker) -> None:
    broker.close()
    broker.start()


def run(tmp_path: Path, seed: int, steps: int) -> int:
    rng = random.Random(seed)
    checked = 0
    with imaged_broker(
        tmp_path, f"mark-faults-{seed}", vfs_seed=seed, broker_seed=seed + 1, where=f"{seed} "
    ) as (broker, check):
        for _ in range(steps):
            r = rng.random()
            if r < 0.3:
                _batch(broker, rng)
            elif r < 0.6:
                _lone(broker, rng)
            elif r < 0.7:
                g: Group = rng.choice(broker.groups)
                g.store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            elif r < 0.85:
                broker.step()
            elif r < 0.93:
                assert broker.log is not None
                broker.log.trim()
            else:
                _reopen(broker)
            _marks_agree(broker)
            checked += check()
    return checked


def test_the_mark_known_is_the_files_and_every_image_keeps_what_was_acknowledged(
    tmp_path: Path,
) -> None:
    assert run(tmp_path, 0, 8) > 6


@LONG
@pytest.mark.parametrize("seed", range(100, 130))
def test_the_mark_known_is_the_files_long(tmp_path: Path, seed: int) -> None:
    assert run(tmp_path, seed, 30) > 20


def test_a_lone_save_after_a_failed_batch_save_marks_the_row_its_drop_left(
    tmp_path: Path,
) -> None:
    """A batch's row for group 0 truncates from its first entry; the group's own transaction
    fails after writing its mark (rolled back), and the row's drop fails too (the row stays).
    Its driver saves the same Ready again alone (the mark then differs from the file's: it
    must be written), applies it, then saves and applies more alone. A crash image at every
    sync point keeps it all: a mark left at the file's old one would replay the row's
    truncation over the later entries at the restart."""
    with imaged_broker(tmp_path, "mark-drop-fails", vfs_seed=3, broker_seed=4) as (broker, check):
        first, second, _ = broker.groups
        numbers = broker._appends([first, second])
        saves = [g.propose([Broker._append(n) for n in ns]) for g, ns in numbers]
        saves[0] = functools.partial(saves[0], truncate_from=first.new[0].index)
        with _fails_once(first.store) as fired, _drop_fails(broker):
            outcomes = broker.committer._commit([_Job(s, False, None, 1) for s in saves])
        assert fired[0] and isinstance(outcomes[0].error, apsw.FullError)  # type: ignore[union-attr]
        outcomes[1].unwrap()
        assert broker.log is not None and broker.log.group_rows()[first.store._incarnation]
        broker.turn([saves[0]])  # (the same Ready again, alone: its row's number as mark)
        _marks_agree(broker)
        assert first.store._marked == first.store._shared_last
        broker._applied(numbers)
        for _ in range(2):
            (more,) = broker._appends([first])
            broker.turn([first.propose([Broker._append(n) for n in more[1]])])
            broker.turn([first.apply()])
            broker.acked[0].extend(more[1])
        _marks_agree(broker)
        assert check() >= 3
