"""Every member comes to hold the leader's view of the members (CLUSTER_QUERY's roles and
statuses) once it is reachable, even when a CLUSTER_UPDATE to it was lost, overtaken by an
older one, or forgotten in a restart; and the leader stops sending it once it knows the
member holds it (``_raft_membership._maybe_announce``).

Pure core: the lossless in-memory cluster (``testing._sim_cluster``), with the losses made
by hand."""

from __future__ import annotations

from typing import Any

from trio_broker._core._raft_messages import ClusterUpdate, Message
from trio_broker.testing._sim_cluster import Cluster

ELECTION_TICKS = 10
HEARTBEAT_TICKS = 2


def make_cluster(ids: tuple[int, ...] = (1, 2, 3)) -> Cluster:
    return Cluster(ids, election_ticks=ELECTION_TICKS, heartbeat_ticks=HEARTBEAT_TICKS)


def status_of(cluster: Cluster, at: int, member: int) -> str:
    return cluster.node(at).member_statuses()[member].status


def views_agree(cluster: Cluster, leader: int) -> bool:
    view = cluster.node(leader).member_statuses()
    return all(cluster.node(i).member_statuses() == view for i in cluster.live())


def updates(cluster: Cluster, since: int) -> list[Message]:
    return [m for m in cluster.sent[since:] if isinstance(m, ClusterUpdate)]


# The bound: a member not known to hold the view gets it again within a refresh period (two
# election timeouts), and its answer counts once a refresh period passed since the last
# update of another view; with an instant network, within two refresh periods.
BOUND_TICKS = 4 * ELECTION_TICKS + HEARTBEAT_TICKS


def crash_until_inactive(cluster: Cluster, member: int) -> None:
    """``member`` down long enough for the leader to mark it inactive, and say so."""
    cluster.crash(member)
    cluster.tick(n=2 * ELECTION_TICKS)
    assert status_of(cluster, 1, member) == "inactive"


def test_a_lost_update_reaches_the_member_once_it_is_reachable() -> None:
    """The chaos seed 4010956399's case: the update saying a restarted replica is active
    again is lost to another replica (a flapping link), and the leader's view does not
    change after that: the replica must still come to hold it."""
    cluster = make_cluster()
    cluster.elect(1)
    crash_until_inactive(cluster, 3)
    assert status_of(cluster, 2, 3) == "inactive"  # (announced to 2)

    lost: list[Message] = []

    def lose_update_to_2(m: Message) -> bool:
        if isinstance(m, ClusterUpdate) and m.dst == 2 and not lost:
            lost.append(m)
            return True
        return False

    cluster.drop_if.append(lose_update_to_2)
    cluster.restart(3)
    cluster.tick(n=HEARTBEAT_TICKS * 3)
    assert lost and status_of(cluster, 1, 3) == "active"
    assert status_of(cluster, 2, 3) == "inactive"  # (the update was lost)

    for _ in range(BOUND_TICKS):
        cluster.tick()
        if views_agree(cluster, 1):
            break
    assert views_agree(cluster, 1), cluster.node(2).member_statuses()

    # Once every member is known to hold the view, no CLUSTER_UPDATE is sent any more.
    cluster.tick(n=BOUND_TICKS)
    before = len(cluster.sent)
    cluster.tick(n=5 * ELECTION_TICKS)
    assert updates(cluster, before) == []


def test_an_update_overtaken_by_an_older_one_is_sent_again() -> None:
    """The update of an older view arrives after the current one (reordered): the member
    answers both, and neither answer may count as holding the current view."""
    cluster = make_cluster()
    cluster.elect(1)
    held: list[Message] = []

    def hold_back_to_2(m: Message) -> bool:
        # The "3 inactive" updates to 2 are held back (the first delivered below, late).
        if isinstance(m, ClusterUpdate) and m.dst == 2 and m.members[2].status == "inactive":
            held.append(m)
            return True
        return False

    cluster.drop_if.append(hold_back_to_2)
    crash_until_inactive(cluster, 3)
    assert held and status_of(cluster, 2, 3) == "active"
    cluster.drop_if.clear()
    cluster.restart(3)
    cluster.tick(n=HEARTBEAT_TICKS * 3)
    assert status_of(cluster, 1, 3) == status_of(cluster, 2, 3) == "active"
    # Now the older view arrives.
    cluster.in_flight.append(held[0])
    cluster.stabilize()
    assert status_of(cluster, 2, 3) == "inactive"

    for _ in range(BOUND_TICKS):
        cluster.tick()
        if views_agree(cluster, 1):
            break
    assert views_agree(cluster, 1), cluster.node(2).member_statuses()


def test_a_member_restarted_within_the_failure_timeout_gets_the_view_again() -> None:
    """A replica that restarts (its view is volatile: it shows every member active) before
    the leader marks it inactive, so the leader's view does not change: it must get the
    view again, here that another member is down."""
    cluster = make_cluster()
    cluster.elect(1)
    crash_until_inactive(cluster, 3)
    cluster.tick(n=BOUND_TICKS)  # (2 is known to hold the view)
    assert status_of(cluster, 2, 3) == "inactive"

    cluster.crash(2)
    cluster.tick(n=ELECTION_TICKS // 2 + 1)  # (silent, not yet inactive)
    cluster.restart(2)
    assert status_of(cluster, 2, 3) == "active"  # (what a fresh start shows)
    for _ in range(BOUND_TICKS):
        cluster.tick()
        if views_agree(cluster, 1):
            break
    assert views_agree(cluster, 1), cluster.node(2).member_statuses()
    assert status_of(cluster, 1, 2) == "active"


def test_while_updates_to_a_member_are_lost_it_gets_one_per_refresh_period() -> None:
    """The bound on the traffic: while the updates to a member are lost (it still answers
    heartbeats: it stays active), the current view goes to it once per refresh period (two
    election timeouts), not at every heartbeat; it holds the view soon after an update
    gets through."""
    cluster = make_cluster()
    cluster.elect(1)
    crash_until_inactive(cluster, 3)
    cluster.tick(n=BOUND_TICKS)
    cluster.drop_if.append(lambda m: isinstance(m, ClusterUpdate) and m.dst == 2)
    cluster.restart(3)  # (a change of the view that 2 misses)
    cluster.tick(n=HEARTBEAT_TICKS * 3)
    assert status_of(cluster, 1, 3) == "active" and status_of(cluster, 2, 3) == "inactive"
    before = len(cluster.sent)
    periods = 5
    cluster.tick(n=periods * 2 * ELECTION_TICKS)
    to_2: list[Any] = [m for m in updates(cluster, before) if m.dst == 2]
    assert 1 <= len(to_2) <= periods + 1, len(to_2)
    assert status_of(cluster, 1, 2) == "active"
    cluster.drop_if.clear()
    for _ in range(BOUND_TICKS):
        cluster.tick()
        if views_agree(cluster, 1):
            break
    assert views_agree(cluster, 1), cluster.node(2).member_statuses()
