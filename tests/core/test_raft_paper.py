"""The Raft paper's guarantees, one scenario per rule (in the style of etcd's raft_paper_test).

Each test names the rule and the section of the paper ("In Search of an Understandable
Consensus Algorithm", extended version) or of Ongaro's thesis it checks.
"""

import random

import pytest

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft import NotLeader, RaftNode, Role
from trio_broker._core._raft_messages import (
    Config,
    DenyReason,
    ElectionRequest,
    ElectionResponse,
    Entry,
    HardState,
    NoOp,
    PromoteToLeader,
    Replicate,
    ReplicateResponse,
)
from trio_broker.testing._sim_cluster import Cluster


def append(i: int) -> AppendMessage:
    return AppendMessage("q", str(i).encode())


def logs(cluster: Cluster) -> dict:
    return {i: list(cluster.node(i).log.entries) for i in cluster.live()}


def chaos(cluster: Cluster, rng: random.Random, rounds: int) -> None:
    """Random partitions, crashes and proposals, for the property-style tests."""
    ids = sorted(cluster.nodes)
    for r in range(rounds):
        action = rng.random()
        if action < 0.15:
            cluster.heal()
            cluster.isolate(rng.choice(ids))
        elif action < 0.25:
            cluster.heal()
        elif action < 0.32:
            down = [i for i in ids if cluster.nodes[i] is None]
            if down:
                cluster.restart(rng.choice(down))
            elif len(cluster.live()) > 1:
                cluster.crash(rng.choice(cluster.live()))
        leader = cluster.leader()
        if leader is not None and rng.random() < 0.5:
            leader.propose(append(r))
        cluster.tick(n=rng.randint(1, 6))
    cluster.heal()
    for i in ids:
        if cluster.nodes[i] is None:
            cluster.restart(i)
    cluster.tick(n=60)


# -- 5.2 leader election ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_election_safety_at_most_one_leader_per_term(seed):
    """5.2 / Figure 3 Election Safety: at most one leader can be elected in a given term."""
    cluster = Cluster((1, 2, 3, 4, 5), seed=seed)
    cluster.tick(n=30)
    chaos(cluster, random.Random(seed), rounds=60)
    assert cluster.leaders_by_term, "no leader was ever elected"
    for term, leaders in cluster.leaders_by_term.items():
        assert len(leaders) == 1, f"term {term} had leaders {leaders}"


def test_a_leader_is_elected_and_others_follow():
    """5.2: a follower that hears nothing for an election timeout campaigns and wins."""
    cluster = Cluster((1, 2, 3))
    cluster.tick(n=30)
    leader = cluster.leader()
    assert leader is not None
    followers = [cluster.node(i) for i in cluster.live() if i != leader.id]
    assert all(f.role is Role.FOLLOWER and f.leader_id == leader.id for f in followers)
    assert all(f.term == leader.term for f in followers)


def test_candidate_with_stale_log_cannot_win_election_restriction():
    """5.4.1 election restriction: a voter denies a candidate whose log is less up to date."""
    cluster = Cluster((1, 2, 3, 4, 5))
    cluster.elect(1)
    cluster.isolate(4)
    cluster.isolate(5)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    assert cluster.node(1).commit == 2
    cluster.crash(1)
    cluster.heal()
    for i in cluster.live():
        cluster.node(i).election_elapsed = 100  # leader gone: out of every lease
    cluster.campaign(4)
    assert cluster.node(4).role is not Role.LEADER
    denials = [
        m
        for m in cluster.sent
        if isinstance(m, ElectionResponse) and m.dst == 4 and m.src in (2, 3)
    ]
    assert denials and all(m.reason is DenyReason.LOG_BEHIND for m in denials)


def test_leader_completeness_new_leader_holds_every_committed_entry():
    """5.4 Leader Completeness: a leader elected later holds every committed entry."""
    cluster = Cluster((1, 2, 3, 4, 5), seed=3)
    cluster.elect(1)
    cluster.isolate(5)
    for i in range(5):
        cluster.propose(append(i))
    cluster.stabilize()
    committed = cluster.node(1).log.slice(1, cluster.node(1).commit + 1)
    cluster.crash(1)
    cluster.heal()
    cluster.tick(n=60)
    new = cluster.leader()
    assert new is not None and new.id != 1
    assert new.log.slice(1, len(committed) + 1) == committed


