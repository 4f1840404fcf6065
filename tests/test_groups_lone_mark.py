"""A save alone in its fsync on a shared store writes its group file's mark (``shared_seq``)
only when it changed (docs/performance-history.md, "Several groups: the leader's save (eighth
round)"): the commit that wrote it is earlier in the same WAL, so the lone save's fsync makes
it durable too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_shared_log import BROKER, CONFIG, QUEUE, value
from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_messages import Entry, HardState, NoOp
from trio_broker._storage._shared_log import SHARED_LOG_FILE, SharedLog
from trio_broker._storage._store import Store


def _append(n: int) -> AppendMessage:
    return AppendMessage(QUEUE, value(n), appended_ms=n)


def test_a_lone_save_writes_the_mark_only_when_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a batch's save (its row, then its group's transaction marking that row), lone
    durable saves leave the mark as it is (before: written again by each); the next batch's
    row is marked again, and a reopen replays nothing over the lone saves' entries."""
    log = SharedLog(tmp_path / SHARED_LOG_FILE)
    store = Store(tmp_path / "G0", shared=log)
    marks: list[Any] = []
    real = Store._set_meta

    def noting(self: Store, items: dict[str, Any]) -> None:
        if "shared_seq" in items:
            marks.append(items["shared_seq"])
        real(self, items)

    def batch(entries: list[Entry], hard: HardState) -> None:
        with log.transaction:  # (the shared log's commit, then the group's at NORMAL)
            store.save(hard_state=hard, entries=entries, stage="journal")
        store.save(hard_state=hard, entries=entries, stage="apply")

    try:
        store.bootstrap(CONFIG)
        created = [Entry(1, 1, CreateQueue(QUEUE)), Entry(1, 2, NoOp())]
        store.save(hard_state=HardState(1, BROKER, 0), entries=created)
        store.save(hard_state=HardState(1, BROKER, 2), committed=created)
        monkeypatch.setattr(Store, "_set_meta", noting)
        batch([Entry(1, 3, _append(3))], HardState(1, BROKER, 2))
        assert len(marks) == 1 and marks[0] > 0
        row = marks[0]
        for i in range(4, 8):  # lone durable saves, then an apply-only one
            store.save(hard_state=HardState(1, BROKER, i - 1), entries=[Entry(1, i, _append(i))])
        store.save(hard_state=HardState(1, BROKER, 7), committed=[])
        assert marks == [row]
        batch([Entry(1, 8, _append(8))], HardState(1, BROKER, 7))
        assert len(marks) == 2 and marks[1] > row
        store.save(hard_state=HardState(1, BROKER, 8), entries=[Entry(1, 9, _append(9))])
        assert len(marks) == 2
        monkeypatch.setattr(Store, "_set_meta", real)
        assert store.get_meta("shared_seq") == marks[1]
    finally:
        store._lock.release()  # (no clean close: its rows and its unsynced marks stay)
        store._db.close()
    store = Store(tmp_path / "G0", shared=log)
    try:
        assert [e.index for e in store.raft_state().entries] == list(range(1, 10))
        assert store.get_meta("shared_seq") == marks[1]
    finally:
        store.close()
        log.close()
