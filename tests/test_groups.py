"""Several replication groups per broker placed by the stage-1 list (docs/replication.md,
"Several leaders"): every broker hosts every group, requests are routed by the group they
name, and each group's leadership is spread over the brokers. Real brokers on a memory
network, under the mock clock. The clusters here are founded with ``replication_factor``
``EVERY_BROKER`` (``--replication-factor all``), which founds with the stage-1 list
(``SET_GROUPS``), as every data directory of stage 1 was: these tests are also what keeps
such directories working. Groups placed by the cluster map: tests/test_metamap.py.
"""

from __future__ import annotations

import itertools
import math

import apsw
import orjson
import pytest
import trio
from prometheus_client import generate_latest

from trio_broker._core._commands import CommandRejected, GroupsSet, SetGroups
from trio_broker._core._queues import QueueState
from trio_broker._core._spread import leader_share
from trio_broker._ids import cluster_of_queue
from trio_broker._protocol import FrameDecoder, encode_frame, loads_object
from trio_broker._runtime._groups import EVERY_BROKER
from trio_broker._runtime._status import RequestRates, read_status, table_rows
from trio_broker._storage._queue_sql import apply_command, stored_groups
from trio_broker._storage._schema import WORK_TABLES, upgrade
from trio_broker.testing import open_mock_cluster

from . import spread
from .spread import wait_spread


async def answer_of(cluster, name, request):
    """One raw request from a client to broker ``name``, following NOT_LEADER hints."""
    for _ in range(50):
        reply = await cluster.call(name, request)
        if reply.get("code") in ("NOT_LEADER", "UNAVAILABLE"):
            leader = reply.get("leader_id")
            names = {b.broker_id: n for n, b in cluster.brokers.items()}
            name = names.get(leader, name)
            await trio.sleep(0.2)
            continue
        return reply
    raise AssertionError(f"no answer to {request}: {reply}")


@pytest.mark.trio
async def test_founder_commits_the_group_list_and_every_broker_hosts_every_group(
    autojump_clock,
):
    async with open_mock_cluster(3, groups=3, replication_factor=EVERY_BROKER) as cluster:
        lists = {name: b.host.group_ids for name, b in cluster.brokers.items()}
        (group_ids,) = set(lists.values())
        assert len(group_ids) == 3 and list(group_ids) == sorted(group_ids)
        assert cluster.brokers["b1"].cluster_id in group_ids
        for name in cluster.brokers:
            assert sorted(cluster.replicas(name)) == list(group_ids)
            # The list is replicated state, in the cluster group's store.
            assert cluster.stores[name].group_ids() == group_ids


def led_counts(cluster) -> dict[str, int]:
    return spread.led_counts(cluster, cluster.group_leaders())


@pytest.mark.trio
async def test_leadership_spreads_over_the_brokers(autojump_clock):
    async with open_mock_cluster(3, groups=3, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 3)
        assert sorted(led_counts(cluster).values()) == [1, 1, 1]


