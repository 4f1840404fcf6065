"""The trio client library, against a real in-process broker and small scripted fake brokers."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import attrs
import orjson
import pytest
import trio
import trio.testing

from trio_broker._client._connection import Connection, Counters
from trio_broker._errors import (
    ERROR_CLASSES,
    BrokerError,
    OutcomeUnknownError,
    QueueNotFoundError,
)
from trio_broker._ids import CLIENT_ID_RE, QUEUE_ID_RE, cluster_of_queue
from trio_broker._protocol import FrameDecoder, encode_frame
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker.client import (
    BrokerUnreachableError,
    Message,
    Topology,
    connect,
    parse_address,
)
from trio_broker.testing import open_local_cluster

# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
async def real_broker(ram_path):
    async with open_broker(BrokerConfig(data_dir=ram_path / "client-broker", port=0)) as broker:
        yield broker


def seed_of(broker) -> str:
    return f"127.0.0.1:{broker.port}"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CLOSE = object()
"""What a fake broker's script returns to close the connection instead of answering."""

Script = Callable[[dict[str, Any]], Awaitable[Any]]


class FakeBroker:
    """A tiny broker speaking the wire format, answering with a script.

    Requests are read (and recorded) as soon as they arrive, whatever the script is doing; answers
    go out in request order, one at a time, as the script returns them.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self._arrived = trio.Event()

    def operations(self) -> list[str]:
        return [r["operation"] for r in self.requests]

    async def wait_requests(self, count: int) -> None:
        while len(self.requests) < count:
            await self._arrived.wait()

    async def handle(self, stream: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)

        async def answer(cancel_scope: trio.CancelScope) -> None:
            async for request in receive:
                reply = await self.script(request)
                if reply is CLOSE:
                    cancel_scope.cancel()
                    return
                await stream.send_all(encode_frame(orjson.dumps(reply)))

        try:
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(answer, nursery.cancel_scope)
                decoder = FrameDecoder()
                while data := await stream.receive_some(65536):
                    decoder.feed(data)
                    while (payload := decoder.next_frame()) is not None:
                        request = orjson.loads(payload)
                        self.requests.append(request)
                        self._arrived.set()
                        self._arrived = trio.Event()
                        send.send_nowait(request)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def open_fake_broker(script: Script) -> AsyncIterator[FakeBroker]:
    fake = FakeBroker(script)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
        fake.port = listeners[0].socket.getsockname()[1]
        yield fake
        nursery.cancel_scope.cancel()


def topology_reply(
    cluster_id: str, brokers: list[tuple[str, int, str]], self_id: str
) -> dict[str, Any]:
    """A CLUSTER_QUERY answer; ``brokers`` are (broker_id, port, role) on 127.0.0.1."""
    (self_role,) = [role for broker_id, _, role in brokers if broker_id == self_id]
    return {
        "status": "success",
        "cluster_id": cluster_id,
        "cluster_version": 7,
        "self_role": self_role,
        "brokers": [
            {"broker_id": b, "host": "127.0.0.1", "port": p, "role": r, "status": "active"}
            for b, p, r in brokers
        ],
    }


FAKE_CLUSTER = "G-FAKE1"
FAKE_ID = "B-FAKE1"


def self_leader_script(on_write: Script) -> Script:
    """A fake that says it leads its own cluster and hands every other request to ``on_write``."""

    async def script(request: dict[str, Any]) -> Any:
        if request["operation"] == "CLUSTER_QUERY":
            return topology_reply(FAKE_CLUSTER, [(FAKE_ID, fake_port[0], "leader")], FAKE_ID)
        return await on_write(request)

    fake_port = [0]
    script.fake_port = fake_port  # type: ignore[attr-defined]
    return script


@asynccontextmanager
async def open_self_leader_fake(on_write: Script) -> AsyncIterator[FakeBroker]:
    script = self_leader_script(on_write)
    async with open_fake_broker(script) as fake:
        script.fake_port[0] = fake.port  # type: ignore[attr-defined]
        yield fake


def same_json(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON type all the way down (1 != 1.0 != True here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a == 0:
        return math.copysign(1, a) == math.copysign(1, b)
    return a == b


async def read_concurrently(seed: str, queue_id: str, count: int) -> dict[int, Any]:
    """Read a queue of ``count`` messages with ``count`` concurrent (pipelined) READs of a new
    client: each moves that client's position by one, so together they return every message
    once. Returns {sequence_num: data}."""
    messages: list[Message | None] = []
    async with connect([seed]) as reader:

        async def read_one() -> None:
            messages.append(await reader.read(queue_id))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(read_one)
        assert await reader.read(queue_id) is None
    assert None not in messages
    stored = {m.sequence_num: m.data for m in messages}
    assert len(stored) == count
    return stored


# -- topology and the operations -----------------------------------------------------------------


async def test_discovers_topology_and_every_operation_has_its_shape(real_broker):
    async with connect([seed_of(real_broker)]) as client:
        assert CLIENT_ID_RE.fullmatch(client.client_id)
        assert client.clusters == (real_broker.cluster_id,)

        topology = await client.cluster_query()
        assert isinstance(topology, Topology)
        assert topology.cluster_id == real_broker.cluster_id
        assert isinstance(topology.cluster_version, int)
        assert len(topology.brokers) == 1
        (me,) = topology.brokers
        assert (me.broker_id, me.host, me.port) == (
            real_broker.broker_id,
            "127.0.0.1",
            real_broker.port,
        )
        assert (me.role, me.status) == ("leader", "active")
        assert topology.leader == me
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            topology.leader = None  # type: ignore[misc]
        assert await client.cluster_query(("127.0.0.1", real_broker.port)) == topology

        queue_id = await client.create_queue()
        assert QUEUE_ID_RE.fullmatch(queue_id)
        assert cluster_of_queue(queue_id) == real_broker.cluster_id
        assert await client.create_queue(real_broker.cluster_id) != queue_id

        assert await client.append(queue_id, 42) == 1
        assert await client.append(queue_id, "second") == 2
        assert await client.read(queue_id) == Message(sequence_num=1, data=42)
        assert await client.read(queue_id) == Message(sequence_num=2, data="second")
        assert await client.read(queue_id) is None
        assert await client.read(queue_id) is None

        stats = client.statistics()
        assert stats.open_connections == 1
        assert stats.requests_in_flight == 0
        assert stats.requests_sent == stats.responses_received == 11
        assert stats.known_clusters == 1
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            stats.retries = 1  # type: ignore[misc]


async def test_given_client_id_is_used_for_read_positions(real_broker):
    async with connect([seed_of(real_broker)], client_id="C-TEST1") as client:
        assert client.client_id == "C-TEST1"
        queue_id = await client.create_queue()
        await client.append(queue_id, 1)
        await client.append(queue_id, 2)
        assert (await client.read(queue_id)).sequence_num == 1
    async with connect([seed_of(real_broker)], client_id="C-TEST1") as again:
        assert (await again.read(queue_id)).sequence_num == 2


JSON_VALUES = [
    0,
    -1,
    7,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    1e300,
    2.0,
    True,
    False,
    "7",
    "",
    "ünïcødé ✓ \u0000 \n",
    None,
    [],
    {},
    [1, 1.0, True, "1", None],
    {"a": {"b": [{"c": None}, 1.25, False]}, "": "empty key", "7": 7},
]


async def test_every_json_type_round_trips_exactly(real_broker):
    async with connect([seed_of(real_broker)]) as client:
        queue_id = await client.create_queue()
        for value in JSON_VALUES:
            await client.append(queue_id, value)
        for number, value in enumerate(JSON_VALUES, start=1):
            message = await client.read(queue_id)
            assert message is not None
            assert message.sequence_num == number
            assert same_json(message.data, value), (message.data, value)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (float("nan"), ValueError),
        ([1, {"x": float("inf")}], ValueError),
        (2**64, TypeError),
        ({1: "non-string key"}, TypeError),
        ({"a": {1, 2}}, TypeError),
        (object(), TypeError),
    ],
)
async def test_values_without_an_exact_json_form_are_refused_before_sending(
    real_broker, data, error
):
    async with connect([seed_of(real_broker)]) as client:
        queue_id = await client.create_queue()
        sent = client.statistics().requests_sent
        with pytest.raises(error):
            await client.append(queue_id, data)
        assert client.statistics().requests_sent == sent
        assert await client.read(queue_id) is None


async def test_request_larger_than_max_frame_is_refused_before_sending(real_broker):
    async with connect([seed_of(real_broker)], max_frame=2000) as client:
        queue_id = await client.create_queue()
        sent = client.statistics().requests_sent
        with pytest.raises(BrokerError) as info:
            await client.append(queue_id, "x" * 3000)
        assert info.value.code == "TOO_LARGE"
        assert client.statistics().requests_sent == sent
        assert await client.append(queue_id, "x" * 1000) == 1


# -- pipelining and positions --------------------------------------------------------------------


async def test_500_concurrent_appends_pipeline_on_one_connection(real_broker):
    async with connect([seed_of(real_broker)]) as client:
        queue_id = await client.create_queue()
        acked: dict[int, int] = {}

        async def appender(value: int) -> None:
            acked[value] = await client.append(queue_id, value)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for value in range(500):
                    nursery.start_soon(appender, value)

        assert sorted(acked.values()) == list(range(1, 501))
        assert client.statistics().open_connections == 1
        # Each acknowledgement matches the message stored under that sequence number.
        stored = await read_concurrently(seed_of(real_broker), queue_id, 500)
        assert stored == {seq: value for value, seq in acked.items()}


async def test_in_flight_requests_per_connection_are_bounded():
    gate = trio.Event()

    async def on_write(request):
        await gate.wait()
        return {"status": "success", "sequence_num": 1}

    async with (
        open_self_leader_fake(on_write) as fake,
        connect([("127.0.0.1", fake.port)], max_in_flight=4) as client,
    ):
        results = []

        async def append(i):
            results.append(await client.append("Q-FAKE100000", i))

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(append, i)
            await fake.wait_requests(1 + 4)  # the discovery query, then 4 appends
            await trio.testing.wait_all_tasks_blocked()
            assert fake.operations().count("APPEND") == 4
            assert client.statistics().requests_in_flight == 4
            gate.set()
        assert len(results) == 10
        assert fake.operations().count("APPEND") == 10


async def test_each_client_reads_every_message_once_in_order(real_broker):
    seed = seed_of(real_broker)
    async with connect([seed]) as writer:
        queue_id = await writer.create_queue()
        for i in range(20):
            await writer.append(queue_id, {"n": i})

    async def read_all(client, out):
        while (message := await client.read(queue_id)) is not None:
            out.append(message)

    async with connect([seed]) as one, connect([seed]) as two:
        assert one.client_id != two.client_id
        got_one: list[Message] = []
        got_two: list[Message] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all, one, got_one)
            nursery.start_soon(read_all, two, got_two)
        expected = [Message(sequence_num=i + 1, data={"n": i}) for i in range(20)]
        assert got_one == expected
        assert got_two == expected
        # A third reader with a new id starts again from message 1.
        async with connect([seed]) as three:
            assert await three.read(queue_id) == expected[0]


# -- errors --------------------------------------------------------------------------------------


async def test_unknown_queue_raises_queue_not_found(real_broker):
    async with connect([seed_of(real_broker)]) as client:
        missing = "Q-" + real_broker.cluster_id[2:] + "NOPE0"
        with pytest.raises(QueueNotFoundError) as info:
            await client.read(missing)
        assert info.value.code == "QUEUE_NOT_FOUND"
        assert missing in info.value.message
        with pytest.raises(QueueNotFoundError):
            await client.append(missing, 1)
        # A queue of a cluster none of the seeds belongs to.
        with pytest.raises(QueueNotFoundError, match="G-ZZZZZ"):
            await client.read("Q-ZZZZZ00000")
        # The connection is still good.
        queue_id = await client.create_queue()
        assert await client.append(queue_id, 1) == 1


@pytest.mark.parametrize("code", ["INTERNAL", "BAD_REQUEST", "SOMETHING_NEW"])
async def test_error_envelope_becomes_exception_with_code_message_and_details(code):
    async def on_write(request):
        return {"status": "error", "message": "the disk is on fire", "code": code, "disk": 3}

    async with (
        open_self_leader_fake(on_write) as fake,
        connect([("127.0.0.1", fake.port)]) as client,
    ):
        with pytest.raises(BrokerError) as info, trio.fail_after(10):
            await client.append("Q-FAKE100000", 1)
    assert type(info.value) is ERROR_CLASSES.get(code, BrokerError)
    assert info.value.code == code
    assert info.value.message == "the disk is on fire"
    assert info.value.details == {"disk": 3}
    # Such an error is not retried: the write might have been applied.
    assert fake.operations() == ["CLUSTER_QUERY", "APPEND"]


async def test_unavailable_with_unknown_outcome_is_outcome_unknown_and_not_retried():
    async def on_write(request):
        return {
            "status": "error",
            "code": "UNAVAILABLE",
            "message": "outcome unknown: lost leadership",
            "outcome": "unknown",
        }

    async with (
        open_self_leader_fake(on_write) as fake,
        connect([("127.0.0.1", fake.port)]) as client,
    ):
        with pytest.raises(OutcomeUnknownError) as info, trio.fail_after(10):
            await client.append("Q-FAKE100000", 1)
    assert info.value.code == "UNAVAILABLE"
    assert info.value.details == {"outcome": "unknown"}
    assert fake.operations() == ["CLUSTER_QUERY", "APPEND"]


async def test_unavailable_without_unknown_outcome_is_retried():
    answers = iter(
        [
            {"status": "error", "code": "UNAVAILABLE", "message": "broker is shutting down"},
            {"status": "success", "sequence_num": 9},
        ]
    )

    async def on_write(request):
        return next(answers)

    async with (
        open_self_leader_fake(on_write) as fake,
        connect([("127.0.0.1", fake.port)]) as client,
    ):
        with trio.fail_after(10):
            assert await client.append("Q-FAKE100000", 1) == 9
    # Refused, so the client asked the cluster again before retrying.
    assert fake.operations() == ["CLUSTER_QUERY", "APPEND", "CLUSTER_QUERY", "APPEND"]


async def test_exceptions_from_the_body_are_not_wrapped_in_groups(real_broker):
    with pytest.raises(QueueNotFoundError):
        async with connect([seed_of(real_broker)]) as client:
            await client.read("Q-" + real_broker.cluster_id[2:] + "NOPE0")
    with pytest.raises(KeyError):
        async with connect([seed_of(real_broker)]):
            raise KeyError("mine")


async def test_unreachable_seeds_raise_at_once():
    port = closed_port()
    with trio.fail_after(5):
        with pytest.raises(BrokerUnreachableError) as info:
            async with connect([f"127.0.0.1:{port}", ("127.0.0.1", port)]):
                pass  # pragma: no cover
    assert info.value.code == "UNAVAILABLE"
    assert info.value.errors == [(("127.0.0.1", port), "connection refused")]
    assert "connection refused" in str(info.value)


async def test_a_closed_client_refuses_calls(real_broker):
    async with connect([seed_of(real_broker)]) as client:
        queue_id = await client.create_queue()
    with pytest.raises(trio.ClosedResourceError):
        await client.append(queue_id, 1)
    assert client.statistics().open_connections == 0


# -- cancellation --------------------------------------------------------------------------------


async def test_cancelled_call_response_is_discarded_in_order():
    gate = trio.Event()
    sequence = iter(range(1, 100))

    async def on_write(request):
        if request["data"] == "slow":
            await gate.wait()
        return {"status": "success", "sequence_num": next(sequence)}

    async with (
        open_self_leader_fake(on_write) as fake,
        connect([("127.0.0.1", fake.port)]) as client,
    ):
        queue_id = "Q-FAKE100000"
        fast_result = []

        async def fast():
            fast_result.append(await client.append(queue_id, "fast"))

        slow_result = []
        slow_scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:

            async def slow():
                with slow_scope:
                    slow_result.append(await client.append(queue_id, "slow"))

            nursery.start_soon(slow)
            await fake.wait_requests(2)  # CLUSTER_QUERY, APPEND "slow"
            nursery.start_soon(fast)
            await fake.wait_requests(3)  # APPEND "fast", pipelined behind "slow"
            slow_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert slow_result == []
            gate.set()
        assert slow_scope.cancelled_caught
        assert slow_result == []
        # "slow" got sequence 1 and that answer was dropped; "fast" got its own answer.
        assert fast_result == [2]
        stats = client.statistics()
        assert stats.responses_discarded == 1
        assert stats.requests_in_flight == 0
        assert await client.append(queue_id, "after") == 3


class TrioStreamAsAnyio:
    """A trio stream with the names of anyio's ByteStream (the client runs on anyio, which
    runs on trio here)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def send(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._stream.receive_some(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


async def test_call_cancelled_before_it_is_written_never_reaches_the_broker():
    # One connection over a lockstep stream: a write completes only as the peer reads it.
    client_end, broker_end = trio.testing.lockstep_stream_pair()
    counters = Counters()
    connection = Connection(
        ("127.0.0.1", 1),
        TrioStreamAsAnyio(client_end),
        max_in_flight=8,
        max_frame=1000,
        counters=counters,
    )
    results: dict[str, bytes] = {}

    async def call(name: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            results[name] = await connection.call(encode_frame(name.encode()))

    async with trio.open_nursery() as nursery:
        await nursery.start(connection.run)
        nursery.start_soon(call, "first")
        await trio.testing.wait_all_tasks_blocked()  # "first" is being written
        second = trio.CancelScope()
        nursery.start_soon(call, "second", second)
        await trio.testing.wait_all_tasks_blocked()  # "second" waits its turn to be written
        second.cancel()
        await trio.testing.wait_all_tasks_blocked()
        decoder = FrameDecoder()
        decoder.feed(await broker_end.receive_some())
        assert decoder.next_frame() == b"first"
        nursery.start_soon(call, "third")
        decoder.feed(await broker_end.receive_some())
        assert decoder.next_frame() == b"third"
        assert decoder.next_frame() is None
        await broker_end.send_all(encode_frame(b"answer 1") + encode_frame(b"answer 3"))
        await trio.testing.wait_all_tasks_blocked()
        assert results == {"first": b"answer 1", "third": b"answer 3"}
        assert counters.requests_sent == 2
        assert connection.in_flight == 0
        nursery.cancel_scope.cancel()


async def test_cancelling_many_calls_never_mismatches_responses(real_broker):
    async with connect([seed_of(real_broker)]) as client:
        queue_id = await client.create_queue()
        acked: dict[int, int] = {}
        scopes = []

        async def appender(value: int, scope: trio.CancelScope) -> None:
            with scope:
                acked[value] = await client.append(queue_id, value)

        async with trio.open_nursery() as nursery:
            for value in range(200):
                scope = trio.CancelScope()
                scopes.append(scope)
                nursery.start_soon(appender, value, scope)
            await trio.testing.wait_all_tasks_blocked()
            for scope in scopes[::2]:
                scope.cancel()
        assert client.statistics().requests_in_flight == 0
        after = await client.append(queue_id, "after")

    stored = await read_concurrently(seed_of(real_broker), queue_id, after)
    assert stored[after] == "after"
    for value, seq in acked.items():
        assert stored[seq] == value
    assert len(acked) >= 100  # the odd ones were never cancelled


# -- lost connections ----------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["APPEND", "READ", "CREATE_QUEUE"])
async def test_connection_lost_after_a_write_was_sent_is_outcome_unknown(operation):
    async def on_write(request):
        return CLOSE

    async with (
        open_self_leader_fake(on_write) as fake,
        connect([("127.0.0.1", fake.port)]) as client,
    ):
        call = {
            "APPEND": partial(client.append, "Q-FAKE100000", 1),
            "READ": partial(client.read, "Q-FAKE100000"),
            "CREATE_QUEUE": client.create_queue,
        }[operation]
        with pytest.raises(OutcomeUnknownError) as info, trio.fail_after(10):
            await call()
        assert info.value.code == "UNAVAILABLE"
        assert info.value.details["operation"] == operation
        assert info.value.details["outcome"] == "unknown"
        assert "may or may not" in info.value.message
        # Never sent again; the client reconnects for the next call.
        assert fake.operations() == ["CLUSTER_QUERY", operation]
        topology = await client.cluster_query()
        assert topology.cluster_id == FAKE_CLUSTER
        assert fake.operations() == ["CLUSTER_QUERY", operation, "CLUSTER_QUERY"]


async def test_cluster_query_is_retried_when_the_connection_is_lost():
    queries = 0

    async def on_write(request):  # pragma: no cover - only CLUSTER_QUERY is sent
        raise AssertionError(request)

    base = self_leader_script(on_write)

    async def script(request):
        nonlocal queries
        queries += 1
        if queries == 2:
            return CLOSE
        return await base(request)

    async with open_fake_broker(script) as fake:
        base.fake_port[0] = fake.port  # type: ignore[attr-defined]
        async with connect([("127.0.0.1", fake.port)]) as client:
            with trio.fail_after(10):
                topology = await client.cluster_query(("127.0.0.1", fake.port))
            assert topology.cluster_id == FAKE_CLUSTER
    assert fake.operations() == ["CLUSTER_QUERY"] * 3


async def test_leader_unreachable_before_sending_refreshes_and_retries(real_broker):
    dead_port = closed_port()
    queries = 0

    async def script(request):
        nonlocal queries
        assert request["operation"] == "CLUSTER_QUERY"
        queries += 1
        brokers = [(FAKE_ID, fake.port, "replica")]
        if queries == 1:  # a stale view: the old leader, now gone
            brokers.append(("B-DEAD1", dead_port, "leader"))
        else:
            brokers.append((real_broker.broker_id, real_broker.port, "leader"))
        return topology_reply(real_broker.cluster_id, brokers, FAKE_ID)

    async with (
        open_fake_broker(script) as fake,
        connect([("127.0.0.1", fake.port)]) as client,
    ):
        assert client.topology().leader.port == dead_port
        queue_ids = []

        async def create() -> None:
            queue_ids.append(await client.create_queue())

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(create)
        assert len(set(queue_ids)) == 50
        assert {cluster_of_queue(q) for q in queue_ids} == {real_broker.cluster_id}
        assert await client.append(queue_ids[0], "x") == 1
        assert client.topology().leader.broker_id == real_broker.broker_id
        # Fifty calls failing at once at the dead leader cause one refresh, not fifty.
        assert client.statistics().topology_refreshes == 1
    assert fake.operations() == ["CLUSTER_QUERY", "CLUSTER_QUERY"]


@attrs.define(eq=False)
class BrokerTask:
    """A broker run in a task of its own, so that a client can outlive it."""

    config: BrokerConfig
    broker: Any = None
    stop: trio.Event = attrs.field(factory=trio.Event)
    stopped: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with open_broker(self.config) as broker:
                self.broker = broker
                task_status.started()
                await self.stop.wait()
        finally:
            self.stopped.set()

    async def aclose(self) -> None:
        self.stop.set()
        await self.stopped.wait()


async def test_a_call_made_while_the_broker_is_down_waits_for_it(ram_path):
    """Connections that cannot be opened are retried (nothing was sent) until it is back."""
    data_dir = ram_path / "restarting"
    async with trio.open_nursery() as brokers:
        first = BrokerTask(BrokerConfig(data_dir=data_dir, port=0))
        await brokers.start(first.run)
        port = first.broker.port
        async with connect([f"127.0.0.1:{port}"], client_id="C-RESTA") as client:
            queue_id = await client.create_queue()
            assert await client.append(queue_id, "before") == 1
            await first.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert client.statistics().open_connections == 0

            done = trio.Event()
            result = []

            async def append_during() -> None:
                result.append(await client.append(queue_id, "during"))
                done.set()

            second = BrokerTask(BrokerConfig(data_dir=data_dir, port=port))
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(append_during)
                    await trio.testing.wait_all_tasks_blocked()
                    assert result == []
                    await brokers.start(second.run)
                    await done.wait()
                assert result == [2]
                assert client.statistics().retries >= 1
                assert await client.read(queue_id) == Message(1, "before")
                assert await client.read(queue_id) == Message(2, "during")
            await second.aclose()


# -- NOT_LEADER ----------------------------------------------------------------------------------


def redirecting_script(real_broker, fake_port, *, stale_first: bool, hint: str | None):
    """A replica of the real broker's cluster: answers NOT_LEADER to every write.

    With ``stale_first`` its first CLUSTER_QUERY answer claims it leads (as a deposed leader
    would); later answers, or all of them otherwise, name the real broker as the leader.
    """
    state = {"queries": 0}

    async def script(request):
        cid = real_broker.cluster_id
        if request["operation"] == "CLUSTER_QUERY":
            state["queries"] += 1
            if stale_first and state["queries"] == 1:
                brokers = [
                    (FAKE_ID, fake_port[0], "leader"),
                    (real_broker.broker_id, real_broker.port, "replica"),
                ]
            else:
                brokers = [
                    (FAKE_ID, fake_port[0], "replica"),
                    (real_broker.broker_id, real_broker.port, "leader"),
                ]
            return topology_reply(cid, brokers, FAKE_ID)
        error = {"status": "error", "code": "NOT_LEADER", "message": "not the leader"}
        if hint == "address":
            error.update(leader_host="127.0.0.1", leader_port=real_broker.port)
        elif hint == "id":
            error.update(leader_id=real_broker.broker_id)
        return error

    return script


async def test_topology_naming_another_leader_routes_writes_there(real_broker):
    port = [0]
    script = redirecting_script(real_broker, port, stale_first=False, hint="address")
    async with open_fake_broker(script) as fake:
        port[0] = fake.port
        async with connect([("127.0.0.1", fake.port)]) as client:
            assert client.topology().leader.broker_id == real_broker.broker_id
            queue_id = await client.create_queue()
            assert await client.append(queue_id, 5) == 1
            assert await client.read(queue_id) == Message(sequence_num=1, data=5)
    assert fake.operations() == ["CLUSTER_QUERY"]


@pytest.mark.parametrize("hint", ["address", "id", None], ids=["address", "id", "no-hint"])
async def test_not_leader_redirects_to_the_leader(real_broker, hint):
    port = [0]
    script = redirecting_script(real_broker, port, stale_first=True, hint=hint)
    async with open_fake_broker(script) as fake:
        port[0] = fake.port
        async with connect([("127.0.0.1", fake.port)]) as client:
            assert client.topology().leader.broker_id == FAKE_ID
            with trio.fail_after(10):
                queue_id = await client.create_queue()
            assert cluster_of_queue(queue_id) == real_broker.cluster_id
            assert await client.append(queue_id, [1, 2]) == 1
            assert await client.read(queue_id) == Message(sequence_num=1, data=[1, 2])
            assert client.statistics().retries >= 1
    # One CREATE_QUEUE reached the fake and was refused; everything after went to the leader.
    writes = [op for op in fake.operations() if op != "CLUSTER_QUERY"]
    assert writes == ["CREATE_QUEUE"]
    # Without a hint the client had to ask for the topology again.
    assert fake.operations().count("CLUSTER_QUERY") == (1 if hint else 2)
    assert fake.requests[-1]["operation"] == ("CREATE_QUEUE" if hint else "CLUSTER_QUERY")


async def test_not_leader_forever_retries_with_backoff_until_the_callers_deadline(autojump_clock):
    async def script(request):
        if request["operation"] == "CLUSTER_QUERY":
            return topology_reply(FAKE_CLUSTER, [(FAKE_ID, fake.port, "leader")], FAKE_ID)
        return {
            "status": "error",
            "code": "NOT_LEADER",
            "message": "ask me again",
            "leader_host": "127.0.0.1",
            "leader_port": fake.port,
        }

    async with (
        open_fake_broker(script) as fake,
        connect([("127.0.0.1", fake.port)]) as client,
    ):
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(60):
                await client.append("Q-FAKE100000", 1)
        assert trio.current_time() - start == pytest.approx(60)
    appends = fake.operations().count("APPEND")
    # Backoff doubles up to one second (with jitter down to half): tens of attempts, not
    # thousands, and still trying at the end.
    assert 40 < appends < 150


# -- a replicated cluster of real brokers -------------------------------------------------------


async def test_a_replica_as_seed_leads_the_client_to_the_leader(ram_path):
    with trio.fail_after(30):
        async with open_local_cluster(ram_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            replica = next(b for b in cluster.brokers.values() if b is not leader)
            async with connect([f"127.0.0.1:{replica.port}"]) as client:
                topology = client.topology()
                assert topology.leader.broker_id == leader.broker_id
                assert len(topology.brokers) == 3
                queue_id = await client.create_queue()
                assert await client.append(queue_id, {"x": 1.5}) == 1
                assert await client.read(queue_id) == Message(1, {"x": 1.5})
                assert client.statistics().retries == 0


async def test_client_follows_a_failover(ram_path):
    with trio.fail_after(60):
        async with open_local_cluster(ram_path, 3) as cluster:
            old = await cluster.wait_for_leader()
            seeds = [f"127.0.0.1:{b.port}" for b in cluster.brokers.values()]
            async with connect(seeds) as client:
                queue_id = await client.create_queue()
                for i in range(5):
                    assert await client.append(queue_id, i) == i + 1
                assert await client.read(queue_id) == Message(1, 0)

                await cluster.stop(cluster.name_of(old))
                # Nothing in flight when the leader went: the next calls wait for the new one.
                assert await client.append(queue_id, "after") == 6
                new = await cluster.wait_for_leader()
                assert new.broker_id != old.broker_id
                assert (await client.cluster_query()).leader.broker_id == new.broker_id
                # The read position was replicated with the messages.
                assert await client.read(queue_id) == Message(2, 1)
                assert client.statistics().retries >= 1


async def read_everything(client, queue_id: str) -> dict[int, Any]:
    """Every message left for this client, with pipelined batches of READs."""
    stored: dict[int, Any] = {}

    async def read_one(batch: list[Message | None]) -> None:
        batch.append(await client.read(queue_id))

    while True:
        batch: list[Message | None] = []
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(read_one, batch)
        for message in batch:
            if message is not None:
                assert message.sequence_num not in stored
                stored[message.sequence_num] = message.data
        if None in batch:
            return stored


async def test_failover_under_load_keeps_every_acknowledged_append_once(ram_path):
    with trio.fail_after(60):
        async with open_local_cluster(ram_path, 3) as cluster:
            old = await cluster.wait_for_leader()
            seeds = [f"127.0.0.1:{b.port}" for b in cluster.brokers.values()]
            acked: dict[str, int] = {}
            unknown: set[str] = set()
            stop_writing = False
            milestones = {50: trio.Event(), 150: trio.Event()}

            async with connect(seeds) as client:
                queue_id = await client.create_queue()

                async def writer(w: int) -> None:
                    i = 0
                    while not stop_writing:
                        value = f"{w}-{i}"
                        i += 1
                        try:
                            acked[value] = await client.append(queue_id, value)
                        except OutcomeUnknownError:
                            unknown.add(value)
                        for count, event in milestones.items():
                            if len(acked) >= count:
                                event.set()

                async with trio.open_nursery() as nursery:
                    for w in range(8):
                        nursery.start_soon(writer, w)
                    await milestones[50].wait()
                    await cluster.stop(cluster.name_of(old))
                    await milestones[150].wait()
                    stop_writing = True

            new = await cluster.wait_for_leader()
            assert new.broker_id != old.broker_id
            async with connect([f"127.0.0.1:{b.port}" for b in cluster.brokers.values()]) as r:
                stored = await read_everything(r, queue_id)

    assert sorted(stored) == list(range(1, len(stored) + 1))
    for value, seq in acked.items():
        assert stored[seq] == value
    values = list(stored.values())
    assert len(values) == len(set(values)), "a write was applied twice"
    assert set(values) <= set(acked) | unknown
    print(f"{len(acked)} acknowledged, {len(unknown)} outcome unknown, {len(stored)} stored")


# -- several clusters ----------------------------------------------------------------------------


async def test_queues_are_routed_to_their_own_clusters_leader(ram_path):
    async with (
        open_broker(BrokerConfig(data_dir=ram_path / "one", port=0)) as one,
        open_broker(BrokerConfig(data_dir=ram_path / "two", port=0)) as two,
    ):
        assert one.cluster_id != two.cluster_id
        async with connect([seed_of(one), seed_of(two)]) as client:
            assert client.clusters == (one.cluster_id, two.cluster_id)
            q_one = await client.create_queue()
            q_two = await client.create_queue(two.cluster_id)
            assert cluster_of_queue(q_one) == one.cluster_id
            assert cluster_of_queue(q_two) == two.cluster_id
            for i in range(3):
                assert await client.append(q_one, f"one-{i}") == i + 1
                assert await client.append(q_two, f"two-{i}") == i + 1
            assert (await client.read(q_two)).data == "two-0"
            assert (await client.read(q_one)).data == "one-0"
            assert client.statistics().open_connections == 2
            status = await client.cluster_query(cluster_id=two.cluster_id)
            assert status.leader.broker_id == two.broker_id
        # Each queue lives on its own cluster only.
        async with connect([seed_of(two)]) as only_two:
            with pytest.raises(QueueNotFoundError):
                await only_two.read(q_one)
            assert (await only_two.read(q_two)).data == "two-0"


async def test_unknown_cluster_is_refused(real_broker):
    async with connect([seed_of(real_broker)]) as client:
        with pytest.raises(BrokerError) as info:
            await client.create_queue("G-ZZZZZ")
        assert info.value.code == "WRONG_CLUSTER"
        with pytest.raises(BrokerError) as info:
            await client.cluster_query(cluster_id="G-ZZZZZ")
        assert info.value.code == "WRONG_CLUSTER"
        assert client.clusters == (real_broker.cluster_id,)


# -- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "address"),
    [
        ("127.0.0.1:9001", ("127.0.0.1", 9001)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:9001", ("::1", 9001)),
        (("10.0.0.1", 65535), ("10.0.0.1", 65535)),
    ],
)
def test_parse_address(seed, address):
    assert parse_address(seed) == address


@pytest.mark.parametrize("seed", ["127.0.0.1", ":9001", "host:port", "h:0", "h:70000", ("h", "1")])
def test_parse_address_refuses(seed):
    with pytest.raises(ValueError):
        parse_address(seed)
