"""A replica's apply of committed appends may wait (``RaftNode.apply_lag``): fewer than
``apply_lag`` of them, until a tick passes without entries or a heartbeat comes; never a
command ``apply_later`` refuses, nor on a leader (docs/performance-history.md, "One client,
one append at a time (ninth round)")."""

from trio_broker._core._commands import AppendBatch, AppendMessage, CommandGroup, CreateQueue
from trio_broker._runtime._applied import (
    APPLY_LAG,
    LAG_GROUP_APPENDS,
    LAG_GROUP_BYTES,
    applies_later,
)
from trio_broker.testing._sim_cluster import Cluster


def _append(n: int) -> AppendMessage:
    return AppendMessage("q", b'"v"', None, None, n)


def _cluster() -> Cluster:
    return Cluster(
        (1, 2, 3), apply_lag=3, apply_later=lambda payload: isinstance(payload, AppendMessage)
    )


def test_a_replica_applies_appends_in_threes_and_writes_their_commit_index_with_them():
    cluster = _cluster()
    leader = cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    follower = cluster.node(2)
    assert follower.applied == follower.commit  # (the commit index rides on the next message)
    seen = []
    for n in range(7):
        cluster.propose(_append(n))
        cluster.stabilize()
        seen.append(follower.commit - follower.applied)
        assert not follower.has_ready()  # (nothing to do while the apply waits: no spin)
        # The leader applies everything at once; the replica's commit index is not written
        # while its apply waits.
        assert leader.applied == leader.commit
        assert follower._persisted_hs.commit == follower.applied
    assert seen == [0, 1, 2, 0, 1, 2, 0]
    assert cluster.applied[2] == cluster.applied[1][: len(cluster.applied[2])]


def test_a_tick_without_entries_applies_what_waits_and_so_does_a_replica_that_leads():
    cluster = _cluster()
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.propose(_append(1))
    cluster.stabilize()
    cluster.propose(_append(2))  # (its REPLICATE carries the first one's commit)
    cluster.stabilize()
    follower = cluster.node(2)
    assert follower.commit - follower.applied >= 1
    cluster.tick([2])  # (entries came during this tick: the leader may still be streaming)
    cluster.stabilize()
    assert follower.commit - follower.applied >= 1
    cluster.tick([2])  # (a whole tick without entries)
    cluster.stabilize()
    assert follower.applied == follower.commit
    # Waiting again, then elected: a leader applies everything it has committed.
    cluster.propose(_append(3))
    cluster.stabilize()
    cluster.propose(_append(4))
    cluster.stabilize()
    assert follower.commit > follower.applied
    new = cluster.elect(2)
    cluster.stabilize()
    assert new.applied == new.commit == new.log.last_index


def _waits(*groups: CommandGroup) -> list[int]:
    """How many committed entries wait unapplied on a replica, as the runtime's rule
    (``applies_later``) decides, after each group's REPLICATE (which carries the commit of
    the entry before), then after a lone append's (which carries the last group's)."""
    cluster = Cluster((1, 2, 3), apply_lag=APPLY_LAG, apply_later=applies_later)
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    follower = cluster.node(2)
    waiting = []
    for group in (*groups, _append(0)):
        cluster.propose(group)
        cluster.stabilize()
        waiting.append(follower.commit - follower.applied)
    return waiting


def _group(count: int, data: bytes = b'"v"') -> CommandGroup:
    return CommandGroup(tuple(AppendMessage("q", data, None, None, n) for n in range(count)))


def test_a_replica_lets_small_groups_of_appends_wait_within_the_bounds():
    # A cycle of 100 connections x 1 in flight: groups of at most LAG_GROUP_APPENDS appends
    # wait like lone appends, fewer than APPLY_LAG entries at a time.
    assert _waits(*[_group(LAG_GROUP_APPENDS)] * 5) == [0, 1, 2, 3, 0, 1]
    # Beyond a bound (appends, bytes of values), or anything but appends: applied at once.
    assert _waits(_group(LAG_GROUP_APPENDS + 1)) == [0, 0]
    large = b'"' + b"x" * (LAG_GROUP_BYTES // 2) + b'"'
    assert _waits(_group(1, large), _group(2, large)) == [0, 1, 0]
    mixed = CommandGroup((_append(1), CreateQueue("r")))
    assert _waits(_group(3), mixed) == [0, 1, 0]
    batch = CommandGroup((AppendBatch("q", (b'"v"',), None, None, 1),))
    assert _waits(batch) == [0, 0]
