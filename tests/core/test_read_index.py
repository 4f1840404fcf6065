"""ReadIndex (Raft thesis 6.4): a read that changes nothing is answered from the leader's
applied state once a majority echoed a heartbeat round sent after the read arrived."""

import attrs
import pytest

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft import (
    LeadershipTransferring,
    NotLeader,
    ReadIndexUnavailable,
    Role,
    TooManyReads,
)
from trio_broker._core._raft_messages import (
    Heartbeat,
    HeartbeatResponse,
    ReplicateResponse,
)
from trio_broker.testing._sim_cluster import Cluster


def started(ids=(1, 2, 3), **options) -> tuple[Cluster, object]:
    cluster = Cluster(ids, **options)
    leader = cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    return cluster, leader


def heartbeats(cluster: Cluster, since: int) -> list[Heartbeat]:
    return [m for m in cluster.sent[since:] if isinstance(m, Heartbeat)]


def answer(leader, src: int, round_: int) -> HeartbeatResponse:
    return HeartbeatResponse(
        src=src,
        dst=leader.id,
        term=leader.term,
        cluster_version=leader.cluster_version,
        round=round_,
    )


def test_a_read_is_answered_once_a_majority_echoed_a_round_sent_after_it():
    """Thesis 6.4 step 3: one heartbeat round, answered by a majority (the leader and one)."""
    cluster, leader = started()
    before = len(cluster.sent)
    last_round = leader.reads.round
    leader.read_index("r")
    assert leader.take_reads() == ([], [])
    cluster.drop_if.append(lambda m: isinstance(m, HeartbeatResponse) and m.src == 3)
    cluster.stabilize()
    sent = heartbeats(cluster, before)
    assert {m.dst for m in sent} == {2, 3} and {m.round for m in sent} == {last_round + 1}
    assert leader.take_reads() == ([("r", leader.commit)], [])


def test_an_echo_of_a_round_sent_before_the_read_does_not_confirm_it():
    """An answer to an older heartbeat (delayed, perhaps across a reconnection) proves
    nothing about leadership after the read arrived."""
    cluster, leader = started()
    held: list[HeartbeatResponse] = []

    def hold(m):
        if isinstance(m, HeartbeatResponse):
            held.append(m)
            return True
        return False

    cluster.drop_if.append(hold)
    cluster.tick(ids=[1], n=leader.heartbeat_ticks)  # a periodic heartbeat: round k
    k = leader.reads.round
    assert {(m.src, m.round) for m in held} == {(2, k), (3, k)}
    cluster.heal()
    leader.read_index("r")
    for m in held:
        leader.step(m)
    assert leader.take_reads() == ([], [])
    # Nor does the same old round told again, by both followers.
    leader.step(answer(leader, 2, k))
    leader.step(answer(leader, 3, k))
    assert leader.take_reads() == ([], [])
    # The echo of round k + 1 (sent once round k was confirmed, with the messages) does.
    leader.take_messages()
    assert leader.reads.round == k + 1
    leader.step(answer(leader, 2, k + 1))
    assert leader.take_reads() == ([("r", leader.commit)], [])


def older_peers(cluster: Cluster, *ids: int) -> None:
    """``ids`` answer heartbeats as the previous version does: without the round."""

    def as_an_older_peer(m):
        if isinstance(m, HeartbeatResponse) and m.round and m.src in ids:
            cluster.in_flight.append(attrs.evolve(m, round=0))
            return True
        return False

    cluster.drop_if.append(as_an_older_peer)


def test_answers_that_carry_no_round_never_confirm_a_read():
    """A majority of members that predate rounds: no read is confirmed; the waiting ones
    fail (the runtime sends them to the log), new ones are refused, writes commit."""
    cluster, leader = started()
    older_peers(cluster, 2, 3)
    leader.read_index("r")
    cluster.tick(n=3 * leader.heartbeat_ticks)
    ready, failed = leader.take_reads()
    assert leader.is_leader and ready == []
    assert [(t, type(e)) for t, e in failed] == [("r", ReadIndexUnavailable)]
    with pytest.raises(ReadIndexUnavailable):
        leader.read_index("s")
    _, index = cluster.propose(AppendMessage("q", b"x"))
    cluster.stabilize()
    assert leader.commit >= index


def test_one_older_peer_of_three_leaves_a_quorum_that_echoes():
    cluster, leader = started()
    older_peers(cluster, 3)
    cluster.tick(n=leader.heartbeat_ticks)
    leader.read_index("r")
    cluster.stabilize()
    assert [t for t, _ in leader.take_reads()[0]] == ["r"]


def test_a_burst_of_reads_shares_one_round():
    cluster, leader = started()
    before = len(cluster.sent)
    for i in range(10):
        leader.read_index(i)
    cluster.stabilize()
    assert len(heartbeats(cluster, before)) == 2  # one round: one heartbeat per follower
    ready, failed = leader.take_reads()
    assert [token for token, _ in ready] == list(range(10)) and not failed


