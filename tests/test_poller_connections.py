"""The connections' poller (``_runtime/_poller.py``): plain-TCP receives watched by one epoll
of the broker's own, a receive of one lone APPEND served without waking its connection's task,
anything else handed to that task. Real TCP on 127.0.0.1, the real ``ConnectionServer`` with
stand-ins for the decisions: every answer names its request and the path that decided it."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol import FrameDecoder, encode_frame
from trio_broker._runtime import _poller
from trio_broker._runtime._answer import Answer
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._connections import ConnectionServer
from trio_broker._runtime._pending import Pending
from trio_broker._runtime._security import Security

pytestmark = pytest.mark.skipif(not _poller.AVAILABLE, reason="the poller needs epoll (Linux)")

DEADLINE = 10


def _named(text: str) -> Answer:
    return Answer(now=BrokerError(ErrorCode.BAD_REQUEST, text))


class Decisions:
    """Stand-ins for ``Runs``: a lone APPEND to ``Q-LONE...`` is decided at once by
    ``handle_lone``, to ``Q-LATE...`` at once but known later (settled by :meth:`settle`),
    anything else (``Q-WAIT...``, an APPEND with headers) by ``handle_many``, which yields
    first."""

    def __init__(self, *, big: int = 0) -> None:
        self.lone = 0
        self.many = 0
        self.late: list[tuple[Pending, str]] = []
        self.big = big
        """Pad every answer with so many bytes (a client that does not read fills up)."""

    def text(self, path: str, data: Any) -> str:
        return f"{path}:{data}" + "." * self.big

    def handle_lone(self, request: tuple[str, bytes, Any]) -> Answer | None:
        queue, _, value = request
        if queue.startswith("Q-WAIT"):
            return None
        self.lone += 1
        if queue.startswith("Q-LATE"):
            pending = Pending()
            self.late.append((pending, self.text("lone", value)))
            return Answer(later=pending)
        return _named(self.text("lone", value))

    async def handle_many(
        self, run: list[Any], session: Any, answered: Callable[[list[Answer]], None]
    ) -> None:
        await trio.lowlevel.checkpoint()
        for request in run:
            self.many += 1
            data = request[2] if type(request) is tuple else request.data
            answered([_named(self.text("many", data))])

    async def handle(self, request: Any, session: Any) -> Answer:
        raise AssertionError("every request goes through handle_many")

    def settle(self) -> None:
        late, self.late = self.late, []
        for pending, text in late:
            pending.set(BrokerError(ErrorCode.BAD_REQUEST, text))


async def _no_peers(*_args: Any) -> bool:
    return True


def _server(decisions: Decisions, **settings: Any) -> ConnectionServer:
    config = BrokerConfig(data_dir="unused", port=0, **settings)
    return ConnectionServer(
        config,
        Security(),
        broker_id="B-AAAAA",
        cluster_id="G-AAAAA",
        handle=decisions.handle,
        handle_many=decisions.handle_many,  # type: ignore[arg-type]
        handle_lone=decisions.handle_lone,  # type: ignore[arg-type]
        accept_peer=lambda hello, peer: None,
        serve_peer=_no_peers,
        observe=lambda tally, now: None,
        plaintext_hint=lambda error: error,
    )


@contextlib.asynccontextmanager
async def _serving(server: ConnectionServer) -> AsyncIterator[int]:
    """Serve on a TCP port of 127.0.0.1 (the poller started as a broker starts it); its port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as connections:
        await connections.start(functools.partial(server.serve, listeners, connections))
        yield port
        await server.shutdown(connections)


def _append(queue: str, data: str, headers: dict[str, str] | None = None) -> bytes:
    obj: dict[str, Any] = {"operation": "APPEND", "queue_name": queue, "data": data}
    if headers is not None:
        obj["headers"] = headers
    return encode_frame(orjson.dumps(obj))


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(1 << 24)

    async def answers(self, count: int) -> list[str]:
        got: list[str] = []
        while len(got) < count:
            while (frame := self.decoder.next_frame()) is not None:
                got.append(orjson.loads(frame)["message"])
            if len(got) >= count:
                break
            data = await self.stream.receive_some(1 << 16)
            assert data, f"the server closed the connection after {len(got)} answers"
            self.decoder.feed(data)
        return got


