"""Brokers hosting several groups share one peer connection per pair and direction
(docs/replication.md, "Peer links"): real brokers on a memory network, under the mock clock."""

from __future__ import annotations

import secrets

import orjson
import pytest
import trio

from trio_broker._core import _raft_messages as rm
from trio_broker._core._commands import CreateQueue
from trio_broker._errors import BrokerError
from trio_broker._ids import cluster_of_queue
from trio_broker._protocol import FrameDecoder, encode_frame, loads_object
from trio_broker._protocol._consensus import encode_message
from trio_broker._runtime._groups import EVERY_BROKER
from trio_broker._runtime._peer_mux import PeerMux
from trio_broker.testing import open_local_cluster, open_mock_cluster

from . import test_security as security
from .spread import wait_spread, wait_voting_spread
from .test_groups import answer_of
from .test_groups_real import until as real_until

ca, tls, secret_file = security.ca, security.tls, security.secret_file  # (their fixtures)


def peer_connections(cluster) -> int:
    """Connections between brokers (clients are not connected between two calls)."""
    return cluster.network.statistics()["connections"]


def shared_links_up(cluster, groups: int) -> bool:
    """Every broker has every group registered on its shared links, and one connected,
    multiplexed link to each other broker. (A follower opens its links to the group's other
    followers only when it first has something for them, as with a link per group.)"""
    for name, broker in cluster.brokers.items():
        stats = broker.driver.peer_mux.statistics()
        others = {b.broker_id for n, b in cluster.brokers.items() if n != name}
        if {link.peer for link in stats.links} != others or len(stats.groups) != groups:
            return False
        for link in stats.links:
            if not (link.connected and link.multiplexed and link.groups):
                return False
    return True


async def write_everywhere(cluster, value, among=None) -> dict[str, str]:
    """A queue on every group (created through each broker ``among``), one APPEND each."""
    queues = {}
    for name in sorted(among or cluster.brokers):
        while len(queues) < len(cluster.brokers["b1"].host.group_ids):
            reply = await answer_of(cluster, name, {"operation": "CREATE_QUEUE"})
            queues.setdefault(cluster_of_queue(reply["queue_id"]), reply["queue_id"])
            if cluster.group_leaders()[cluster_of_queue(reply["queue_id"])] == name:
                break
    for queue in queues.values():
        reply = await answer_of(
            cluster,
            cluster.group_leaders()[cluster_of_queue(queue)],
            {"operation": "APPEND", "queue_name": queue, "data": value},
        )
        assert reply["status"] == "success", reply
    return queues


async def wait_replicated(cluster) -> None:
    def replicated() -> bool:
        leaders = cluster.group_leaders()
        for name in cluster.brokers:
            for group_id, replica in cluster.replicas(name).items():
                if leaders[group_id] is None:
                    return False
                leader = cluster.replicas(leaders[group_id])[group_id]
                if replica.applied_index < leader.driver.node.commit:
                    return False
        return True

    with trio.fail_after(60):
        await cluster.wait_until(replicated)


@pytest.mark.trio
async def test_four_groups_on_three_brokers_use_one_connection_per_pair_and_direction(
    autojump_clock,
):
    async with open_mock_cluster(3, groups=4, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 4)
            await cluster.wait_until(lambda: shared_links_up(cluster, 4))
        assert peer_connections(cluster) == 6  # 3 pairs, 2 directions: as with one group
        for broker in cluster.brokers.values():
            # One timer per broker ticks every group's core.
            (callbacks,) = broker.driver.peer_mux._tickers.values()
            assert len(callbacks) == 4
        queues = await write_everywhere(cluster, "v")
        await wait_replicated(cluster)
        for group, queue in queues.items():
            for name in cluster.brokers:
                store = cluster.group_stores.get((name, group)) or cluster.stores[name]
                assert [orjson.loads(v) for v in store.messages(queue)] == ["v"]
        assert peer_connections(cluster) == 6


@pytest.mark.trio
async def test_shared_links_come_back_after_a_partition_and_a_crash(autojump_clock):
    async with open_mock_cluster(3, groups=4, replication_factor=EVERY_BROKER) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 4)
        cluster.isolate("b3")
        with trio.fail_after(60):
            await cluster.wait_until(
                lambda: all(
                    leader not in (None, "b3") for leader in cluster.group_leaders().values()
                )
            )
        await write_everywhere(cluster, 1, among=["b1", "b2"])
        cluster.heal()
        await cluster.crash("b2")
        await cluster.restart("b2")
        with trio.fail_after(120):
            await wait_spread(cluster, 4)
            await cluster.wait_until(lambda: shared_links_up(cluster, 4))
        await write_everywhere(cluster, 2)
        await wait_replicated(cluster)
        assert peer_connections(cluster) == 6


async def hello(cluster, name, fields, frames=()) -> dict:
    stream = await cluster.connect(name, src="b2")
    request = {"operation": "PEER_HELLO", "broker_id": "B-TEST1", "to": "B-000B1"} | fields
    await stream.send_all(
        encode_frame(orjson.dumps(request)) + b"".join(encode_frame(f) for f in frames)
    )
    decoder = FrameDecoder()
    while (payload := decoder.next_frame()) is None:
        decoder.feed(await stream.receive_some())
    cluster.test_streams = [*getattr(cluster, "test_streams", []), stream]
    return loads_object(payload)


