"""A replica's apply of lone appends in a sequential stream, with the runtime's own rule
(``APPLY_LAG``, ``applies_later``): one save in eight applies, the eight appends that waited,
an apply still short enough for the event loop's thread (``_save_place.light``); fewer than
eight ever wait (docs/performance.md, "Replicas take turns applying (tenth round)": on two
cores an apply slows the append it falls on, whichever replica makes it). Groups of lone
appends (100 connections x 1 in flight) still wait fewer than ``GROUP_LAG`` entries."""

from __future__ import annotations

from trio_broker._core._commands import AppendMessage, CommandGroup, CreateQueue
from trio_broker._core._raft import RaftNode, Ready
from trio_broker._runtime._applied import APPLY_LAG, GROUP_LAG, LAG_GROUP_APPENDS, applies_later
from trio_broker._runtime._save_place import light
from trio_broker.testing._sim_cluster import Cluster


def test_a_replica_applies_one_save_in_eight_of_a_sequential_stream(monkeypatch):
    applies: dict[int, list[int]] = {2: [], 3: []}
    saves = {2: 0, 3: 0}
    ready = RaftNode.ready

    def counted(node: RaftNode) -> Ready:
        rd = ready(node)
        if node.id in saves and rd.entries:
            saves[node.id] += 1
            if rd.committed_entries:
                applies[node.id].append(len(rd.committed_entries))
                assert light(rd.committed_entries)  # (applied on the loop, as a lone save)
        return rd

    cluster = Cluster((1, 2, 3), apply_lag=APPLY_LAG, apply_later=applies_later)
    leader = cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.tick(n=leader.heartbeat_ticks)  # (the replicas learn the creation's commit)
    cluster.stabilize()
    monkeypatch.setattr(RaftNode, "ready", counted)
    most = 0
    for n in range(64):
        cluster.propose(AppendMessage("q", b'"v"', None, None, n))
        cluster.stabilize()
        for i in (2, 3):
            most = max(most, cluster.node(i).commit - cluster.node(i).applied)
    for i in (2, 3):
        assert saves[i] == 64
        assert applies[i] == [8] * 7, applies[i]  # (every eighth save, eight appends)
    assert most == 7
    assert cluster.applied[2] == cluster.applied[1][: len(cluster.applied[2])]


def test_lone_appends_wait_up_to_seven_and_fewer_than_four_with_a_group_among_them():
    cluster = Cluster((1, 2, 3), apply_lag=APPLY_LAG, apply_later=applies_later)
    leader = cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.tick(n=leader.heartbeat_ticks)
    cluster.stabilize()
    follower = cluster.node(2)
    group = CommandGroup(
        tuple(AppendMessage("q", b'"v"', None, None, n) for n in range(LAG_GROUP_APPENDS))
    )
    waiting = []
    for payload in [AppendMessage("q", b'"v"', None, None, n) for n in range(9)] + [group] * 5:
        cluster.propose(payload)
        cluster.stabilize()
        waiting.append(follower.commit - follower.applied)
    # Each REPLICATE carries the commit of the entry before: 0 to 7 lone appends wait, the
    # eighth's commit applies them; then groups join the one lone append waiting, and once
    # a group is among them fewer than GROUP_LAG wait.
    assert waiting[:10] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1], waiting
    assert waiting[10:] == [2, 3, 0, 1], waiting
    assert GROUP_LAG == 4 < APPLY_LAG
