"""Work queues over the wire, on one broker: every operation of docs/protocol.md's "Work
queues" and its bad inputs (the error envelope, and nothing changed)."""

from __future__ import annotations

import pytest
import trio

from trio_broker._runtime import BrokerConfig, open_broker

from .wire import ManualClock, RawConnection, append, call, create_queue

DEADLINE = 20


@pytest.fixture
def clock():
    return ManualClock(1_000_000.0)


@pytest.fixture
async def broker(tmp_path, clock):
    config = BrokerConfig(data_dir=tmp_path / "broker", port=0, wall_clock=clock)
    with trio.fail_after(DEADLINE):
        async with open_broker(config) as broker:
            yield broker


async def ok(port: int, obj) -> dict:
    response = await call(port, obj)
    assert response["status"] == "success", response
    return response


async def error(port: int, obj, code: str) -> str:
    response = await call(port, obj)
    assert response["status"] == "error", response
    assert response["code"] == code, response
    return response["message"]


def op(operation: str, /, **fields):
    return {"operation": operation, **fields}


async def test_a_named_queue_is_created_once_and_resolves(broker):
    first = await ok(broker.port, op("CREATE_QUEUE", name="orders", client_id="C-1"))
    again = await ok(broker.port, op("CREATE_QUEUE", name="orders"))
    assert first["created"] is True and again["created"] is False
    assert first["queue_id"] == again["queue_id"] and first["queue_id"].startswith("Q-")
    assert await ok(broker.port, op("RESOLVE_QUEUE", name="orders")) == {
        "status": "success",
        "queue_id": first["queue_id"],
        "name": "orders",
    }
    # Every operation that takes a queue takes its name.
    seq = (await ok(broker.port, op("APPEND", queue_name="orders", data={"n": 1})))["sequence_num"]
    read = await ok(broker.port, op("READ", queue_name="orders", client_id="C-1"))
    assert (read["sequence_num"], read["data"]) == (seq, {"n": 1})
    # A queue of the original design keeps its generated id and its behaviour.
    plain = await create_queue(broker.port)
    assert await append(broker.port, plain, 1) == 1


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (op("CREATE_QUEUE", name="Q-orders"), "BAD_REQUEST"),
        (op("CREATE_QUEUE", name="has space"), "BAD_REQUEST"),
        (op("CREATE_QUEUE", name=""), "BAD_REQUEST"),
        (op("CREATE_QUEUE", name="ok", colour="red"), "BAD_REQUEST"),
        (op("RESOLVE_QUEUE", name="nothing"), "QUEUE_NOT_FOUND"),
        (op("RESOLVE_QUEUE", name="Q-AAAAABBBBB"), "BAD_REQUEST"),
        (op("APPEND", queue_name="nothing", data=1), "QUEUE_NOT_FOUND"),
        (op("DELETE_QUEUE", queue_name="nothing"), "QUEUE_NOT_FOUND"),
        (op("GROUP_JOIN", queue_name="nothing", group="g"), "QUEUE_NOT_FOUND"),
        (op("GROUP_READ", queue_name="orders", group="nope", member="m"), "GROUP_NOT_FOUND"),
        (op("GROUP_JOIN", queue_name="orders", group="bad name"), "BAD_REQUEST"),
        (op("GROUP_JOIN", queue_name="orders", group="g", visibility_ms=0), "BAD_REQUEST"),
        (op("GROUP_JOIN", queue_name="orders", group="g", max_deliveries=2), "BAD_REQUEST"),
        (
            op(
                "GROUP_JOIN",
                queue_name="orders",
                group="g",
                max_deliveries=2,
                dead_letter_queue="orders",
            ),
            "BAD_REQUEST",
        ),
        (op("GROUP_JOIN", queue_name="orders", group="g", visibilty_ms=5), "BAD_REQUEST"),
        (
            op("GROUP_READ", queue_name="orders", group="w", member="m", max_messages=0),
            "BAD_REQUEST",
        ),
        (op("GROUP_READ", queue_name="orders", group="w", member="m", wait_ms=-1), "BAD_REQUEST"),
        (op("GROUP_READ", queue_name="orders", group="w", member=""), "BAD_REQUEST"),
        (op("GROUP_ACK", queue_name="orders", group="w", member="m"), "BAD_REQUEST"),
        (
            op("GROUP_ACK", queue_name="orders", group="w", member="m", sequence_nums=[99]),
            "BAD_REQUEST",
        ),
        (
            op("GROUP_ACK", queue_name="orders", group="w", member="m", ranges=[[3, 1]]),
            "BAD_REQUEST",
        ),
        (
            op("GROUP_NACK", queue_name="orders", group="w", member="m", sequence_nums=[]),
            "BAD_REQUEST",
        ),
        (
            op(
                "GROUP_NACK",
                queue_name="orders",
                group="w",
                member="m",
                sequence_nums=[1],
                delay_ms=-1,
            ),
            "BAD_REQUEST",
        ),
        (
            op(
                "GROUP_EXTEND",
                queue_name="orders",
                group="w",
                member="m",
                sequence_nums=[1],
                visibility_ms=0,
            ),
            "BAD_REQUEST",
        ),
        (op("GROUP_DELETE", queue_name="orders", group="nope"), "GROUP_NOT_FOUND"),
        (op("FORGET_POSITION", queue_name="orders", client_id=""), "BAD_REQUEST"),
        (op("APPEND", queue_name="orders", data=1, headers={"h": 1}), "BAD_REQUEST"),
        (
            op("APPEND", queue_name="orders", data=1, headers={f"h{i}": "v" for i in range(17)}),
            "BAD_REQUEST",
        ),
        (op("APPEND", queue_name="orders", data=1, producer_epoch=1), "BAD_REQUEST"),
        (op("APPEND_BATCH", queue_name="orders", values=[1, 2], headers=[{}]), "BAD_REQUEST"),
        (op("DELETE_QUEUE", queue_name="orders", force="yes"), "BAD_REQUEST"),
        (op("DELETE_QUEUE", queue_name="orders", forced=True), "BAD_REQUEST"),
        (op("RESOLVE_QUEUE"), "BAD_REQUEST"),
        (op("FORGET_POSITION", queue_name="orders"), "BAD_REQUEST"),
        (op("GROUP_DELETE", queue_name="orders", group="w", force=1), "BAD_REQUEST"),
        (
            op("GROUP_READ", queue_name="orders", group="w", member="m", max_messages=1001),
            "BAD_REQUEST",
        ),
        (
            op("GROUP_ACK", queue_name="orders", group="w", member="m", sequence_nums="1"),
            "BAD_REQUEST",
        ),
        (
            op(
                "GROUP_ACK",
                queue_name="orders",
                group="w",
                member="m",
                sequence_nums=list(range(1, 1002)),
            ),
            "BAD_REQUEST",
        ),
        (
            op(
                "GROUP_NACK",
                queue_name="orders",
                group="w",
                member="m",
                sequence_nums=[1],
                error="e" * 1025,
            ),
            "BAD_REQUEST",
        ),
        (
            op("GROUP_EXTEND", queue_name="orders", group="w", member="m", sequence_nums=[0]),
            "BAD_REQUEST",
        ),
        (
            op("GROUP_NACK", queue_name="orders", group="w", member="m", sequence_nums=[-1]),
            "BAD_REQUEST",
        ),
        (
            op("GROUP_JOIN", queue_name="orders", group="w", dead_letter_queue="none"),
            "QUEUE_NOT_FOUND",
        ),
    ],
)
async def test_bad_work_requests_get_the_envelope_and_change_nothing(broker, request_, code):
    queue = await ok(broker.port, op("CREATE_QUEUE", name="orders"))
    await ok(broker.port, op("APPEND", queue_name="orders", data="keep"))
    await ok(broker.port, op("GROUP_JOIN", queue_name="orders", group="w"))
    before = await broker._worker.run(broker._store.messages, queue["queue_id"])
    await error(broker.port, request_, code)
    assert await broker._worker.run(broker._store.messages, queue["queue_id"]) == before
    # The group is as it was: its one message is still there for a member.
    got = await ok(broker.port, op("GROUP_READ", queue_name="orders", group="w", member="x"))
    assert [m["data"] for m in got["messages"]] == ["keep"]


