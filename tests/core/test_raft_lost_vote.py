"""A broker whose stored term or vote is lost grants no vote until it knows a bound on the
terms it voted in (``RaftNode``, "A lost vote"; docs/reliability.md, "A lost term or vote").

Raft persists ``voted_for`` so that a broker never votes twice in one term: a second vote in
a term in which its first one helped elect a leader can elect a second leader. A disk that
loses the term and the vote (a lost or misdirected write, a flipped bit the checksum finds)
leaves the broker with its log alone, whose last entry's term may be well below the term it
voted in."""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest

from trio_broker._core._commands import CreateQueue
from trio_broker._core._raft import RaftNode, Role
from trio_broker._core._raft_messages import (
    Config,
    DenyReason,
    ElectionRequest,
    ElectionResponse,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    Replicate,
    ReplicateResponse,
    SnapshotMeta,
)
from trio_broker.testing._sim_cluster import Cluster
from trio_broker.testing._sim_mutants import TrustLostVote


def lost_vote_cluster(core: type[RaftNode] = RaftNode) -> tuple[Cluster, int]:
    """Broker 1 wins a term T with 2's vote while 3 is cut off, and no entry of T reaches 2;
    then 2's disk loses its term and vote (it restarts on the term of its log's last entry,
    below T, the vote marked lost as the store marks it), 1 is cut off and 3 is back.
    Returns the cluster and T."""
    cluster = Cluster((1, 2, 3), seed=3, node_factory=core)
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.isolate(3)
    cluster.crash(1)
    cluster.restart(1)
    # 1's appends and heartbeats of the new term never reach 2: only its vote request does.
    cluster.drop_if.append(lambda m: m.src == 1 and isinstance(m, Replicate | Heartbeat))
    term = cluster.elect(1).term
    assert cluster.storage[2].hard_state.voted_for == 1
    assert cluster.storage[2].hard_state.term == term
    log_term = cluster.storage[2].entries[-1].term
    assert log_term < term  # its log says nothing of T
    cluster.crash(2)
    st = cluster.storage[2]
    st.hard_state = attrs.evolve(st.hard_state, term=log_term, voted_for=None, vote_lost=True)
    cluster.restart(2)
    cluster.heal()
    cluster.isolate(1)
    return cluster, term


def test_a_broker_that_lost_its_vote_does_not_vote_again_in_that_term():
    cluster, term = lost_vote_cluster()
    two = cluster.node(2)
    assert two.vote_lost and two.unverified
    cluster.campaign(3)  # 3 asks for term T: 2 has heard one other voter only (3)
    assert cluster.node(3).role is not Role.LEADER
    assert two.vote_lost and two.voted_for is None
    assert cluster.storage[2].hard_state.vote_lost  # durable while it does not know
    assert all(len(leaders) == 1 for leaders in cluster.leaders_by_term.values())
    # 1 (the leader of T) is heard again: two other voters' terms, the largest T.
    cluster.heal()
    cluster.tick(n=3 * two.election_ticks)
    two = cluster.node(2)
    assert not two.vote_lost and two.term >= term
    assert all(len(leaders) == 1 for leaders in cluster.leaders_by_term.values())
    assert cluster.leader() is not None


def test_the_core_that_trusts_a_lost_vote_elects_two_leaders_in_one_term():
    cluster, term = lost_vote_cluster(TrustLostVote)
    cluster.campaign(3)
    assert cluster.node(3).role is Role.LEADER and cluster.node(3).term == term
    assert cluster.leaders_by_term[term] == {1, 3}


def follower(vote_lost: bool = True, voters: Any = (1, 2, 3, 4, 5)) -> RaftNode:
    """Broker 2 on four entries of term 1, its stored term and vote lost."""
    return RaftNode(
        2,
        hard_state=HardState(term=1, commit=4, vote_lost=vote_lost),
        snapshot=SnapshotMeta(0, 0, Config(frozenset(voters))),
        entries=[Entry(1, i, None) for i in range(1, 5)],
        rng=random.Random(1),
    )


def vote_request(src: int, term: int, pre_vote: bool = False) -> ElectionRequest:
    return ElectionRequest(
        src=src,
        dst=2,
        term=term,
        cluster_version=1,
        pre_vote=pre_vote,
        last_log_index=9,
        last_log_term=term - 1,
    )


