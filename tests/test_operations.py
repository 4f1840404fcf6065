"""Operations added to the original contract: batches, idempotent producers, batch and
long-poll reads, at-least-once consumption, seek, queue listing (docs/protocol.md)."""

from __future__ import annotations

import pytest
import trio

from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker.testing import open_local_cluster

from .wire import RawConnection, call, create_queue


def append(q: str, data, **extra) -> dict:
    return {"operation": "APPEND", "queue_name": q, "data": data, **extra}


def read(q: str, client: str = "C-READ1", **extra) -> dict:
    return {"operation": "READ", "queue_name": q, "client_id": client, **extra}


async def test_batch_append_is_atomic_and_numbered_consecutively(broker):
    q = await create_queue(broker.port)
    await call(broker.port, append(q, "first"))
    r = await call(
        broker.port,
        {"operation": "APPEND_BATCH", "queue_name": q, "values": [1, "two", {"three": 3}, None]},
    )
    assert r == {"status": "success", "sequence_nums": [2, 3, 4, 5]}
    r = await call(broker.port, read(q, max_messages=10))
    assert [m["data"] for m in r["messages"]] == ["first", 1, "two", {"three": 3}, None]
    assert [m["sequence_num"] for m in r["messages"]] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("values", "code"),
    [
        ([], "BAD_REQUEST"),
        (list(range(1001)), "BAD_REQUEST"),
        ("abc", "BAD_REQUEST"),
        (["x" * 600] * 10, "TOO_LARGE"),
    ],
)
async def test_bad_batches_are_refused_whole(tmp_path, values, code):
    async with open_broker(BrokerConfig(data_dir=tmp_path, port=0, max_frame=4096)) as broker:
        q = await create_queue(broker.port)
        r = await call(
            broker.port, {"operation": "APPEND_BATCH", "queue_name": q, "values": values}
        )
        assert r["code"] == code
        assert (await call(broker.port, append(q, 0)))["sequence_num"] == 1


async def test_an_idempotent_producer_retry_is_not_stored_twice(broker):
    q = await create_queue(broker.port)
    first = await call(broker.port, append(q, "a", producer_id="P-1", producer_seq=1))
    assert first == {"status": "success", "sequence_num": 1}
    again = await call(broker.port, append(q, "a", producer_id="P-1", producer_seq=1))
    assert again == {"status": "success", "sequence_num": 1, "duplicate": True}
    assert (await call(broker.port, append(q, "b", producer_id="P-1", producer_seq=2))) == {
        "status": "success",
        "sequence_num": 2,
    }
    gap = await call(broker.port, append(q, "c", producer_id="P-1", producer_seq=4))
    assert gap["code"] == "OUT_OF_ORDER_SEQUENCE"
    batch = {
        "operation": "APPEND_BATCH",
        "queue_name": q,
        "values": [7, 8],
        "producer_id": "P-1",
        "producer_seq": 3,
    }
    assert (await call(broker.port, batch))["sequence_nums"] == [3, 4]
    assert (await call(broker.port, batch)) == {
        "status": "success",
        "sequence_nums": [3, 4],
        "duplicate": True,
    }
    half = await call(broker.port, append(q, "x", producer_id="P-1"))
    assert half["code"] == "BAD_REQUEST"
    r = await call(broker.port, read(q, max_messages=100))
    assert [m["data"] for m in r["messages"]] == ["a", "b", 7, 8]


async def test_idempotent_producing_survives_leader_failover(tmp_path):
    """The dedup state is replicated: a retry sent to the next leader is recognised."""
    with trio.fail_after(30):
        async with open_local_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            q = await create_queue(leader.port)
            r = await call(leader.port, append(q, "once", producer_id="P-F", producer_seq=7))
            assert r["sequence_num"] == 1
            await cluster.stop(cluster.name_of(leader))
            new_leader = await cluster.wait_for_leader()
            r = await call(new_leader.port, append(q, "once", producer_id="P-F", producer_seq=7))
            assert r == {"status": "success", "sequence_num": 1, "duplicate": True}
            r = await call(new_leader.port, read(q, max_messages=10))
            assert [m["data"] for m in r["messages"]] == ["once"]


async def test_batch_reads_move_the_position_past_what_they_return(broker):
    q = await create_queue(broker.port)
    for i in range(5):
        await call(broker.port, append(q, i))
    r = await call(broker.port, read(q, max_messages=3))
    assert r == {
        "status": "success",
        "messages": [
            {"sequence_num": 1, "data": 0},
            {"sequence_num": 2, "data": 1},
            {"sequence_num": 3, "data": 2},
        ],
    }
    r = await call(broker.port, read(q, max_messages=3))
    assert [m["sequence_num"] for m in r["messages"]] == [4, 5]
    assert await call(broker.port, read(q, max_messages=3)) == {"status": "success", "messages": []}
    # The original READ shares the position.
    assert (await call(broker.port, read(q)))["message"] == "no_messages"