def test_vote_persisted_across_restart_no_second_vote_in_a_term():
    """5.2 / Figure 2: votedFor is persistent, so a restarted node does not vote twice."""
    cluster = Cluster((1, 2, 3))
    voter = cluster.node(3)

    def request(src):
        return ElectionRequest(
            src=src,
            dst=3,
            term=5,
            cluster_version=1,
            pre_vote=False,
            last_log_index=0,
            last_log_term=0,
        )

    voter.step(request(1))
    rd = voter.ready()
    # Persist before you send: the granted vote waits for the durable vote.
    assert rd.hard_state == HardState(term=5, voted_for=1, commit=0)
    assert not rd.messages
    (grant,) = rd.persisted_messages
    assert grant.granted
    cluster.storage[3].persist(rd)
    voter.advance()
    cluster.crash(3)
    cluster.restart(3)
    restarted = cluster.node(3)
    restarted.step(request(2))
    (answer,) = restarted.ready().persisted_messages
    assert not answer.granted and answer.reason is DenyReason.ALREADY_VOTED
    restarted.advance()
    restarted.step(request(1))  # the same candidate may ask again (a lost reply)
    (again,) = restarted.ready().persisted_messages
    assert again.granted


def test_prevote_prevents_disruption_by_partitioned_node():
    """Thesis 9.6 pre-vote: a partitioned node does not inflate terms or depose the leader."""
    cluster = Cluster((1, 2, 3), seed=7)
    leader = cluster.elect(1)
    term = leader.term
    cluster.isolate(3)
    cluster.tick(n=100)
    assert cluster.node(3).term == term, "pre-vote must not bump the isolated node's term"
    cluster.heal()
    cluster.tick(n=20)
    assert cluster.leader() is leader and leader.term == term


def test_without_prevote_a_rejoining_node_disrupts_the_leader():
    """The counterpart of the test above, so that it is known to be able to fail."""
    cluster = Cluster((1, 2, 3), seed=7, pre_vote=False)
    leader = cluster.elect(1)
    term = leader.term
    cluster.isolate(3)
    cluster.tick(n=100)
    assert cluster.node(3).term > term
    cluster.heal()
    cluster.tick(n=20)
    assert cluster.node(1).term > term


def test_prevote_denied_while_voter_hears_from_live_leader():
    """Thesis 4.2.3: a voter that heard from a leader within the election timeout denies."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.tick(n=2)
    voter = cluster.node(2)
    voter.step(
        ElectionRequest(
            src=3,
            dst=2,
            term=voter.term + 1,
            cluster_version=1,
            pre_vote=True,
            last_log_index=99,
            last_log_term=99,
        )
    )
    (answer,) = voter.ready().persisted_messages
    assert not answer.granted and answer.reason is DenyReason.LEADER_ALIVE


def test_check_quorum_leader_steps_down_when_isolated():
    """Thesis 6.2 check-quorum: a leader that loses contact with a majority steps down."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    cluster.isolate(1)
    cluster.tick([1], n=leader.election_ticks * 2)
    assert leader.role is not Role.LEADER
    with pytest.raises(NotLeader):
        leader.propose(append(0))


def test_lower_broker_id_usually_times_out_first():
    """The design's 'lowest broker_id triggers' is a preference in the randomized timeouts."""
    wins = {1: 0, 2: 0, 3: 0}
    for seed in range(40):
        cluster = Cluster((1, 2, 3), seed=seed)
        cluster.tick(n=30)
        wins[cluster.leader().id] += 1
    assert wins[1] > wins[3]


# -- 5.3 log replication ---------------------------------------------------------------------


