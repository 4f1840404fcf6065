"""Where a new queue lands (docs/replication.md, "Where a new queue lands"): a CREATE_QUEUE
naming a group (``cluster_id``) lands on that group; one naming none lands on a group the
receiving broker leads (so an original-design client's follow-ups reach that broker); the
trio client spreads the queues it creates over every group of the cluster."""

from __future__ import annotations

import collections
import math

import pytest
import trio

from trio_broker import WrongClusterError
from trio_broker._client import _client as client_module
from trio_broker._errors import ErrorCode
from trio_broker._ids import cluster_of_queue
from trio_broker.client import connect
from trio_broker.testing import open_local_cluster, open_mock_cluster

from .spread import wait_spread
from .test_metamap import answer_of

pytestmark = pytest.mark.trio


def queue_counts(cluster) -> dict[tuple[str, str], int]:
    """(broker, group) -> the queues that replica holds."""
    return {
        (name, group): replica.queue_count
        for name in cluster.brokers
        for group, replica in cluster.data_replicas(name).items()
    }


async def test_a_create_queue_naming_a_group_lands_on_it(autojump_clock):
    """Sent to the group's leader it lands there; sent to a broker hosting the group but not
    leading it, or to one not hosting it, NOT_LEADER names the group's leader, where the
    same request then lands on the named group."""
    async with open_mock_cluster(3, groups=3, replication_factor=2) as cluster:
        with trio.fail_after(120):
            await wait_spread(cluster, 3)
        await trio.sleep(5)  # (a refresh of the leaders of the groups a broker does not host)
        cmap = cluster.brokers["b1"].host.meta.map
        ids = {name: b.broker_id for name, b in cluster.brokers.items()}
        assert any(
            ids[name] not in record.replicas for name in ids for record in cmap.groups.values()
        )  # (some brokers host some groups only: both kinds of NOT_LEADER are met)
        for group in sorted(cmap.groups):
            leader = cluster.data_leaders()[group]
            request = {"operation": "CREATE_QUEUE", "cluster_id": group}
            reply = await cluster.call(leader, request)
            assert reply["status"] == "success", reply
            assert cluster_of_queue(reply["queue_id"]) == group
            for name in sorted(cluster.brokers):
                if name == leader:
                    continue
                refused = await cluster.call(name, request)
                assert refused["code"] == "NOT_LEADER", (name, refused)
                assert refused["leader_id"] == ids[leader], (name, refused)
            # An original-design client follows the hint, and lands on the named group.
            reply = await answer_of(
                cluster, next(n for n in cluster.brokers if n != leader), request
            )
            assert reply["status"] == "success", reply
            assert cluster_of_queue(reply["queue_id"]) == group
        counts = collections.Counter()
        for (name, group), count in queue_counts(cluster).items():
            if cluster.data_leaders()[group] == name:
                counts[group] += count
        assert counts == dict.fromkeys(cmap.groups, 2)


async def test_an_unknown_group_or_the_metadata_group_is_refused_and_changes_nothing(
    autojump_clock,
):
    """A CREATE_QUEUE naming a group the cluster does not have gets WRONG_CLUSTER, one naming
    the metadata group (which holds no queues) BAD_REQUEST, a cluster_id that is no string
    a protocol error; none creates anything anywhere."""
    async with open_mock_cluster(3, groups=3, replication_factor=2) as cluster:
        with trio.fail_after(120):
            await wait_spread(cluster, 3)
        metadata_group = cluster.brokers["b1"].cluster_id
        before = queue_counts(cluster)
        version = cluster.brokers["b1"].host.meta.map.version
        for name in sorted(cluster.brokers):
            reply = await cluster.call(name, {"operation": "CREATE_QUEUE", "cluster_id": "G-ZZZZZ"})
            assert reply["status"] == "error" and reply["code"] == "WRONG_CLUSTER", reply
            assert "G-ZZZZZ" in reply["message"]
            reply = await cluster.call(
                name, {"operation": "CREATE_QUEUE", "cluster_id": metadata_group}
            )
            assert reply["status"] == "error" and reply["code"] == "BAD_REQUEST", reply
            assert "metadata group" in reply["message"]
            reply = await cluster.call(name, {"operation": "CREATE_QUEUE", "cluster_id": 7})
            assert reply["status"] == "error" and reply["code"] == "BAD_REQUEST", reply
        await trio.sleep(2)  # (anything wrongly committed would be applied by now)
        assert queue_counts(cluster) == before
        assert all(b.host.meta.map.version == version for b in cluster.brokers.values())
        assert all(b.queue_count == 0 for b in cluster.brokers.values())  # (metadata group)