@pytest.mark.trio
async def test_a_multiplexed_hello_is_welcomed_and_its_frames_reach_the_group_they_name(
    autojump_clock,
):
    async with open_mock_cluster(2, groups=2, replication_factor=EVERY_BROKER) as cluster:
        home = cluster.brokers["b1"].cluster_id
        extra = next(g for g in cluster.replicas("b1") if g != home)
        # An older broker's hello: the answer of before, exactly.
        assert await hello(cluster, "b1", {"cluster_id": home}) == {"status": "success"}
        stepped = {home: [], extra: []}
        for group_id, replica in cluster.replicas("b1").items():
            replica.driver.step = stepped[group_id].append
        beat = rm.Heartbeat(src="B-TEST1", dst="B-000B1", term=1, cluster_version=1, commit=0)
        answer = await hello(
            cluster,
            "b1",
            {"cluster_id": home, "multiplexed": True, "host": "127.0.0.1", "port": 4242},
            [encode_message(beat, extra), encode_message(beat, "G-NONE0"), encode_message(beat)],
        )
        assert answer == {"status": "success", "multiplexed": True, "append_runs": True}
        await cluster.wait_until(lambda: stepped[home] and stepped[extra])
        assert stepped == {home: [beat], extra: [beat]}
        # Every group hosted here learns where the sender listens, as from a hello per group.
        for replica in cluster.replicas("b1").values():
            assert replica.driver.hinted_addresses["B-TEST1"] == ("127.0.0.1", 4242)
        for stream in cluster.test_streams:
            await stream.aclose()


@pytest.mark.trio
async def test_the_shared_link_proves_the_cluster_secret(autojump_clock, ram_path):
    secret = ram_path / "secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    async with open_mock_cluster(
        3, groups=2, cluster_secret_file=str(secret), replication_factor=EVERY_BROKER
    ) as cluster:
        with trio.fail_after(60):
            await wait_spread(cluster, 2)
            await cluster.wait_until(lambda: shared_links_up(cluster, 2))
        await write_everywhere(cluster, "s")
        await wait_replicated(cluster)
        terms = {g: b.driver.node.term for g, b in cluster.replicas("b1").items()}
        # A broker with the wrong secret: its shared link is refused, nothing it sends stepped.
        async with trio.open_nursery() as nursery:
            rogue = PeerMux(
                "B-ROGUE",
                cluster.brokers["b1"].cluster_id,
                nursery,
                ("127.0.0.1", 1),
                cluster.network.host("rogue").connect,
                secret=b"not the cluster secret at all",
            )
            links = {
                g: rogue.register(g, lambda _p: ("127.0.0.1", cluster.ports["b1"])) for g in terms
            }
            for group_id, group_links in links.items():
                group_links.ensure({"B-000B1"})
                for _ in range(5):
                    group_links.send(
                        rm.ElectionRequest(
                            src="B-ROGUE",
                            dst="B-000B1",
                            term=terms[group_id] + 100,
                            cluster_version=1,
                            pre_vote=False,
                            last_log_index=10**6,
                            last_log_term=terms[group_id] + 99,
                        )
                    )
                    await trio.sleep(0.2)
            assert not any(link.connected for link in rogue.statistics().links)
            nursery.cancel_scope.cancel()
        assert {g: b.driver.node.term for g, b in cluster.replicas("b1").items()} == terms


@pytest.mark.trio
async def test_tls_and_the_cluster_secret_hold_on_the_shared_links_of_real_brokers(
    ram_path, tls, secret_file
):
    """Real TCP: three brokers with TLS and a cluster secret, three groups. Each broker
    holds one TLS connection to each other broker, carrying every group, and every group
    replicates over them."""
    async with open_local_cluster(
        ram_path / "c",
        3,
        groups=3,
        **tls,
        cluster_secret_file=secret_file,
        replication_factor=EVERY_BROKER,
    ) as cluster:
        with trio.fail_after(60):
            leaders = await wait_voting_spread(cluster, 3)
            await real_until(lambda: shared_links_up(cluster, 3))
        for name, broker in cluster.brokers.items():
            for group_id, replica in broker.host.groups.items():
                assert replica.driver.peers.mux is broker.driver.peer_mux, (name, group_id)
        # Every group takes a write through its leader, over the shared links.
        for group_id, leader in leaders.items():
            replica = cluster.brokers[leader].host.groups[group_id]
            result = await replica.submit(CreateQueue("Q-" + group_id[2:] + "TLS00"))
            assert not isinstance(result, BrokerError), result

        def replicated() -> bool:
            for group_id, leader in leaders.items():
                commit = cluster.brokers[leader].host.groups[group_id].driver.node.commit
                for broker in cluster.brokers.values():
                    if broker.host.groups[group_id].applied_index < commit:
                        return False
            return True

        with trio.fail_after(30):
            await real_until(replicated)