def answers(node: RaftNode) -> list[Any]:
    rd = node.ready()
    node.advance()
    return [*rd.messages, *rd.persisted_messages]


def test_it_learns_the_bound_from_voters_minus_quorum_plus_one_others_and_votes_above_it():
    node = follower()  # five voters: three others must tell their terms
    node.step(HeartbeatResponse(src=4, dst=2, term=1, cluster_version=1))
    for _ in range(node.election_ticks):
        node.tick()  # (what it hears in its first election timeout does not count)
    answers(node)
    node.step(vote_request(3, 7))  # (a real vote request: term 7)
    (reply,) = [m for m in answers(node) if isinstance(m, ElectionResponse)]
    assert not reply.granted and node.vote_lost
    node.step(vote_request(5, 9, pre_vote=True))  # asks for 9: its own term is 8
    assert node.vote_lost  # two others heard since: 4's early answer did not count
    node.step(HeartbeatResponse(src=4, dst=2, term=5, cluster_version=1))
    assert not node.vote_lost
    assert (node.term, node.voted_for) == (8, 2)  # as if it had voted in 8
    assert node.hard_state.voted_for == 2 and not node.hard_state.vote_lost
    assert node.unverified and node.restart_term == 8  # the reboot rule goes on from 8
    answers(node)
    node.step(vote_request(3, 8))
    (reply,) = [m for m in answers(node) if isinstance(m, ElectionResponse)]
    assert not reply.granted and reply.reason is DenyReason.ALREADY_VOTED


def test_a_vote_read_from_a_store_that_lost_it_is_not_repeated():
    node = RaftNode(
        2,
        hard_state=HardState(term=3, voted_for=3, commit=4, vote_lost=True),
        snapshot=SnapshotMeta(0, 0, Config(frozenset({1, 2, 3}))),
        entries=[Entry(1, i, None) for i in range(1, 5)],
        rng=random.Random(1),
    )
    node.step(vote_request(3, 3))
    (reply,) = [m for m in answers(node) if isinstance(m, ElectionResponse)]
    assert not reply.granted


@pytest.mark.parametrize("voters", [(1, 2, 3), (2,)])
def test_who_starts_with_a_lost_vote(voters: Any):
    node = follower(voters=voters)
    # Its group's only voter has no one to learn from: its disk is all there is.
    assert node.vote_lost is (len(voters) > 1)
    assert not follower(vote_lost=False).vote_lost
    fresh = RaftNode(
        2,
        hard_state=HardState(vote_lost=True),
        snapshot=SnapshotMeta(0, 0, Config(frozenset({1, 2, 3}))),
        rng=random.Random(1),
    )
    assert not fresh.vote_lost  # no past: nothing to have voted with


def test_it_neither_counts_its_own_vote_nor_is_verified_by_its_log_while_the_vote_is_lost():
    node = follower(voters=(1, 2, 3))
    node._campaign()
    node._become_candidate()
    assert node.votes == {}
    later = Replicate(
        src=1,
        dst=2,
        term=9,
        cluster_version=1,
        prev_log_index=4,
        prev_log_term=1,
        entries=(Entry(9, 5, None),),
        leader_commit=5,
    )
    node.step(later)
    # A leader's message is not followed while the vote is lost (see the next test): the
    # entry of term 9 is neither stored nor acknowledged, and nothing clears the state.
    assert not [m for m in answers(node) if isinstance(m, ReplicateResponse)]
    assert node.log.last_term == 1 and node.unverified and node.vote_lost