async def test_a_group_shares_the_queue_with_leases_acks_and_redelivery(broker, clock):
    await ok(broker.port, op("CREATE_QUEUE", name="jobs"))
    for i in range(1, 6):
        await ok(broker.port, op("APPEND", queue_name="jobs", data=i, headers={"i": str(i)}))
    joined = await ok(
        broker.port, op("GROUP_JOIN", queue_name="jobs", group="w", visibility_ms=10_000)
    )
    assert (joined["created"], joined["visibility_ms"], joined["max_in_flight"]) == (
        True,
        10_000,
        1000,
    )
    read = lambda member, n: ok(  # noqa: E731
        broker.port, op("GROUP_READ", queue_name="jobs", group="w", member=member, max_messages=n)
    )
    a = await read("a", 2)
    b = await read("b", 2)
    assert [m["sequence_num"] for m in a["messages"]] == [1, 2]
    assert [m["sequence_num"] for m in b["messages"]] == [3, 4]
    assert a["messages"][0] == {
        "sequence_num": 1,
        "data": 1,
        "headers": {"i": "1"},
        "delivery_count": 1,
    }
    assert b["in_flight"] == 4
    # a acknowledges 1, nacks 2 now; b extends 3 and lets 4 expire.
    acked = await ok(
        broker.port, op("GROUP_ACK", queue_name="jobs", group="w", member="a", sequence_nums=[1])
    )
    assert acked["acknowledged"] == 1
    nacked = await ok(
        broker.port,
        op(
            "GROUP_NACK",
            queue_name="jobs",
            group="w",
            member="a",
            sequence_nums=[2, 3],
            error="boom",
        ),
    )
    assert nacked == {"status": "success", "changed": [2], "not_held": [3], "dead_lettered": []}
    clock.now += 5
    extended = await ok(
        broker.port,
        op(
            "GROUP_EXTEND",
            queue_name="jobs",
            group="w",
            member="b",
            sequence_nums=[3],
            visibility_ms=20_000,
        ),
    )
    assert extended["changed"] == [3]
    clock.now += 6  # 4's lease (10 s) has run out; 3's runs to 25 s after its extension
    c = await read("c", 10)
    assert [(m["sequence_num"], m["delivery_count"]) for m in c["messages"]] == [
        (2, 2),
        (4, 2),
        (5, 1),
    ]
    # b's late ack of 4 still completes it (its work was done); c's later one completes nothing.
    late = await ok(
        broker.port, op("GROUP_ACK", queue_name="jobs", group="w", member="b", ranges=[[3, 4]])
    )
    assert late["acknowledged"] == 2
    again = await ok(
        broker.port, op("GROUP_ACK", queue_name="jobs", group="w", member="c", sequence_nums=[4])
    )
    assert again["acknowledged"] == 0
    # An acknowledged message is never delivered to the group again.
    clock.now += 100
    d = await read("d", 10)
    assert [m["sequence_num"] for m in d["messages"]] == [2, 5]


