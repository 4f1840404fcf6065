"""Membership changes (Raft thesis chapter 4) and snapshot install (paper section 7)."""

import pytest

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft import ConfigChangeRefused, Role
from trio_broker._core._raft_messages import (
    ChangeAction,
    ConfigChange,
    DataSync,
    ReplicateResponse,
)
from trio_broker.testing._sim_cluster import Cluster


def add_learner(n):
    return ConfigChange(ChangeAction.ADD_LEARNER, n)


def promote(n):
    return ConfigChange(ChangeAction.PROMOTE, n)


def remove(n):
    return ConfigChange(ChangeAction.REMOVE, n)


def fill(cluster, count, queue="q"):
    cluster.propose(CreateQueue(queue))
    for i in range(count):
        cluster.propose(AppendMessage(queue, str(i).encode()))
    cluster.stabilize()
    # the last commit index reaches the replicas with the next heartbeat
    cluster.tick(n=cluster.leader().heartbeat_ticks)


def test_membership_change_one_at_a_time():
    """Thesis 4.1: a second change is refused until the first one is committed."""
    cluster = Cluster((1, 2, 3), joining=(4, 5))
    leader = cluster.elect(1)
    cluster.isolate(2)
    cluster.isolate(3)
    leader.propose_config_change(add_learner(4))
    with pytest.raises(ConfigChangeRefused):
        leader.propose_config_change(add_learner(5))
    cluster.heal()
    cluster.tick(n=3)
    leader.propose_config_change(add_learner(5))
    cluster.tick(n=3)
    assert leader.config.learners == {4, 5}


def test_config_change_refused_before_leader_commits_in_its_term():
    """Thesis errata: a new leader must commit an entry of its term before changing config."""
    cluster = Cluster((1, 2, 3), joining=(4,))
    cluster.drop_if.append(lambda m: isinstance(m, ReplicateResponse))
    leader = cluster.elect(1)
    assert leader.commit < leader.log.last_index  # its no-op is not committed yet
    with pytest.raises(ConfigChangeRefused):
        leader.propose_config_change(add_learner(4))
    cluster.heal()
    cluster.tick(n=leader.election_ticks)  # the lost acks are recovered by probing again
    leader.propose_config_change(add_learner(4))


def test_config_takes_effect_when_appended_and_bumps_cluster_version():
    """Thesis 4.1: a server uses the latest configuration in its log, committed or not."""
    cluster = Cluster((1, 2, 3), joining=(4,))
    leader = cluster.elect(1)
    version = leader.cluster_version
    cluster.isolate(3)
    cluster.drop_if.append(lambda m: m.src in (2, 4) and m.dst == 1)  # no acks: no commit
    leader.propose_config_change(add_learner(4))
    cluster.stabilize()
    assert leader.commit < leader.log.last_index
    assert cluster.node(2).config.learners == {4}
    assert cluster.node(2).cluster_version == version + 1
    assert cluster.node(3).config.learners == frozenset()


def test_uncommitted_config_is_rolled_back_with_its_entry():
    """Thesis 4.1: a truncated config entry takes its configuration with it."""
    cluster = Cluster((1, 2, 3), joining=(4,))
    old = cluster.elect(1)
    cluster.isolate(1)
    old.propose_config_change(add_learner(4))
    cluster.stabilize()
    assert old.config.learners == {4}
    cluster.tick([2, 3], n=40)
    assert cluster.leader().id in (2, 3)
    cluster.heal()
    cluster.tick(n=5)
    assert old.role is Role.FOLLOWER and old.config.learners == frozenset()


def test_learner_not_counted_in_quorum():
    """Thesis 4.2.1: learners receive the log but never count towards a majority."""
    cluster = Cluster((1, 2, 3), learners=(4,), check_quorum=False)
    leader = cluster.elect(1)
    fill(cluster, 2)
    assert cluster.apps[4] == cluster.apps[1]  # learners do get the log
    cluster.crash(2)
    cluster.crash(3)
    _, index = leader.propose(AppendMessage("q", b"x"))
    cluster.tick(n=5)
    assert cluster.node(4).log.last_index >= index
    assert leader.commit < index, "committed with the learner's acknowledgement"


def test_learner_never_campaigns():
    """Learners are not promotable: losing the leader does not make them start elections."""
    cluster = Cluster((1, 2, 3), learners=(4,))
    cluster.elect(1)
    term = cluster.node(4).term
    cluster.crash(1)
    cluster.crash(2)
    cluster.crash(3)
    cluster.tick([4], n=100)
    assert cluster.node(4).role is Role.FOLLOWER and cluster.node(4).term == term


def test_join_as_learner_then_promote_once_caught_up():
    """Diagram 4 JOIN_CLUSTER: a new broker joins as a learner, catches up, becomes a voter."""
    cluster = Cluster((1, 2, 3), joining=(4,))
    leader = cluster.elect(1)
    fill(cluster, 10)
    leader.propose_config_change(add_learner(4))
    cluster.tick(n=4)
    assert leader.caught_up(4)
    assert cluster.apps[4] == cluster.apps[1]
    leader.propose_config_change(promote(4))
    cluster.tick(n=4)
    for i in cluster.live():
        assert cluster.node(i).config.voters == {1, 2, 3, 4}
        assert cluster.node(i).cluster_version == 3
    # Four voters: a quorum is now three, so two crashes stop commits.
    cluster.crash(2)
    cluster.crash(3)
    _, index = leader.propose(AppendMessage("q", b"late"))
    cluster.tick([1, 4], n=3)
    assert leader.commit < index