async def _connect(port: int) -> Client:
    return Client(await trio.open_tcp_stream("127.0.0.1", port))


async def _exchange(server: ConnectionServer, frames: bytes, count: int) -> list[str]:
    """Send ``frames`` in one write to ``server`` and return its first ``count`` answers."""
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(frames)
            got = await client.answers(count)
            await client.stream.aclose()
    return got


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110  (a state of the server, no event: bounded by fail_after)
        await trio.sleep(0.001)


async def test_lone_appends_are_served_by_the_poller_without_their_task():
    decisions = Decisions()
    server = _server(decisions)
    steps = _Steps()
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.answers(0)
            trio.lowlevel.add_instrument(steps)
            for index in range(20):
                await client.stream.send_all(_append("Q-LONE", f"m{index}"))
                assert await client.answers(1) == [f"lone:m{index}"]
            trio.lowlevel.remove_instrument(steps)
            await client.stream.aclose()
    assert server.poller is not None and server.poller.served == 20
    assert steps.names.get("ConnectionServer._handle_stream", 0) == 0  # never woken


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.turns: list[int] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        name = task.coro.cr_code.co_qualname  # type: ignore[attr-defined]
        self.names[name] = self.names.get(name, 0) + 1


@pytest.mark.parametrize("seed", range(6))
async def test_answers_keep_request_order_under_mixed_lone_and_other_requests(seed):
    """A differential test: random streams of requests on several connections at once, sent
    one at a time or several in one write, lone ones decided at once or known later or
    waiting; every connection's answers are its requests', in order, from the path each
    request must take."""
    rng = random.Random(seed)
    decisions = Decisions()
    server = _server(decisions, max_in_flight=rng.choice([2, 8, 256]))

    async def one_connection(port: int, name: str) -> None:
        client = await _connect(port)
        async with client.stream:
            for step in range(40):
                burst = rng.choice([1, 1, 1, 2, 5])
                frames, expected = [], []
                for index in range(burst):
                    data = f"{name}-{step}-{index}"
                    kind = rng.choice(["LONE", "LONE", "LATE", "WAIT", "HEADERS"])
                    if kind == "HEADERS":
                        frames.append(_append("Q-LONE", data, {"h": "1"}))
                        expected.append(f"many:{data}")
                    elif kind == "WAIT" or burst > 1:
                        frames.append(_append(f"Q-{kind}", data))
                        expected.append(f"{'many' if kind == 'WAIT' else 'lone'}:{data}")
                    else:
                        frames.append(_append(f"Q-{kind}", data))
                        expected.append(f"lone:{data}")
                if burst > 1:  # several frames in one write: the task decides them
                    expected = [
                        text if text.startswith("many") else "many" + text[4:] for text in expected
                    ]
                    await client.stream.send_all(b"".join(frames))
                else:  # one whole frame: the poller's, a byte at a time now and then
                    if rng.random() < 0.1:  # (cut: either path, as the receives fall)
                        expected = ["*" + text[text.index(":") :] for text in expected]
                        for byte in frames[0]:
                            await client.stream.send_all(bytes([byte]))
                    else:
                        await client.stream.send_all(frames[0])
                got = await client.answers(len(expected))
                assert [
                    "*" + text[text.index(":") :] if want.startswith("*") else text
                    for text, want in zip(got, expected, strict=True)
                ] == expected

    async def settle_now_and_then() -> None:
        while True:
            await trio.sleep(rng.choice([0, 0.001, 0.002]))
            decisions.settle()

    with trio.fail_after(DEADLINE):
        async with _serving(server) as port, trio.open_nursery() as clients:
            clients.start_soon(settle_now_and_then)
            async with trio.open_nursery() as connections:
                for name in "abcd":
                    connections.start_soon(one_connection, port, name)
            clients.cancel_scope.cancel()
            await _until(lambda: server.connections == 0)
            assert server.poller is not None and server.poller.served > 0
            assert not server.poller._polled  # every socket left the epoll as its connection ended


