"""The balancer on real brokers (docs/replication.md, "Balancer"): a cluster map placing each
group on R brokers, the balancer's rounds on the metadata leader moving replicas and
leadership, under the mock clock. Writes go on while replicas move; every acknowledged write
is on every replica the map places once the moves are done.
"""

from __future__ import annotations

import itertools

import orjson
import pytest
import trio

from trio_broker._cli._bench_groups import settled as bench_settled
from trio_broker._core._spread import leader_share
from trio_broker._ids import cluster_of_queue
from trio_broker._runtime._metamap import hosted_by_map
from trio_broker.testing import open_mock_cluster

pytestmark = pytest.mark.trio

LIMIT = 900.0
"""Virtual seconds a scenario may take to converge (a replica move takes about six rounds of
5 s; two groups move at once)."""


def metadata_leader(cluster):
    for name, broker in cluster.brokers.items():
        if broker.driver.node.is_leader:
            return name
    return None


def the_map(cluster):
    name = metadata_leader(cluster)
    return None if name is None else cluster.brokers[name].host.meta.map


def settled(cluster, r: int) -> bool:
    """The map and the groups agree: every group on R voters, no move, no learner, a leader;
    each running broker hosts exactly what the map places on it; replicas spread evenly over
    the brokers that stay, leadership within one of its share."""
    cmap = the_map(cluster)
    if cmap is None:
        return False
    leaders = cluster.data_leaders()
    ids = {b.broker_id: n for n, b in cluster.brokers.items()}
    for g, record in cmap.groups.items():
        if record.move is not None or record.learners or len(record.voters) != r:
            return False
        leader = leaders.get(g)
        if leader is None:
            return False
        node = cluster.replicas(leader)[g].driver.node
        if set(node.config.voters) != set(record.voters) or node.config.learners:
            return False
    for name, broker in cluster.brokers.items():
        if set(cluster.data_replicas(name)) != hosted_by_map(cmap, broker.broker_id):
            return False
    stays = [b for b, rec in cmap.brokers.items() if not rec.draining and b in ids]
    counts = [len(cmap.groups_of(b)) for b in stays]
    if max(counts) - min(counts) > 1:
        return False
    led = [sum(1 for n in leaders.values() if n == ids[b]) for b in stays]
    return max(led) <= leader_share(len(cmap.groups), len(stays)) + 1


async def wait_settled(cluster, r: int) -> None:
    with trio.fail_after(LIMIT):
        await cluster.wait_until(lambda: settled(cluster, r))


async def answer_of(cluster, name, request):
    """One raw request to broker ``name``, following NOT_LEADER hints (bounded)."""
    names = {b.broker_id: n for n, b in cluster.brokers.items()}
    reply = None
    for _ in range(100):
        if name not in cluster.brokers:
            name = sorted(cluster.brokers)[0]
        try:
            with trio.move_on_after(10):
                reply = await cluster.call(name, request)
        except (OSError, ConnectionError, trio.BrokenResourceError):
            reply = {"code": "UNAVAILABLE"}
        if reply is None or reply.get("code") in ("NOT_LEADER", "UNAVAILABLE"):
            hint = None if reply is None else names.get(reply.get("leader_id"))
            name = hint if hint in cluster.brokers else name
            await trio.sleep(0.3)
            continue
        return reply
    return reply


