"""The commit index's row is left out only of a save that applies up to it
(``_store._hard_state_items``): a save that applies fewer entries than its commit index
covers (a replica catching up, ``max_apply`` entries a Ready; a term written with a commit
index whose apply waits) still writes the row, so a restart reads the commit index it
wrote, not the lower applied index."""

from __future__ import annotations

from trio_broker._core import _commands as cmd
from trio_broker._core._raft_messages import Entry, HardState
from trio_broker._storage import Store


def test_a_save_applying_below_its_commit_index_writes_the_commit_row(tmp_path):
    create = Entry(1, 1, cmd.CreateQueue("Q-1"))
    appends = [
        Entry(1, i, cmd.AppendMessage("Q-1", b'"v"', None, None, 1_765_000_000_000))
        for i in (2, 3, 4, 5)
    ]
    store = Store(tmp_path)
    try:
        store.save(hard_state=HardState(1, None, 0), entries=[create, *appends])
        # Commit index 5, entries applied up to 3 (the rest in the next Ready).
        store.save(hard_state=HardState(1, None, 5), committed=[create, *appends[:2]])
        assert store.get_meta("applied_index") == 3
        assert store.get_meta("raft_commit") == 5
        # A term moved, applied up to 4, the commit index unchanged: its row stays 5.
        store.save(hard_state=HardState(2, None, 5), committed=appends[2:3])
        assert (store.get_meta("raft_term"), store.get_meta("raft_commit")) == (2, 5)
    finally:
        store.close()
    reopened = Store(tmp_path)
    try:
        state = reopened.raft_state()
        assert (state.hard_state.term, state.hard_state.commit, state.applied) == (2, 5, 4)
    finally:
        reopened.close()
