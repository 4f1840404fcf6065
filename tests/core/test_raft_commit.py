"""How the commit index travels (issue 10): with the leader's next REPLICATE or heartbeat,
never in a message of its own. Raft paper 5.3: "the leader keeps track of the highest index it
knows to be committed, and it includes that index in future AppendEntries RPCs (including
heartbeats) so that the other servers eventually find out"."""

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_messages import Heartbeat, Replicate
from trio_broker.testing._sim_cluster import Cluster


def test_a_commit_sends_no_message_of_its_own():
    """Paper 5.3: the commit index is carried by future AppendEntries, not announced."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    cluster.tick(n=leader.heartbeat_ticks)
    cluster.sent.clear()
    _, index = leader.propose(CreateQueue("q"))
    cluster.stabilize()
    assert leader.commit == index
    replicates = [m for m in cluster.sent if isinstance(m, Replicate)]
    assert sorted(m.dst for m in replicates) == [2, 3]  # the entry, once to each replica
    assert all(len(m.entries) == 1 for m in replicates)
    for i in (2, 3):
        assert cluster.node(i).log.last_index == index
        assert cluster.node(i).commit < index  # not yet told


def test_replicas_learn_the_commit_from_the_next_heartbeat():
    """Paper 5.3 (heartbeats): an idle leader's commit reaches every replica within one
    heartbeat interval, and they apply it."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    _, index = leader.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.sent.clear()
    cluster.tick(n=leader.heartbeat_ticks)
    assert any(isinstance(m, Heartbeat) and m.commit == index for m in cluster.sent)
    for i in (2, 3):
        assert cluster.node(i).commit == index
        assert cluster.apps[i] == cluster.apps[1]


def test_replicas_learn_the_commit_from_the_next_replicate():
    """Paper 5.3 (AppendEntries): under load, the REPLICATE of the next entries carries the
    commit of the previous ones; no heartbeat is needed."""
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    _, first = leader.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.sent.clear()
    _, second = leader.propose(AppendMessage("q", b"m"))
    cluster.stabilize()
    assert leader.commit == second
    assert not any(isinstance(m, Heartbeat) for m in cluster.sent)
    for i in (2, 3):
        assert cluster.node(i).commit == first
        assert cluster.applied[i][-1].index == first


def test_a_ready_applies_a_bounded_number_of_entries():
    """A replica that learns of many committed entries at once applies them over several
    Readies of at most ``max_apply`` entries (a bounded transaction each), in order, all."""
    cluster = Cluster((1, 2, 3), max_apply=4)
    leader = cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.isolate(3)
    for i in range(10):
        leader.propose(AppendMessage("q", str(i).encode()))
        cluster.stabilize()
    cluster.tick(n=leader.heartbeat_ticks)
    cluster.heal()
    lagging = cluster.node(3)
    sizes = []
    take = lagging.ready

    def ready():
        rd = take()
        sizes.append(len(rd.committed_entries))
        return rd

    lagging.ready = ready
    cluster.tick(n=4 * leader.heartbeat_ticks)
    assert max(sizes) == 4
    assert sum(sizes) >= 10
    assert lagging.applied == leader.commit
    assert [e.index for e in cluster.applied[3]] == list(range(1, leader.commit + 1))
    assert cluster.apps[3] == cluster.apps[1]