def test_a_read_arriving_during_a_round_waits_for_the_next_one():
    _, leader = started()
    leader.read_index("a")
    leader.take_messages()  # round `first` leaves
    first = leader.reads.round
    leader.read_index("b")  # round `first` is outstanding: b needs the next
    leader.take_messages()
    assert leader.reads.round == first
    leader.step(answer(leader, 2, first))
    ready, _ = leader.take_reads()
    assert [t for t, _ in ready] == ["a"]
    leader.take_messages()
    assert leader.reads.round == first + 1
    leader.step(answer(leader, 3, first + 1))
    assert [t for t, _ in leader.take_reads()[0]] == ["b"]


def test_a_read_waits_until_the_applied_index_reaches_its_index():
    cluster, leader = started()
    _, index = cluster.propose(AppendMessage("q", b"x"))
    leader.read_index("r", after=leader.log.last_index)
    leader.take_messages()
    leader.step(answer(leader, 2, leader.reads.round))
    assert leader.take_reads() == ([], [])  # confirmed, not applied yet
    cluster.stabilize()
    assert leader.applied >= index
    assert leader.take_reads() == ([("r", index)], [])


def test_a_leader_that_has_not_committed_an_entry_of_its_term_waits_for_it():
    """Thesis 6.4 step 1: its commit index may trail the previous leader's until then."""
    cluster, _ = started()
    cluster.drop_if.append(lambda m: isinstance(m, ReplicateResponse) and m.dst == 2)
    leader = cluster.elect(2)
    start = leader.log.last_index  # its no-op
    assert leader.commit < start
    leader.read_index("r")
    cluster.tick(n=2 * leader.heartbeat_ticks)  # heartbeats answered: confirmed
    assert leader.is_leader and leader.reads.confirmed_round >= 1
    assert leader.take_reads() == ([], [])
    cluster.heal()
    cluster.tick(n=2 * leader.heartbeat_ticks)
    ready, _ = leader.take_reads()
    assert ready == [("r", leader.commit)] and leader.commit >= start


def test_a_deposed_leader_fails_its_reads_and_never_answers_them():
    """A partitioned old leader must not answer from its stale state, though a new leader
    committed writes meanwhile."""
    cluster, old = started()
    cluster.isolate(1)
    old.read_index("r")
    new = cluster.elect(2)
    _, index = cluster.propose(AppendMessage("q", b"new"))
    cluster.stabilize()
    assert new.commit >= index
    for _ in range(old.election_ticks - 1):
        old.tick()
        assert old.take_reads()[0] == []
    cluster.heal()
    cluster.tick(ids=[2], n=new.heartbeat_ticks)  # the new leader's heartbeat: term moves
    assert old.role is Role.FOLLOWER
    ready, failed = old.take_reads()
    assert ready == [] and [(t, type(e)) for t, e in failed] == [("r", NotLeader)]
    with pytest.raises(NotLeader):
        old.read_index("again")


def test_check_quorum_stepping_down_fails_the_waiting_reads():
    cluster, leader = started()
    cluster.isolate(1)
    leader.read_index("r")
    for _ in range(2 * leader.election_ticks):
        leader.tick()
        if not leader.is_leader:
            break
    assert not leader.is_leader
    ready, failed = leader.take_reads()
    assert ready == [] and [t for t, _ in failed] == ["r"]


def test_a_leadership_transfer_fails_the_waiting_reads_and_refuses_new_ones():
    cluster, leader = started()
    cluster.isolate(1)
    leader.read_index("r")
    leader.transfer_leadership(2)
    ready, failed = leader.take_reads()
    assert ready == [] and [(t, type(e)) for t, e in failed] == [("r", LeadershipTransferring)]
    with pytest.raises(LeadershipTransferring):
        leader.read_index("s")


def test_a_single_voter_answers_without_a_round():
    cluster = Cluster((1,))
    leader = cluster.elect(1)
    cluster.stabilize()
    before = len(cluster.sent)
    leader.read_index("r")
    assert leader.take_reads() == ([("r", leader.commit)], [])
    assert heartbeats(cluster, before) == []


def test_learners_do_not_confirm_reads():
    _, leader = started(ids=(1, 2, 3), learners=(4,))
    leader.read_index("r")
    leader.take_messages()
    leader.step(answer(leader, 4, leader.reads.round))
    assert leader.take_reads() == ([], [])
    leader.step(answer(leader, 3, leader.reads.round))
    assert [t for t, _ in leader.take_reads()[0]] == ["r"]


def test_the_reads_waiting_are_bounded():
    cluster, leader = started(max_reads=3)
    for i in range(3):
        leader.read_index(i)
    with pytest.raises(TooManyReads):
        leader.read_index(3)
    cluster.stabilize()
    assert len(leader.take_reads()[0]) == 3
    leader.read_index(4)  # room again


def test_a_follower_echoes_the_round_of_the_heartbeat_it_answers():
    cluster, leader = started()
    follower = cluster.node(2)
    follower.step(
        Heartbeat(
            src=1,
            dst=2,
            term=leader.term,
            cluster_version=leader.cluster_version,
            commit=0,
            round=41,
        )
    )
    answers = [m for m in follower.take_messages() if isinstance(m, HeartbeatResponse)]
    assert [m.round for m in answers] == [41]