def test_leader_appends_noop_on_promotion():
    """Thesis 6.4 / paper 8: a new leader commits a no-op of its term first (PROMOTE_TO_LEADER)."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    (noop,) = leader.log.entries
    assert noop == Entry(leader.term, 1, NoOp())
    promotes = [m for m in cluster.sent if isinstance(m, PromoteToLeader)]
    assert {m.dst for m in promotes} == {2, 3}
    assert all(cluster.node(i).commit == 1 for i in cluster.live())


def test_leader_append_only():
    """Figure 3 Leader Append-Only: a leader never overwrites or deletes its entries."""
    for seed in range(8):
        cluster = Cluster((1, 2, 3), seed=seed)
        rng = random.Random(seed)
        cluster.tick(n=30)
        seen: dict = {}
        for r in range(80):
            if rng.random() < 0.1:
                cluster.heal()
                cluster.isolate(rng.choice([1, 2, 3]))
            leader = cluster.leader()
            if leader is not None:
                leader.propose(append(r))
            cluster.tick(n=2)
            for i in cluster.live():
                node = cluster.node(i)
                if node.role is Role.LEADER:
                    before = seen.get((i, node.term), [])
                    now = node.log.slice(node.log.first_index, node.log.last_index + 1)
                    assert now[: len(before)] == before
                    seen[(i, node.term)] = now


def test_log_matching_follower_conflicts_are_truncated():
    """5.3 Log Matching: the leader forces followers' conflicting entries out."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.isolate(1)
    for i in range(3):
        cluster.propose(append(i))  # uncommitted: only the isolated leader has them
    cluster.stabilize()
    cluster.tick([2, 3], n=40)
    new = cluster.leader()
    assert new.id in (2, 3)
    new.propose(append(100))
    cluster.stabilize()
    cluster.heal()
    cluster.tick(n=10)
    reference = logs(cluster)[new.id]
    for i, entries in logs(cluster).items():
        assert entries == reference, f"node {i} log differs"


def test_log_matching_property_holds_under_chaos():
    """Figure 3 Log Matching: same index and term imply identical logs up to that index."""
    for seed in range(6):
        cluster = Cluster((1, 2, 3, 4, 5), seed=seed)
        cluster.tick(n=30)
        chaos(cluster, random.Random(seed), rounds=40)
        all_logs = logs(cluster)
        for a in all_logs.values():
            for b in all_logs.values():
                for ea, eb in zip(a, b, strict=False):
                    if ea.term == eb.term:
                        assert a[: ea.index] == b[: ea.index]


def test_rejection_hint_skips_a_whole_term_per_round_trip():
    """5.3 optimization: with the conflict hint, a long divergent suffix costs few probes."""
    cluster = Cluster((1, 2, 3))
    noop = Entry(1, 1, NoOp())
    # 3 led term 2 alone and wrote 30 entries nobody else has; 1 and 2 then committed 40
    # entries in term 3.
    cluster.storage[3].entries = [noop] + [Entry(2, i, append(i)) for i in range(2, 32)]
    cluster.storage[3].hard_state = HardState(term=2, voted_for=3, commit=1)
    for i in (1, 2):
        cluster.storage[i].entries = [noop] + [Entry(3, i, append(i)) for i in range(2, 42)]
        cluster.storage[i].hard_state = HardState(term=3, voted_for=None, commit=41)
    for i in (1, 2, 3):
        cluster.restart(i)
    cluster.elect(1)
    cluster.tick(n=3)
    rejects = [
        m for m in cluster.sent if isinstance(m, ReplicateResponse) and m.src == 3 and not m.success
    ]
    assert 1 <= len(rejects) <= 2, rejects
    assert logs(cluster)[3] == logs(cluster)[1]


def test_state_machine_safety_all_nodes_apply_the_same_entries():
    """Figure 3 State Machine Safety: no two nodes apply different entries at one index."""
    for seed in range(8):
        cluster = Cluster((1, 2, 3, 4, 5), seed=seed)
        cluster.tick(n=30)
        rng = random.Random(seed)
        applied: dict = {}
        for r in range(50):
            if rng.random() < 0.2:
                cluster.heal()
                cluster.partition(rng.sample([1, 2, 3, 4, 5], 2), [])
            leader = cluster.leader()
            if leader is not None:
                leader.propose(append(r))
            cluster.tick(n=3)
            for i in cluster.live():
                for e in cluster.applied[i]:
                    assert applied.setdefault(e.index, e) == e
        cluster.heal()
        cluster.tick(n=40)
        states = {i: cluster.apps[i] for i in cluster.live()}
        assert len({repr(s) for s in states.values()}) == 1


