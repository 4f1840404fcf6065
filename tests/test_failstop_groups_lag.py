"""The groups' power-loss runner (``trio_broker.testing._powerloss_groups``) builds its cores as
the runtime builds them (``_runtime._recovery.make_node``), with the replicas' apply lag: its
cuts and failed fsyncs land while a replica's lone appends wait unapplied, their commit
index's row left out of its saves, and acknowledged appends still survive. Without the lag
the runner tested a schedule the runtime no longer runs."""

from __future__ import annotations

import pytest

from trio_broker._core import _raft
from trio_broker._runtime._applied import APPLY_LAG
from trio_broker.testing._powerloss_groups import run_seed


def test_the_groups_runner_cuts_the_power_while_a_replicas_appends_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits = []
    ready = _raft.RaftNode.ready

    def counted(node: _raft.RaftNode) -> _raft.Ready:
        rd = ready(node)
        if not rd.committed_entries and rd.snapshot is None and node.commit > node.applied:
            waits.append(node.commit - node.applied)
        return rd

    monkeypatch.setattr(_raft.RaftNode, "ready", counted)
    stats = run_seed(9, cuts=1, steps_between=40)
    assert stats.cuts == 1 and stats.acked > 20, stats
    assert waits and max(waits) < APPLY_LAG, (len(waits), max(waits, default=0))
    assert stats.applies_waiting == len(waits) and stats.most_waiting == max(waits)
