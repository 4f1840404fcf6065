"""The single-node broker against the wire contract (../shared/PROTOCOL.md), over real TCP."""

from __future__ import annotations

import re
import struct

import pytest
import trio

from trio_broker import DataDirInUse, IdentityMismatch
from trio_broker._runtime import BrokerConfig, open_broker

from .wire import RawConnection, call, create_queue, frame, request

QUEUE_ID = re.compile(r"Q-[A-Z0-9]{10}")


# -- contract operations and response shapes -------------------------------------------------


async def test_cluster_query_shape(broker):
    response = await call(broker.port, {"operation": "CLUSTER_QUERY", "client_id": "C-ABC123"})
    assert response["status"] == "success"
    assert response["cluster_id"] == broker.cluster_id
    assert re.fullmatch(r"G-[A-Z0-9]{5}", response["cluster_id"])
    assert isinstance(response["cluster_version"], int)
    assert response["self_role"] == "leader"
    assert response["brokers"] == [
        {
            "broker_id": broker.broker_id,
            "host": "127.0.0.1",
            "port": broker.port,
            "role": "leader",
            "status": "active",
        }
    ]


async def test_cluster_query_for_another_cluster_is_refused(broker):
    response = await call(broker.port, {"operation": "CLUSTER_QUERY", "cluster_id": "G-OTHER"})
    assert response["status"] == "error"
    assert response["code"] == "WRONG_CLUSTER"
    assert response["cluster_id"] == broker.cluster_id


async def test_create_queue_id_names_the_cluster(broker):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    assert QUEUE_ID.fullmatch(queue_id)
    assert queue_id[2:7] == broker.cluster_id[2:]
    assert queue_id != await create_queue(broker.port, client_id="C-AAAAA")


async def test_append_numbers_from_one_per_queue(broker):
    q1, q2 = (
        await create_queue(broker.port, client_id="C-AAAAA"),
        await create_queue(broker.port, client_id="C-AAAAA"),
    )
    for expected in (1, 2, 3):
        response = await call(broker.port, {"operation": "APPEND", "queue_name": q1, "data": 42})
        assert response == {"status": "success", "sequence_num": expected}
    response = await call(broker.port, {"operation": "APPEND", "queue_name": q2, "data": 42})
    assert response == {"status": "success", "sequence_num": 1}


@pytest.mark.parametrize(
    "value",
    [
        42,
        -7,
        0,
        1.5,
        1e-300,
        True,
        False,
        None,
        "7",
        "",
        "ünïcödé ☃",
        [1, [2, "x"]],
        {"a": {"b": [None, 1.25]}},
        2**64 - 1,
        -(2**63),
    ],
)
async def test_data_comes_back_exactly_as_appended(broker, value):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": value})
    response = await call(
        broker.port, {"operation": "READ", "queue_name": queue_id, "client_id": "C-READ1"}
    )
    assert response == {"status": "success", "sequence_num": 1, "data": value}
    assert type(response["data"]) is type(value)


async def test_each_client_reads_every_message_once_in_order(broker):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    for i in range(5):
        await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": i * 10})
    for client_id in ("C-ONE01", "C-TWO02"):
        seen = []
        while True:
            r = await call(
                broker.port, {"operation": "READ", "queue_name": queue_id, "client_id": client_id}
            )
            if r.get("message") == "no_messages":
                assert r == {"status": "success", "message": "no_messages"}
                break
            seen.append((r["sequence_num"], r["data"]))
        assert seen == [(i + 1, i * 10) for i in range(5)]


async def test_reading_an_empty_queue_is_not_an_error(broker):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    r = await call(broker.port, {"operation": "READ", "queue_name": queue_id, "client_id": "C-X"})
    assert r == {"status": "success", "message": "no_messages"}


async def test_extra_fields_are_ignored(broker):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    r = await call(
        broker.port,
        {
            "operation": "APPEND",
            "queue_name": queue_id,
            "data": 1,
            "client_id": "C-X",
            "something_new": [1, 2],
        },
    )
    assert r == {"status": "success", "sequence_num": 1}


