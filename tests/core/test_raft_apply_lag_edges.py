"""A replica's waiting appends (``RaftNode.apply_lag`` with the runtime's own ``APPLY_LAG``
and ``applies_later``) next to what else a replica applies: a command that is not a lone
append, committed behind appends that wait, is applied at once with them, in order, with no
tick and no heartbeat (a queue's creation or deletion, a configuration: what a broker reads
from its own store); and a snapshot that comes while appends wait stands in for them (applied
once, from the snapshot's index on)."""

from __future__ import annotations

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_types import Role
from trio_broker._runtime._applied import APPLY_LAG, applies_later
from trio_broker.testing._sim_cluster import Cluster


def _append(n: int) -> AppendMessage:
    return AppendMessage("q", b'"%d"' % n, None, None, n)


def _cluster() -> Cluster:
    return Cluster((1, 2, 3), apply_lag=APPLY_LAG, apply_later=applies_later)


def test_a_command_committed_behind_waiting_appends_is_applied_at_once_with_them():
    cluster = _cluster()
    leader = cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    follower = cluster.node(2)
    for _ in range(2 * leader.heartbeat_ticks):  # (a heartbeat: everything applied)
        cluster.tick()
    assert follower.applied == follower.commit == leader.commit
    cluster.propose(_append(0))
    cluster.stabilize()
    _, index = cluster.propose(CreateQueue("r"))
    cluster.stabilize()
    assert follower.commit - follower.applied == 1  # (the append waits)
    # The next append's REPLICATE carries the creation's commit (entries: no idle leader):
    # two committed entries wait, fewer than the lag, one of them not a lone append.
    cluster.propose(_append(1))
    cluster.stabilize()
    assert follower.commit == index and APPLY_LAG > 2
    assert follower.commit >= index and leader.applied == leader.commit
    assert follower.applied >= index, (follower.applied, follower.commit)
    assert "r" in cluster.apps[2].messages  # (the queue exists on the replica at once)
    applied = [e.index for e in cluster.applied[2]]
    assert applied == list(range(applied[0], applied[-1] + 1))  # (in order, once each)


def test_a_snapshot_that_comes_while_appends_wait_stands_in_for_them_once():
    cluster = _cluster()
    leader = cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    follower = cluster.node(2)
    for _ in range(2 * leader.heartbeat_ticks):  # (a heartbeat: everything applied)
        cluster.tick()
    assert follower.applied == follower.commit == leader.commit
    for n in range(2):
        cluster.propose(_append(n))
        cluster.stabilize()
    waiting = follower.commit - follower.applied
    assert waiting >= 1 and follower.log.last_index > follower.commit
    # Cut off, the replica misses the next entry, which the leader then compacts: it comes
    # back by DATA_SYNC, past the replica's log, while appends still wait there.
    cluster.isolate(2)
    cluster.propose(_append(2))
    cluster.stabilize()
    snapshot_index = cluster.compact(1)
    assert snapshot_index == leader.commit > follower.log.last_index
    assert snapshot_index - follower.applied < APPLY_LAG  # (a lag the replica lets wait)
    cluster.heal()
    for _ in range(4 * leader.heartbeat_ticks):
        cluster.tick([1])
        if follower.applied >= snapshot_index:
            break
    assert follower.role is Role.FOLLOWER
    assert follower.applied == follower.log.snapshot_index == snapshot_index
    assert cluster.apps[2] == cluster.apps[1]
    # What waited was applied once at most (before the snapshot or by it), never after it.
    indexes = [e.index for e in cluster.applied[2]]
    assert len(indexes) == len(set(indexes)) and all(i <= snapshot_index for i in indexes)
    cluster.propose(_append(3))
    cluster.stabilize()
    for _ in range(2 * leader.heartbeat_ticks):
        cluster.tick()
    assert follower.applied == follower.commit == leader.commit
    assert cluster.apps[2] == cluster.apps[1]
