"""The client's work queues (docs/clients.md): named queues, consumer groups with ack, nack
and extend, headers, fenced producers with their duplicate flag, and consume(ack=True)'s
acknowledgement when its block ends cleanly; under trio (asyncio runs the same client code,
tests/test_client_backends.py)."""

from __future__ import annotations

import pytest
import trio

from trio_broker import (
    GroupInUseError,
    GroupMessage,
    ProducerFencedError,
    QueueInUseError,
    QueueNotFoundError,
    connect,
)

DEADLINE = 20


@pytest.fixture
async def client(broker):
    with trio.fail_after(DEADLINE):
        async with connect([f"127.0.0.1:{broker.port}"], client_id="C-WORK1") as client:
            yield client


async def test_create_queue_by_name_is_idempotent_and_deletable(client):
    first = await client.create_queue(name="orders")
    assert await client.create_queue(name="orders") == first
    assert await client.resolve_queue("orders") == first
    await client.append(first, 1)
    await client.delete_queue(first)
    with pytest.raises(QueueNotFoundError):
        await client.resolve_queue("orders")
    with pytest.raises(QueueNotFoundError):
        await client.append(first, 2)
    assert await client.create_queue(name="orders") != first


async def test_workers_share_a_group_and_acks_are_per_message(client):
    queue = await client.create_queue(name="jobs")
    await client.append_batch(queue, list(range(6)), headers=[{"n": str(i)} for i in range(6)])
    seen: list[GroupMessage] = []
    async with (
        client.consumer_group(queue, "workers", visibility_timeout=30.0) as a,
        client.consumer_group(queue, "workers") as b,
    ):
        assert a.member != b.member
        for worker in (a, b, a, b):
            message = await worker.__anext__()
            seen.append(message)
        assert [m.sequence_num for m in seen] == [1, 2, 3, 4]
        assert seen[0].headers == {"n": "0"} and seen[0].delivery_count == 1
        assert await seen[0].ack() is True
        assert await seen[0].ack() is False  # done already
        assert await seen[1].nack(error="try again") is True
        assert await seen[2].extend(60.0) is True
        assert await seen[3].nack() is True
        # nacked messages come first, in order, counted again.
        again = [await a.__anext__(), await a.__anext__()]
        assert [(m.sequence_num, m.delivery_count) for m in again] == [(2, 2), (4, 2)]
        # b does not hold 2 any more: it cannot extend it.
        assert await seen[1].extend() is False
        for message in again:
            await message.ack()
        await seen[2].ack()
        rest = [await b.__anext__(), await b.__anext__()]
        assert [m.data for m in rest] == [4, 5]
        for message in rest:
            await message.ack()
        await client.delete_group(queue, "workers")


async def test_leaving_the_loop_loses_nothing(client):
    queue = await client.create_queue(name="safe")
    await client.append_batch(queue, ["a", "b", "c"])
    async with client.consumer_group(queue, "g", visibility_timeout=0.3, prefetch=2) as worker:
        async for message in worker:
            assert message.data == "a"
            break  # neither a (received) nor b (fetched ahead) is acknowledged
    with pytest.raises(GroupInUseError):
        await client.delete_group(queue, "g")
    with pytest.raises(QueueInUseError):
        await client.delete_queue(queue)
    got = []
    with trio.fail_after(5):
        async with client.consumer_group(queue, "g", wait=0.2) as worker:
            async for message in worker:
                got.append((message.data, message.delivery_count))
                await message.ack()
                if len(got) == 3:
                    break
    # a and b came back after their lease; c was never delivered before.
    assert sorted(got) == [("a", 2), ("b", 2), ("c", 1)]


async def test_consume_with_ack_acknowledges_what_it_delivered_when_the_block_ends(client):
    queue = await client.create_queue()
    await client.append_batch(queue, list(range(5)))
    async with client.consume(queue, max_messages=4, wait=0, ack=True) as messages:
        async for message in messages:
            if message.data == 1:
                break
    rest = []
    async with client.consume(queue, max_messages=10, wait=0, ack=True) as messages:
        async for message in messages:
            rest.append(message.data)
            if message.data == 4:
                break
    assert rest == [2, 3, 4]
    # An exception in the block acknowledges nothing of it: 4 was acknowledged before...
    await client.append(queue, 5)
    with pytest.raises(RuntimeError):
        async with client.consume(queue, wait=0, ack=True) as messages:
            async for message in messages:
                raise RuntimeError(message.data)
    again = await client.read_batch(queue, 10, peek=True)
    assert [m.data for m in again] == [5]


async def test_headers_come_back_with_reads(client):
    queue = await client.create_queue()
    await client.append(queue, 1, headers={"trace": "t-1"})
    await client.append(queue, 2)
    messages = await client.read_batch(queue, 10)
    assert [(m.data, m.headers) for m in messages] == [(1, {"trace": "t-1"}), (2, None)]
    with pytest.raises(TypeError):
        await client.append(queue, 3, headers={"n": 3})  # type: ignore[dict-item]


async def test_a_fenced_producer_keeps_the_duplicate_flag(client):
    queue = await client.create_queue()
    old = client.producer("P-ORDERS", epoch=1)
    assert await old.append(queue, "a") == 1
    assert old.last_duplicate is False
    # The same producer restarted with a higher epoch numbers from 1 again: never a retry.
    new = client.producer("P-ORDERS", epoch=2)
    assert await new.append(queue, "b", headers={"k": "v"}) == 2
    assert new.last_duplicate is False
    with pytest.raises(ProducerFencedError):
        await old.append(queue, "c")
    # A retry the cluster recognises is reported as one.
    retry = client.producer("P-ORDERS", epoch=2)
    assert await retry.append(queue, "b") == 2
    assert (retry.last_duplicate, retry.duplicates) == (True, 1)


def test_the_sync_client_shares_a_group(thread_broker):
    import trio_broker.sync

    with trio_broker.sync.connect([f"127.0.0.1:{thread_broker.port}"], timeout=10) as client:
        queue = client.create_queue(name="sync-jobs")
        assert client.create_queue(name="sync-jobs") == queue
        client.append_batch(queue, ["x", "y"], headers=[{"h": "1"}, None])
        producer = client.producer("P-SYNC", epoch=1)
        producer.append(queue, "z")
        producer2 = client.producer("P-SYNC", epoch=1)
        producer2.append(queue, "z")
        assert producer2.last_duplicate and producer2.duplicates == 1
        got = []
        with client.consumer_group(queue, "g", visibility_timeout=30.0, wait=0.1) as worker:
            for message in worker:
                got.append((message.data, message.headers, message.delivery_count))
                if message.data == "y" and message.delivery_count == 1:
                    assert message.nack() is True
                else:
                    assert message.ack() is True
                if len(got) == 4:
                    break
        assert got == [
            ("x", {"h": "1"}, 1),
            ("y", None, 1),
            ("y", None, 2),
            ("z", None, 1),
        ]  # a nacked message comes again before those never delivered
        client.delete_group(queue, "g", force=True)
        client.delete_queue(queue)
        assert client.forget_position(client.create_queue(name="other")) is False