# -- pipelining --------------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(broker):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    conn = await RawConnection.open(broker.port)
    n = 1000
    requests = []
    for i in range(n):
        requests.append({"operation": "APPEND", "queue_name": queue_id, "data": i})
        if i % 3 == 0:
            requests.append({"operation": "READ", "queue_name": queue_id, "client_id": "C-PIPE1"})
        if i % 100 == 0:
            requests.append({"operation": "NOPE"})
    await conn.send(*requests)
    appended = read = 0
    for req in requests:
        r = await conn.receive()
        assert r is not None
        if req["operation"] == "APPEND":
            appended += 1
            assert r == {"status": "success", "sequence_num": appended}
        elif req["operation"] == "READ":
            read += 1
            assert r == {"status": "success", "sequence_num": read, "data": read - 1}
        else:
            assert r["code"] == "UNKNOWN_OPERATION"
    await conn.aclose()
    # Group commit: far fewer durable transactions than applied commands; and proposal
    # batching: commands that arrived together share log entries.
    stats = broker.statistics()
    assert stats.commands_applied >= appended + read
    assert stats.transactions * 4 < stats.commands_applied
    assert stats.entries_applied * 2 < stats.commands_applied


async def test_grouped_proposals_answer_each_request_with_its_own_result(broker):
    """Pipelined requests share log entries (proposal batching), yet a refused one in a group
    gets its own error while its neighbours are applied."""
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    # A new leader also proposes its own address for the book: let that land first, so that
    # the count below is of these requests' commands only.
    with trio.fail_after(5):
        while broker.broker_id not in broker.addresses:  # noqa: ASYNC110 (a view, no event)
            await trio.sleep(0.01)
    conn = await RawConnection.open(broker.port)
    requests = []
    for i in range(300):
        queue = queue_id if i % 4 else "Q-NOPE0NOPE0"
        requests.append({"operation": "APPEND", "queue_name": queue, "data": i})
    before = broker.statistics()
    await conn.send(*requests)
    expected_seq = 0
    for i in range(300):
        r = await conn.receive()
        if i % 4:
            expected_seq += 1
            assert r == {"status": "success", "sequence_num": expected_seq}
        else:
            assert r["code"] == "QUEUE_NOT_FOUND"
    await conn.aclose()
    after = broker.statistics()
    assert after.commands_applied - before.commands_applied == 300
    assert after.entries_applied - before.entries_applied < 300 // 2
    stored = await broker._worker.run(broker._store.messages, queue_id)
    assert stored == [b"%d" % i for i in range(300) if i % 4]


# -- bad input: each gets the error envelope, and the broker goes on serving ------------------


async def assert_still_serving(broker, queue_id: str, expected_length: int) -> None:
    r = await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": "ok"})
    assert r == {"status": "success", "sequence_num": expected_length + 1}


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        (b"\xff\xfe not utf-8", "BAD_REQUEST", "not valid UTF-8 JSON"),
        (b"{not json", "BAD_REQUEST", "not valid UTF-8 JSON"),
        (b"", "BAD_REQUEST", "not valid UTF-8 JSON"),
        (b"[1, 2]", "BAD_REQUEST", "must be a JSON object"),
        (b'"APPEND"', "BAD_REQUEST", "must be a JSON object"),
        (b"{}", "BAD_REQUEST", 'missing field "operation"'),
        (b'{"operation": 5}', "BAD_REQUEST", '"operation" must be a string'),
        (b'{"operation": "DELETE_EVERYTHING"}', "UNKNOWN_OPERATION", "unknown operation"),
        (b'{"operation": "APPEND", "data": 1}', "BAD_REQUEST", "queue_name"),
        (b'{"operation": "APPEND", "queue_name": "Q-X"}', "BAD_REQUEST", "$.data"),
        (b'{"operation": "READ", "queue_name": "Q-X"}', "BAD_REQUEST", "$.client_id"),
        (
            b'{"operation": "READ", "queue_name": "Q-X", "client_id": 7}',
            "BAD_REQUEST",
            "expected a string, got int @ $.client_id",
        ),
        (
            b'{"operation": "READ", "queue_name": "Q-X", "client_id": ""}',
            "BAD_REQUEST",
            "client_id",
        ),
        (b'{"operation": "APPEND", "queue_name": ["Q"], "data": 1}', "BAD_REQUEST", "$.queue_name"),
        (b'{"operation": "CREATE_QUEUE", "client_id": {"a": 1}}', "BAD_REQUEST", "$.client_id"),
        (
            b'{"operation": "APPEND", "queue_name": "Q-X", "data": 123456789012345678901234567}',
            "BAD_REQUEST",
            "outside the range",
        ),
        (
            b'{"operation": "APPEND", "queue_name": "Q-X", "data": NaN}',
            "BAD_REQUEST",
            "not valid UTF-8 JSON",
        ),
    ],
)
async def test_bad_request_gets_error_envelope_and_changes_nothing(broker, payload, code, fragment):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": 1})
    conn = await RawConnection.open(broker.port)
    await conn.send_raw(frame(payload))
    r = await conn.receive()
    assert r is not None and r["status"] == "error"
    assert r["code"] == code
    assert fragment in r["message"]
    # The same connection goes on serving.
    r = await conn.call({"operation": "READ", "queue_name": queue_id, "client_id": "C-BAD01"})
    assert r == {"status": "success", "sequence_num": 1, "data": 1}
    await conn.aclose()
    await assert_still_serving(broker, queue_id, 1)