async def test_batch_reads_stop_before_the_answer_outgrows_a_frame(tmp_path):
    async with open_broker(BrokerConfig(data_dir=tmp_path, port=0, max_frame=4096)) as broker:
        q = await create_queue(broker.port)
        for i in range(10):
            await call(broker.port, append(q, str(i) * 1000))
        seen = []
        while True:
            r = await call(broker.port, read(q, max_messages=10))
            if not r["messages"]:
                break
            assert 1 <= len(r["messages"]) <= 3
            seen += [m["sequence_num"] for m in r["messages"]]
        assert seen == list(range(1, 11))


async def test_at_least_once_peek_then_ack(broker):
    """A consumer that fails before acknowledging gets the same messages again."""
    q = await create_queue(broker.port)
    for i in range(4):
        await call(broker.port, append(q, i))
    first = await call(broker.port, read(q, "C-WORKR", max_messages=2, mode="peek"))
    assert [m["sequence_num"] for m in first["messages"]] == [1, 2]
    again = await call(broker.port, read(q, "C-WORKR", max_messages=2, mode="peek"))
    assert again == first
    ack = {"operation": "ACK", "queue_name": q, "client_id": "C-WORKR", "sequence_num": 2}
    assert await call(broker.port, ack) == {"status": "success", "next_sequence_num": 3}
    after = await call(broker.port, read(q, "C-WORKR", max_messages=5, mode="peek"))
    assert [m["sequence_num"] for m in after["messages"]] == [3, 4]
    # Acknowledging an earlier message never moves the position back.
    ack_old = dict(ack, sequence_num=1)
    assert await call(broker.port, ack_old) == {"status": "success", "next_sequence_num": 3}
    beyond = await call(broker.port, dict(ack, sequence_num=5))
    assert beyond["code"] == "BAD_REQUEST"
    assert (await call(broker.port, read(q, "C-WORKR")))["sequence_num"] == 3


async def test_seek_replays_or_skips(broker):
    q = await create_queue(broker.port)
    for i in range(3):
        await call(broker.port, append(q, i))
    seek = {"operation": "SEEK", "queue_name": q, "client_id": "C-SEEK1"}
    assert await call(broker.port, dict(seek, to="end")) == {
        "status": "success",
        "next_sequence_num": 4,
    }
    assert (await call(broker.port, read(q, "C-SEEK1")))["message"] == "no_messages"
    assert (await call(broker.port, dict(seek, next_sequence_num=2)))["next_sequence_num"] == 2
    assert (await call(broker.port, read(q, "C-SEEK1")))["data"] == 1
    assert (await call(broker.port, dict(seek, to="start")))["next_sequence_num"] == 1
    assert (await call(broker.port, read(q, "C-SEEK1")))["data"] == 0
    for bad in (
        dict(seek, next_sequence_num=9),
        dict(seek),
        dict(seek, to="middle"),
        dict(seek, to="end", next_sequence_num=1),
    ):
        assert (await call(broker.port, bad))["code"] == "BAD_REQUEST"


async def test_long_poll_read_waits_for_the_next_append(broker):
    q = await create_queue(broker.port)
    reader = await RawConnection.open(broker.port)
    await reader.send(read(q, wait_ms=5000))
    with trio.move_on_after(0.2) as waited:
        await reader.receive()
    assert waited.cancelled_caught, "the read answered while the queue was empty"
    await call(broker.port, append(q, "late"))  # ends the wait
    with trio.fail_after(5):
        r = await reader.receive()
    assert r == {"status": "success", "sequence_num": 1, "data": "late"}
    # With nothing coming, the wait ends after wait_ms with the usual empty answer.
    start = trio.current_time()
    await reader.send(read(q, wait_ms=300, max_messages=5))
    r = await reader.receive()
    assert r == {"status": "success", "messages": []}
    assert trio.current_time() - start >= 0.3
    await reader.aclose()
    r = await call(broker.port, read(q, wait_ms=60_001))
    assert r["code"] == "BAD_REQUEST"


async def test_list_queues_with_lengths_and_client_lag(broker):
    queues = sorted([await create_queue(broker.port) for _ in range(3)])
    for i, q in enumerate(queues):
        for _ in range(i + 1):
            await call(broker.port, append(q, "x"))
    await call(broker.port, read(queues[2], "C-SLOW1"))
    await call(broker.port, read(queues[2], "C-FAST1", max_messages=3))
    r = await call(broker.port, {"operation": "LIST_QUEUES", "max_queues": 2})
    assert [(q["queue_id"], q["length"]) for q in r["queues"]] == [(queues[0], 1), (queues[1], 2)]
    assert r["next_after"] == queues[1]
    r = await call(broker.port, {"operation": "LIST_QUEUES", "after": r["next_after"]})
    (last,) = r["queues"]
    assert r["next_after"] is None
    assert last == {
        "queue_id": queues[2],
        "length": 3,
        "clients": [
            {"client_id": "C-SLOW1", "next_sequence_num": 2, "lag": 2},
            {"client_id": "C-FAST1", "next_sequence_num": 4, "lag": 0},
        ],
        # Additions: what retention has left (everything, without a policy).
        "first_sequence_num": 1,
        "retained": 3,
        "retention": None,
    }
    r = await call(broker.port, {"operation": "LIST_QUEUES", "max_queues": 0})
    assert r["code"] == "BAD_REQUEST"
