"""A broker that comes back with less than it acknowledged does not vote until it caught up.

On an honest disk a restarted broker's log ends where its last durable write left it. A disk
that lies about a sync can lose entries the broker acknowledged; its vote then rests on a log
that no longer holds them, and (the Raft paper's 5.4 safety argument counts that vote as a
copy of every entry it acknowledged) a candidate without a committed entry could win. Storage
records where the log ended at each durable write (``acknowledged``); a node whose log ends
below it starts *recovering*: it neither votes nor campaigns until a leader brought its log
back to that index.

When nothing on the disk shows the loss, only a reboot can have caused it (a process restart
loses nothing synced): a broker whose machine rebooted starts *unverified* and votes only once
it knows what it may have acknowledged (docs/reliability.md, "A reboot votes only once it
knows"); its liveness cases, the gap a removed broker's floor opened, and the operator's
override are here too. (One module past the house's ~600 lines: the two rules share their
scenarios, the lying disks and the cluster helpers, and each case reads against the other.)
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft import ProgressState, RaftNode, Role
from trio_broker._core._raft_messages import (
    ChangeAction,
    Config,
    ConfigChange,
    ConfigEntry,
    DataSync,
    DenyReason,
    ElectionRequest,
    ElectionResponse,
    Entry,
    HardState,
    Replicate,
    ReplicateResponse,
    SnapshotMeta,
)
from trio_broker.testing._sim_cluster import Cluster
from trio_broker.testing._sim_mutants import TrustLogAfterReboot


def lying_disk_cluster(
    remember: bool, core: type[RaftNode] = RaftNode
) -> tuple[Cluster, dict[Any, int], int]:
    """Brokers 1 and 2 commit X while 3 is cut off; then the whole cluster loses power, 2's
    disk loses X although it acknowledged it, and 1 stays down. Returns the cluster (2 and 3
    restarted, healed), what each broker's storage recorded as acknowledged, and X's index.

    With ``remember`` the restarted nodes are told what they had acknowledged."""
    acknowledged: dict[Any, int] = {}

    def factory(i: Any, **kwargs: Any) -> RaftNode:
        return core(i, acknowledged=acknowledged.get(i) if remember else None, **kwargs)

    cluster = Cluster((1, 2, 3), seed=7, node_factory=factory)
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    cluster.stabilize()
    cluster.isolate(3)
    _, x = cluster.propose(AppendMessage("q", b'"X"'))
    cluster.stabilize()
    assert cluster.node(1).commit >= x and cluster.node(2).log.last_index >= x
    for i in (1, 2, 3):
        acknowledged[i] = cluster.storage[i].entries[-1].index
        cluster.crash(i)
    # The lie: 2's disk had said X was durable, and lost it, and what it wrote after.
    st = cluster.storage[2]
    st.entries = [e for e in st.entries if e.index < x]
    st.hard_state = attrs.evolve(st.hard_state, commit=min(st.hard_state.commit, x - 1))
    cluster.heal()
    cluster.restart(2, reboot=True)
    cluster.restart(3, reboot=True)
    return cluster, acknowledged, x


def test_a_broker_that_lost_acknowledged_entries_does_not_vote():
    """5.4.1 (election restriction) relies on every vote coming from a log that holds what the
    voter acknowledged. A core that votes right after its restart, on what its disk kept
    (every broker did, unless its storage recorded the loss): 2 and 3 (neither holds X) elect
    one of them and X, committed, is gone. With the recorded index 2 is recovering and denies;
    without it (nothing on 2's disk shows the loss) 2 is still unverified: of the other
    voters it heard only 3, so it does not know what it acknowledged, and denies too. No
    leader is elected without X either way."""
    cluster, _, x = lying_disk_cluster(remember=False, core=TrustLogAfterReboot)
    cluster.tick(n=60)
    leader = cluster.leader()
    assert leader is not None, "the control scenario elects a leader without X"
    assert all(e.payload != AppendMessage("q", b'"X"') for e in leader.log.entries)

    for remember in (True, False):
        cluster, _, x = lying_disk_cluster(remember=remember)
        assert cluster.node(2).recovering_until == (x if remember else None)
        assert cluster.node(3).recovering_until is None  # its log ends where its disk said
        assert cluster.node(2).unverified and cluster.node(3).unverified
        cluster.tick(n=60)
        assert cluster.leader() is None
        assert all(not ({2, 3} & leaders) for leaders in cluster.leaders_by_term.values())
        if remember:
            assert cluster.node(2).role is Role.FOLLOWER  # it never campaigned either


def test_it_votes_again_once_a_leader_brought_its_log_back():
    """Once the broker that still holds X is back, it wins (3's vote: its log is more up to
    date), replicates X to 2, and 2 votes again."""
    cluster, _, x = lying_disk_cluster(remember=True)
    cluster.tick(n=30)
    cluster.restart(1, reboot=True)
    cluster.tick(n=60)
    leader = cluster.leader()
    assert leader is not None and leader.id == 1
    assert cluster.node(2).recovering_until is None
    assert cluster.node(2).log.entry(x).payload == AppendMessage("q", b'"X"')
    assert any(e.index == x for e in cluster.applied[2])
    # And 2 votes again: with 1 cut off, 2 and 3 elect a leader between them.
    cluster.isolate(1)
    cluster.tick(n=60)
    assert cluster.leader() is not None and cluster.leader().id in (2, 3)


def test_recovering_broker_denies_pre_votes_and_votes():
    """Both rounds of an election (thesis 9.6's pre-vote, then the vote) are denied."""
    node = RaftNode(
        2,
        hard_state=HardState(term=3, voted_for=None, commit=4),
        snapshot=SnapshotMeta(0, 0, Config({1, 2, 3})),
        entries=[Entry(1, i, None) for i in range(1, 5)],
        rng=random.Random(1),
        acknowledged=6,
    )
    for pre_vote in (True, False):
        node.step(
            ElectionRequest(
                src=3,
                dst=2,
                term=4,
                cluster_version=0,
                pre_vote=pre_vote,
                last_log_index=4,
                last_log_term=1,
            )
        )
        (reply,) = node.ready().persisted_messages
        node.advance()
        assert isinstance(reply, ElectionResponse)
        assert not reply.granted and reply.reason is DenyReason.LOG_BEHIND
    for _ in range(10 * node.election_ticks):
        node.tick()
    assert node.role is Role.FOLLOWER


def test_an_honest_restart_is_not_recovering():
    """On a disk that kept what it said, the log ends at (or past) the recorded index: the
    broker votes and campaigns as before."""
    entries = [Entry(1, i, None) for i in range(1, 5)]
    for acknowledged in (None, 3, 4):
        node = RaftNode(
            1,
            hard_state=HardState(term=1, voted_for=None, commit=4),
            snapshot=SnapshotMeta(0, 0, Config({1})),
            entries=entries,
            rng=random.Random(1),
            acknowledged=acknowledged,
        )
        assert node.recovering_until is None
        for _ in range(10 * node.election_ticks):
            node.tick()
        assert node.role is not Role.FOLLOWER


# -- the leader is the witness: a follower whose log went backwards ---------------------------


def lost_tail_cluster(max_batch: int = 64) -> tuple[Cluster, int, int]:
    """1 leads and 2 acknowledged every entry; then 2 loses power and its disk loses the
    last six entries it had said were durable, with the hard state that committed them.
    Nothing on 2's disk says so. Returns the cluster, where 2's log ends, what it acknowledged."""
    cluster = Cluster((1, 2, 3), seed=5, max_batch=max_batch)
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    for k in range(8):
        cluster.propose(AppendMessage("q", str(k).encode()))
    cluster.stabilize()
    acked = cluster.node(1).progress[2].match
    assert acked == cluster.node(1).log.last_index == cluster.node(1).commit
    cluster.crash(2)
    st = cluster.storage[2]
    keep = acked - 6
    st.entries = [e for e in st.entries if e.index <= keep]
    st.hard_state = attrs.evolve(st.hard_state, commit=min(st.hard_state.commit, keep))
    cluster.restart(2, reboot=True)
    assert not cluster.node(2).recovering  # its own disk cannot tell
    return cluster, keep, acked


def test_a_follower_whose_log_went_backwards_is_probed_and_repaired():
    """With nothing new to replicate, the leader's record says 2 holds everything (the
    issue's "lag 0, never catches up": each probe at the recorded match was rejected and
    repeated, forever). A heartbeat answer ending below the match makes it probe; the
    rejection, hinting below the match, shows the loss: it probes from where 2's log really
    ends, tells 2 what it had acknowledged, and repairs it."""
    cluster, keep, acked = lost_tail_cluster()
    settle_vote(cluster, 2)
    cluster.tick(n=3)
    told = [m for m in cluster.sent if isinstance(m, Replicate) and m.dst == 2 and m.acknowledged]
    assert told and all(m.acknowledged == acked for m in told)
    assert told[0].prev_log_index == keep  # from where its log really ends
    leader, follower = cluster.node(1), cluster.node(2)
    assert follower.log.last_index == leader.log.last_index >= acked
    assert [e.term for e in follower.log.entries] == [e.term for e in leader.log.entries]
    assert leader.progress[2].match == leader.log.last_index and leader.progress[2].lost_to == 0
    assert not follower.recovering


def test_a_stale_rejection_only_sends_the_member_back_to_probing():
    """A rejection overtaken by later acknowledgements (reordered on the way) can hint below
    the match too: in the replicate state it only restarts probing at the match, and the
    answer to that probe decides. Only a probe's rejection hinting below the match counts
    as a loss."""
    leader = RaftNode(
        1,
        hard_state=HardState(term=2, voted_for=1, commit=0),
        snapshot=SnapshotMeta(0, 0, Config({1, 2, 3})),
        entries=[Entry(1, i, None) for i in range(1, 13)],
        rng=random.Random(1),
    )
    leader._become_leader()
    pr = leader.progress[2]
    pr.match, pr.next, pr.state = 10, 13, ProgressState.REPLICATE

    def rejection(rejected: int, hint: int) -> ReplicateResponse:
        return ReplicateResponse(
            src=2, dst=1, term=2, cluster_version=1, success=False,
            rejected_index=rejected, hint_index=hint, hint_term=1,
        )  # fmt: skip

    leader.step(rejection(8, 3))
    assert (pr.state, pr.match, pr.lost_to) == (ProgressState.REPLICATE, 10, 0)  # stale
    leader.step(rejection(12, 3))
    assert (pr.state, pr.next, pr.match, pr.lost_to) == (ProgressState.PROBE, 11, 10, 0)
    leader.step(rejection(10, 3))  # the probe at the match, rejected: the log went backwards
    assert (pr.state, pr.next, pr.match, pr.lost_to) == (ProgressState.PROBE, 4, 0, 10)
    probe = [m for m in leader.take_messages() if isinstance(m, Replicate) and m.dst == 2][-1]
    assert probe.prev_log_index == 3 and probe.acknowledged == 10


def test_a_follower_told_it_lost_entries_votes_only_for_a_log_beyond_the_loss():
    """Told by the leader, 2 recovers: it never campaigns, and votes only for a candidate
    whose log is at least as up to date as 2's was before the loss. With the leader cut off,
    3 (whose log is whole) is such a candidate: it wins with 2's vote and repairs it. A
    candidate short of the loss gets no vote (test_a_broker_that_lost_acknowledged_entries_
    does_not_vote: there the group refuses to guess and stays without a leader)."""
    cluster, keep, acked = lost_tail_cluster(max_batch=2)
    # Its acknowledgements are lost: the leader repairs it two entries at a time, slowly.
    cluster.drop_if.append(lambda m: isinstance(m, ReplicateResponse) and m.src == 2 and m.success)
    settle_vote(cluster, 2)
    cluster.tick(n=3)
    follower = cluster.node(2)
    assert follower.recovering_until == acked and follower.recovering_term == 1
    assert keep < follower.log.last_index < acked
    term = follower.term
    cluster.isolate(1)
    cluster.drop_if.clear()
    cluster.tick(n=80)
    leader = cluster.leader()
    assert leader is not None and leader.id == 3 and leader.term > term
    assert not any(2 in leaders for leaders in cluster.leaders_by_term.values())
    assert not follower.recovering and follower.log.last_index >= acked
    assert follower.log.term(acked) == leader.log.term(acked)


def test_a_recovering_broker_grants_only_candidates_beyond_what_it_lost():
    node = follower_with(4, acknowledged=9)  # its log ended at 9, in a term <= 2
    assert (node.recovering_term, node.recovering_until) == (2, 9)

    def asks(last_term: int, last_index: int) -> bool:
        node.step(
            ElectionRequest(
                src=3,
                dst=2,
                term=3,
                cluster_version=1,
                pre_vote=True,
                last_log_index=last_index,
                last_log_term=last_term,
            )
        )
        (reply,) = node.ready().persisted_messages
        node.advance()
        return reply.granted

    assert not asks(2, 8) and not asks(1, 20)
    assert asks(2, 9) and asks(3, 5)
    for _ in range(10 * node.election_ticks):
        node.tick()
    assert node.role is Role.FOLLOWER  # it never campaigns on its own log


def test_a_restart_keeps_the_recorded_bound_on_the_lost_terms():
    """A broker lost entries of term 1 (recorded: recovering until 9, their term at most 1),
    then elections without a winner moved it to term 3, then it restarted. The restart finds
    no new loss, so the bound stays 1: it grants a candidate whose log ends at (1, 9), the
    one leader that can still be elected when no term-3 entry exists. (Raising the bound to
    the restart's term 3 shut out every candidate: the cluster never elected a leader.)
    A loss the restart itself finds is bounded by the current term only."""

    def restarted(acknowledged: int | None = None) -> RaftNode:
        return RaftNode(
            2,
            hard_state=HardState(
                term=3, voted_for=None, commit=4, recovering_until=9, recovering_term=1
            ),
            snapshot=SnapshotMeta(0, 0, Config({1, 2, 3})),
            entries=[Entry(1, i, None) for i in range(1, 5)],
            rng=random.Random(1),
            acknowledged=acknowledged,
        )

    node = restarted()
    assert (node.recovering_term, node.recovering_until) == (1, 9)
    assert node.hard_state.recovering_term == 1  # what the next Ready persists
    node.step(
        ElectionRequest(
            src=3,
            dst=2,
            term=4,
            cluster_version=1,
            pre_vote=False,
            last_log_index=9,
            last_log_term=1,
        )
    )
    (reply,) = node.ready().persisted_messages
    assert reply.granted and node.voted_for == 3

    node = restarted(acknowledged=12)  # its disk lost more, written at a term up to 3
    assert (node.recovering_term, node.recovering_until) == (3, 12)


def settle_vote(cluster: Cluster, i: Any) -> None:
    """A rebooted broker first settles the vote its disk may have rolled back
    (docs/reliability.md, "A reboot votes only once it knows"): it follows no leader until, past
    its first election timeout, a pre-vote round heard the other voters' terms."""
    node = cluster.node(i)
    for _ in range(3 * node.election_ticks):
        if not node.vote_lost:
            return
        cluster.tick()
    raise AssertionError(f"{i} never settled its vote")


def settled(node: RaftNode) -> RaftNode:
    """A rebooted broker 2 of term 2 whose vote is settled: voters 1 and 3, past its first
    election timeout, told term 2 (the log rule then stands alone)."""
    assert node.vote_lost
    node.now = node.election_ticks
    for src in (1, 3):  # (a pre-vote request for term 3 tells the sender's term, 2)
        node.step(
            ElectionRequest(
                src=src, dst=2, term=3, cluster_version=1, pre_vote=True,
                last_log_index=4, last_log_term=1,
            )
        )  # fmt: skip
    node.ready()  # (its answers)
    node.advance()
    assert not node.vote_lost and node.unverified
    assert (node.term, node.voted_for, node.restart_term) == (2, 2, 2)
    return node


def follower_with(entries: int, *, rebooted: bool = False, **kwargs: Any) -> RaftNode:
    """Broker 2 started on ``entries`` entries of term 1, in term 2; with ``rebooted``, as
    after its machine rebooted (``HardState.unverified``, which the runtime sets)."""
    return RaftNode(
        2,
        hard_state=HardState(term=2, voted_for=None, commit=entries, unverified=rebooted),
        snapshot=SnapshotMeta(0, 0, Config({1, 2, 3})),
        entries=[Entry(1, i, None) for i in range(1, entries + 1)],
        rng=random.Random(1),
        **kwargs,
    )


def replicate(prev: int, upto: int, acknowledged: int = 0) -> Replicate:
    return Replicate(
        src=1,
        dst=2,
        term=2,
        cluster_version=1,
        prev_log_index=prev,
        prev_log_term=1,
        entries=tuple(Entry(1, i, None) for i in range(prev + 1, upto + 1)),
        leader_commit=upto,
        acknowledged=acknowledged,
    )


def test_recovering_starts_from_the_leaders_word_and_ends_when_caught_up():
    node = follower_with(4)
    node.step(replicate(4, 4, acknowledged=4))  # it holds that: nothing lost
    assert not node.recovering
    node.step(replicate(4, 6, acknowledged=9))
    assert node.recovering_until == 9 and node.log.last_index == 6
    node.step(replicate(6, 8, acknowledged=9))  # said again until the leader sees it back
    assert node.recovering_until == 9 and node.losses == [9]  # one loss, logged once
    node.step(replicate(8, 8))  # the word is remembered: 8 is still short of 9
    assert node.recovering_until == 9
    node.step(replicate(8, 9))
    assert not node.recovering and node.hard_state.recovering_until == 0


def test_a_snapshot_that_reaches_the_lost_index_ends_recovering():
    node = follower_with(2, acknowledged=7)
    assert node.recovering_until == 7
    snapshot = DataSync(
        src=1,
        dst=2,
        term=2,
        cluster_version=1,
        snapshot=SnapshotMeta(5, 1, Config({1, 2, 3})),
    )
    node.step(snapshot)
    assert node.recovering_until == 7  # index 5: still short
    node.step(attrs.evolve(snapshot, snapshot=SnapshotMeta(8, 1, Config({1, 2, 3}))))
    assert not node.recovering and node.log.last_index == 8


# -- a restart votes only once it knows what it may have acknowledged ----------------------------


def committed_cluster(
    ids: tuple[int, ...], seed: int = 3, core: type[RaftNode] = RaftNode, **options: Any
) -> tuple[Cluster, int]:
    """1 leads and commits a queue and three appends on every broker; returns the last index."""
    cluster = Cluster(ids, seed=seed, node_factory=core, **options)
    cluster.elect(1)
    cluster.propose(CreateQueue("q"))
    for k in range(3):
        cluster.propose(AppendMessage("q", str(k).encode()))
    cluster.stabilize()
    cluster.tick(n=2)  # (the commit index reaches the followers with the next heartbeats)
    last = cluster.node(1).log.last_index
    assert all(cluster.node(i).commit == last for i in ids)
    return cluster, last


def lose_tail(cluster: Cluster, i: int, keep: int) -> None:
    """``i``'s disk loses every entry after ``keep`` and the commit index that covered them:
    nothing on it shows the loss."""
    st = cluster.storage[i]
    st.entries = [e for e in st.entries if e.index <= keep]
    st.hard_state = attrs.evolve(st.hard_state, commit=min(st.hard_state.commit, keep))


def test_a_whole_cluster_power_cut_elects_a_leader_again():
    """Every broker restarts at once, so every one is unverified: their vote requests (sent
    in a term later than the one they restarted in) tell each other their log ends, and a
    leader is elected once enough were heard; 2's disk lost its last entries without a
    trace, and the leader still holds them all."""
    for ids in ((1, 2, 3), (1, 2, 3, 4, 5)):
        cluster, last = committed_cluster(ids)
        for i in ids:
            cluster.crash(i)
        lose_tail(cluster, 2, last - 2)
        for i in ids:
            cluster.restart(i, reboot=True)
            assert cluster.node(i).unverified
        cluster.tick(n=200)
        leader = cluster.leader()
        assert leader is not None, ids
        assert leader.id != 2 and leader.commit >= last
        _, index = cluster.propose(AppendMessage("q", b"after"))
        cluster.stabilize()
        cluster.tick(n=2)
        for i in ids:
            node = cluster.node(i)
            assert not node.unverified and node.commit >= index
            assert [e.term for e in node.log.entries] == [e.term for e in leader.log.entries]


def test_a_process_restart_of_two_of_three_elects_with_the_third_gone():
    """A process restart loses nothing synced (the machine, its kernel and its disk kept
    running): the restarted brokers vote at once, as before the rule. The leader and one
    follower restart together while the third is down for good: they elect one of them,
    holding every committed entry (the rule that started every restart unverified left
    this group without a leader)."""
    cluster, last = committed_cluster((1, 2, 3))
    for i in (1, 2, 3):
        cluster.crash(i)
    for i in (1, 2):
        cluster.restart(i)
        assert not cluster.node(i).unverified
    cluster.tick(n=60)
    leader = cluster.leader()
    assert leader is not None and leader.id in (1, 2) and leader.commit >= last


def test_a_rebooted_leader_of_three_waits_for_the_voter_that_is_down():
    """The leader's machine reboots while 3 is down: 2 cannot win without 1's vote, and 1
    has heard only 2's log end (it needs two): the group waits for 3 (1 and 3 may have
    committed entries that 1's disk lost and only 3 holds). After a process restart of the
    leader, 1 and 2 elect at once."""
    for reboot in (False, True):
        cluster, last = committed_cluster((1, 2, 3))
        cluster.crash(3)
        cluster.crash(1)
        cluster.restart(1, reboot=reboot)
        cluster.tick(n=150)
        if not reboot:
            assert cluster.leader() is not None and cluster.leader().commit >= last
            continue
        assert cluster.leader() is None and cluster.node(1).unverified
        cluster.restart(3)
        cluster.tick(n=150)
        assert cluster.leader() is not None and cluster.leader().commit >= last
        assert not cluster.node(1).unverified or cluster.node(1).leader_id is not None


def test_a_process_restart_while_unverified_stays_unverified():
    """The state is durable: a broker that rebooted and crashes (a plain process crash)
    before it knew what it acknowledged starts unverified again, although the boot id is
    the same this time (``HardState.unverified``, cleared by the core only)."""
    cluster, _ = committed_cluster((1, 2, 3))
    for i in (1, 2, 3):
        cluster.crash(i)
    cluster.restart(2, reboot=True)
    cluster.tick(n=5)
    assert cluster.node(2).unverified and cluster.storage[2].hard_state.unverified
    cluster.crash(2)
    cluster.restart(2)  # same boot
    assert cluster.node(2).unverified


def test_a_reboot_of_all_three_elects_once_all_are_back():
    """The whole cluster lost power. Each rebooted broker needs the log ends of voters -
    quorum + 1 = 2 other voters before it votes: two of three wait (no leader, nor any
    vote), and the third one's return elects a leader with every committed entry."""
    cluster, last = committed_cluster((1, 2, 3))
    for i in (1, 2, 3):
        cluster.crash(i)
    for i in (1, 2):
        cluster.restart(i, reboot=True)
    cluster.tick(n=150)
    assert cluster.leader() is None
    assert all(cluster.node(i).unverified for i in (1, 2))
    cluster.restart(3, reboot=True)
    cluster.tick(n=150)
    leader = cluster.leader()
    assert leader is not None and leader.commit >= last
    cluster.propose(AppendMessage("q", b"after"))
    cluster.stabilize()
    assert not any(cluster.node(i).unverified for i in (1, 2, 3))


def test_a_reboot_of_two_of_three_with_the_third_gone_refuses_to_guess():
    """Two of three machines rebooted and the third is gone: neither can tell whether it
    acknowledged entries that only the other and the lost one held, so the group elects
    nobody (it refuses to guess), for as long as it waits; each says it is ``unverified``
    (the runtime's status, metrics and ``raft.unverified`` line read it). Here 2's disk lost
    the last entries: a leader elected from 2's log with 1 gone, had 1 lost them too, would
    lack committed entries. (The core that trusts its log after a reboot elects one.)"""
    control, _ = committed_cluster((1, 2, 3), core=TrustLogAfterReboot)
    for i in (1, 2, 3):
        control.crash(i)
    for i in (1, 2):
        control.restart(i, reboot=True)
    control.tick(n=400)
    assert control.leader() is not None

    cluster, last = committed_cluster((1, 2, 3))
    for i in (1, 2, 3):
        cluster.crash(i)
    lose_tail(cluster, 2, last - 2)
    for i in (1, 2):
        cluster.restart(i, reboot=True)
    since = len(cluster.sent)
    cluster.tick(n=400)
    assert cluster.leader() is None
    assert not any(cluster.leaders_by_term.get(t) for t in range(2, cluster.node(1).term + 1))
    for i in (1, 2):
        node = cluster.node(i)
        assert node.unverified and node.hard_state.unverified
        assert node.role is not Role.LEADER
    answers = [m for m in cluster.sent[since:] if isinstance(m, ElectionResponse)]
    assert answers and not [m for m in answers if m.granted and not m.pre_vote]  # no vote given


def test_the_operator_accepts_the_logs_and_the_group_elects():
    """The override (``python -m trio_broker data trust-log`` on each surviving, stopped
    broker): their stores no longer say ``unverified``, so they start voting at once and
    elect the more up-to-date of them, with every entry either of them holds; the third,
    back later, is answered by the new leader and follows."""
    cluster, last = committed_cluster((1, 2, 3))
    for i in (1, 2, 3):
        cluster.crash(i)
    lose_tail(cluster, 2, last - 2)
    for i in (1, 2):
        cluster.restart(i, reboot=True)
    cluster.tick(n=100)
    assert cluster.leader() is None
    for i in (1, 2):  # stopped; the store's flag cleared; started again on the same boot
        cluster.crash(i)
        st = cluster.storage[i]
        st.hard_state = attrs.evolve(st.hard_state, unverified=False)
        cluster.restart(i)
        assert not cluster.node(i).unverified
    cluster.tick(n=100)
    leader = cluster.leader()
    assert leader is not None and leader.id == 1 and leader.commit >= last  # 1 kept them all
    cluster.restart(3, reboot=True)
    assert cluster.node(3).unverified
    cluster.tick(n=20)
    assert not cluster.node(3).unverified and cluster.node(3).leader_id == 1


class RemovedVoterNeverCampaigns(RaftNode):
    """The core before the removed-voter rule: a broker whose log removes it never campaigns,
    even while that removal is not committed."""

    def _promotable(self) -> bool:
        return self._log_trusted() and self.id in self.config.voters


def test_a_floor_set_by_a_broker_whose_log_removes_it_is_reached():
    """The liveness gap the simulator found in the rule that started every restart
    unverified: 3, leading, appended its own removal (and an entry after it) that nobody
    else got. After a whole-cluster power cut, 1 and 2 (rebooted, configuration {1, 2, 3})
    heard the log ends of both others: their floor is 3's log end, which neither reaches,
    and 3, removed by its own log, never campaigned: no leader for ever. A removed voter
    whose removal is not committed campaigns under its log's configuration (thesis 4.2.2):
    1 and 2 elect it, it commits its removal and steps down, and they elect one of them."""

    def scenario(core: type[RaftNode]) -> tuple[Cluster, int]:
        cluster, _ = committed_cluster((1, 2, 3), core=core)
        cluster.elect(3)
        cluster.stabilize()
        cluster.isolate(3)
        _, removal = cluster.node(3).propose_config_change(ConfigChange(ChangeAction.REMOVE, 3))
        cluster.node(3).propose(AppendMessage("q", b"only on 3"))
        cluster.stabilize()
        for i in (1, 2, 3):
            cluster.crash(i)
        cluster.heal()
        for i in (1, 2):
            cluster.restart(i, reboot=True)
        cluster.restart(3)  # (its own log removes it: it has nothing to learn)
        assert cluster.node(3).log.last_index == removal + 1
        assert all(cluster.node(i).log.last_index < removal for i in (1, 2))
        cluster.tick(n=300)
        return cluster, removal

    control, _ = scenario(RemovedVoterNeverCampaigns)
    assert control.leader() is None
    assert all(control.node(i).vote_floor or control.node(i).unverified for i in (1, 2))

    cluster, removal = scenario(RaftNode)
    leader = cluster.leader()
    assert leader is not None and leader.id in (1, 2), leader
    assert leader.commit >= removal and 3 not in leader.config.voters
    assert not any(cluster.node(i).unverified or cluster.node(i).vote_floor for i in (1, 2))


def test_a_broker_removed_by_its_log_tells_its_log_end_up_to_its_removal():
    """An election answer tells the log end a rebooted voter may take as its floor. A broker
    whose log removes it (index 6) and goes on (7, appended under a configuration without
    its vote) tells 6: its acknowledgements helped commit nothing after its removal, so its
    copy of 7 proves nothing; told 7, a floor only it reaches (perhaps held by nobody else,
    and a removed broker that knows its removal committed never campaigns) would shut out
    every candidate. A voter tells its whole log."""
    removal = ConfigEntry(Config({1, 2}, version=2), ConfigChange(ChangeAction.REMOVE, 3))
    entries = [Entry(1, i, None) for i in range(1, 6)] + [Entry(2, 6, removal), Entry(2, 7, None)]

    def told(node_id: int) -> tuple[int, int]:
        node = RaftNode(
            node_id,
            hard_state=HardState(term=2, voted_for=None, commit=6),
            snapshot=SnapshotMeta(0, 0, Config({1, 2, 3})),
            entries=entries,
            rng=random.Random(1),
        )
        src = 1 if node_id != 1 else 2
        node.step(
            ElectionRequest(
                src=src,
                dst=node_id,
                term=3,
                cluster_version=2,
                pre_vote=True,
                last_log_index=5,
                last_log_term=1,
            )
        )
        (answer,) = node.ready().persisted_messages
        return answer.last_log_term, answer.last_log_index

    assert told(3) == (2, 6)
    assert told(2) == (2, 7)


def test_after_a_power_cut_five_brokers_elect_with_one_of_them_gone():
    """Each restarted voter needs the log ends of voters - quorum + 1 = 3 others: with one of
    five gone for good, the four left still elect (three of them would not: the cost of not
    trusting a disk, written in docs/reliability.md)."""
    cluster, last = committed_cluster((1, 2, 3, 4, 5))
    for i in (1, 2, 3, 4, 5):
        cluster.crash(i)
    for i in (1, 2, 3, 4):
        cluster.restart(i, reboot=True)
    cluster.tick(n=200)
    assert cluster.leader() is not None and cluster.leader().commit >= last


def test_the_leader_of_its_term_answers_a_restarted_follower():
    """2 restarts while 1 keeps leading the same term. Its heartbeat answers carry the number
    of its start; 1 echoes it with its log end, which 2 then votes by. So once 1 is gone, 2
    votes again and 2 and 3 elect a leader (waiting for a later term's entry would leave a
    group of three without one)."""
    cluster, last = committed_cluster((1, 2, 3))
    cluster.crash(2)
    lose_tail(cluster, 2, last - 2)
    cluster.restart(2, reboot=True)
    follower = cluster.node(2)
    assert follower.unverified and follower.restart_term == cluster.node(1).term
    settle_vote(cluster, 2)
    cluster.tick(n=3)
    echoes = [m for m in cluster.sent if isinstance(m, Replicate) and m.dst == 2 and m.start_id]
    assert echoes and all(m.start_id == follower.start_id for m in echoes)
    assert echoes[0].log_end == last
    assert not follower.unverified and follower.vote_floor in (None, (1, last))
    assert follower.log.last_index >= last
    cluster.isolate(1)
    cluster.tick(n=80)
    leader = cluster.leader()
    assert leader is not None and leader.id in (2, 3) and leader.commit >= last


def test_only_the_echo_of_its_own_start_counts():
    """An echo of another start (a message sent before this restart, delivered late) says
    nothing of what was acknowledged since: still unverified. Its own start's echo sets the
    floor: below it, no vote."""
    node = settled(follower_with(4, rebooted=True))
    stale = attrs.evolve(replicate(4, 4), start_id=node.start_id ^ 1, log_end=9)
    node.step(stale)
    assert node.unverified
    node.step(attrs.evolve(replicate(4, 4), start_id=node.start_id, log_end=9))
    assert not node.unverified and node.vote_floor == (2, 9)
    node.ready()  # (its acknowledgements)
    node.advance()
    node.election_elapsed = node.election_ticks  # the leader's lease is over

    def asks(last_term: int, last_index: int) -> bool:
        node.step(
            ElectionRequest(
                src=3,
                dst=2,
                term=3,
                cluster_version=1,
                pre_vote=True,
                last_log_index=last_index,
                last_log_term=last_term,
            )
        )
        (reply,) = node.ready().persisted_messages
        node.advance()
        return reply.granted

    assert not asks(2, 8) and not asks(1, 20) and asks(2, 9)


def test_an_unverified_broker_grants_pre_votes_but_no_vote_and_never_counts_itself():
    node = follower_with(4, rebooted=True)
    assert node.unverified  # rebooted on a log: term 2, four entries
    for pre_vote, granted in ((True, True), (False, False)):
        node.step(
            ElectionRequest(
                src=3,
                dst=2,
                term=2 if not pre_vote else 3,
                cluster_version=1,
                pre_vote=pre_vote,
                last_log_index=4,
                last_log_term=1,
            )
        )
        reply, *told = node.ready().persisted_messages
        node.advance()
        assert isinstance(reply, ElectionResponse) and reply.granted is granted
        assert (reply.last_log_term, reply.last_log_index) == (1, 4)
        if not pre_vote:
            # Denied for want of knowing: it tells the other voters its log end, which
            # they may be waiting for as it waits for theirs (a pre-vote round).
            assert sorted(m.dst for m in told) == [1, 3]
            assert all(isinstance(m, ElectionRequest) and m.pre_vote for m in told)
            assert all((m.last_log_term, m.last_log_index) == (1, 4) for m in told)
        else:
            assert not told
    node._campaign()
    assert node.role is Role.PRE_CANDIDATE and node.votes == {node.id: True}  # a pre-vote
    node._become_candidate()
    assert node.votes == {}  # its own vote is no vote it may give yet


def test_an_entry_of_a_later_term_ends_the_unverified_state():
    node = settled(follower_with(4, rebooted=True))
    later = Replicate(
        src=1,
        dst=2,
        term=3,
        cluster_version=1,
        prev_log_index=4,
        prev_log_term=1,
        entries=(Entry(3, 5, None),),
        leader_commit=4,
    )
    node.step(attrs.evolve(later, entries=()))  # the leader of term 3, but no entry of it
    assert node.unverified
    node.step(later)
    assert not node.unverified and node.vote_floor is None


def test_who_starts_unverified():
    """A broker whose machine rebooted, with a durable past, among other voters; never after
    a process restart (nothing synced can be lost), nor a fresh one, nor the only voter
    (there is nobody to learn from: its disk is the only copy)."""
    assert follower_with(4, rebooted=True).unverified
    assert not follower_with(4).unverified
    fresh = RaftNode(
        1,
        hard_state=HardState(unverified=True),
        snapshot=SnapshotMeta(0, 0, Config({1, 2, 3})),
        rng=random.Random(1),
    )
    assert not fresh.unverified
    alone = RaftNode(
        1,
        hard_state=HardState(term=3, voted_for=1, commit=4, unverified=True),
        snapshot=SnapshotMeta(0, 0, Config({1})),
        entries=[Entry(1, i, None) for i in range(1, 5)],
        rng=random.Random(1),
    )
    assert not alone.unverified
    for node in (fresh, alone):
        assert node.has_ready() and node.ready().hard_state.unverified is False  # cleared


# -- an answer overtaken on the way does not look like a lost log --------------------------------


def reordered_probe_answers(echo: bool) -> Any:
    """A leader probes 2 twice at the same index, the first answer (a rejection, sent while
    2's log was shorter) overtaken on the way by everything after it: 2 catches up, then the
    old rejection arrives while the leader probes at that index again. Returns the leader's
    progress record of 2 then. Without ``echo`` the answers carry no probe number (a peer
    that predates it)."""
    leader = RaftNode(
        1,
        hard_state=HardState(term=2, voted_for=1, commit=0),
        snapshot=SnapshotMeta(0, 0, Config({1, 2, 3})),
        entries=[Entry(1, i, None) for i in range(1, 11)],
        rng=random.Random(1),
    )
    follower = follower_with(4)
    leader._become_leader()  # its no-op is 11
    rd = leader.ready()
    leader.advance()
    pr = leader.progress[2]

    def answers(probe: Replicate) -> list[ReplicateResponse]:
        follower.step(probe)
        rd = follower.ready()
        follower.advance()
        out = [m for m in rd.persisted_messages if isinstance(m, ReplicateResponse)]
        return out if echo else [attrs.evolve(m, probe=0) for m in out]

    def sent_to_2() -> list[Replicate]:
        return [m for m in leader.take_messages() if isinstance(m, Replicate) and m.dst == 2]

    # The leader's first probe (its PROMOTE_TO_LEADER, at 10): 2's log ends at 4. Its answer
    # is held on the way (the reordering).
    (first,) = [m for m in rd.messages if isinstance(m, Replicate) and m.dst == 2]
    assert first.prev_log_index == 10 and first.probe == 1
    (held,) = answers(first)
    assert not held.success and held.rejected_index == 10 and held.hint_index == 4
    # The leader probes again at the same index (nothing came back in time), 2 answers
    # that one first (another rejection), and the probe at 4 after it brings 2 up to 10.
    pr.state, pr.paused, pr.next = ProgressState.PROBE, False, 11
    leader._send_append(2, probe_empty=True)
    (again,) = sent_to_2()
    assert again.prev_log_index == 10
    for m in answers(again):
        leader.step(m)
    for _ in range(4):
        for probe in sent_to_2():
            for m in answers(probe):
                leader.step(m)
    assert pr.match == 11 and follower.log.last_index == 11
    # Once more a probe at 10 (say, its acknowledgements stalled), and now the old answer
    # arrives.
    pr.match, pr.state, pr.paused, pr.next = 10, ProgressState.PROBE, False, 11
    leader._send_append(2, probe_empty=True)
    sent_to_2()
    leader.step(held)
    return pr


def test_a_reordered_answer_to_an_older_probe_is_not_taken_for_a_lost_log():
    """The echoed probe number tells the old answer from the answer to the latest probe: the
    leader ignores it, and 2 keeps its match. A peer that does not echo gets the old
    judgement: its log looks as if it went backwards (a needless repair, nothing unsafe)."""
    pr = reordered_probe_answers(echo=True)
    assert pr.match == 10 and pr.lost_to == 0 and pr.next == 11
    old = reordered_probe_answers(echo=False)
    assert old.match == 0 and old.lost_to == 10