async def test_unknown_queue_is_an_error(broker):
    for op in (
        {"operation": "APPEND", "queue_name": "Q-NOPE", "data": 1},
        {"operation": "READ", "queue_name": "Q-NOPE", "client_id": "C-X"},
    ):
        r = await call(broker.port, op)
        assert r["status"] == "error"
        assert r["code"] == "QUEUE_NOT_FOUND"
        assert "Q-NOPE" in r["message"]


async def test_oversized_data_is_refused(tmp_path):
    config = BrokerConfig(data_dir=tmp_path, port=0, max_frame=4096)
    async with open_broker(config) as broker:
        queue_id = await create_queue(broker.port, client_id="C-AAAAA")
        r = await call(
            broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 4000}
        )
        assert r["code"] == "TOO_LARGE"
        await assert_still_serving(broker, queue_id, 0)


async def test_length_prefix_beyond_maximum_answers_then_closes(tmp_path):
    config = BrokerConfig(data_dir=tmp_path, port=0, max_frame=4096)
    async with open_broker(config) as broker:
        queue_id = await create_queue(broker.port, client_id="C-AAAAA")
        conn = await RawConnection.open(broker.port)
        await conn.send_raw(struct.pack(">I", 4097) + b"x" * 100)
        r = await conn.receive()
        assert r is not None and r["code"] == "TOO_LARGE"
        assert await conn.receive() is None  # the stream cannot be resynchronised: closed
        await conn.aclose()
        await assert_still_serving(broker, queue_id, 0)


async def test_length_prefix_beyond_bytes_sent_then_close(broker):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    conn = await RawConnection.open(broker.port)
    # Promise 100 bytes of an APPEND, send 20, then go away: nothing may be appended.
    await conn.send_raw(struct.pack(">I", 100) + request({"operation": "APPEND"})[4:24])
    await conn.aclose()
    await assert_still_serving(broker, queue_id, 0)


async def test_connection_closed_mid_header(broker):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    conn = await RawConnection.open(broker.port)
    await conn.send_raw(b"\x00\x00")
    await conn.aclose()
    await assert_still_serving(broker, queue_id, 0)


async def test_byte_at_a_time_delivery(broker):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    conn = await RawConnection.open(broker.port)
    data = request({"operation": "APPEND", "queue_name": queue_id, "data": [1, 2]})
    for i in range(len(data)):
        await conn.send_raw(data[i : i + 1])
    assert await conn.receive() == {"status": "success", "sequence_num": 1}
    await conn.aclose()


async def test_thousands_of_idle_connections(broker):
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    idle = []
    try:
        for _ in range(2000):
            idle.append(await trio.open_tcp_stream("127.0.0.1", broker.port))
        await assert_still_serving(broker, queue_id, 0)
    finally:
        for stream in idle:
            await stream.aclose()


async def test_connections_beyond_the_limit_are_refused_with_an_error(tmp_path):
    async with open_broker(BrokerConfig(data_dir=tmp_path, port=0, max_connections=3)) as broker:
        held = [await RawConnection.open(broker.port) for _ in range(3)]
        # Make sure the broker has accepted all three before the fourth arrives.
        for conn in held:
            assert (await conn.call({"operation": "CLUSTER_QUERY"}))["status"] == "success"
        extra = await RawConnection.open(broker.port)
        r = await extra.receive()
        assert r is not None and r["code"] == "UNAVAILABLE"
        assert await extra.receive() is None
        await extra.aclose()
        await held.pop().aclose()
        with trio.fail_after(5):
            while True:  # the freed slot is usable once the broker has noticed the close
                conn = await RawConnection.open(broker.port)
                r = await conn.call({"operation": "CLUSTER_QUERY"})
                await conn.aclose()
                if r["status"] == "success":
                    break
                await trio.sleep(0.01)
        for conn in held:
            await conn.aclose()