async def test_the_leader_expires_leases_and_dead_letters_without_readers(broker, clock):
    await ok(broker.port, op("CREATE_QUEUE", name="dlq"))
    await ok(broker.port, op("CREATE_QUEUE", name="work"))
    await ok(broker.port, op("APPEND", queue_name="work", data="poison"))
    await ok(
        broker.port,
        op(
            "GROUP_JOIN",
            queue_name="work",
            group="w",
            visibility_ms=1000,
            max_deliveries=1,
            dead_letter_queue="dlq",
        ),
    )
    got = await ok(broker.port, op("GROUP_READ", queue_name="work", group="w", member="m"))
    assert got["messages"][0]["delivery_count"] == 1
    clock.now += 2
    # Nobody reads the group: the leader's ExpireLeases moves the message all the same.
    with trio.fail_after(10):
        while True:
            read = await call(
                broker.port, op("READ", queue_name="dlq", client_id="C-1", max_messages=5)
            )
            if read.get("messages"):
                break
            await trio.sleep(0.05)
    [message] = read["messages"]
    assert message["data"] == "poison"
    assert message["headers"]["dlq-group"] == "w"
    assert message["headers"]["dlq-delivery-count"] == "1"
    assert message["headers"]["dlq-last-error"] == "lease expired"
    empty = await ok(broker.port, op("GROUP_READ", queue_name="work", group="w", member="m"))
    assert (empty["messages"], empty["in_flight"]) == ([], 0)
    # The dead-letter queue is in use: it cannot be deleted, even by force.
    message = await error(
        broker.port, op("DELETE_QUEUE", queue_name="dlq", force=True), "QUEUE_IN_USE"
    )
    assert "'w'" in message