@pytest.mark.trio
async def test_requests_reach_the_group_their_queue_names(autojump_clock):
    async with open_mock_cluster(3, groups=3, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 3)
        group_ids = cluster.brokers["b1"].host.group_ids
        # CREATE_QUEUE lands on a group the broker it is sent to leads, so an original-design
        # client's next requests, sent to that broker, reach the queue's leader.
        queues = {}
        for name in sorted(cluster.brokers):
            reply = await cluster.call(name, {"operation": "CREATE_QUEUE"})
            assert reply["status"] == "success", reply
            group = cluster_of_queue(reply["queue_id"])
            assert cluster.group_leaders()[group] == name
            queues[group] = (name, reply["queue_id"])
        assert sorted(queues) == list(group_ids)
        for group, (name, queue) in queues.items():
            for value in (1, "two", 3.5):
                reply = await cluster.call(
                    name, {"operation": "APPEND", "queue_name": queue, "data": value}
                )
                assert reply["status"] == "success", reply
            for value in (1, "two", 3.5):
                reply = await cluster.call(
                    name, {"operation": "READ", "queue_name": queue, "client_id": "C-AAAAA"}
                )
                assert reply["data"] == value
            # Only that group's replicas hold the queue.
            for replica_name in cluster.brokers:
                for group_id, replica in cluster.replicas(replica_name).items():
                    assert (queue in replica._queue_ids) == (group_id == group)
        # A broker that does not lead a queue's group names its leader.
        group, (leader, queue) = sorted(queues.items())[0]
        other = next(n for n in sorted(cluster.brokers) if n != leader)
        reply = await cluster.call(other, {"operation": "APPEND", "queue_name": queue, "data": 9})
        assert reply["code"] == "NOT_LEADER"
        assert reply["leader_id"] == cluster.brokers[leader].broker_id
        assert reply["leader_port"] == cluster.ports[leader]
        # A queue of a group that does not exist: as before (the cluster group answers).
        reply = await cluster.call(
            leader, {"operation": "APPEND", "queue_name": "Q-ZZZZZAAAAA", "data": 1}
        )
        assert reply["status"] == "error" and reply["code"] in ("QUEUE_NOT_FOUND", "NOT_LEADER")


@pytest.mark.trio
async def test_cluster_query_lists_every_group(autojump_clock):
    async with open_mock_cluster(3, groups=3, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 3)
        group_ids = cluster.brokers["b1"].host.group_ids
        leaders = cluster.group_leaders()
        ids = {name: b.broker_id for name, b in cluster.brokers.items()}
        for name in sorted(cluster.brokers):
            reply = await cluster.call(name, {"operation": "CLUSTER_QUERY"})
            # Naming no group: about the one a CREATE_QUEUE sent here lands on (one it leads).
            assert reply["self_role"] == "leader"
            assert leaders[reply["cluster_id"]] == name
            assert reply["metadata_group"] == cluster.brokers["b1"].cluster_id
            assert [g["cluster_id"] for g in reply["groups"]] == list(group_ids)
            for view in reply["groups"]:
                assert view["leader_id"] == ids[leaders[view["cluster_id"]]]
                assert view["leader_port"] == cluster.ports[leaders[view["cluster_id"]]]
                assert view["voters"] == sorted(ids.values())
                assert view["learners"] == []
            for group in group_ids:
                reply = await cluster.call(
                    name, {"operation": "CLUSTER_QUERY", "cluster_id": group}
                )
                assert reply["cluster_id"] == group
                assert reply["self_role"] == ("leader" if leaders[group] == name else "replica")
                assert reply["leader_id"] == ids[leaders[group]]
        reply = await cluster.call("b1", {"operation": "CLUSTER_QUERY", "cluster_id": "G-NONE0"})
        assert reply["code"] == "WRONG_CLUSTER"


