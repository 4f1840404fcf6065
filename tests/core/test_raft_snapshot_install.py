"""A snapshot installed on a broker whose commit index is already past it, when the runtime
asks for one (``RaftNode.want_snapshot``): a stored value the next committed entries read is
damaged and no other member holds it any more (docs/reliability.md, "A value nobody holds any
more"). The snapshot's state stands in for those entries; what must hold meanwhile: no
acknowledged entry is lost (the log after the snapshot is kept, and written again with the
install), the commit index never moves back, and applying resumes after the snapshot."""

from __future__ import annotations

import copy
import random

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft import RaftNode
from trio_broker._core._raft_messages import (
    Config,
    DataSync,
    Entry,
    HardState,
    ReplicateResponse,
    SnapshotMeta,
)
from trio_broker.testing._sim_cluster import Cluster, apply_entry

CONFIG = Config(frozenset({1, 2, 3}))


def behind(applied: int = 4, entries: int = 10) -> RaftNode:
    """Broker 2: entries 1..``entries`` of term 1 held and committed, ``applied`` applied."""
    return RaftNode(
        2,
        hard_state=HardState(term=1, commit=entries),
        snapshot=SnapshotMeta(0, 0, CONFIG),
        entries=[Entry(1, i, None) for i in range(1, entries + 1)],
        applied=applied,
        rng=random.Random(1),
    )


def offer(index: int, term: int = 1) -> DataSync:
    return DataSync(
        src=1,
        dst=2,
        term=1,
        cluster_version=CONFIG.version,
        snapshot=SnapshotMeta(index, term, CONFIG),
        data=f"state at {index}",
    )


def test_a_wanted_snapshot_past_the_applied_index_is_installed_and_the_log_after_it_kept():
    node = behind()
    node.want_snapshot()
    node.step(offer(8))
    assert node.commit == 10  # never back
    assert node.snapshot_stands_in(8) and not node.snapshot_stands_in(9)
    rd = node.ready()
    assert rd.snapshot is not None and rd.snapshot.snapshot.index == 8
    # The install replaces the stored log: the entries after it are written again with it.
    assert [e.index for e in rd.entries] == [9, 10] and rd.truncate_from is None
    assert [e.index for e in rd.committed_entries] == [9, 10]  # applying resumes after it
    (ack,) = rd.persisted_messages
    assert isinstance(ack, ReplicateResponse) and ack.success and ack.match_index == 8
    node.advance()
    assert node.applied == 10 and node.commit == 10
    assert (node.log.snapshot_index, node.log.last_index) == (8, 10)


def test_unasked_a_snapshot_inside_the_committed_log_changes_nothing():
    """Without ``want_snapshot`` the core installs a snapshot only when it is behind it."""
    node = behind()
    node.step(offer(8))
    rd = node.ready()
    assert rd.snapshot is None and not rd.entries
    assert [e.index for e in rd.committed_entries] == [5, 6, 7, 8, 9, 10]
    (ack,) = rd.persisted_messages
    assert ack.match_index == 10


def test_a_snapshot_at_or_below_the_applied_index_is_not_installed_and_the_wish_stays():
    node = behind(applied=8)
    node.want_snapshot()
    node.step(offer(8))
    assert not node.snapshot_stands_in(1)  # nothing to install
    node.step(offer(9))  # the next offer, past what is applied: installed
    rd = node.ready()
    assert rd.snapshot is not None and rd.snapshot.snapshot.index == 9
    assert [e.index for e in rd.entries] == [10]


def test_a_wanted_snapshot_beyond_the_log_replaces_it():
    node = behind(entries=6)
    node.want_snapshot()
    node.step(offer(9, term=2))  # entries this broker never had
    rd = node.ready()
    assert rd.snapshot is not None and not rd.entries and not rd.committed_entries
    node.advance()
    assert (node.commit, node.applied, node.log.last_index) == (9, 9, 9)


def test_a_snapshot_stands_in_for_a_held_ready():
    """The runtime holds a Ready whose committed entries it cannot apply; a wanted snapshot
    stepped meanwhile covers them: the Ready is completed without applying them, and the
    next one installs the snapshot and applies what follows it, exactly once."""
    node = behind()
    held = node.ready()
    assert [e.index for e in held.committed_entries] == [5, 6, 7, 8, 9, 10]
    node.want_snapshot()
    node.step(offer(10))
    assert node.snapshot_stands_in(held.committed_entries[-1].index)
    node.advance()  # (completed without applying its entries: the snapshot stands in)
    rd = node.ready()
    assert rd.snapshot is not None and rd.snapshot.snapshot.index == 10
    assert not rd.committed_entries and not rd.entries
    node.advance()
    assert node.applied == 10


