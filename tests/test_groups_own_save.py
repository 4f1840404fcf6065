"""A save alone in its fsync on a shared store (a step's save, a committer batch of one): the
group's own transaction at ``FULL``, no shared-log row (``_shared_log.own_save``;
docs/performance-history.md, "Several groups' saves of one receive (seventh round)")."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import apsw
import pytest

from tests.test_shared_log import (
    BROKER,
    CONFIG,
    QUEUE,
    Broker,
    _images,
    check_images,
    imaged_broker,
    number,
    vfs_broker,
)
from trio_broker._core._commands import CreateQueue
from trio_broker._core._raft_messages import Entry, HardState, NoOp
from trio_broker._storage._checkpoint import checkpoint_on_commit
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog
from trio_broker._storage._store import Store


def test_a_save_alone_in_its_fsync_writes_no_row_and_is_durable(tmp_path: Path) -> None:
    """A committer batch of one save and a save with no stage write no shared-log row, and
    what they persisted survives a power cut right after they returned (their group's file
    synced); a batch of two groups writes one row each (before: a row for every save, each
    alone in a shared-log transaction and fsync of its own)."""
    with vfs_broker(tmp_path, "own-save") as (broker, vfs, checker):
        assert broker.log is not None
        rows = broker.log.group_rows()
        first, second, _ = broker.groups
        broker.turn([first.propose([Broker._append(1), Broker._append(2)])])
        second.propose([Broker._append(3)])(stage=None)
        assert broker.log.group_rows() == rows and broker.committer.own == 1
        broker.acked[0].extend([1, 2])  # (persisted: a replica acknowledges now)
        broker.acked[1].append(3)
        dest = tmp_path / "image"
        _images(vfs, broker.root, dest)
        assert check_images([(dest, [list(a) for a in broker.acked])], checker) == 1
        broker.turn([first.apply(), second.apply()])
        broker.turn([g.propose([Broker._append(4 + i)]) for i, g in enumerate(broker.groups)])
        grown = broker.log.group_rows()
        assert sum(grown.values()) == sum(rows.values()) + 3, (rows, grown)
        assert broker.committer.own == 1


def test_a_row_left_by_a_failed_save_is_never_replayed_over_a_later_save_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's row whose group transaction failed and whose drop failed too stays in the
    shared log; the group's next save, alone in its fsync, cuts the log under it and writes
    other entries. It records that row as the file's mark, so a reopen does not put the
    failed save's entries back over the later ones (without the mark it would: the row's
    number is above what the file last recorded)."""
    log = SharedLog(tmp_path / SHARED_LOG_FILE)
    store = Store(tmp_path / "G0", shared=log)
    try:
        store.bootstrap(CONFIG)
        created = [Entry(1, 1, CreateQueue(QUEUE)), Entry(1, 2, NoOp())]
        store.save(hard_state=HardState(1, BROKER, 0), entries=created)
        store.save(hard_state=HardState(1, BROKER, 2), committed=created)
        with log.transaction:  # (a batch's journal stage: the row is durable)
            store.save(
                hard_state=HardState(1, BROKER, 2),
                entries=[Entry(1, 3, NoOp()), Entry(1, 4, NoOp())],
                stage="journal",
            )
        real = Store._set_meta

        def broken(self: Store, items: dict[str, Any]) -> None:
            if "shared_seq" in items:
                raise apsw.IOError("the group's file failed")
            real(self, items)

        monkeypatch.setattr(Store, "_set_meta", broken)
        with pytest.raises(apsw.IOError):  # its apply stage failed (the shared commit did not)
            store.save(
                hard_state=HardState(1, BROKER, 2),
                entries=[Entry(1, 3, NoOp()), Entry(1, 4, NoOp())],
                stage="apply",
            )
        monkeypatch.setattr(Store, "_set_meta", real)
        # ... and so did the row's drop ("abandon": its number taken, errors suppressed).
        store._pending_seq = None
        assert sum(log.group_rows().values()) == 1
        store.save(
            hard_state=HardState(2, BROKER, 2), truncate_from=3, entries=[Entry(2, 3, NoOp())]
        )
    finally:
        store.close()
    store = Store(tmp_path / "G0", shared=log)
    try:
        assert [(e.index, e.term) for e in store.raft_state().entries] == [(1, 1), (2, 1), (3, 2)]
    finally:
        store.close()
        log.close()


def test_batches_of_one_and_of_several_keep_every_acknowledged_append_at_every_sync_point(
    tmp_path: Path,
) -> None:
    """Turns of one, two or three groups (a batch of one alone in its fsync, in its group's
    file; the others one shared-log transaction, then each group's at NORMAL): a crash image
    at every sync point restarts with every acknowledged append of every group."""
    rng = random.Random(4)
    checked = 0
    with imaged_broker(tmp_path, "own-images", vfs_seed=2, broker_seed=3) as (broker, check):
        for g in broker.groups:
            checkpoint_on_commit(g.store._db, 20)
        for _ in range(5):
            groups = rng.sample(broker.groups, rng.choice([1, 1, 2, 3]))
            numbers = broker._appends(groups)
            broker.turn([g.propose([Broker._append(n) for n in ns]) for g, ns in numbers])
            for g, _ in numbers:  # (applied alone or together, as the turns come)
                broker.turn([g.apply()])
            for g, ns in numbers:
                broker.acked[broker.groups.index(g)].extend(ns)
            checked += check()
        assert checked > 10 and broker.committer.own > 4, (checked, broker.committer.own)
        assert all(
            [number(m) for m in g.store.messages(QUEUE)] == sorted(broker.acked[i])
            for i, g in enumerate(broker.groups)
        )
