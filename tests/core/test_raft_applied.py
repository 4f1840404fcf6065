"""``applied`` moves in ``advance()``, once the runtime has applied what the Ready handed it (as
etcd's ``RawNode.Advance``), so the core's applied index is the one the broker's state shows."""

from trio_broker._core._commands import CreateQueue
from trio_broker._core._raft_messages import DataSync
from trio_broker.testing._sim_cluster import Cluster


def test_applied_moves_when_the_ready_is_advanced_not_when_it_is_taken():
    leader = Cluster((1,)).elect(1)  # the only voter: its own fsync commits
    before = leader.applied
    _, index = leader.propose(CreateQueue("q"))
    leader.ready()
    leader.advance()  # the entry is durable: committed
    assert leader.commit == index > before
    rd = leader.ready()
    assert [e.index for e in rd.committed_entries] == [index]
    assert leader.applied == before  # taken, not yet applied by the runtime
    assert not leader.has_ready()
    leader.advance()
    assert leader.applied == index
    assert not leader.has_ready()


def test_a_snapshot_is_applied_when_its_ready_is_advanced():
    cluster = Cluster((1, 2, 3))
    leader = cluster.elect(1)
    cluster.isolate(3)
    for n in range(5):
        cluster.propose(CreateQueue(f"q{n}"))
        cluster.stabilize()
    snapshot_index = cluster.compact(1)
    follower = cluster.node(3)
    applied = follower.applied
    assert applied < snapshot_index
    offer = leader.make_data_sync(3, snapshot_index, cluster.apps[1])
    follower.step(offer)
    assert follower.applied == applied  # stepped, not yet installed
    rd = follower.ready()
    assert isinstance(rd.snapshot, DataSync) and rd.snapshot.snapshot.index == snapshot_index
    assert follower.applied == applied
    follower.advance()
    assert follower.applied == snapshot_index