@pytest.mark.trio
async def test_pipelined_requests_across_groups_answer_in_order(autojump_clock):
    async with open_mock_cluster(3, groups=3, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 3)
        # One broker leading every group: pipelined requests alternate between groups. (Its
        # spreading is paused: leadership must not move back mid-test.)
        pacer = cluster.brokers["b1"].host.pacer
        pacer.interval = math.inf
        for group in cluster.brokers["b1"].host.group_ids:
            pacer._last[group] = trio.current_time()
        for name in ("b2", "b3"):
            await cluster.stop(name, graceful=True)
        await cluster.wait_until(lambda: set(cluster.group_leaders().values()) == {"b1"})
        await cluster.restart("b2")
        await cluster.restart("b3")
        queues = []
        await cluster.wait_until(
            lambda: all(r.driver.node.is_leader for r in cluster.replicas("b1").values())
        )
        for _ in range(3):
            while True:
                reply = await cluster.call("b1", {"operation": "CREATE_QUEUE"})
                if reply["status"] == "success":
                    break
                await trio.sleep(0.1)
            queues.append(reply["queue_id"])
        # CREATE_QUEUE balances: each lands on the group with fewest queues.
        assert len({cluster_of_queue(q) for q in queues}) == 3
        requests = []
        for round_ in range(4):
            for q in queues:
                requests.append({"operation": "APPEND", "queue_name": q, "data": [q, round_]})
        for q in queues:
            requests.append({"operation": "READ", "queue_name": q, "client_id": "C-BBBBB"})
        stream = await cluster.connect("b1")
        async with stream:
            await stream.send_all(b"".join(encode_frame(orjson.dumps(r)) for r in requests))
            decoder = FrameDecoder()
            replies = []
            while len(replies) < len(requests):
                while (payload := decoder.next_frame()) is not None:
                    replies.append(loads_object(payload))
                if len(replies) < len(requests):
                    decoder.feed(await stream.receive_some())
        appended = replies[: 4 * len(queues)]
        assert [r.get("sequence_num") for r in appended] == [
            n for n in range(1, 5) for _ in queues
        ], replies
        assert [r["data"] for r in replies[4 * len(queues) :]] == [[q, 0] for q in queues]


async def append_acknowledged(cluster, queues, value, acknowledged) -> None:
    """APPEND ``value`` to every queue through its group's leader; record what is acknowledged."""
    await spread.append_acknowledged(cluster, queues, value, acknowledged, cluster.group_leaders)