def test_in_a_cluster_a_broker_behind_its_commit_installs_the_leaders_snapshot():
    """Broker 3 restarts with every entry committed but none applied (its applying is what
    is held); the leader's snapshot, asked for, is installed; the log after it is kept; the
    group goes on and every broker ends with the same state and log."""
    cluster = Cluster((1, 2, 3), seed=5)
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    for k in range(6):
        cluster.propose(AppendMessage("q", str(k).encode()))
    cluster.stabilize()
    cluster.compact(1)
    for k in range(6, 9):  # entries after the leader's snapshot, held by every broker
        cluster.propose(AppendMessage("q", str(k).encode()))
    cluster.stabilize()
    leader = cluster.node(1)
    cluster.tick(n=leader.heartbeat_ticks)  # (the commit index rides on the heartbeats)
    snapshot_at = leader.log.snapshot_index
    commit = cluster.node(3).commit
    assert commit > snapshot_at
    cluster.crash(3)
    cluster.restart(3)  # applied 0: every committed entry still to apply
    three = cluster.node(3)
    assert three.applied == 0 and three.commit == commit
    three.want_snapshot()
    data = leader.make_data_sync(3, snapshot_at, copy.deepcopy(cluster.storage[1].snapshot_data))
    three.step(data)
    cluster.process(3)
    assert three.commit == commit and three.applied == commit
    assert cluster.storage[3].snapshot.index == snapshot_at
    assert [e.index for e in cluster.storage[3].entries] == list(range(snapshot_at + 1, commit + 1))
    cluster.propose(AppendMessage("q", b"9"))
    cluster.stabilize()
    cluster.tick(n=leader.heartbeat_ticks)
    assert cluster.apps[1].messages["q"][-1] == b"9"
    assert cluster.apps[3].messages == cluster.apps[1].messages == cluster.apps[2].messages
    assert [e.term for e in cluster.storage[3].entries] == [
        e.term for e in cluster.storage[1].entries[-len(cluster.storage[3].entries) :]
    ]


def test_a_wanted_snapshot_below_the_ready_being_applied_is_not_installed_behind_it():
    """The Ready in flight applies 5..10 (``applied`` moves to 10 only in advance()); a
    wanted snapshot at 7 stepped meanwhile would be installed by the next Ready, after 8..10
    were applied: the state would go back to 7 and 8..10 never be applied again here."""
    node = behind(applied=4, entries=10)
    node.want_snapshot()
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [5, 6, 7, 8, 9, 10]
    node.step(offer(7))
    assert not node.snapshot_stands_in(7)
    node.advance()
    assert node.applied == 10
    assert node.ready().snapshot is None
    node.advance()
    assert (node.commit, node.applied) == (10, 10)


def test_a_wanted_snapshot_at_the_end_of_the_ready_being_applied_still_stands_in():
    node = behind(applied=4, entries=12)
    node.max_apply = 6
    held = node.ready()
    assert held.committed_entries[-1].index == 10
    node.want_snapshot()
    node.step(offer(9))  # behind the held entries: not installed
    assert not node.snapshot_stands_in(9)
    node.step(offer(10))
    assert node.snapshot_stands_in(10)
    node.advance()
    rd = node.ready()
    assert rd.snapshot is not None and rd.snapshot.snapshot.index == 10
    assert [e.index for e in rd.committed_entries] == [11, 12]


def test_the_wish_ends_with_the_held_transaction():
    node = behind()
    node.want_snapshot()
    node.drop_snapshot_wish()  # the value was repaired from a member after all
    node.step(offer(8))
    assert not node.snapshot_stands_in(1)
    assert node.ready().snapshot is None


def test_asking_again_while_a_snapshot_waits_sets_no_wish():
    """The asked-for snapshot was stepped during the attempt (the wish is spent); the ask
    that follows must not set it again: left set, it would install a later snapshot."""
    node = behind(applied=4, entries=10)
    node.max_apply = 1
    held = node.ready()
    node.want_snapshot()
    node.step(offer(8))
    node.want_snapshot()  # the runtime's next ask, before it sees the snapshot stand in
    assert node.snapshot_stands_in(held.committed_entries[-1].index)
    node.advance()
    rd = node.ready()
    assert rd.snapshot is not None and rd.snapshot.snapshot.index == 8
    node.advance()
    assert node.applied == 9
    node.step(offer(10))  # nothing asked for it: 10 is applied from the log
    rd = node.ready()
    assert rd.snapshot is None and [e.index for e in rd.committed_entries] == [10]


def test_in_a_cluster_a_wanted_snapshot_stepped_while_applying_past_it_loses_nothing():
    """Broker 3 asked for a snapshot earlier; the wish stayed (its damage was resolved
    another way). While a Ready applying past the leader's snapshot is in flight, that older
    snapshot arrives: installed after the Ready, broker 3's queue would lack the appends
    between. Every broker must end with the same state."""
    cluster = Cluster((1, 2, 3), seed=5)
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    leader, three = cluster.node(1), cluster.node(3)
    cluster.tick(n=leader.heartbeat_ticks)
    cluster.isolate(3)
    for k in range(3):
        cluster.propose(AppendMessage("q", str(k).encode()))
    cluster.stabilize()
    snap_index = leader.applied
    data = leader.make_data_sync(3, snap_index, copy.deepcopy(cluster.apps[1]))
    for k in range(3, 8):
        cluster.propose(AppendMessage("q", str(k).encode()))
    cluster.stabilize()
    cluster.tick(n=leader.heartbeat_ticks)
    three.want_snapshot()
    cluster.heal()
    stepped = False
    for _ in range(10000):
        busy = cluster.process(1) | cluster.process(2)
        if three.has_ready():
            busy = True
            rd = three.ready()
            cluster._post(rd.messages)
            cluster.storage[3].persist(rd)
            cluster._post(rd.persisted_messages)
            if rd.snapshot is not None:
                cluster.apps[3] = copy.deepcopy(rd.snapshot.data)
            applying = [e.index for e in rd.committed_entries]
            if not stepped and applying and applying[0] <= snap_index < applying[-1]:
                three.step(data)  # the fetched DATA_SYNC, stepped by the snapshot task
                stepped = True
            for e in rd.committed_entries:
                apply_entry(cluster.apps[3], e)
            three.advance()
        busy |= cluster.deliver_one()
        if not busy:
            if stepped and three.applied == leader.applied == leader.commit:
                break
            for i in (1, 2, 3):
                cluster.node(i).tick()
    assert stepped
    assert three.applied == leader.commit
    assert cluster.apps[3].messages == cluster.apps[1].messages