async def test_a_long_polling_group_read_wakes_on_an_append_and_on_a_nack(broker):
    await ok(broker.port, op("CREATE_QUEUE", name="jobs"))
    await ok(broker.port, op("GROUP_JOIN", queue_name="jobs", group="w"))
    waiter = await RawConnection.open(broker.port)
    try:
        await waiter.send(
            op("GROUP_READ", queue_name="jobs", group="w", member="a", wait_ms=30_000)
        )
        await trio.sleep(0.2)
        await ok(broker.port, op("APPEND", queue_name="jobs", data="x"))
        with trio.fail_after(5):
            got = await waiter.receive()
        assert [m["data"] for m in got["messages"]] == ["x"]
        await waiter.send(
            op("GROUP_READ", queue_name="jobs", group="w", member="b", wait_ms=30_000)
        )
        await trio.sleep(0.2)
        await ok(
            broker.port,
            op("GROUP_NACK", queue_name="jobs", group="w", member="a", sequence_nums=[1]),
        )
        with trio.fail_after(5):
            got = await waiter.receive()
        assert [(m["data"], m["delivery_count"]) for m in got["messages"]] == [("x", 2)]
    finally:
        await waiter.aclose()


async def test_deleting_a_queue_and_a_group(broker, clock):
    queue_id = (await ok(broker.port, op("CREATE_QUEUE", name="gone")))["queue_id"]
    await ok(broker.port, op("APPEND", queue_name="gone", data=1))
    await ok(broker.port, op("GROUP_JOIN", queue_name="gone", group="w"))
    await ok(broker.port, op("GROUP_READ", queue_name="gone", group="w", member="m"))
    message = await error(
        broker.port, op("GROUP_DELETE", queue_name="gone", group="w"), "GROUP_IN_USE"
    )
    assert "1" in message
    await error(broker.port, op("DELETE_QUEUE", queue_name="gone"), "QUEUE_IN_USE")
    assert await ok(broker.port, op("DELETE_QUEUE", queue_name="gone", force=True)) == {
        "status": "success",
        "queue_id": queue_id,
    }
    for request in (
        op("APPEND", queue_name=queue_id, data=1),
        op("APPEND", queue_name="gone", data=1),
        op("RESOLVE_QUEUE", name="gone"),
        op("GROUP_READ", queue_name=queue_id, group="w", member="m"),
    ):
        await error(broker.port, request, "QUEUE_NOT_FOUND")
    again = await ok(broker.port, op("CREATE_QUEUE", name="gone"))
    assert again["created"] and again["queue_id"] != queue_id
    await ok(broker.port, op("GROUP_JOIN", queue_name="gone", group="w"))
    assert await ok(broker.port, op("GROUP_DELETE", queue_name="gone", group="w")) == {
        "status": "success",
        "queue_id": again["queue_id"],
        "group": "w",
    }


