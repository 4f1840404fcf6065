"""A broker that comes back with less than it acknowledged does not vote until it caught up.

On an honest disk a restarted broker's log ends where its last durable write left it. A disk
that lies about a sync can lose entries the broker acknowledged; its vote then rests on a log
that no longer holds them, and (the Raft paper's 5.4 safety argument counts that vote as a
copy of every entry it acknowledged) a candidate without a committed entry could win. Storage
records where the log ended at each durable write (``acknowledged``); a node whose log ends
below it starts *recovering*: it neither votes nor campaigns until a leader brought its log
back to that index.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft import ProgressState, RaftNode, Role
from trio_broker._core._raft_messages import (
    Config,
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


def lying_disk_cluster(remember: bool) -> tuple[Cluster, dict[Any, int], int]:
    """Brokers 1 and 2 commit X while 3 is cut off; then the whole cluster loses power, 2's
    disk loses X although it acknowledged it, and 1 stays down. Returns the cluster (2 and 3
    restarted, healed), what each broker's storage recorded as acknowledged, and X's index.

    With ``remember`` the restarted nodes are told what they had acknowledged."""
    acknowledged: dict[Any, int] = {}

    def factory(i: Any, **kwargs: Any) -> RaftNode:
        return RaftNode(i, acknowledged=acknowledged.get(i) if remember else None, **kwargs)

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
    cluster.restart(2)
    cluster.restart(3)
    return cluster, acknowledged, x


def test_a_broker_that_lost_acknowledged_entries_does_not_vote():
    """5.4.1 (election restriction) relies on every vote coming from a log that holds what the
    voter acknowledged. Without the recovering state, 2 and 3 (neither holds X) elect one of
    them and X, committed, is gone; with it, 2 denies and no leader is elected without X."""
    cluster, _, x = lying_disk_cluster(remember=False)
    cluster.tick(n=60)
    leader = cluster.leader()
    assert leader is not None, "the control scenario elects a leader without X"
    assert all(e.payload != AppendMessage("q", b'"X"') for e in leader.log.entries)

    cluster, _, x = lying_disk_cluster(remember=True)
    assert cluster.node(2).recovering_until == x
    assert cluster.node(3).recovering_until is None  # its log ends where its disk said
    cluster.tick(n=60)
    assert cluster.leader() is None
    assert all(not ({2, 3} & leaders) for leaders in cluster.leaders_by_term.values())
    assert cluster.node(2).role is Role.FOLLOWER  # it never campaigned either


def test_it_votes_again_once_a_leader_brought_its_log_back():
    """Once the broker that still holds X is back, it wins (3's vote: its log is more up to
    date), replicates X to 2, and 2 votes again."""
    cluster, _, x = lying_disk_cluster(remember=True)
    cluster.tick(n=30)
    cluster.restart(1)
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
    cluster.restart(2)
    assert not cluster.node(2).recovering  # its own disk cannot tell
    return cluster, keep, acked


def test_a_follower_whose_log_went_backwards_is_probed_and_repaired():
    """With nothing new to replicate, the leader's record says 2 holds everything (the
    issue's "lag 0, never catches up": each probe at the recorded match was rejected and
    repeated, forever). A heartbeat answer ending below the match makes it probe; the
    rejection, hinting below the match, shows the loss: it probes from where 2's log really
    ends, tells 2 what it had acknowledged, and repairs it."""
    cluster, keep, acked = lost_tail_cluster()
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


def follower_with(entries: int, **kwargs: Any) -> RaftNode:
    return RaftNode(
        2,
        hard_state=HardState(term=2, voted_for=None, commit=entries),
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