async def test_a_connection_reset_while_registered_leaves_the_epoll_and_others_go_on():
    decisions = Decisions()
    server = _server(decisions)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            other = await _connect(port)
            reset = await _connect(port)
            await reset.stream.send_all(_append("Q-LONE", "one"))
            assert await reset.answers(1) == ["lone:one"]
            assert server.poller is not None and len(server.poller._polled) == 2
            reset.stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            await reset.stream.aclose()  # (an RST: the server's read fails)
            await _until(lambda: server.connections == 1)
            assert len(server.poller._polled) == 1
            await other.stream.send_all(_append("Q-LONE", "two"))
            assert await other.answers(1) == ["lone:two"]
            await other.stream.aclose()
    assert server.poller.served == 2


async def test_a_client_that_does_not_read_stops_the_poller_reading_for_it():
    """Backpressure: answers a client leaves unread hold their slots among max_in_flight, so
    the poller stops deciding its lone APPENDs; the connection's task waits for a slot, and
    every answer arrives, in order, once the client reads."""
    decisions = Decisions(big=256 * 1024)
    server = _server(decisions, max_in_flight=4)
    count = 60
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            for index in range(count):  # (one whole frame a write: the poller's, while it may)
                await client.stream.send_all(_append("Q-LONE", f"m{index}"))
                await trio.lowlevel.checkpoint()
            await trio.testing.wait_all_tasks_blocked(0.05)
            decided = decisions.lone + decisions.many
            assert decided < count  # reading stopped: the socket buffers hold the answers
            got = await client.answers(count)
            assert [text.split(":")[1].rstrip(".") for text in got] == [
                f"m{index}" for index in range(count)
            ]
            await client.stream.aclose()
    assert server.poller is not None and server.poller.served > 0


async def test_end_of_stream_inside_a_frame_is_logged_and_ends_the_connection(caplog):
    caplog.set_level(logging.INFO)
    server = _server(Decisions())
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(_append("Q-LONE", "one"))
            assert await client.answers(1) == ["lone:one"]
            await client.stream.send_all(_append("Q-LONE", "two")[:10])
            await client.stream.send_eof()
            assert await client.stream.receive_some(100) == b""  # the server closed it
            await _until(lambda: server.connections == 0)
            assert server.poller is not None and not server.poller._polled
            await client.stream.aclose()
    assert server.poller.served == 1
    assert any("connection.truncated_frame" in record.getMessage() for record in caplog.records)


async def test_a_frame_begun_must_still_arrive_within_frame_timeout(caplog):
    server = _server(Decisions(), frame_timeout=0.2)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(_append("Q-LONE", "one"))
            assert await client.answers(1) == ["lone:one"]
            await client.stream.send_all(_append("Q-LONE", "two")[:10])  # and nothing more
            assert await client.stream.receive_some(100) == b""  # closed by the server
            await client.stream.aclose()
    assert server.poller is not None and server.poller.served == 1
    assert any("connection.frame_timeout" in record.getMessage() for record in caplog.records)


async def test_stopping_with_requests_in_flight_ends_every_connection_and_the_poller():
    decisions = Decisions()
    server = _server(decisions, shutdown_grace=0.05)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            clients = [await _connect(port) for _ in range(5)]
            for index, client in enumerate(clients):
                await client.stream.send_all(_append("Q-LATE", f"m{index}"))
            await _until(lambda: decisions.lone == 5)  # each decided, none known: in flight
        for client in clients:  # (stopped: each connection was closed)
            with contextlib.suppress(trio.BrokenResourceError):
                assert await client.stream.receive_some(100) == b""
            await client.stream.aclose()
    assert server.poller is not None and server.poller.served == 5
    assert not server.poller.running and not server.poller._polled


