"""Leadership transfer (Raft thesis section 3.10; etcd's MsgTransferLeader / MsgTimeoutNow)."""

import contextlib
import random

import attrs
import pytest

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft import (
    ConfigChangeRefused,
    LeadershipTransferring,
    NotLeader,
    Role,
    TransferRefused,
)
from trio_broker._core._raft_messages import (
    ChangeAction,
    ConfigChange,
    ElectionRequest,
    Replicate,
    TimeoutNow,
)
from trio_broker.testing._sim_cluster import Cluster


def append(i: int) -> AppendMessage:
    return AppendMessage("q", str(i).encode())


def started(cluster: Cluster, leader_id: int = 1):
    leader = cluster.elect(leader_id)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    return leader


def test_transfer_to_an_up_to_date_voter():
    """Thesis 3.10: the target holds the whole log, gets TimeoutNow and wins in term + 1."""
    cluster = Cluster((1, 2, 3))
    leader = started(cluster)
    term = leader.term
    leader.transfer_leadership(2)
    cluster.stabilize()
    new = cluster.node(2)
    assert new.role is Role.LEADER and new.term == term + 1
    assert leader.role is Role.FOLLOWER and leader.leader_id == 2
    assert cluster.node(3).leader_id == 2
    assert any(isinstance(m, TimeoutNow) and m.dst == 2 for m in cluster.sent)


def test_transfer_votes_carry_the_flag_and_are_granted_within_the_leader_lease():
    """Thesis 3.10/4.2.3: voters that just heard from the leader still vote for the target."""
    cluster = Cluster((1, 2, 3))
    leader = started(cluster)
    cluster.tick(n=1)  # every voter is well within the leader's lease
    assert cluster.node(3).election_elapsed < cluster.node(3).election_ticks
    before = len(cluster.sent)
    leader.transfer_leadership(2)
    cluster.stabilize()
    requests = [m for m in cluster.sent[before:] if isinstance(m, ElectionRequest)]
    assert requests and all(m.transfer and not m.pre_vote for m in requests)
    assert cluster.node(2).is_leader


def test_without_the_transfer_flag_voters_in_the_lease_deny():
    """The counterpart: the same request without the flag is denied (leader_alive)."""
    cluster = Cluster((1, 2, 3))
    started(cluster)
    cluster.tick(n=1)
    voter = cluster.node(3)
    term = voter.term
    request = ElectionRequest(
        src=2,
        dst=3,
        term=term + 1,
        cluster_version=voter.cluster_version,
        pre_vote=False,
        last_log_index=voter.log.last_index,
        last_log_term=voter.log.last_term,
    )
    voter.step(request)
    (denied,) = voter.ready().persisted_messages
    voter.advance()
    assert not denied.granted and voter.term == term
    voter.step(attrs.evolve(request, transfer=True))
    (granted,) = voter.ready().persisted_messages
    assert granted.granted and voter.term == term + 1


def test_transfer_to_a_lagging_voter_catches_it_up_first():
    """Thesis 3.10 step 2: the leader brings the target's log up to date before TimeoutNow."""
    cluster = Cluster((1, 2, 3))
    leader = started(cluster)
    cluster.isolate(3)
    for i in range(20):
        cluster.propose(append(i))
    cluster.stabilize()
    assert cluster.node(3).log.last_index < leader.log.last_index
    last = leader.log.last_index
    leader.transfer_leadership(3)
    assert not any(isinstance(m, TimeoutNow) for m in cluster.sent)
    cluster.heal()
    cluster.tick(n=leader.election_ticks - 1)  # before the transfer would be abandoned
    new = cluster.node(3)
    assert new.is_leader
    timeout_now = next(i for i, m in enumerate(cluster.sent) if isinstance(m, TimeoutNow))
    assert any(
        isinstance(m, Replicate) and m.dst == 3 and m.entries and m.entries[-1].index == last
        for m in cluster.sent[:timeout_now]
    ), "the target got the leader's last entry before TimeoutNow"
    # Nothing committed was lost: the new leader holds every entry of the old one.
    assert [e.payload for e in new.log.slice(1, last + 1)] == [
        e.payload for e in leader.log.slice(1, last + 1)
    ]


@pytest.mark.parametrize("target", [1, 4, 9])
def test_transfer_refused_to_self_learner_or_stranger(target):
    """Only another voter can take over: a learner never campaigns (thesis 4.2.1)."""
    cluster = Cluster((1, 2, 3), learners=(4,))
    leader = started(cluster)
    with pytest.raises(TransferRefused):
        leader.transfer_leadership(target)
    assert leader.transfer_target is None
    leader.propose(append(0))  # still accepting proposals


def test_transfer_on_a_follower_raises_not_leader():
    cluster = Cluster((1, 2, 3))
    started(cluster)
    with pytest.raises(NotLeader):
        cluster.node(2).transfer_leadership(3)