def test_figure8_no_commit_of_earlier_term_entry_by_counting_replicas():
    """5.4.2 / Figure 8: an entry from an earlier term is not committed by counting replicas."""
    cluster, s1 = figure8_cluster(RaftNode)
    # (c): S1, S2, S3 now hold the term-2 entry at index 2 (a majority of 5) ...
    assert all(cluster.node(i).log.term(2) == 2 for i in (1, 2, 3))
    # ... but S1 must not commit it: it is not from S1's term.
    assert s1.commit == 1
    # (d): and rightly so, S5 can still be elected and overwrite it.
    cluster.crash(1)
    cluster.heal()
    for _ in range(3):  # the first pre-vote only teaches S5 the current term
        for i in cluster.live():
            cluster.node(i).election_elapsed = 100
        cluster.campaign(5)
    assert cluster.node(5).role is Role.LEADER
    cluster.tick(n=5)
    assert all(cluster.node(i).log.term(2) == 3 for i in cluster.live())


def test_figure8_scenario_catches_a_core_that_commits_by_counting():
    """The Figure 8 scenario fails against a core that commits old-term entries by counting."""

    class CountingCommit(RaftNode):
        def _can_commit_by_counting(self, index):
            return True

    _, s1 = figure8_cluster(CountingCommit)
    assert s1.commit == 2


def figure8_cluster(node_factory):
    cluster = Cluster((1, 2, 3, 4, 5), node_factory=node_factory, max_batch=1)
    e1, e2, e3 = Entry(1, 1, NoOp()), Entry(2, 2, append(2)), Entry(3, 2, append(3))
    logs_ = {1: [e1, e2], 2: [e1, e2], 3: [e1], 4: [e1], 5: [e1, e3]}
    for i, entries in logs_.items():
        cluster.storage[i].entries = entries
        cluster.storage[i].hard_state = HardState(term=3, voted_for=None, commit=1)
        cluster.restart(i)
    # S1 is elected in term 4 (S2, S3, S4 vote for it); its no-op (index 3) is lost, and S5 is
    # unreachable, so only the old term-2 entry spreads.
    cluster.drop_if.append(
        lambda m: isinstance(m, Replicate) and any(e.index >= 3 for e in m.entries)
    )
    cluster.isolate(5)
    s1 = cluster.elect(1)
    assert s1.term == 4
    cluster.tick([1], n=s1.election_ticks)  # lost appends are probed again
    return cluster, s1


# -- quorum and commit -----------------------------------------------------------------------


def test_leader_counts_itself_only_after_its_own_entries_are_durable():
    """Thesis 10.2.1: the leader may replicate before its fsync, but counts itself after it."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    cluster.crash(3)
    leader.propose(append(1))
    rd = leader.ready()
    assert rd.entries and any(isinstance(m, Replicate) for m in rd.messages)
    for m in rd.messages:
        if m.dst == 2:
            cluster.node(2).step(m)
    cluster.process(2)
    for m in list(cluster.in_flight):
        if m.dst == 1:
            leader.step(m)
    cluster.in_flight.clear()
    assert leader.commit == 1, "committed before its own write was durable"
    cluster.storage[1].persist(rd)
    leader.advance()
    assert leader.commit == 2


def test_quorum_over_configured_voters_does_not_shrink_when_members_fail():
    """Quorum is a majority of configured voters; inactive members still count."""
    cluster = Cluster((1, 2, 3), check_quorum=False, failure_timeout_ticks=6)
    leader = cluster.elect(1)
    cluster.crash(2)
    cluster.crash(3)
    cluster.tick([1], n=10)
    statuses = leader.member_statuses()
    assert statuses[2].status == statuses[3].status == "inactive"
    assert statuses[1].status == "active" and statuses[1].role == "leader"
    _, index = leader.propose(append(1))
    cluster.tick([1], n=10)
    assert leader.commit < index, "committed with 1 of 3 configured voters"
    cluster.restart(2)
    cluster.tick(n=5)
    assert leader.commit >= index
    assert leader.member_statuses()[2].status == "active"


def test_cluster_update_spreads_member_status_to_replicas():
    """Diagram 6: the leader's CLUSTER_UPDATE tells replicas which member is inactive."""
    cluster = Cluster((1, 2, 3), failure_timeout_ticks=6)
    cluster.elect(1)
    cluster.crash(3)
    cluster.tick(n=10)
    assert cluster.node(2).member_statuses()[3].status == "inactive"
    assert cluster.node(2).member_statuses()[1].role == "leader"


