"""The leader's view of the members (CLUSTER_QUERY's roles and statuses) reaches every member
through leader changes, membership changes, joins, learners, reordered and stale replies, a
view that flips back, and a member that never answers; and the leader's bookkeeping of who
holds it stays bounded (``_raft_membership._maybe_announce``).

Pure core: the lossless in-memory cluster (``testing._sim_cluster``), with the losses and
the reordering made by hand."""

from __future__ import annotations

from collections.abc import Callable

from trio_broker._core._raft_messages import (
    ChangeAction,
    ClusterUpdate,
    ClusterUpdateResponse,
    ConfigChange,
    Message,
)
from trio_broker.testing._sim_cluster import Cluster

ELECTION_TICKS = 10
HEARTBEAT_TICKS = 2
REFRESH_TICKS = 2 * ELECTION_TICKS
# Within two refresh periods (and the heartbeat round that notices it) with an instant network.
BOUND_TICKS = 2 * REFRESH_TICKS + 2 * HEARTBEAT_TICKS


def make_cluster(ids: tuple[int, ...] = (1, 2, 3), **kw: object) -> Cluster:
    return Cluster(ids, election_ticks=ELECTION_TICKS, heartbeat_ticks=HEARTBEAT_TICKS, **kw)


def status_of(cluster: Cluster, at: int, member: int) -> str:
    return cluster.node(at).member_statuses()[member].status


def statuses(cluster: Cluster, at: int) -> dict[int, str]:
    return {m: v.status for m, v in cluster.node(at).member_statuses().items()}


def disagreeing(cluster: Cluster, leader: int) -> list[int]:
    """The live members of the leader's configuration that show another view than its."""
    lead = cluster.node(leader)
    view = lead.member_statuses()
    return [
        i
        for i in cluster.live()
        if i in lead.config.members and cluster.node(i).member_statuses() != view
    ]


def settle(cluster: Cluster, leader: int, ticks: int = BOUND_TICKS) -> None:
    for _ in range(ticks):
        if not disagreeing(cluster, leader):
            return
        cluster.tick()
    assert not disagreeing(cluster, leader), {
        i: statuses(cluster, i) for i in disagreeing(cluster, leader)
    }


def updates_to(cluster: Cluster, dst: int, since: int) -> list[Message]:
    return [m for m in cluster.sent[since:] if isinstance(m, ClusterUpdate) and m.dst == dst]


def tick_until(cluster: Cluster, done: Callable[[], bool], limit: int = 5 * ELECTION_TICKS) -> None:
    for _ in range(limit):
        if done():
            return
        cluster.tick()
    assert done()


def change(cluster: Cluster, leader: int, action: ChangeAction, node_id: int) -> None:
    cluster.node(leader).propose_config_change(ConfigChange(action, node_id))
    cluster.stabilize()
    cluster.tick(n=HEARTBEAT_TICKS)  # (the view of the new configuration announced)


def test_a_member_removed_and_added_again_gets_the_view_an_older_update_overtook() -> None:
    """An update of an older view, still on its way to a member (well within a refresh
    period), must not make the leader believe the member holds the current one after the
    member was removed and added again meanwhile: the leader forgot, with the removed
    member, that it had sent that member another view, and counted the first answer after
    the re-add as holding the view; the late update then left the member stale for good."""
    cluster = make_cluster((1, 2, 3, 4))
    cluster.elect(1)
    leader = cluster.node(1)
    held: list[Message] = []

    def hold_first_inactive_to_3(m: Message) -> bool:
        if (
            not held
            and isinstance(m, ClusterUpdate)
            and m.dst == 3
            and {v.node_id: v.status for v in m.members}[2] == "inactive"
        ):
            held.append(m)
            return True
        return False

    cluster.drop_if.append(hold_first_inactive_to_3)
    cluster.crash(2)
    tick_until(cluster, lambda: bool(held))
    sent_at = leader.now
    cluster.restart(2)
    tick_until(cluster, lambda: status_of(cluster, 1, 2) == "active")
    change(cluster, 1, ChangeAction.REMOVE, 3)
    assert 3 not in leader.config.members
    change(cluster, 1, ChangeAction.ADD_LEARNER, 3)
    assert 3 in leader.config.learners and status_of(cluster, 3, 2) == "active"
    assert leader.now - sent_at < REFRESH_TICKS  # (a delay the design allows for)
    cluster.in_flight.append(held[0])  # the update of the older view arrives now
    cluster.stabilize()
    assert status_of(cluster, 3, 2) == "inactive"
    settle(cluster, 1)
    assert status_of(cluster, 3, 2) == "active"