def test_proposals_refused_while_transferring():
    """Thesis 3.10 step 1: the leader stops accepting client requests during a transfer."""
    cluster = Cluster((1, 2, 3), joining=(4,))
    leader = started(cluster)
    cluster.isolate(2)  # keep the transfer pending
    leader.transfer_leadership(2)
    with pytest.raises(LeadershipTransferring) as info:
        leader.propose(append(0))
    assert isinstance(info.value, NotLeader) and info.value.leader_id == 2
    with pytest.raises(ConfigChangeRefused):
        leader.propose_config_change(ConfigChange(ChangeAction.ADD_LEARNER, 4))


def test_transfer_aborted_after_an_election_timeout():
    """Thesis 3.10: if the transfer does not complete within an election timeout, the leader
    resumes accepting requests."""
    cluster = Cluster((1, 2, 3))
    leader = started(cluster)
    term = leader.term
    cluster.isolate(2)
    leader.transfer_leadership(2)
    cluster.tick([1, 3], n=leader.election_ticks - 1)
    assert leader.transfer_target == 2
    cluster.tick([1, 3], n=1)
    assert leader.transfer_target is None
    assert leader.is_leader and leader.term == term
    leader.propose(append(0))
    cluster.stabilize()


def test_lost_timeout_now_is_sent_again_on_the_next_heartbeat():
    cluster = Cluster((1, 2, 3))
    leader = started(cluster)
    cluster.drop_if.append(lambda m: isinstance(m, TimeoutNow))
    leader.transfer_leadership(2)
    cluster.stabilize()
    assert leader.is_leader
    cluster.drop_if.clear()
    cluster.tick([1], n=leader.heartbeat_ticks)
    assert cluster.node(2).is_leader


def test_transfer_aborted_when_the_leader_steps_down():
    cluster = Cluster((1, 2, 3))
    leader = started(cluster)
    cluster.isolate(1)
    leader.transfer_leadership(2)
    cluster.tick([1], n=leader.election_ticks * 2)  # check-quorum deposes it
    assert leader.role is not Role.LEADER and leader.transfer_target is None


def test_learner_ignores_timeout_now():
    cluster = Cluster((1, 2, 3), learners=(4,))
    leader = started(cluster)
    learner = cluster.node(4)
    learner.step(TimeoutNow(src=1, dst=4, term=leader.term, cluster_version=1))
    assert learner.role is Role.FOLLOWER and learner.term == leader.term


def test_best_transfer_target_is_the_most_caught_up_voter():
    cluster = Cluster((1, 2, 3, 4, 5), learners=(6,))
    leader = started(cluster)
    cluster.isolate(2)
    cluster.isolate(3)
    for i in range(5):
        cluster.propose(append(i))
    cluster.stabilize()
    assert leader.best_transfer_target() in (4, 5)
    assert cluster.node(2).best_transfer_target() is None


def test_best_transfer_target_skips_a_silent_voter_even_if_it_is_further_ahead():
    cluster = Cluster((1, 2, 3))
    leader = started(cluster)
    # 3 answers heartbeats but gets no entries; 2 gets them all, then falls silent.
    cluster.drop_if.append(lambda m: isinstance(m, Replicate) and m.dst == 3)
    for i in range(3):
        cluster.propose(append(i))
    cluster.stabilize()
    cluster.cut |= {(1, 2), (2, 1)}
    cluster.tick([1, 3], n=leader.failure_timeout_ticks + 1)
    assert leader.progress[2].match > leader.progress[3].match
    assert leader.best_transfer_target() == 3


@pytest.mark.parametrize("seed", range(30))
def test_transfers_under_chaos_keep_election_safety_and_state_machine_safety(seed):
    """Safety is unaffected: at most one leader per term, the same applied entries everywhere,
    whatever the transfers, losses and partitions."""
    rng = random.Random(seed)
    cluster = Cluster((1, 2, 3, 4, 5), seed=seed)
    started(cluster, rng.choice([1, 2, 3, 4, 5]))
    proposed = 0
    for _ in range(60):
        roll = rng.random()
        leader = cluster.leader()
        if roll < 0.3 and leader is not None:
            with contextlib.suppress(TransferRefused, NotLeader):
                leader.transfer_leadership(rng.choice([1, 2, 3, 4, 5]))
        elif roll < 0.4:
            cluster.partition(rng.sample([1, 2, 3, 4, 5], 2))
        elif roll < 0.5:
            cluster.heal()
        elif leader is not None:
            try:
                leader.propose(append(proposed))
                proposed += 1
            except NotLeader:
                pass
        cluster.tick(n=rng.randint(1, 3))
    cluster.heal()
    cluster.tick(n=60)
    assert all(len(leaders) == 1 for leaders in cluster.leaders_by_term.values())
    applied = [[(e.term, e.index) for e in cluster.applied[i]] for i in cluster.live()]
    longest = max(applied, key=len)
    for seq in applied:
        assert seq == longest[: len(seq)]
    assert cluster.leader() is not None