async def test_forgetting_a_position(broker):
    await ok(broker.port, op("CREATE_QUEUE", name="log"))
    for i in range(3):
        await ok(broker.port, op("APPEND", queue_name="log", data=i))
    await ok(broker.port, op("READ", queue_name="log", client_id="C-1", max_messages=2))
    assert await ok(broker.port, op("FORGET_POSITION", queue_name="log", client_id="C-1")) == {
        "status": "success",
        "existed": True,
    }
    again = await ok(broker.port, op("READ", queue_name="log", client_id="C-1", max_messages=5))
    assert [m["data"] for m in again["messages"]] == [0, 1, 2]
    assert (await ok(broker.port, op("FORGET_POSITION", queue_name="log", client_id="C-2")))[
        "existed"
    ] is False


async def test_idle_positions_are_forgotten_when_the_operator_says(tmp_path, clock):
    config = BrokerConfig(
        data_dir=tmp_path / "b", port=0, wall_clock=clock, forget_idle_positions=0.2
    )
    with trio.fail_after(DEADLINE):
        async with open_broker(config) as broker:
            await ok(broker.port, op("CREATE_QUEUE", name="log"))
            await ok(broker.port, op("APPEND", queue_name="log", data=1))
            await ok(broker.port, op("READ", queue_name="log", client_id="C-1"))
            while await broker._worker.run(broker._store.positions):
                clock.now += 0.1
                await trio.sleep(0.05)
            # Forgotten: C-1 reads from the start again.
            read = await ok(broker.port, op("READ", queue_name="log", client_id="C-1"))
            assert read["data"] == 1


async def test_headers_and_fenced_producers(broker):
    await ok(broker.port, op("CREATE_QUEUE", name="h"))
    first = await ok(
        broker.port,
        op(
            "APPEND",
            queue_name="h",
            data=1,
            headers={"t": "a"},
            producer_id="P",
            producer_epoch=1,
            producer_seq=1,
        ),
    )
    assert first == {"status": "success", "sequence_num": 1}
    retry = await ok(
        broker.port,
        op(
            "APPEND",
            queue_name="h",
            data=1,
            headers={"t": "a"},
            producer_id="P",
            producer_epoch=1,
            producer_seq=1,
        ),
    )
    assert retry == {"status": "success", "sequence_num": 1, "duplicate": True}
    # A restarted producer takes a higher epoch and numbers afresh: never taken for a retry.
    restarted = await ok(
        broker.port,
        op(
            "APPEND_BATCH",
            queue_name="h",
            values=[2, 3],
            headers=[{"t": "b"}, {}],
            producer_id="P",
            producer_epoch=2,
            producer_seq=1,
        ),
    )
    assert restarted == {"status": "success", "sequence_nums": [2, 3]}
    await error(
        broker.port,
        op("APPEND", queue_name="h", data=9, producer_id="P", producer_epoch=1, producer_seq=2),
        "PRODUCER_FENCED",
    )
    read = await ok(broker.port, op("READ", queue_name="h", client_id="C", max_messages=10))
    assert read["messages"] == [
        {"sequence_num": 1, "data": 1, "headers": {"t": "a"}},
        {"sequence_num": 2, "data": 2, "headers": {"t": "b"}},
        {"sequence_num": 3, "data": 3},
    ]
    # Without headers, the READ answer keeps its original shape.
    await ok(broker.port, op("APPEND", queue_name="h", data=4))
    plain = await ok(broker.port, op("READ", queue_name="h", client_id="C", max_messages=10))
    assert plain["messages"] == [{"sequence_num": 4, "data": 4}]


async def test_the_group_limit_is_limit_reached(broker):
    await ok(broker.port, op("CREATE_QUEUE", name="many"))
    conn = await RawConnection.open(broker.port)
    try:
        for i in range(64):
            assert (await conn.call(op("GROUP_JOIN", queue_name="many", group=f"g{i}")))[
                "status"
            ] == "success"
        refused = await conn.call(op("GROUP_JOIN", queue_name="many", group="g64"))
        assert refused["code"] == "LIMIT_REACHED"
    finally:
        await conn.aclose()