async def test_an_original_design_create_queue_then_append_reach_the_same_broker(
    autojump_clock,
):
    """The original design's CREATE_QUEUE (no cluster_id) sent to a broker leading a group
    lands on a group it leads, so the APPEND and READ that follow, to that same broker,
    succeed."""
    async with open_mock_cluster(3, groups=3, replication_factor=2) as cluster:
        with trio.fail_after(120):
            await wait_spread(cluster, 3)
        leaders = cluster.data_leaders()
        for name in sorted(set(leaders.values())):
            created = await cluster.call(name, {"operation": "CREATE_QUEUE", "client_id": "old"})
            assert created["status"] == "success", created
            queue = created["queue_id"]
            assert leaders[cluster_of_queue(queue)] == name
            appended = await cluster.call(
                name, {"operation": "APPEND", "queue_name": queue, "data": 5, "client_id": "old"}
            )
            assert appended == {"status": "success", "sequence_num": 1}
            read = await cluster.call(
                name, {"operation": "READ", "queue_name": queue, "client_id": "old"}
            )
            assert read == {"status": "success", "sequence_num": 1, "data": 5}


async def test_a_broker_of_one_group_refuses_another_cluster_id(autojump_clock):
    """Without several groups, CREATE_QUEUE naming the broker's own cluster creates there and
    naming another is WRONG_CLUSTER, creating nothing."""
    async with open_mock_cluster(1) as cluster:
        broker = await cluster.wait_for_leader()
        reply = await cluster.call("b1", {"operation": "CREATE_QUEUE", "cluster_id": "G-ZZZZZ"})
        assert reply["code"] == "WRONG_CLUSTER", reply
        assert broker.queue_count == 0
        reply = await cluster.call(
            "b1", {"operation": "CREATE_QUEUE", "cluster_id": broker.cluster_id}
        )
        assert cluster_of_queue(reply["queue_id"]) == broker.cluster_id, reply
        assert broker.queue_count == 1


async def test_the_trio_client_spreads_new_queues_over_every_group(ram_path, cli):
    """Twelve queues created through the trio client from one seed land on every one of the
    six groups, none on more than its share + 1; a named group is honoured (by the client
    and by ``client create-queue --group``); a group the cluster does not have is refused;
    every queue takes an append and serves it back."""
    with trio.fail_after(120):
        async with open_local_cluster(ram_path, 3, groups=6, replication_factor=2) as cluster:
            founder = cluster.brokers["b1"]
            while founder.host.meta.map is None:
                await founder.host.meta.wait_changed()
            groups = sorted(founder.host.meta.map.groups)
            async with connect(f"127.0.0.1:{cluster.ports['b1']}") as client:
                queues = [await client.create_queue() for _ in range(12)]
                per_group = collections.Counter(cluster_of_queue(q) for q in queues)
                assert set(per_group) == set(groups), per_group
                assert max(per_group.values()) <= math.ceil(12 / len(groups)) + 1, per_group
                named = groups[-1]
                chosen = [await client.create_queue(named) for _ in range(3)]
                assert {cluster_of_queue(q) for q in chosen} == {named}
                with pytest.raises(WrongClusterError):
                    await client.create_queue("G-ZZZZZ")
                seed = f"127.0.0.1:{cluster.ports['b2']}"
                status, out, err = await cli("--seed", seed, "create-queue", "--group", named)
                assert status == 0, err
                assert cluster_of_queue(out.strip()) == named
                for value, queue in enumerate(queues + chosen):
                    assert await client.append(queue, value) == 1
                    message = await client.read(queue)
                    assert message is not None and message.data == value


async def test_a_group_the_client_chose_is_asked_again_while_its_broker_does_not_know_it(
    ram_path, monkeypatch
):
    """Just after founding, the broker that will host a group may not have applied the map
    yet and refuses a CREATE_QUEUE naming it (WRONG_CLUSTER): the trio client asks again, a
    bounded number of times, for a group it chose; a group its caller named is refused at
    once."""
    async with (
        open_local_cluster(ram_path, 1) as cluster,
        connect(f"127.0.0.1:{cluster.ports['b1']}") as client,
    ):
        group = client.clusters[0]
        client._placement = {group: 0}  # (as if CLUSTER_QUERY had listed it)
        real = client._leader_call
        refusals = []

        async def refuse_twice(cid, request, **kwargs):
            if len(refusals) < 2:
                refusals.append(request)
                raise WrongClusterError(ErrorCode.WRONG_CLUSTER, "not yet")
            return await real(cid, request, **kwargs)

        monkeypatch.setattr(client, "_leader_call", refuse_twice)
        queue = await client.create_queue()
        assert cluster_of_queue(queue) == group and len(refusals) == 2
        refusals.clear()
        with pytest.raises(WrongClusterError):
            await client.create_queue(group)  # (named by the caller)
        assert len(refusals) == 1
        # Bounded: a refusal that does not end gives up after PLACEMENT_RETRIES more.
        monkeypatch.setattr(client_module, "PLACEMENT_RETRIES", 3)

        async def refuse_always(cid, request, **kwargs):
            refusals.append(request)
            raise WrongClusterError(ErrorCode.WRONG_CLUSTER, "never")

        monkeypatch.setattr(client, "_leader_call", refuse_always)
        before = len(refusals)
        with pytest.raises(WrongClusterError):
            await client.create_queue()
        assert len(refusals) - before == 4