@pytest.mark.trio
async def test_acknowledged_writes_on_every_group_survive_a_crash_of_a_broker_leading_several(
    autojump_clock,
):
    """Failover moves leadership away from the crashed broker, healing moves it back; what any
    group acknowledged is on every replica of that group afterwards (Raft §5.4, per group)."""
    groups = 6
    async with open_mock_cluster(3, groups=groups, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(120):
            await wait_spread(cluster, groups)
        share = leader_share(groups, 3)
        queues = []
        for name in sorted(cluster.brokers):
            for _ in range(2):
                reply = await answer_of(cluster, name, {"operation": "CREATE_QUEUE"})
                queues.append(reply["queue_id"])
        assert {cluster_of_queue(q) for q in queues} == set(cluster.brokers["b1"].host.group_ids)
        acknowledged = {q: [] for q in queues}
        await append_acknowledged(cluster, queues, 0, acknowledged)
        victim = max(led_counts(cluster), key=lambda n: led_counts(cluster)[n])
        assert led_counts(cluster)[victim] >= 2
        await cluster.crash(victim)
        # Every group elects a leader among the survivors and keeps taking writes.
        with trio.fail_after(60):
            await cluster.wait_until(lambda: all(cluster.group_leaders().values()))
        for value in range(1, 4):
            await append_acknowledged(cluster, queues, value, acknowledged)
        # A partition next: the crashed broker back, another isolated, then healed.
        await cluster.restart(victim)
        other = next(n for n in sorted(cluster.brokers) if n != victim)
        cluster.isolate(other)
        with trio.fail_after(60):
            await cluster.wait_until(
                lambda: all(
                    leader not in (None, other) for leader in cluster.group_leaders().values()
                )
            )
        for value in range(4, 6):
            await append_acknowledged(cluster, queues, value, acknowledged)
        cluster.heal()
        # Healed: leadership spreads back, no broker leading more than its share.
        with trio.fail_after(120):
            await wait_spread(cluster, groups)
        assert max(led_counts(cluster).values()) <= share
        for value in range(6, 8):
            await append_acknowledged(cluster, queues, value, acknowledged)
        with trio.fail_after(60):

            def replicated() -> bool:
                for name in cluster.brokers:
                    for group_id, replica in cluster.replicas(name).items():
                        leader = cluster.replicas(cluster.group_leaders()[group_id])[group_id]
                        if replica.applied_index < leader.driver.node.commit:
                            return False
                return True

            await cluster.wait_until(replicated)
        for queue, values in acknowledged.items():
            # With a leader for every group in each phase, every write was acknowledged.
            assert values == list(range(8)), (queue, values)
            group = cluster_of_queue(queue)
            for name in cluster.brokers:
                store = cluster.group_stores.get((name, group)) or cluster.stores[name]
                held = [orjson.loads(v) for v in store.messages(queue)]
                # Every acknowledged value is there, once, in order (an unacknowledged append
                # may have committed too: it would sit between them).
                assert [v for v in held if v in values] == values, (name, queue, held)


@pytest.mark.trio
async def test_a_restarted_broker_reopens_every_group(autojump_clock):
    async with open_mock_cluster(3, groups=3, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 3)
        group_ids = cluster.brokers["b1"].host.group_ids
        for name in ("b1", "b3"):  # the founder and a joiner
            await cluster.crash(name)
            await cluster.restart(name)
            with trio.fail_after(60):
                await cluster.wait_for_groups(3, 3)
            assert sorted(cluster.replicas(name)) == list(group_ids)
            assert cluster.brokers[name].host.group_ids == group_ids
        with trio.fail_after(120):
            await wait_spread(cluster, 3)
        assert sorted(led_counts(cluster).values()) == [1, 1, 1]


@pytest.mark.trio
async def test_status_and_metrics_show_every_group(autojump_clock):
    async with open_mock_cluster(3, groups=3, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 3)
        leaders = cluster.group_leaders()
        broker = cluster.brokers["b2"]
        status = await read_status(broker, RequestRates(broker))
        rows = table_rows(status, "groups")
        assert sorted(r["group_id"] for r in rows) == sorted(leaders)
        assert rows[0]["group_id"] == broker.cluster_id  # its own group first, as before
        for row in rows:
            assert row["leader_id"] == cluster.brokers[leaders[row["group_id"]]].broker_id
            assert row["voters"] == 3 and row["learners"] == 0
        exposition = generate_latest(broker.metrics.registry).decode()
        for group_id, leader in leaders.items():
            series = (
                f'trio_broker_role{{broker_id="{broker.broker_id}",cluster_id="{group_id}",'
                f'role="leader"}} {1.0 if leader == "b2" else 0.0}'
            )
            assert series in exposition
            assert (
                f'trio_broker_term{{broker_id="{broker.broker_id}",cluster_id="{group_id}"}}'
                in (exposition)
            )
        # Broker-wide series stay one per broker.
        assert exposition.count("trio_broker_connections{") == 1


def test_set_groups_is_idempotent_and_refuses_another_list(tmp_path):
    """The group list is applied alike by the in-memory state and SQLite, kept across a
    reopen, and in the tables a snapshot copies (``work_meta``)."""
    good = SetGroups(("G-AAAAA", "G-BBBBB", "G-CCCCC"))
    refused = [
        SetGroups(("G-AAAAA", "G-DDDDD")),  # another list
        SetGroups(("G-BBBBB", "G-AAAAA")),  # out of order
        SetGroups(("G-AAAAA", "G-AAAAA")),  # twice
        SetGroups(("bad",)),
        SetGroups(()),
    ]
    state = QueueState()
    assert isinstance(state.apply(refused[1]), CommandRejected) and state.groups == ()
    assert state.apply(good) == GroupsSet(good.group_ids)
    assert state.apply(good) == GroupsSet(good.group_ids)
    for command in refused:
        assert isinstance(state.apply(command), CommandRejected), command
        assert state.groups == good.group_ids
    assert "work_meta" in WORK_TABLES  # what a snapshot copies
    db = apsw.Connection(str(tmp_path / "groups.db"))
    upgrade(db)
    with db:
        assert apply_command(db, good) == GroupsSet(good.group_ids)
        assert apply_command(db, good) == GroupsSet(good.group_ids)
        for command in refused:
            assert isinstance(apply_command(db, command), CommandRejected), command
    db.close()
    db = apsw.Connection(str(tmp_path / "groups.db"))
    assert stored_groups(db) == good.group_ids


@pytest.mark.trio
async def test_a_refused_group_join_is_retried_not_fatal(autojump_clock):
    """A seed that has not opened a group yet refuses to describe it (WRONG_CLUSTER): the
    joiner backs off and asks again instead of stopping."""
    from trio_broker._runtime._membership import JoinFailed

    async with open_mock_cluster(1, groups=2, replication_factor=EVERY_BROKER) as cluster:
        host = cluster.brokers["b1"].host
        attempts = []

        async def step():
            attempts.append(trio.current_time())
            if len(attempts) < 4:
                raise JoinFailed("cluster G-XXXXX refused the join: WRONG_CLUSTER")
            return "joined"

        assert await host._retried("G-XXXXX", step) == "joined"
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        timeout = cluster.brokers["b1"].config.failure_timeout
        assert gaps == pytest.approx([timeout, 2 * timeout, 4 * timeout])


@pytest.mark.trio
async def test_peer_hello_reaches_the_group_it_names(autojump_clock):
    """PEER_HELLO naming a hosted group is accepted and its stream handed to that group's
    driver; naming a group not hosted here is refused as before (WRONG_CLUSTER)."""
    async with open_mock_cluster(2, groups=2, replication_factor=EVERY_BROKER) as cluster:
        extra = next(g for g in cluster.replicas("b1") if g != cluster.brokers["b1"].cluster_id)
        hello = {"operation": "PEER_HELLO", "broker_id": "B-TEST1", "to": "B-000B1"}
        reply = await cluster.call("b1", hello | {"cluster_id": "G-NONE0"})
        assert reply["code"] == "WRONG_CLUSTER"
        served = []

        def recorder(group_id):
            async def serve(stream, decoder, peer, sender):
                served.append((group_id, sender))
                return True

            return serve

        for group_id, replica in cluster.replicas("b1").items():
            replica.serve_peer_here = recorder(group_id)
        stream = await cluster.connect("b1", src="b2")
        async with stream:
            await stream.send_all(encode_frame(orjson.dumps(hello | {"cluster_id": extra})))
            decoder = FrameDecoder()
            while (payload := decoder.next_frame()) is None:
                decoder.feed(await stream.receive_some())
            assert loads_object(payload) == {"status": "success"}
        await cluster.wait_until(lambda: any(s == "B-TEST1" for _, s in served))
        assert [g for g, s in served if s == "B-TEST1"] == [extra]


@pytest.mark.trio
async def test_a_broker_leading_no_group_points_create_queue_at_a_leader(autojump_clock):
    """Two groups on three brokers: one broker leads none. Its CREATE_QUEUE answer is
    NOT_LEADER naming a group's leader (where an original-design client retries), and its
    CLUSTER_QUERY naming no group is about the cluster group, as a replica."""
    async with open_mock_cluster(3, groups=2, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 2)
        leaders = cluster.group_leaders()
        idle = next(n for n in sorted(cluster.brokers) if n not in leaders.values())
        reply = await cluster.call(idle, {"operation": "CREATE_QUEUE"})
        assert reply["code"] == "NOT_LEADER"
        named = next(n for n, b in cluster.brokers.items() if b.broker_id == reply["leader_id"])
        assert named in leaders.values()
        assert reply["leader_port"] == cluster.ports[named]
        retried = await cluster.call(named, {"operation": "CREATE_QUEUE"})
        assert cluster.group_leaders()[cluster_of_queue(retried["queue_id"])] == named
        topology = await cluster.call(idle, {"operation": "CLUSTER_QUERY"})
        assert topology["cluster_id"] == cluster.brokers[idle].cluster_id
        assert topology["self_role"] == "replica"
        assert len(topology["groups"]) == 2
