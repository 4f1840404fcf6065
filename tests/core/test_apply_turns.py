"""The replicas take turns applying their waiting appends (``RaftNode``'s ``_apply_turn``):
in a sequential stream no two replicas of three voters apply on the same entry, so the
leader always has an acknowledgement whose transaction wrote the entry alone; fewer than
``APPLY_LAG`` entries still wait on each; the turns are shared out again when the
configuration or the leader changes (docs/performance.md, "Replicas take turns applying
(tenth round)")."""

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_messages import ChangeAction, ConfigChange
from trio_broker._runtime._applied import APPLY_LAG, applies_later
from trio_broker.testing._sim_cluster import Cluster


def _cluster(ids=(1, 2, 3), **options) -> Cluster:
    return Cluster(ids, apply_lag=APPLY_LAG, apply_later=applies_later, **options)


def _stream(cluster: Cluster, count: int) -> tuple[list[set], int]:
    """From replicas caught up, one append at a time, each to the end of its replication
    (its REPLICATE carries the commit index of the one before): which replicas applied on
    each, and the most committed entries seen waiting on any of them."""
    leader = cluster.leader()
    assert leader is not None
    cluster.tick(n=leader.heartbeat_ticks)  # (the replicas learn the last commit, apply it)
    cluster.stabilize()
    replicas = [i for i in cluster.live() if i in leader.config.voters and i != leader.id]
    applying = []
    most = 0
    for n in range(count):
        before = {i: cluster.node(i).applied for i in replicas}
        cluster.propose(AppendMessage("q", b'"v"', None, None, n))
        cluster.stabilize()
        applying.append({i for i in replicas if cluster.node(i).applied != before[i]})
        for i in replicas:
            node = cluster.node(i)
            most = max(most, node.commit - node.applied)
    return applying, most


def _started(cluster: Cluster, leader: int = 1) -> None:
    cluster.elect(leader)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()


def test_two_replicas_of_three_never_apply_on_the_same_entry():
    cluster = _cluster()
    _started(cluster)
    applying, most = _stream(cluster, 8 * APPLY_LAG)
    assert all(len(both) <= 1 for both in applying), applying
    # Each still applies once per APPLY_LAG entries, at its own turn, and lets fewer than
    # APPLY_LAG wait: the bound is the one without turns.
    assert sum(2 in both for both in applying) >= 7
    assert sum(3 in both for both in applying) >= 7
    assert 0 < most < APPLY_LAG
    # The turns are half the lag apart: an apply is never on two consecutive entries.
    assert (cluster.node(2)._apply_turn(), cluster.node(3)._apply_turn()) == (0, APPLY_LAG // 2)
    assert cluster.applied[2] == cluster.applied[1][: len(cluster.applied[2])]


def test_four_replicas_of_five_take_the_four_turns():
    cluster = _cluster((1, 2, 3, 4, 5))
    _started(cluster)
    applying, most = _stream(cluster, 6 * APPLY_LAG)
    # At most one replica applies on an entry: three of four acknowledge it without an
    # apply, where the leader needs two.
    assert all(len(some) <= 1 for some in applying), applying
    assert sorted(cluster.node(i)._apply_turn() for i in (2, 3, 4, 5)) == [0, 1, 2, 3]
    assert 0 < most < APPLY_LAG


def test_the_turns_follow_membership_and_leader_changes():
    cluster = _cluster(joining=(4,))
    leader = cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    assert all(len(both) <= 1 for both in _stream(cluster, 3 * APPLY_LAG)[0])
    turns = {i: cluster.node(i)._apply_turn() for i in (2, 3)}
    assert turns == {2: 0, 3: APPLY_LAG // 2}
    # A learner joins, then votes: three replicas share the four turns.
    leader.propose_config_change(ConfigChange(ChangeAction.ADD_LEARNER, 4))
    cluster.tick(n=4)
    leader.propose_config_change(ConfigChange(ChangeAction.PROMOTE, 4))
    cluster.tick(n=4)
    assert cluster.node(4).config.voters == {1, 2, 3, 4}
    applying, most = _stream(cluster, 4 * APPLY_LAG)
    assert all(len(some) <= 1 for some in applying), applying
    assert {i: cluster.node(i)._apply_turn() for i in (2, 3, 4)} == {2: 0, 3: 1, 4: 2}
    assert most < APPLY_LAG
    # A voter leaves: the two replicas left take turns half the lag apart again.
    leader.propose_config_change(ConfigChange(ChangeAction.REMOVE, 3))
    cluster.tick(n=4)
    assert leader.config.voters == {1, 2, 4}
    applying, most = _stream(cluster, 4 * APPLY_LAG)
    assert all(len(both) <= 1 for both in applying), applying
    assert {i: cluster.node(i)._apply_turn() for i in (2, 4)} == {2: 0, 4: APPLY_LAG // 2}
    # Another leader: its replicas are 1 and 4 now.
    cluster.elect(4)
    cluster.stabilize()
    applying, most = _stream(cluster, 4 * APPLY_LAG)
    assert all(len(both) <= 1 for both in applying), applying
    assert {i: cluster.node(i)._apply_turn() for i in (1, 2)} == {1: 0, 2: APPLY_LAG // 2}
    assert most < APPLY_LAG
    assert cluster.applied[1] == cluster.applied[4][: len(cluster.applied[1])]
