"""A broker restarted quickly shows the leader's view of the members (CLUSTER_QUERY's
statuses) again, although the leader never saw it silent: the leader's link to it connects
anew, which tells the leader's core (``_peer_mux``'s ``PeerMux.reconnected`` ->
``RaftNode.peer_reconnected``), and the leader sends its view at the next heartbeat round.

Before, the leader still took the member as holding its view, and the restarted broker
showed every member active (what a fresh start shows) until the leader's view next changed.

Real brokers: over the memory network under the mock clock (production timings, virtual
seconds), and over 127.0.0.1 with the real clock."""

from __future__ import annotations

import trio

from trio_broker._core._raft import RaftNode
from trio_broker.testing import open_local_cluster, open_mock_cluster

from .wire import call


async def poll_until(predicate) -> None:
    """Look every 10 ms until ``predicate()`` holds (the caller bounds the wait)."""
    while True:
        if predicate():
            return
        await trio.sleep(0.01)


def statuses(answer: dict) -> dict[str, str]:
    assert answer["status"] == "success", answer
    return {b["broker_id"]: b["status"] for b in answer["brokers"]}


async def test_a_broker_restarted_quickly_shows_the_leaders_view(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader = await cluster.wait_for_leader()
        name = cluster.name_of(leader)
        replica, down = sorted(n for n in cluster.brokers if n != name)
        down_id = cluster.brokers[down].broker_id
        replica_id = cluster.brokers[replica].broker_id
        await cluster.crash(down)
        # The leader marks it inactive, and comes to know the replica holds that view.
        with trio.fail_after(60):
            await cluster.wait_until(
                lambda: (
                    replica_id in leader.node._view_held
                    and leader.node.member_statuses()[down_id].status == "inactive"
                )
            )
        answer = await cluster.call(replica, {"operation": "CLUSTER_QUERY"})
        assert statuses(answer)[down_id] == "inactive"

        await cluster.crash(replica)
        restarted = await cluster.restart(replica)  # (well within the failure timeout)
        assert restarted.node.member_statuses()[down_id].status == "active"  # (a fresh start)
        with trio.fail_after(10):  # (virtual seconds: before, it never came)
            await cluster.wait_until(
                lambda: restarted.node.member_statuses()[down_id].status == "inactive"
            )
        assert leader.is_leader  # (the same leader, whose view never changed)
        answer = await cluster.call(replica, {"operation": "CLUSTER_QUERY"})
        assert statuses(answer) == statuses(
            await cluster.call(name, {"operation": "CLUSTER_QUERY"})
        )


async def test_a_broker_restarted_quickly_on_127_0_0_1_shows_the_leaders_view(ram_path):
    """The same over TCP. The failure timeout is long enough that the restart (a new store
    opened in this process) stays well inside the silence the leader would notice."""
    with trio.fail_after(30):
        async with open_local_cluster(
            ram_path, 3, heartbeat_interval=0.05, failure_timeout=0.6
        ) as cluster:
            leader = await cluster.wait_for_leader()
            name = cluster.name_of(leader)
            replica, down = sorted(n for n in cluster.brokers if n != name)
            down_id = cluster.brokers[down].broker_id
            replica_id = cluster.brokers[replica].broker_id
            await cluster.stop(down)
            await poll_until(
                lambda: (
                    replica_id in leader.node._view_held
                    and leader.node.member_statuses()[down_id].status == "inactive"
                )
            )

            await cluster.stop(replica)
            restarted = await cluster.start(replica)
            with trio.fail_after(10):
                await poll_until(
                    lambda: restarted.node.member_statuses()[down_id].status == "inactive"
                )
            port = cluster.brokers[replica].port
            assert statuses(await call(port, {"operation": "CLUSTER_QUERY"}))[down_id] == (
                "inactive"
            )


async def test_every_group_a_link_carries_is_told_when_it_connects(autojump_clock, monkeypatch):
    """Several groups share one link per peer (``_peer_mux``): when the link to a restarted
    broker connects again, every group leading here that has it as a member is told, each
    its own core (``_open``'s ``_reconnected`` finds each group's driver)."""
    told: list[tuple[int, str]] = []
    original = RaftNode.peer_reconnected

    def spy(node: RaftNode, peer: str) -> None:
        told.append((id(node), peer))
        original(node, peer)

    monkeypatch.setattr(RaftNode, "peer_reconnected", spy)
    async with open_mock_cluster(3, groups=3) as cluster:
        with trio.fail_after(120):
            await cluster.wait_for_groups(3, 3)

        def leading(name: str) -> list[RaftNode]:
            return [
                replica.driver.node
                for replica in cluster.replicas(name).values()
                if replica.driver.node.is_leader
            ]

        restarted = min(sorted(cluster.brokers), key=lambda n: len(leading(n)))
        leaders = [node for name in cluster.brokers if name != restarted for node in leading(name)]
        assert len(leaders) >= 2  # (the groups leading elsewhere: at least two of three)
        restarted_id = cluster.brokers[restarted].broker_id
        await cluster.crash(restarted)
        told.clear()
        await cluster.restart(restarted)
        with trio.fail_after(10):
            await cluster.wait_until(
                lambda: all((id(node), restarted_id) in told for node in leaders)
            )
        assert all(node.is_leader for node in leaders)