def test_the_bookkeeping_stays_bounded_while_members_come_and_go() -> None:
    """Learners added and removed again and again (each a new view): what the leader keeps
    per member (held, last sent, last sent of another view) never names more than the
    members of its configuration and those it sent an update within a refresh period."""
    cluster = make_cluster()
    cluster.elect(1)
    leader = cluster.node(1)
    for n in range(10, 30):
        cluster.add_node(n)
        change(cluster, 1, ChangeAction.ADD_LEARNER, n)
        assert n in leader._view_sent
        change(cluster, 1, ChangeAction.REMOVE, n)
        cluster.crash(n)
        members = leader.config.members
        assert set(leader._view_sent) <= members
        assert len(leader._view_held) <= len(members) + 1
    cluster.tick(n=2 * REFRESH_TICKS)
    cluster.crash(3)  # (a change of the view, well after the churn)
    tick_until(cluster, lambda: status_of(cluster, 1, 3) == "inactive")
    cluster.tick(n=HEARTBEAT_TICKS)  # (announced)
    assert leader._announced[2].status == "inactive"
    members = leader.config.members
    assert set(leader._view_sent) <= members, leader._view_sent
    assert set(leader._view_other) <= members, leader._view_other
    assert set(leader._view_held) <= members, leader._view_held


def test_a_new_leader_sends_its_view_to_every_member_even_the_deposed_one() -> None:
    """After a leader change, the new leader knows nothing of who holds its view: each
    member (the deposed leader too, whose own view was its failure detector's) comes to
    hold it even when the new leader's first update to it is lost; and then the updates
    stop."""
    cluster = make_cluster((1, 2, 3, 4))
    cluster.elect(1)
    cluster.crash(4)
    tick_until(cluster, lambda: status_of(cluster, 1, 4) == "inactive")
    settle(cluster, 1)
    lost: list[Message] = []

    def lose_first_of_2_to_1(m: Message) -> bool:
        # (the first saying 4 is inactive: the new leader's view settled, no change follows)
        if (
            not lost
            and isinstance(m, ClusterUpdate)
            and (m.src, m.dst) == (2, 1)
            and m.members[3].status == "inactive"
        ):
            lost.append(m)
            return True
        return False

    cluster.drop_if.append(lose_first_of_2_to_1)
    cluster.elect(2)
    assert not cluster.node(1).is_leader
    tick_until(cluster, lambda: status_of(cluster, 2, 4) == "inactive")
    settle(cluster, 2)
    assert lost and status_of(cluster, 1, 4) == "inactive"
    cluster.tick(n=BOUND_TICKS)
    before = len(cluster.sent)
    cluster.tick(n=3 * REFRESH_TICKS)
    assert updates_to(cluster, 1, before) == [] and updates_to(cluster, 3, before) == []


def test_a_reply_from_an_older_term_does_not_count() -> None:
    """A CLUSTER_UPDATE_RESPONSE of the leader's previous term (it names no view) arrives
    after the leader was deposed and elected again and its new view's update to the member was lost:
    the member is not known to hold the view, and gets it again."""
    cluster = make_cluster()
    cluster.elect(1)
    old_term = cluster.node(1).term
    cluster.tick(n=HEARTBEAT_TICKS)
    cluster.crash(3)
    cluster.elect(2)
    cluster.tick(n=HEARTBEAT_TICKS)
    cluster.drop_if.append(lambda m: isinstance(m, ClusterUpdate) and m.dst == 2)
    cluster.elect(1)
    leader = cluster.node(1)
    assert leader.term > old_term
    tick_until(cluster, lambda: status_of(cluster, 1, 3) == "inactive")
    stale = ClusterUpdateResponse(src=2, dst=1, term=old_term, cluster_version=1)
    cluster.in_flight.append(stale)
    cluster.stabilize()
    assert 2 not in leader._view_held
    assert status_of(cluster, 2, 3) == "active"
    cluster.drop_if.clear()
    settle(cluster, 1)