async def test_one_turn_of_the_poller_serves_a_bounded_number_of_connections(monkeypatch):
    """Fairness: with many connections ready at once, a turn serves at most MAX_EVENTS of
    them, and every other task runs before the next turn."""
    monkeypatch.setattr(_poller, "MAX_EVENTS", 3)
    decisions = Decisions()
    server = _server(decisions)
    served_in_turn: list[int] = []

    class Turns(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.coro.cr_code.co_qualname == "Poller.run":  # type: ignore[attr-defined]
                served_in_turn.append(server.poller.served)  # type: ignore[union-attr]

    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            clients = [await _connect(port) for _ in range(20)]
            await trio.testing.wait_all_tasks_blocked(0.01)
            trio.lowlevel.add_instrument(Turns())
            for index, client in enumerate(clients):  # all at once, without yielding
                os.write(client.stream.socket.fileno(), _append("Q-LONE", f"m{index}"))
            for index, client in enumerate(clients):
                assert await client.answers(1) == [f"lone:m{index}"]
            for client in clients:
                await client.stream.aclose()
    served_in_turn.append(server.poller.served)  # type: ignore[union-attr]
    turns = [after - before for before, after in itertools.pairwise(served_in_turn)]
    assert sum(turns) == 20 and max(turns) <= 3


async def test_the_poller_failing_takes_the_server_down_without_hanging_connections(
    monkeypatch,
):
    decisions = Decisions()
    server = _server(decisions)

    def broken(self: Any) -> None:
        raise RuntimeError("the poller broke")

    with trio.fail_after(DEADLINE), pytest.raises(BaseExceptionGroup) as caught:
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(_append("Q-LONE", "one"))
            assert await client.answers(1) == ["lone:one"]
            monkeypatch.setattr(_poller.PolledSocket, "ready", broken)
            await client.stream.send_all(_append("Q-LONE", "two"))
            await trio.sleep_forever()
    assert caught.group_contains(RuntimeError, match="the poller broke")
    assert server.poller is not None and not server.poller.running


async def test_a_bug_in_a_lone_decision_ends_only_its_connection(caplog):
    decisions = Decisions()
    server = _server(decisions)
    decide = decisions.handle_lone

    def buggy(request: Any) -> Answer | None:
        if request[0] == "Q-LONEBUG":
            raise ValueError("a bug")
        return decide(request)

    server._handle_lone = buggy  # type: ignore[assignment]
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            victim, other = await _connect(port), await _connect(port)
            await victim.stream.send_all(_append("Q-LONEBUG", "one"))
            assert await victim.stream.receive_some(100) == b""  # its connection ended
            await other.stream.send_all(_append("Q-LONE", "two"))
            assert await other.answers(1) == ["lone:two"]
            for client in (victim, other):
                await client.stream.aclose()
    assert any("connection.crashed" in record.getMessage() for record in caplog.records)


async def test_bytes_that_arrive_while_the_task_is_busy_are_read_by_the_task():
    """An event for a connection whose task holds its socket (deciding a request that waits)
    is not lost: the task reads those bytes itself before it waits with the poller again."""
    decisions = Decisions()
    release = trio.Event()
    decide_many = decisions.handle_many

    async def waiting_many(run: list[Any], session: Any, answered: Any) -> None:
        await release.wait()
        await decide_many(run, session, answered)

    server = _server(decisions)
    server._handle_many = waiting_many  # type: ignore[assignment]
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(_append("Q-WAIT", "first"))
            await trio.testing.wait_all_tasks_blocked(0.01)  # its task waits in handle_many
            await client.stream.send_all(_append("Q-LONE", "second"))
            await trio.testing.wait_all_tasks_blocked(0.01)  # the poller saw it, busy
            release.set()
            assert await client.answers(2) == ["many:first", "lone:second"]
            await client.stream.aclose()
    assert server.poller is not None and server.poller.served == 0
