"""A broker that comes back with less than it acknowledged does not vote until it caught up.

On an honest disk a restarted broker's log ends where its last durable write left it. A disk
that lies about a sync can lose entries the broker acknowledged; its vote then rests on a log
that no longer holds them, and (the Raft paper's 5.4 safety argument counts that vote as a
copy of every entry it acknowledged) a candidate without a committed entry could win. Storage
records where the log ended at each durable write (``acknowledged``); a node whose log ends
below it starts *recovering*: it neither votes nor campaigns until a leader brought its log
back to that index.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft import RaftNode, Role
from trio_broker._core._raft_messages import (
    Config,
    DenyReason,
    ElectionRequest,
    ElectionResponse,
    Entry,
    HardState,
    SnapshotMeta,
)
from trio_broker.testing._sim_cluster import Cluster


def lying_disk_cluster(remember: bool) -> tuple[Cluster, dict[Any, int], int]:
    """Brokers 1 and 2 commit X while 3 is cut off; then the whole cluster loses power, 2's
    disk loses X although it acknowledged it, and 1 stays down. Returns the cluster (2 and 3
    restarted, healed), what each broker's storage recorded as acknowledged, and X's index.

    With ``remember`` the restarted nodes are told what they had acknowledged."""
    acknowledged: dict[Any, int] = {}

    def factory(i: Any, **kwargs: Any) -> RaftNode:
        return RaftNode(i, acknowledged=acknowledged.get(i) if remember else None, **kwargs)

    cluster = Cluster((1, 2, 3), seed=7, node_factory=factory)
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.isolate(3)
    _, x = cluster.propose(AppendMessage("q", b'"X"'))
    cluster.stabilize()
    assert cluster.node(1).commit >= x and cluster.node(2).log.last_index >= x
    for i in (1, 2, 3):
        acknowledged[i] = cluster.storage[i].entries[-1].index
        cluster.crash(i)
    # The lie: 2's disk had said X was durable, and lost it, and what it wrote after.
    st = cluster.storage[2]
    st.entries = [e for e in st.entries if e.index < x]
    st.hard_state = attrs.evolve(st.hard_state, commit=min(st.hard_state.commit, x - 1))
    cluster.heal()
    cluster.restart(2)
    cluster.restart(3)
    return cluster, acknowledged, x


def test_a_broker_that_lost_acknowledged_entries_does_not_vote():
    """5.4.1 (election restriction) relies on every vote coming from a log that holds what the
    voter acknowledged. Without the recovering state, 2 and 3 (neither holds X) elect one of
    them and X, committed, is gone; with it, 2 denies and no leader is elected without X."""
    cluster, _, x = lying_disk_cluster(remember=False)
    cluster.tick(n=60)
    leader = cluster.leader()
    assert leader is not None, "the control scenario elects a leader without X"
    assert all(e.payload != AppendMessage("q", b'"X"') for e in leader.log.entries)

    cluster, _, x = lying_disk_cluster(remember=True)
    assert cluster.node(2).recovering_until == x
    assert cluster.node(3).recovering_until is None  # its log ends where its disk said
    cluster.tick(n=60)
    assert cluster.leader() is None
    assert all(not ({2, 3} & leaders) for leaders in cluster.leaders_by_term.values())
    assert cluster.node(2).role is Role.FOLLOWER  # it never campaigned either


def test_it_votes_again_once_a_leader_brought_its_log_back():
    """Once the broker that still holds X is back, it wins (3's vote: its log is more up to
    date), replicates X to 2, and 2 votes again."""
    cluster, _, x = lying_disk_cluster(remember=True)
    cluster.tick(n=30)
    cluster.restart(1)
    cluster.tick(n=60)
    leader = cluster.leader()
    assert leader is not None and leader.id == 1
    assert cluster.node(2).recovering_until is None
    assert cluster.node(2).log.entry(x).payload == AppendMessage("q", b'"X"')
    assert any(e.index == x for e in cluster.applied[2])
    # And 2 votes again: with 1 cut off, 2 and 3 elect a leader between them.
    cluster.isolate(1)
    cluster.tick(n=60)
    assert cluster.leader() is not None and cluster.leader().id in (2, 3)


def test_recovering_broker_denies_pre_votes_and_votes():
    """Both rounds of an election (thesis 9.6's pre-vote, then the vote) are denied."""
    node = RaftNode(
        2,
        hard_state=HardState(term=3, voted_for=None, commit=4),
        snapshot=SnapshotMeta(0, 0, Config({1, 2, 3})),
        entries=[Entry(1, i, None) for i in range(1, 5)],
        rng=random.Random(1),
        acknowledged=6,
    )
    for pre_vote in (True, False):
        node.step(
            ElectionRequest(
                src=3,
                dst=2,
                term=4,
                cluster_version=0,
                pre_vote=pre_vote,
                last_log_index=4,
                last_log_term=1,
            )
        )
        (reply,) = node.ready().persisted_messages
        node.advance()
        assert isinstance(reply, ElectionResponse)
        assert not reply.granted and reply.reason is DenyReason.LOG_BEHIND
    for _ in range(10 * node.election_ticks):
        node.tick()
    assert node.role is Role.FOLLOWER


def test_an_honest_restart_is_not_recovering():
    """On a disk that kept what it said, the log ends at (or past) the recorded index: the
    broker votes and campaigns as before."""
    entries = [Entry(1, i, None) for i in range(1, 5)]
    for acknowledged in (None, 3, 4):
        node = RaftNode(
            1,
            hard_state=HardState(term=1, voted_for=None, commit=4),
            snapshot=SnapshotMeta(0, 0, Config({1})),
            entries=entries,
            rng=random.Random(1),
            acknowledged=acknowledged,
        )
        assert node.recovering_until is None
        for _ in range(10 * node.election_ticks):
            node.tick()
        assert node.role is not Role.FOLLOWER