class Writer:
    """Appends to one queue per group while the balancer works; keeps what was acknowledged."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.queues: dict[str, str] = {}
        self.acknowledged: dict[str, list[int]] = {}
        self.counter = itertools.count()

    async def create(self, groups: int) -> None:
        with trio.fail_after(120):
            while len(self.queues) < groups:
                for name in sorted(self.cluster.brokers):
                    reply = await answer_of(self.cluster, name, {"operation": "CREATE_QUEUE"})
                    queue = (reply or {}).get("queue_id")
                    if queue is not None:
                        self.queues.setdefault(cluster_of_queue(queue), queue)
                        self.acknowledged.setdefault(queue, [])

    async def append_round(self) -> None:
        for queue in sorted(self.acknowledged):
            value = next(self.counter)
            request = {"operation": "APPEND", "queue_name": queue, "data": value}
            reply = await answer_of(self.cluster, sorted(self.cluster.brokers)[0], request)
            if reply is not None and reply.get("status") == "success":
                self.acknowledged[queue].append(value)

    async def run(self, every: float = 1.0) -> None:
        while True:
            await self.append_round()
            await trio.sleep(every)

    async def check(self) -> None:
        """Every value acknowledged so far, once and in order, on every voter of the map, at
        a moment when each has applied what its group's leader has committed (while replicas
        move, the map is read afresh until such a moment comes)."""
        cluster = self.cluster
        acknowledged = {q: list(v) for q, v in self.acknowledged.items()}

        def verified() -> bool:
            cmap = the_map(cluster)
            if cmap is None:
                return False
            ids = {b.broker_id: n for n, b in cluster.brokers.items()}
            leaders = cluster.data_leaders()
            for g, record in cmap.groups.items():
                leader = leaders.get(g)
                if leader is None:
                    return False
                commit = cluster.replicas(leader)[g].driver.node.commit
                for b in record.voters:
                    replica = cluster.replicas(ids[b]).get(g) if b in ids else None
                    if replica is None or replica.applied_index < commit:
                        return False
            for queue, values in acknowledged.items():
                assert values, queue
                g = cluster_of_queue(queue)
                for b in cmap.groups[g].voters:
                    store = cluster.group_stores[(ids[b], g)]
                    held = [orjson.loads(v) for v in store.messages(queue)]
                    assert [v for v in held if v in values] == values, (b, queue)
            return True

        with trio.fail_after(120):
            await cluster.wait_until(verified)


async def test_three_brokers_founded_one_at_a_time_converge_to_three_voters(autojump_clock):
    async with open_mock_cluster(1, groups=4) as cluster:
        writer = Writer(cluster)
        await writer.create(4)
        await cluster.start("b2")
        await cluster.start("b3")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await wait_settled(cluster, 3)
            nursery.cancel_scope.cancel()
        await writer.append_round()
        await writer.check()
        assert all(len(r.voters) == 3 for r in the_map(cluster).groups.values())


async def test_a_fourth_broker_receives_replicas_and_leaders_and_every_write_stays(
    autojump_clock,
):
    async with open_mock_cluster(3, groups=4) as cluster:
        writer = Writer(cluster)
        await writer.create(4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await cluster.start("b4")
            b4 = cluster.brokers["b4"].broker_id

            def voted_on_b4() -> int:
                cmap = the_map(cluster)
                return sum(1 for r in cmap.groups.values() if b4 in r.voters and r.move is None)

            # After each move that lands a replica on b4: every acknowledged write on every
            # voter, the new one included.
            for moved in range(1, 4):
                with trio.fail_after(LIMIT):
                    await cluster.wait_until(lambda m=moved: voted_on_b4() >= m)
                await writer.check()
            await wait_settled(cluster, 3)
            nursery.cancel_scope.cancel()
        cmap = the_map(cluster)
        assert {len(cmap.groups_of(b)) for b in cmap.brokers} == {3}
        assert b4 in {cluster.brokers[n].broker_id for n in cluster.data_leaders().values()}
        await writer.append_round()
        await writer.check()


async def test_a_fifth_and_sixth_broker_even_out_replicas_and_leadership(autojump_clock):
    async with open_mock_cluster(3, groups=6) as cluster:
        writer = Writer(cluster)
        await writer.create(6)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, 2.0)
            for name in ("b4", "b5", "b6"):
                await cluster.start(name)
            await wait_settled(cluster, 3)
            nursery.cancel_scope.cancel()
        cmap = the_map(cluster)
        assert {len(cmap.groups_of(b)) for b in cmap.brokers} == {3}
        led = [cluster.brokers[n].broker_id for n in cluster.data_leaders().values()]
        assert sorted(led) == sorted(cmap.brokers)  # one group each
        await writer.append_round()
        await writer.check()


async def test_draining_a_broker_empties_it(autojump_clock):
    async with open_mock_cluster(4, groups=4) as cluster:
        writer = Writer(cluster)
        await writer.create(4)
        await wait_settled(cluster, 3)
        leaving = "b4"
        b4 = cluster.brokers[leaving].broker_id
        reply = await answer_of(cluster, "b1", {"operation": "DRAIN_BROKER", "broker_id": b4})
        assert reply["status"] == "success" and reply["draining"] is True, reply
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            with trio.fail_after(LIMIT):
                await cluster.wait_until(
                    lambda: (
                        not the_map(cluster).groups_of(b4)
                        and not cluster.data_replicas(leaving)
                        and settled(cluster, 3)
                    )
                )
            nursery.cancel_scope.cancel()
        assert leaving not in cluster.data_leaders().values()
        await writer.append_round()
        await writer.check()


@pytest.mark.parametrize("who", ["target", "source", "metadata leader"])
async def test_a_crash_during_a_move_ends_in_a_consistent_map(autojump_clock, who):
    async with open_mock_cluster(3, groups=4) as cluster:
        writer = Writer(cluster)
        await writer.create(4)
        await cluster.start("b4")
        b4 = cluster.brokers["b4"].broker_id
        ids = {b.broker_id: n for n, b in cluster.brokers.items()}

        def moving():
            cmap = the_map(cluster)
            if cmap is None:
                return None
            for record in cmap.groups.values():
                if record.move is not None and b4 in record.learners + record.voters:
                    return record
            return None

        with trio.fail_after(LIMIT):
            await cluster.wait_until(lambda: moving() is not None)
        record = moving()
        victim = {
            "target": "b4",
            "source": ids.get(record.move.source or "", "b1"),
            "metadata leader": metadata_leader(cluster),
        }[who]
        await cluster.crash(victim)
        await trio.sleep(20)
        await cluster.restart(victim)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await wait_settled(cluster, 3)
            nursery.cancel_scope.cancel()
        await writer.append_round()
        await writer.check()


async def test_the_balancer_stops_moving_once_converged(autojump_clock):
    async with open_mock_cluster(4, groups=4) as cluster:
        await wait_settled(cluster, 3)
        with trio.fail_after(LIMIT):
            await cluster.wait_until(lambda: led_by_preferred(cluster))
        version = the_map(cluster).version
        before = cluster.data_leaders()
        await trio.sleep(60)  # twelve rounds
        assert the_map(cluster).version == version
        assert cluster.data_leaders() == before
        reply = await answer_of(cluster, "b1", {"operation": "REBALANCE"})
        assert reply["status"] == "success" and reply["moves"] == [], reply


def led_by_preferred(cluster) -> bool:
    """Every group led by its preferred leader (where the balancer takes it once all is
    healthy)."""
    cmap = the_map(cluster)
    ids = {n: b.broker_id for n, b in cluster.brokers.items()}
    return all(
        ids.get(n) == cmap.groups[g].preferred_leader for g, n in cluster.data_leaders().items()
    )


async def test_a_failure_and_heal_move_no_replica_and_leadership_comes_back(autojump_clock):
    async with open_mock_cluster(4, groups=4) as cluster:
        await wait_settled(cluster, 3)
        before = {g: r.voters for g, r in the_map(cluster).groups.items()}
        victim = next(n for n in sorted(cluster.brokers) if n != metadata_leader(cluster))
        victim_id = cluster.brokers[victim].broker_id
        await cluster.crash(victim)
        with trio.fail_after(LIMIT):
            await cluster.wait_until(lambda: not the_map(cluster).is_alive(victim_id))
        await trio.sleep(30)  # six rounds with the broker down
        assert {g: r.voters for g, r in the_map(cluster).groups.items()} == before
        await cluster.restart(victim)
        with trio.fail_after(LIMIT):
            await cluster.wait_until(lambda: the_map(cluster).is_alive(victim_id))
        await wait_settled(cluster, 3)
        cmap = the_map(cluster)
        assert {g: r.voters for g, r in cmap.groups.items()} == before
        # Leadership is back with the preferred leaders.
        with trio.fail_after(LIMIT):
            await cluster.wait_until(lambda: led_by_preferred(cluster))


async def test_the_bench_waits_for_the_leaders_the_balancer_settles_on(autojump_clock):
    # The bench's groups workload starts its load once `_bench_groups.settled` holds. Spread
    # alone was not enough: the first leaders are elected, and the balancer then moved them
    # to the map's preferred leaders during the load. `settled` finds those preferred leaders
    # from a CLUSTER_QUERY's groups (the founding's placement), as the map holds them.
    async with open_mock_cluster(3, groups=3) as cluster:
        with trio.fail_after(LIMIT):
            await cluster.wait_until(lambda: led_by_preferred(cluster))
        view = await answer_of(cluster, "b1", {"operation": "CLUSTER_QUERY"})
        listed = view["groups"]
        assert sorted(g["cluster_id"] for g in listed) == sorted(the_map(cluster).groups)
        assert bench_settled(listed)
        # The same leaders, each on another group: still spread, not what the balancer wants.
        leaders = [g["leader_id"] for g in listed]
        moved = [dict(g, leader_id=leaders[i - 1]) for i, g in enumerate(listed)]
        assert len(set(leaders)) == 3 and not bench_settled(moved)
        assert not bench_settled([dict(listed[0], leader_id=None), *listed[1:]])
        assert not bench_settled(listed[1:])