def test_a_view_that_flips_back_reaches_a_member_that_got_the_updates_out_of_order() -> None:
    """A -> B -> A: the update of B arrives after the second update of A (reordered), and a
    duplicate of the member's answer arrives too: neither answer may count as holding A, so
    the member, showing B, gets A again."""
    cluster = make_cluster()
    cluster.elect(1)
    settle(cluster, 1)
    held: list[Message] = []

    def hold_b_to_2(m: Message) -> bool:
        if isinstance(m, ClusterUpdate) and m.dst == 2 and m.members[2].status == "inactive":
            held.append(m)
            return True
        return False

    cluster.drop_if.append(hold_b_to_2)
    cluster.crash(3)  # A -> B: 3 inactive
    tick_until(cluster, lambda: bool(held))
    cluster.drop_if.clear()
    cluster.restart(3)  # B -> A: 3 active again
    tick_until(cluster, lambda: status_of(cluster, 1, 3) == "active", limit=HEARTBEAT_TICKS * 3)
    assert status_of(cluster, 2, 3) == "active"
    cluster.in_flight.append(held[0])  # B arrives late
    cluster.in_flight.append(
        ClusterUpdateResponse(src=2, dst=1, term=held[0].term, cluster_version=1)
    )
    cluster.stabilize()
    assert status_of(cluster, 2, 3) == "inactive"
    assert 2 not in cluster.node(1)._view_held
    settle(cluster, 1)


def test_a_joining_broker_and_a_learner_get_the_view_when_its_first_update_is_lost() -> None:
    """A broker added (a learner, then promoted) and a learner of the initial configuration
    come to hold the view (here: a member is down), though the first update to each is
    lost."""
    cluster = make_cluster((1, 2, 3), learners=(5,))
    cluster.elect(1)
    cluster.crash(3)
    tick_until(cluster, lambda: status_of(cluster, 1, 3) == "inactive")
    settle(cluster, 1)
    assert status_of(cluster, 5, 3) == "inactive"
    lost: list[int] = []

    def lose_first_to_4_and_5(m: Message) -> bool:
        if isinstance(m, ClusterUpdate) and m.dst in (4, 5) and m.dst not in lost:
            lost.append(m.dst)
            return True
        return False

    cluster.drop_if.append(lose_first_to_4_and_5)
    cluster.add_node(4)
    change(cluster, 1, ChangeAction.ADD_LEARNER, 4)
    assert sorted(lost) == [4, 5]
    settle(cluster, 1)
    assert status_of(cluster, 4, 3) == "inactive"
    assert cluster.node(4).member_statuses()[4].role == "learner"
    change(cluster, 1, ChangeAction.PROMOTE, 4)
    settle(cluster, 1)
    assert cluster.node(4).member_statuses()[4].role == "replica"


def test_a_member_that_never_answers_gets_one_update_per_refresh_period_for_long() -> None:
    """A member down for good: over a hundred refresh periods it is sent the view once per
    period, no more and no less; the member that holds the view is sent nothing."""
    cluster = make_cluster()
    cluster.elect(1)
    cluster.crash(3)
    tick_until(cluster, lambda: status_of(cluster, 1, 3) == "inactive")
    settle(cluster, 1)
    cluster.tick(n=REFRESH_TICKS)
    before = len(cluster.sent)
    periods = 100
    cluster.tick(n=periods * REFRESH_TICKS)
    assert periods - 1 <= len(updates_to(cluster, 3, before)) <= periods + 1
    assert updates_to(cluster, 2, before) == []
    leader = cluster.node(1)
    assert set(leader._view_sent) == {2, 3} and leader._view_held == {2}


def test_an_answer_of_a_member_before_its_restart_does_not_count() -> None:
    """The member's answer to the update of the current view is delayed; the member
    restarts meanwhile (forgetting the view: it shows every member active) and the answer
    arrives as the first after a silence: the leader must not count it, and sends the view
    to the restarted member."""
    cluster = make_cluster((1, 2, 3, 4))
    cluster.elect(1)
    cluster.tick(n=2 * REFRESH_TICKS)
    held: list[Message] = []

    def hold_answers_of_2(m: Message) -> bool:
        if isinstance(m, ClusterUpdateResponse) and m.src == 2:
            held.append(m)
            return True
        return False

    cluster.drop_if.append(hold_answers_of_2)
    cluster.crash(4)
    tick_until(cluster, lambda: bool(held))
    assert status_of(cluster, 2, 4) == "inactive"
    cluster.drop_if.clear()
    cluster.crash(2)
    leader = cluster.node(1)
    cluster.tick(n=leader._resend_ticks)  # (silent, not yet inactive)
    assert status_of(cluster, 1, 2) == "active"
    cluster.restart(2)
    assert status_of(cluster, 2, 4) == "active"  # (what a fresh start shows)
    cluster.in_flight.append(held[-1])  # the answer of 2 before its restart
    cluster.stabilize()
    assert 2 not in leader._view_held
    settle(cluster, 1)
