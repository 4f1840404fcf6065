"""A connection's request path (``_runtime/_connections.py``): every frame of one receive is
decided before the next receive, its answers leave in request order, those known together in
one write, and no more than ``max_in_flight`` are dispatched and not yet written.

Real brokers on 127.0.0.1; each server-side stream is wrapped to count its writes.
"""

from __future__ import annotations

import struct
from typing import Any

import trio

from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._runtime._network import TCP

from .wire import RawConnection, create_queue

DEADLINE = 20


class _CountedStream(trio.abc.HalfCloseableStream):
    """A server-side TCP stream that counts its writes and the answer frames they carry."""

    def __init__(self, inner: trio.SocketStream, log: list[_CountedStream]) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.writes = 0
        self.frames = 0
        self._pending = b""
        log.append(self)

    async def send_all(self, data: Any) -> None:
        self.writes += 1
        self._pending += bytes(data)
        while len(self._pending) >= 4:
            (n,) = struct.unpack(">I", self._pending[:4])
            if len(self._pending) < 4 + n:
                break
            self._pending = self._pending[4 + n :]
            self.frames += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountedListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, inner: trio.SocketListener, log: list[_CountedStream]) -> None:
        self.inner = inner
        self.log = log

    async def accept(self) -> trio.abc.Stream:
        return _CountedStream(await self.inner.accept(), self.log)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountingNetwork:
    """TCP, with every accepted stream counted (dialing out is plain TCP)."""

    def __init__(self) -> None:
        self.streams: list[_CountedStream] = []

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await TCP.connect(host, port)

    async def listen(self, host: str, port: int) -> tuple[list[trio.abc.Listener], int]:
        listeners, bound = await TCP.listen(host, port)
        return [_CountedListener(x, self.streams) for x in listeners], bound


async def test_answers_known_together_leave_in_one_write(ram_path):
    """Requests answered at once (refusals, CLUSTER_QUERY), sent in one burst, are answered
    in order with a write per receive, not per request."""
    network = _CountingNetwork()
    config = BrokerConfig(data_dir=ram_path / "b", port=0)
    async with open_broker(config, network=network) as broker:
        conn = await RawConnection.open(broker.port)
        requests: list[dict[str, Any]] = []
        for i in range(40):
            if i % 2:
                requests.append({"operation": "CLUSTER_QUERY"})
            else:
                requests.append({"operation": "APPEND", "queue_name": "Q-NOPE0NOPE0", "data": i})
        with trio.fail_after(DEADLINE):
            await conn.send(*requests)
            answers = [await conn.receive() for _ in requests]
        for req, answer in zip(requests, answers, strict=True):
            assert answer is not None
            if req["operation"] == "CLUSTER_QUERY":
                assert answer["status"] == "success" and answer["self_role"] == "leader"
            else:
                assert answer["code"] == "QUEUE_NOT_FOUND"
        (stream,) = [s for s in network.streams if s.frames == len(requests)]
        # One burst of 40 small frames arrives in one or two receives on loopback.
        assert stream.writes <= 2, stream.writes
        await conn.aclose()


async def test_no_more_than_max_in_flight_requests_wait_for_their_answers(ram_path):
    """A client that pipelines far more than max_in_flight requests is answered in order,
    and the broker never decides a request while max_in_flight answers are unwritten."""
    network = _CountingNetwork()
    in_flight = 4
    config = BrokerConfig(data_dir=ram_path / "b", port=0, max_in_flight=in_flight)
    async with open_broker(config, network=network) as broker:
        queue_id = await create_queue(broker.port)
        server = broker.connections
        handle = server._handle
        most = 0

        async def counted(request: Any, session: Any) -> Any:
            nonlocal most
            stream = network.streams[-1]  # the pipelining connection's
            dispatched[0] += 1
            most = max(most, dispatched[0] - stream.frames)
            return await handle(request, session)

        handle_many = server._handle_many
        assert handle_many is not None

        async def counted_many(requests: list[Any], session: Any, answered: Any) -> Any:
            nonlocal most
            stream = network.streams[-1]
            dispatched[0] += len(requests)  # decided together: all of them hold a slot
            most = max(most, dispatched[0] - stream.frames)
            return await handle_many(requests, session, answered)

        n = 300
        dispatched = [0]
        server._handle = counted
        server._handle_many = counted_many
        conn = await RawConnection.open(broker.port)
        requests: list[dict[str, Any]] = []
        for i in range(n):
            if i % 3 == 2:
                requests.append({"operation": "NOPE"})  # refused by the connection itself
            else:
                requests.append({"operation": "APPEND", "queue_name": queue_id, "data": i})
        with trio.fail_after(DEADLINE):
            await conn.send(*requests)
            answers = [await conn.receive() for _ in requests]
        seq = 0
        for req, answer in zip(requests, answers, strict=True):
            assert answer is not None
            if req["operation"] == "APPEND":
                seq += 1
                assert answer == {"status": "success", "sequence_num": seq}
            else:
                assert answer["code"] == "UNKNOWN_OPERATION"
        assert dispatched[0] == seq
        # Each decided request had a slot: at most max_in_flight answers unwritten, itself
        # included (refusals take slots too, so the count of appends alone is lower).
        assert 1 <= most <= in_flight, most
        await conn.aclose()
        with trio.fail_after(DEADLINE):
            while server.connections:  # noqa: ASYNC110 (bounded wait for the close)
                await trio.sleep(0.05)
        assert server.budget.used == 0


async def test_appended_answers_of_one_receive_leave_in_one_write(ram_path):
    """A burst of APPENDs (one receive, one run, one commit) is answered in order, each
    answer with its sequence number, in one write (their frames written straight from the
    results: docs/performance-history.md, "The leader's request path")."""
    network = _CountingNetwork()
    config = BrokerConfig(data_dir=ram_path / "b", port=0)
    async with open_broker(config, network=network) as broker:
        queue_id = await create_queue(broker.port)
        conn = await RawConnection.open(broker.port)
        requests = [{"operation": "APPEND", "queue_name": queue_id, "data": i} for i in range(40)]
        with trio.fail_after(DEADLINE):
            await conn.send(*requests)
            answers = [await conn.receive() for _ in requests]
        assert answers == [{"status": "success", "sequence_num": i + 1} for i in range(40)]
        (stream,) = [s for s in network.streams if s.frames == len(requests)]
        # One burst arrives in one or two receives on loopback; each is one commit.
        assert stream.writes <= 2, stream.writes
        await conn.aclose()
