"""A member restarted too quickly for the leader to notice a silence gets the leader's view
of the members again once its link is established anew (``RaftNode.peer_reconnected``, what
the runtime's peer links call when they connect: ``_runtime/_peer_mux.py``), at most once per
link established, without an older view ever counting as held.

Pure core: the lossless in-memory cluster (``testing._sim_cluster``)."""

from __future__ import annotations

from trio_broker._core._raft_messages import ClusterUpdate, ClusterUpdateResponse, Message
from trio_broker.testing._sim_cluster import Cluster

ELECTION_TICKS = 10
HEARTBEAT_TICKS = 2
BOUND_TICKS = 4 * ELECTION_TICKS + HEARTBEAT_TICKS
"""Every member known to hold the view (see tests/test_announce13_views.py)."""


def make_cluster() -> Cluster:
    return Cluster((1, 2, 3), election_ticks=ELECTION_TICKS, heartbeat_ticks=HEARTBEAT_TICKS)


def status_of(cluster: Cluster, at: int, member: int) -> str:
    return cluster.node(at).member_statuses()[member].status


def updates_to(cluster: Cluster, member: int, since: int) -> list[Message]:
    return [m for m in cluster.sent[since:] if isinstance(m, ClusterUpdate) and m.dst == member]


def three_down_and_two_holding_it() -> Cluster:
    """1 leads, 3 is down (inactive in the leader's view), and 2 is known to hold that."""
    cluster = make_cluster()
    cluster.elect(1)
    cluster.crash(3)
    cluster.tick(n=2 * ELECTION_TICKS)
    assert status_of(cluster, 1, 3) == "inactive"
    cluster.tick(n=BOUND_TICKS)
    assert status_of(cluster, 2, 3) == "inactive"
    assert 2 in cluster.node(1)._view_held
    return cluster


def test_a_member_restarted_at_once_gets_the_view_when_its_link_comes_up() -> None:
    """No silence at all (a restart between two heartbeats): the leader's view does not
    change and nothing it hears from 2 looks like a restart; the new link says it."""
    cluster = three_down_and_two_holding_it()
    cluster.crash(2)
    cluster.restart(2)
    assert status_of(cluster, 2, 3) == "active"  # (what a fresh start shows)
    cluster.tick(n=HEARTBEAT_TICKS)
    assert status_of(cluster, 2, 3) == "active"  # (the gap: nothing resent by itself)

    cluster.node(1).peer_reconnected(2)
    cluster.tick(n=HEARTBEAT_TICKS)  # (the next heartbeat round, whatever the refresh period)
    assert status_of(cluster, 2, 3) == "inactive"
    assert cluster.node(2).member_statuses() == cluster.node(1).member_statuses()
    assert 2 in cluster.node(1)._view_held  # (its answer to that update counts)


def test_one_update_per_link_established_and_none_without() -> None:
    """The bound: each link established costs one CLUSTER_UPDATE at the next heartbeat
    round (several in one round, one), and nothing more once the member holds the view."""
    cluster = three_down_and_two_holding_it()
    leader = cluster.node(1)
    before = len(cluster.sent)
    cluster.tick(n=3 * ELECTION_TICKS)
    assert updates_to(cluster, 2, before) == []

    for _ in range(3):
        before = len(cluster.sent)
        for _ in range(5):  # (a flapping link: several connections within one round)
            leader.peer_reconnected(2)
        cluster.tick(n=HEARTBEAT_TICKS)
        assert len(updates_to(cluster, 2, before)) == 1
        before = len(cluster.sent)
        cluster.tick(n=3 * ELECTION_TICKS)
        assert updates_to(cluster, 2, before) == []


def test_an_answer_from_before_the_link_came_up_does_not_count() -> None:
    """An answer to an update the old process got, read after the new link came up, says
    nothing of the new process: the member is still sent the view."""
    cluster = three_down_and_two_holding_it()
    leader = cluster.node(1)
    leader.peer_reconnected(2)
    leader.step(
        ClusterUpdateResponse(
            src=2, dst=1, term=leader.term, cluster_version=leader.cluster_version
        )
    )
    assert 2 not in leader._view_held
    cluster.crash(2)
    cluster.restart(2)
    before = len(cluster.sent)
    cluster.tick(n=HEARTBEAT_TICKS)
    assert len(updates_to(cluster, 2, before)) == 1
    assert status_of(cluster, 2, 3) == "inactive"


def test_an_older_view_on_its_way_is_still_not_taken_as_held() -> None:
    """A link established soon after two view changes, the update of the older one to 2
    held back: the view sent at the new link is answered, but an update of another view
    went to 2 within a refresh period, so that answer does not count (``_view_acknowledged``,
    unchanged); when the older update lands late, 2 still comes to hold the current view."""
    cluster = three_down_and_two_holding_it()
    leader = cluster.node(1)
    held: list[Message] = []

    def hold_back_3_active_to_2(m: Message) -> bool:
        if isinstance(m, ClusterUpdate) and m.dst == 2 and m.members[2].status == "active":
            held.append(m)
            return True
        return False

    cluster.drop_if.append(hold_back_3_active_to_2)
    cluster.restart(3)  # (the view changes: 3 active; its update to 2 is held back)
    cluster.tick(n=HEARTBEAT_TICKS * 3)
    assert held and status_of(cluster, 1, 3) == "active"
    cluster.crash(3)  # (and again: 3 inactive, within a refresh period)
    for _ in range(2 * ELECTION_TICKS):
        cluster.tick()
        if status_of(cluster, 1, 3) == "inactive":
            break
    assert status_of(cluster, 1, 3) == "inactive"
    cluster.drop_if.clear()
    leader.peer_reconnected(2)
    before = len(cluster.sent)
    cluster.tick(n=HEARTBEAT_TICKS)
    assert len(updates_to(cluster, 2, before)) == 1
    assert status_of(cluster, 2, 3) == "inactive"
    assert 2 not in leader._view_held  # (the older update may still land: it does)
    cluster.in_flight.append(held[0])
    cluster.stabilize()
    assert status_of(cluster, 2, 3) == "active"
    for _ in range(BOUND_TICKS):
        cluster.tick()
        if cluster.node(2).member_statuses() == leader.member_statuses():
            break
    assert cluster.node(2).member_statuses() == leader.member_statuses()


def test_only_a_leader_and_only_for_a_member() -> None:
    cluster = three_down_and_two_holding_it()
    follower = cluster.node(2)
    follower.peer_reconnected(1)
    assert not follower._view_relinked
    leader = cluster.node(1)
    leader.peer_reconnected(9)  # (not a member: a broker it links to for another reason)
    leader.peer_reconnected(1)  # (itself)
    assert not leader._view_relinked