def test_removed_node_stops_campaigning():
    """Thesis 4.2.3: a removed server learns of its removal and does not disrupt the cluster.

    It never learns that its removal committed (the leader stops writing to it), so it may
    still ask for pre-votes (thesis 4.2.2: until the removal commits it may be needed), but a
    pre-vote changes no term: it never becomes a candidate, and the leader keeps its term."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    leader.propose_config_change(remove(3))
    cluster.tick(n=4)
    assert cluster.node(3).config.voters == {1, 2}
    term = leader.term
    cluster.isolate(1)
    cluster.isolate(2)
    for _ in range(100):
        cluster.tick([3])
        assert cluster.node(3).term == term and cluster.node(3).role is not Role.CANDIDATE
    assert cluster.node(3).role is not Role.LEADER
    cluster.heal()
    cluster.tick(n=10)
    assert leader.role is Role.LEADER and leader.term == term
    assert 3 not in leader.progress


def test_a_voter_removed_by_an_uncommitted_entry_still_campaigns():
    """Thesis 4.2.2, Figure 4.6: until its removal commits, a removed voter may hold the only
    log the other voters can elect (simulator seed 2003: a group stayed without a leader for
    ever). 1 proposes removing 4; only 4 gets the entry before 1 fails. 2 and 3, still under
    the old configuration, need 4's vote, which their shorter logs cannot win; 4 campaigns
    under its log's configuration (its own vote not counted), wins 2's and 3's, commits its
    removal and steps down, and 2 or 3 leads the new configuration."""
    cluster = Cluster((1, 2, 3, 4))
    leader = cluster.elect(1)
    cluster.isolate(2)
    cluster.isolate(3)
    leader.propose_config_change(remove(4))
    cluster.tick([1, 4], n=1)
    four = cluster.node(4)
    removal = four.log.last_index
    assert four.config.voters == {1, 2, 3} and four.commit < removal
    cluster.crash(1)
    cluster.heal()
    cluster.tick([2, 3, 4], n=300)
    new = cluster.leader()
    assert new is not None and new.id in (2, 3) and new.config.voters == {1, 2, 3}
    assert new.commit >= removal and new.log.entry(removal).term == four.log.entry(removal).term
    assert four.role is not Role.LEADER


def test_removed_leader_steps_down_after_commit():
    """Thesis 4.2.2: a leader removed from the configuration steps down once it commits."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    leader.propose_config_change(remove(1))
    cluster.tick(n=3)
    assert leader.role is Role.FOLLOWER
    cluster.tick(n=40)
    new = cluster.leader()
    assert new is not None and new.id in (2, 3)
    assert new.config.voters == {2, 3}


def test_snapshot_install_for_lagging_follower():
    """Paper 7: a follower that needs compacted entries gets the state machine (DATA_SYNC)."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.crash(3)
    fill(cluster, 20)
    cluster.tick([1, 2], n=2)
    index = cluster.compact(1)
    cluster.compact(2)
    assert cluster.node(1).log.first_index == index + 1
    cluster.restart(3)
    cluster.tick(n=4)
    syncs = [m for m in cluster.sent if isinstance(m, DataSync) and m.dst == 3]
    assert syncs and syncs[0].snapshot.index >= index
    assert cluster.apps[3] == cluster.apps[1]
    assert cluster.storage[3].snapshot.index >= index
    # And it keeps replicating normally afterwards.
    cluster.propose(AppendMessage("q", b"after"))
    cluster.tick(n=3)
    assert cluster.apps[3] == cluster.apps[1]
    assert cluster.apps[3].queue_length("q") == 21


def test_snapshot_survives_restart_of_the_follower_that_installed_it():
    """Paper 7: the installed snapshot is durable state, like the log it replaces."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.crash(3)
    fill(cluster, 5)
    cluster.tick([1, 2], n=2)
    cluster.compact(1)
    cluster.restart(3)
    cluster.tick(n=4)
    cluster.crash(3)
    cluster.restart(3)
    assert cluster.apps[3] == cluster.apps[1]


def test_joining_broker_receives_data_snapshot_after_compaction():
    """Diagram 4: a joining broker gets the complete data as a snapshot."""
    cluster = Cluster((1, 2, 3), joining=(4,))
    leader = cluster.elect(1)
    fill(cluster, 8)
    cluster.tick(n=2)
    cluster.compact(1)
    leader.propose_config_change(add_learner(4))
    cluster.tick(n=5)
    assert any(isinstance(m, DataSync) and m.dst == 4 for m in cluster.sent)
    assert cluster.apps[4] == cluster.apps[1]
    assert cluster.node(4).config.learners == {4}
