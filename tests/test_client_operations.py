"""The trio client's additions: batches, idempotent producers, consumption, seek, listing."""

from __future__ import annotations

import pytest
import trio

from trio_broker._core._commands import ApplyRetention
from trio_broker._errors import BrokerError, QueueNotFoundError
from trio_broker.client import Retention, connect
from trio_broker.testing import open_local_cluster


async def test_batches_seek_and_listing(broker):
    async with connect([f"127.0.0.1:{broker.port}"], client_id="C-BATCH") as client:
        q = await client.create_queue()
        assert await client.append_batch(q, [1, "two", None]) == [1, 2, 3]
        got = await client.read_batch(q, 2)
        assert [(m.sequence_num, m.data) for m in got] == [(1, 1), (2, "two")]
        assert await client.seek(q, to="start") == 1
        assert [m.data for m in await client.read_batch(q, 10)] == [1, "two", None]
        assert await client.read_batch(q, 10) == []
        page = await client.list_queues()
        (info,) = [i for i in page.queues if i.queue_id == q]
        assert info.length == 3
        assert [(c.client_id, c.next_sequence_num, c.lag) for c in info.clients] == [
            ("C-BATCH", 4, 0)
        ]


async def test_consume_with_acknowledgement_redelivers_what_was_not_processed(broker):
    seeds = [f"127.0.0.1:{broker.port}"]
    async with connect(seeds, client_id="C-WORKR") as client:
        q = await client.create_queue()
        await client.append_batch(q, list(range(6)))
        processed = []
        async for message in client.consume(q, max_messages=4, wait=0, ack=True):
            if message.sequence_num == 3:
                break  # the worker dies while handling message 3
            processed.append(message.data)
        assert processed == [0, 1]
    async with connect(seeds, client_id="C-WORKR") as client:
        again = []
        with trio.move_on_after(2):
            async for message in client.consume(q, max_messages=4, wait=0.1, ack=True):
                again.append(message.data)
                if message.data == 5:
                    break
        assert again == [0, 1, 2, 3, 4, 5]  # the unacknowledged batch comes back whole


async def test_consume_at_most_once_moves_on(broker):
    async with connect([f"127.0.0.1:{broker.port}"], client_id="C-ONCE1") as client:
        q = await client.create_queue()
        await client.append_batch(q, ["a", "b", "c"])
        first = None
        async for message in client.consume(q, max_messages=2, wait=0):
            first = message
            break
        assert first is not None and first.data == "a"
        # "b" came in the same batch and its position moved too: at most once.
        assert [m.data for m in await client.read_batch(q, 10)] == ["c"]


async def test_idempotent_producer_across_failover_stores_each_value_once(ram_path):
    with trio.fail_after(60):
        async with open_local_cluster(ram_path, 3) as cluster:
            seeds = [f"127.0.0.1:{b.port}" for b in cluster.brokers.values()]
            async with connect(seeds) as client:
                q = await client.create_queue()
                producer = client.producer()
                sent = []
                under_way = trio.Event()

                async def produce():
                    for i in range(300):
                        await producer.append(q, i)
                        sent.append(i)
                        if i == 50:
                            under_way.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(produce)
                    await under_way.wait()
                    leader = await cluster.wait_for_leader()
                    await cluster.stop(cluster.name_of(leader))
                assert sent == list(range(300))
                stored = []
                while batch := await client.read_batch(q, 1000):
                    stored += [m.data for m in batch]
                assert stored == list(range(300))


async def test_retention_policies_through_the_client(broker):
    async with connect([f"127.0.0.1:{broker.port}"], client_id="C-RETN1") as client:
        q = await client.create_queue(max_messages=2)
        assert await client.append_batch(q, [1, 2, 3, 4]) == [1, 2, 3, 4]
        await broker.submit(ApplyRetention(0))
        assert [(m.sequence_num, m.data) for m in await client.read_batch(q, 10)] == [
            (3, 3),
            (4, 4),
        ]
        policy = await client.set_retention(q, max_age=2.5, delete_acknowledged=True)
        assert policy == Retention(max_messages=None, max_age_ms=2500, delete_acknowledged=True)
        (info,) = [i for i in (await client.list_queues()).queues if i.queue_id == q]
        assert (info.length, info.first_sequence_num, info.retained) == (4, 3, 2)
        assert info.retention == policy
        assert await client.set_retention(q) == Retention()
        (info,) = [i for i in (await client.list_queues()).queues if i.queue_id == q]
        assert info.retention is None
        # Mistakes are caught before sending; the broker refuses what it will not keep.
        with pytest.raises(ValueError):
            await client.set_retention(q, max_age=0)
        with pytest.raises(ValueError):
            await client.set_retention(q, max_messages=0)
        with pytest.raises(TypeError):
            await client.set_retention(q, max_messages="3")
        with pytest.raises(TypeError):
            await client.create_queue(max_age="1")
        with pytest.raises(BrokerError) as refused:
            await client.set_retention(q, max_messages=10**13)
        assert refused.value.code == "BAD_REQUEST"
        with pytest.raises(QueueNotFoundError):
            await client.set_retention("Q-" + broker.cluster_id[2:] + "ZZZZZ", max_messages=1)


async def test_waits_are_in_seconds_and_wait_ms_still_works_with_a_warning(broker):
    async with connect([f"127.0.0.1:{broker.port}"]) as client:
        q = await client.create_queue()
        await client.append(q, "x")
        with pytest.deprecated_call(match=r"read_batch\(wait_ms=...\) is deprecated"):
            assert [m.data for m in await client.read_batch(q, 1, peek=True, wait_ms=0)] == ["x"]
        with pytest.deprecated_call(match="consume"):
            async for message in client.consume(q, wait_ms=0):
                assert message.data == "x"
                break
        with trio.fail_after(10):
            assert await client.read_batch(q, 1, wait=0.05) == []
        with pytest.raises(TypeError, match="not both"):
            await client.read_batch(q, wait=1, wait_ms=1000)
        with pytest.raises(ValueError, match="non-negative"):
            await client.read_batch(q, wait=-1)
        with pytest.raises(TypeError, match="seconds"):
            await client.read_batch(q, wait="1")