def test_it_follows_no_leader_while_its_vote_is_lost():
    """A leader of term 5 still runs, cut off, when 2 wins term 6 with 3's vote; 3's disk then
    loses that vote. Were 3 to take and acknowledge the old leader's entries (its term as
    stored would have refused them), they would commit in term 5 with 3's acknowledgement,
    and the leader of term 6, whose log lacks them, would later overwrite a committed entry
    (found by the simulator, seed 1629)."""
    node = RaftNode(
        3,
        hard_state=HardState(term=4, commit=4, vote_lost=True),
        snapshot=SnapshotMeta(0, 0, Config(frozenset({1, 2, 3}))),
        entries=[Entry(4, i, None) for i in range(1, 5)],
        rng=random.Random(1),
    )
    for _ in range(node.election_ticks):
        node.tick()
    answers(node)
    old_leader = Replicate(
        src=1,
        dst=3,
        term=5,
        cluster_version=1,
        prev_log_index=4,
        prev_log_term=4,
        entries=(Entry(5, 5, None),),
        leader_commit=4,
    )
    node.step(old_leader)
    node.step(Heartbeat(src=1, dst=3, term=5, cluster_version=1, commit=4))
    # No acknowledgement, no echo.
    assert not [m for m in answers(node) if isinstance(m, ReplicateResponse | HeartbeatResponse)]
    assert node.log.last_index == 4 and node.vote_lost and node.leader_id is None
    # Its term was heard: once 2 tells its own (6), the bound is 6, and 1's term-5 entries
    # are refused from then on as a stored term would have.
    node.step(HeartbeatResponse(src=2, dst=3, term=6, cluster_version=1))
    assert not node.vote_lost and node.term == 6
    node.step(old_leader)
    replies = [m for m in answers(node) if m.dst == 1]
    assert replies and all(m.term == 6 for m in replies)
    assert node.log.last_index == 4


def test_a_vote_rolled_back_whole_at_a_reboot_is_never_given_twice():
    """A disk that lied about a sync gives back, at the reboot, an older term and vote that
    still match their checksum: nothing reads as lost. 2's vote had elected 1 in ``term``; 1
    is cut off before anything of its term reached anyone, and 4 campaigns for ``term`` (5
    grants, 3 denies: it voted for 1), its request to 2 slow. Every start after a reboot is a
    lost vote (docs/reliability.md, "A term and vote rolled back whole"): 2 hears the others'
    terms, moves to ``term`` as voted, and denies 4; with only the log rule it would grant 4,
    a second leader of ``term``."""
    cluster = Cluster((1, 2, 3, 4, 5), seed=3)
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.tick(n=cluster.node(1).heartbeat_ticks)
    cluster.isolate(4)
    cluster.isolate(5)
    cluster.crash(1)
    cluster.restart(1)
    before = attrs.evolve(cluster.storage[2].hard_state)  # what the disk will roll back to
    cluster.drop_if.append(lambda m: m.src == 1 and isinstance(m, Replicate | Heartbeat))
    term = cluster.elect(1).term
    assert (cluster.storage[2].hard_state.term, cluster.storage[2].hard_state.voted_for) == (
        term,
        1,
    )
    assert before.term == term - 1
    cluster.crash(2)
    cluster.storage[2].hard_state = before  # term and vote rolled back, checksum and all
    cluster.restart(2, reboot=True)
    cluster.heal()
    cluster.isolate(1)
    two = cluster.node(2)
    assert two.unverified and two.vote_lost and two.term == term - 1
    held: list[ElectionRequest] = []

    def hold(m: Any) -> bool:
        if isinstance(m, ElectionRequest) and (m.src, m.dst) == (4, 2) and not m.pre_vote:
            held.append(m)
            return True
        return False

    cluster.drop_if.append(hold)
    cluster.cut |= {(3, 4), (4, 3)}  # 4 does not hear 3's term before it campaigns
    four = cluster.node(4)
    for _ in range(200):
        if four.term >= term:
            break
        four.tick()
        cluster.stabilize()
    assert four.term == term and held
    for _ in range(200):  # 2's pre-vote rounds hear 3, 4 and 5, all in `term`
        if not two.vote_lost:
            break
        two.tick()
        cluster.stabilize()
    assert not two.vote_lost and (two.term, two.voted_for) == (term, 2)
    cluster.sent.clear()
    two.step(held[0])  # 4's request for `term` arrives
    cluster.stabilize()
    (answer,) = [m for m in cluster.sent if isinstance(m, ElectionResponse) and m.src == 2]
    assert not answer.granted
    assert all(len(leaders) == 1 for leaders in cluster.leaders_by_term.values())
    assert cluster.leaders_by_term.get(term) == {1}