def test_not_leader_carries_the_known_leader_id():
    """Client redirect: a follower refuses proposals and names the leader."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(2)
    with pytest.raises(NotLeader) as exc:
        cluster.node(1).propose(append(1))
    assert exc.value.leader_id == 2


def test_restart_replays_committed_entries_into_a_fresh_state_machine():
    """Figure 2: lastApplied is volatile; after a restart committed entries are re-applied."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.propose(append(1))
    cluster.tick(n=3)
    before = cluster.apps[2]
    cluster.crash(2)
    cluster.restart(2)
    cluster.tick(n=3)
    assert cluster.apps[2] == before and cluster.apps[2].queue_length("q") == 1


def test_messages_of_a_stale_term_are_answered_with_the_current_term():
    """5.1: a stale leader learns the newer term from any reply and steps down."""
    cluster = Cluster((1, 2, 3))
    old = cluster.elect(1)
    cluster.isolate(1)
    cluster.tick([2, 3], n=40)
    assert cluster.leader().id != 1
    cluster.heal()
    old.propose(append(1))
    cluster.stabilize()
    assert old.role is Role.FOLLOWER and old.term == cluster.leader().term


def test_config_version_is_the_cluster_version_in_messages():
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    assert {m.cluster_version for m in cluster.sent} == {Config((1, 2, 3)).version}


def test_candidate_requests_votes_only_after_persisting_its_term_and_vote():
    """Figure 2 + persist-before-send: a vote request relies on the durable self-vote."""
    cluster = Cluster((1, 2, 3), pre_vote=False)
    node = cluster.node(1)
    while node.role is Role.FOLLOWER:
        node.tick()
    rd = node.ready()
    assert rd.hard_state == HardState(term=1, voted_for=1, commit=0)
    assert not rd.messages
    assert {m.dst for m in rd.persisted_messages if isinstance(m, ElectionRequest)} == {2, 3}


def test_replica_acknowledges_entries_only_after_persisting_them():
    """Persist-before-send: a replica's ReplicateResponse waits for its durable entries."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    leader.propose(append(1))
    rd = leader.ready()
    to2 = next(m for m in rd.messages if isinstance(m, Replicate) and m.dst == 2)
    follower = cluster.node(2)
    follower.step(to2)
    frd = follower.ready()
    assert frd.entries and frd.entries[-1].index == 2
    assert not any(isinstance(m, ReplicateResponse) for m in frd.messages)
    (ack,) = frd.persisted_messages
    assert ack.success and ack.match_index == 2


def test_restart_on_storage_that_lost_acknowledged_entries_recovers():
    """A durable commit index beyond the durable log means the disk lost acknowledged entries
    (it once refused to run: the broker now repairs itself from the cluster instead). It runs
    without claiming more than its log holds, and recovers (no vote, no campaign) until its
    log is back at that index; see test_raft_recovering.py."""
    cluster = Cluster((1, 2, 3))
    cluster.storage[1].hard_state = HardState(term=1, voted_for=None, commit=5)
    cluster.restart(1)
    node = cluster.node(1)
    assert node.recovering and node.recovering_until == 5
    assert node.commit == 0 and node.log.last_index == 0


def test_regression_slow_acks_do_not_send_the_leader_back_to_probing():
    """Found by the simulator (seeds 1043, 1279, 7648 of a 10,000-seed swarm, liveness
    failures): when a round trip took longer than a heartbeat interval, every heartbeat reply
    sent the leader back to probing, re-sending the whole window; throughput collapsed and
    clients timed out. An outstanding append is now only presumed lost after no progress for
    half an election timeout."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    cluster.stabilize()
    # Acks from 2 and 3 are slow: hold them back while heartbeats flow.
    held = []
    cluster.drop_if.append(lambda m: isinstance(m, ReplicateResponse) and not held.append(m))
    leader.propose(append(1))
    cluster.stabilize()
    cluster.sent.clear()
    cluster.tick([1], n=2 * leader.heartbeat_ticks)  # heartbeats and replies, acks pending
    resent = [m for m in cluster.sent if isinstance(m, Replicate) and m.entries]
    assert not resent, "heartbeat reply made the leader re-send outstanding entries"
    assert held
    cluster.drop_if.clear()
    for m in held:
        leader.step(m)
    cluster.stabilize()
    assert leader.commit == 2