# -- restarts, identity, and the data directory ------------------------------------------------


async def test_restart_keeps_identity_queues_messages_and_positions(tmp_path):
    config = BrokerConfig(data_dir=tmp_path, port=0)
    async with open_broker(config) as broker:
        identity = (broker.broker_id, broker.cluster_id)
        queue_id = await create_queue(broker.port, client_id="C-AAAAA")
        for i in range(3):
            await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": i})
        await call(broker.port, {"operation": "READ", "queue_name": queue_id, "client_id": "C-R"})
    async with open_broker(config) as broker:
        assert (broker.broker_id, broker.cluster_id) == identity
        r = await call(
            broker.port, {"operation": "READ", "queue_name": queue_id, "client_id": "C-R"}
        )
        assert r == {"status": "success", "sequence_num": 2, "data": 1}
        r = await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": 9})
        assert r == {"status": "success", "sequence_num": 4}


async def test_given_ids_are_used_and_then_enforced(tmp_path):
    config = BrokerConfig(data_dir=tmp_path, port=0, broker_id="B-AAAAA", cluster_id="G-XYZ78")
    async with open_broker(config) as broker:
        assert (broker.broker_id, broker.cluster_id) == ("B-AAAAA", "G-XYZ78")
        assert (await create_queue(broker.port, client_id="C-AAAAA")).startswith("Q-XYZ78")
    with pytest.raises(IdentityMismatch, match="G-XYZ78"):
        async with open_broker(BrokerConfig(data_dir=tmp_path, port=0, cluster_id="G-OTHER")):
            pass


async def test_second_broker_on_the_same_data_dir_is_refused(broker, broker_config):
    with pytest.raises(DataDirInUse, match="in use by another broker"):
        async with open_broker(broker_config):
            pass
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    await assert_still_serving(broker, queue_id, 0)


def test_malformed_ids_in_config_are_refused(tmp_path):
    with pytest.raises(ValueError, match="broker_id"):
        BrokerConfig(data_dir=tmp_path, broker_id="broker-1")
    with pytest.raises(ValueError, match="seed"):
        BrokerConfig(data_dir=tmp_path, seeds=["no-port"])


# -- shutdown ----------------------------------------------------------------------------------


async def test_shutdown_answers_requests_in_flight(tmp_path):
    config = BrokerConfig(data_dir=tmp_path, port=0)
    async with open_broker(config) as broker:
        queue_id = await create_queue(broker.port, client_id="C-AAAAA")
        conn = await RawConnection.open(broker.port)
        n = 300
        await conn.send(
            *[{"operation": "APPEND", "queue_name": queue_id, "data": i} for i in range(n)]
        )
        # Once the first answer is back the broker is reading them; shut down now.
        first = await conn.receive()
    answered = [first]
    while (r := await conn.receive()) is not None:
        answered.append(r)
    await conn.aclose()
    # Every request the broker read was answered: applied ones with success, in order, then
    # possibly some refused as UNAVAILABLE (read after shutdown began, and not applied).
    applied = [r for r in answered if r["status"] == "success"]
    assert applied == [{"status": "success", "sequence_num": i + 1} for i in range(len(applied))]
    assert all(r["code"] == "UNAVAILABLE" for r in answered[len(applied) :])
    async with open_broker(config) as broker:
        r = await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": 0})
        assert r["sequence_num"] == len(applied) + 1


async def test_a_failed_commit_costs_the_request_not_the_broker(broker):
    """A storage failure mid-transaction: the request's outcome is unknown, the broker
    rebuilds its consensus state from disk and goes on serving."""
    queue_id = await create_queue(broker.port, client_id="C-AAAAA")
    store = broker.driver._store
    real_save = store.save
    failures = []

    def failing_save(**kwargs):
        if kwargs.get("entries") and not failures:
            failures.append(kwargs)
            raise OSError("disk on fire")
        return real_save(**kwargs)

    store.save = failing_save
    r = await call(broker.port, {"operation": "APPEND", "queue_name": queue_id, "data": "lost"})
    assert r["status"] == "error"
    assert r["code"] == "UNAVAILABLE"
    assert r["outcome"] == "unknown"
    assert failures
    with trio.fail_after(10):
        await broker.driver.wait_leading()
    await assert_still_serving(broker, queue_id, 0)
