"""The commit index's row left out of a save that applies up to it
(docs/performance-history.md, "One client, one append at a time (ninth round)"): the applied
index written in the same
transaction says it, and a restart reads the larger of the two, so a restarted broker
neither applies an entry twice nor forgets one it applied."""

from __future__ import annotations

import random

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft as raft
from trio_broker._core._raft_messages import Config, Entry, HardState, SnapshotMeta
from trio_broker._storage import Store


def _node(state: object) -> raft.RaftNode:
    return raft.RaftNode(
        "B-1",
        hard_state=state.hard_state,  # type: ignore[attr-defined]
        snapshot=SnapshotMeta(0, 0, Config(voters=frozenset({"B-1", "B-2", "B-3"}))),
        entries=state.entries,  # type: ignore[attr-defined]
        applied=state.applied,  # type: ignore[attr-defined]
        rng=random.Random(1),
    )


def test_a_save_applying_up_to_its_commit_writes_no_commit_row_and_a_restart_applies_nothing_again(
    tmp_path,
):
    store = Store(tmp_path)
    try:
        create = Entry(1, 1, cmd.CreateQueue("Q-1"))
        appends = [
            Entry(1, i, cmd.AppendMessage("Q-1", b'"v"', None, None, 1_765_000_000_000))
            for i in (2, 3, 4)
        ]
        store.save(hard_state=HardState(1, None, 0), entries=[create, *appends[:2]])
        # A replica's Ready of the sequential workload: the next entry, the commit index
        # moved, the entries up to it applied, one transaction.
        store.save(
            hard_state=HardState(1, None, 3), entries=appends[2:], committed=[create, *appends[:2]]
        )
        assert store.get_meta("raft_commit") == 0  # (its row is not written again)
        assert store.get_meta("applied_index") == 3
        # A commit index beyond what the transaction applies is written as before.
        store.save(hard_state=HardState(1, None, 4))
        assert store.get_meta("raft_commit") == 4
    finally:
        store.close()

    reopened = Store(tmp_path)
    try:
        state = reopened.raft_state()
        assert (state.hard_state.commit, state.applied) == (4, 3)
        reopened.save(committed=appends[2:])
    finally:
        reopened.close()
    again = Store(tmp_path)
    try:
        state = again.raft_state()
        assert (state.hard_state.commit, state.applied) == (4, 4)
        node = _node(state)
        assert (node.commit, node.applied) == (4, 4)
        assert node.ready().committed_entries == ()  # (nothing applied twice)
        assert again.messages("Q-1") == [b'"v"'] * 3
    finally:
        again.close()


def test_the_applied_index_stands_for_a_commit_row_left_behind(tmp_path):
    """The restart's commit index is the applied index when the row is older: every applied
    entry was committed, so the core neither applies below it again nor forgets it (nor
    takes its log for shortened while it holds those entries)."""
    store = Store(tmp_path)
    try:
        create = Entry(1, 1, cmd.CreateQueue("Q-1"))
        append = Entry(1, 2, cmd.AppendMessage("Q-1", b'"v"', None, None, 1_765_000_000_000))
        store.save(hard_state=HardState(1, None, 0), entries=[create, append])
        store.save(hard_state=HardState(1, None, 2), committed=[create, append])
        state = store.raft_state()
        assert store.get_meta("raft_commit") == 0
        assert (state.hard_state.commit, state.applied) == (2, 2)
        node = _node(state)
        assert (node.commit, node.applied, node.recovering_until) == (2, 2, None)
        assert node.ready().committed_entries == ()
    finally:
        store.close()
