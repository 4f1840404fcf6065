"""Answers written by whoever settles them (``_runtime/_writer.py``; docs/performance-history.md,
"One request in flight: answers written as they are settled").

A :class:`ConnectionServer` on 127.0.0.1 with a stand-in ``handle``: each APPEND's answer is a
:class:`Pending` the test (or a stand-in driver task) settles, as the driver settles a
proposal's outcome. Checked: no task wakes to write an answer the settling task could write;
answers leave in request order whatever order their outcomes are settled in; a client that
stops reading holds only its own connection, within the buffer budget; answers outstanding at
shutdown are written within the grace, and an outcome settled after a connection ended is
dropped harmlessly.
"""

from __future__ import annotations

import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trustme

from trio_broker._core._commands import MessageAppended, MessageRead
from trio_broker._protocol import Append, encode_frame, encode_response
from trio_broker._runtime import open_broker
from trio_broker._runtime._answer import Answer, response_for
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._connections import ConnectionServer
from trio_broker._runtime._direct import DirectSocket
from trio_broker._runtime._pending import Pending, PendingGroup, settling
from trio_broker._runtime._runs import AppendAnswer
from trio_broker._runtime._security import Security
from trio_broker._runtime._work import Mapped
from trio_broker._runtime._writer import MAX_WRITE_BYTES

from .wire import RawConnection, create_queue

DEADLINE = 20
_WRITERS = ("AnswerWriter.run", "ConnectionServer._write_answers")
"""The connection's writer task, as named now and before it became ``AnswerWriter``."""


class _Steps(trio.abc.Instrument):
    """Task steps, by task name."""

    def __init__(self) -> None:
        self.by_name: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.by_name[task.name] = self.by_name.get(task.name, 0) + 1

    def writer_steps(self) -> int:
        """Steps of the connections' answer writers (whatever their task is named)."""
        return sum(n for name, n in self.by_name.items() if name.endswith(_WRITERS))


class _Handle:
    """Answers each APPEND with a :class:`Pending`, settled later by the test."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Pending]] = []
        self.arrived = trio.Event()
        self.wanted = 0

    async def __call__(self, request: Any, session: Any) -> Answer:
        assert isinstance(request, Append)
        pending = Pending()
        self.pending.append((request.data, pending))
        if len(self.pending) >= self.wanted:
            self.arrived.set()
        return Answer(later=pending)

    async def wait_for(self, count: int) -> None:
        self.wanted = count
        if len(self.pending) < count:
            self.arrived = trio.Event()
            await self.arrived.wait()


@asynccontextmanager
async def _serving(
    handle: Callable[..., Any], tls_context: ssl.SSLContext | None = None, **config: Any
) -> AsyncIterator[tuple[ConnectionServer, int, trio.Nursery]]:
    server = ConnectionServer(
        BrokerConfig(data_dir="unused", port=0, **config),
        Security(),
        broker_id="B-AAAAA",
        cluster_id="G-AAAAA",
        handle=handle,
        handle_many=None,
        accept_peer=lambda hello, peer: None,
        serve_peer=None,  # type: ignore[arg-type]  (no PEER_HELLO here)
        observe=lambda tally, now: None,
        plaintext_hint=lambda error: error,
    )
    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = tcp[0].socket.getsockname()[1]
    listeners: list[Any] = tcp
    if tls_context is not None:
        listeners = [trio.SSLListener(x, tls_context, https_compatible=True) for x in tcp]
    async with trio.open_nursery() as connections:
        await connections.start(server.serve, listeners, connections)
        yield server, port, connections
        connections.cancel_scope.cancel()


def _append(i: int) -> dict[str, Any]:
    return {"operation": "APPEND", "queue_name": "Q-AAAAABBBBB", "data": i}


async def test_an_answer_settled_is_written_without_waking_a_task():
    """One request at a time: the settling task writes each answer; the connection's writer
    task does not take a step per answer (it took two: woken for the request, then for its
    outcome)."""
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    handle = _Handle()
    try:
        async with _serving(handle) as (_, port, _n):
            conn = await RawConnection.open(port)
            with trio.fail_after(DEADLINE):  # (the connection's tasks start)
                await conn.send(_append(-1))
                await handle.wait_for(1)
                handle.pending[0][1].set(MessageAppended(1))
                assert await conn.receive() == {"status": "success", "sequence_num": 1}
            before = steps.writer_steps()
            with trio.fail_after(DEADLINE):
                for i in range(20):
                    await conn.send(_append(i))
                    await handle.wait_for(i + 2)
                    await trio.sleep(0.001)  # (the writer, if woken, has run)
                    handle.pending[-1][1].set(MessageAppended(i + 2))
                    assert await conn.receive() == {"status": "success", "sequence_num": i + 2}
            writers = {k: v for k, v in steps.by_name.items() if k.endswith(_WRITERS)}
            assert steps.writer_steps() - before <= 2, (before, writers)
            await conn.aclose()
    finally:
        trio.lowlevel.remove_instrument(steps)


async def test_answers_leave_in_request_order_whatever_order_they_are_settled_in():
    handle = _Handle()
    n = 40
    async with _serving(handle) as (_, port, _n):
        conn = await RawConnection.open(port)
        with trio.fail_after(DEADLINE):
            await conn.send(*[_append(i) for i in range(n)])
            await handle.wait_for(n)
            order = list(range(n))
            random.Random(7).shuffle(order)
            order.remove(0)  # the first request's outcome last: nothing may leave before it
            for k, index in enumerate(order):
                data, pending = handle.pending[index]
                pending.set(MessageAppended(100 + data))
                if k % 5 == 0:
                    await trio.sleep(0.001)
            with trio.move_on_after(0.05):
                early = await conn.receive()
                raise AssertionError(f"an answer left before the first: {early}")
            handle.pending[0][1].set(MessageAppended(100))
            answers = [await conn.receive() for _ in range(n)]
        assert answers == [{"status": "success", "sequence_num": 100 + i} for i in range(n)]
        await conn.aclose()


async def test_a_client_that_stops_reading_holds_only_its_connection_within_the_budget():
    """Settled answers a client does not read: the settling task writes what the socket takes
    and hands the rest to the connection's writer task (which waits); the connection's reads
    stop at the buffer budget, and another connection is served meanwhile."""
    budget = 256 * 1024
    handle = _Handle()
    value = b"v" * 60_000
    async with _serving(handle, max_buffered_bytes=budget, max_in_flight=64) as (server, port, _):
        stalled = await RawConnection.open(port)
        with trio.fail_after(DEADLINE):
            sent = 0
            for _ in range(40):  # (about 240 KB of answers per 40 requests)
                await stalled.send(*[_append(i) for i in range(sent, sent + 40)])
                sent += 40
                await trio.sleep(0.01)
                for _data, pending in handle.pending:
                    pending.set(MessageRead(len(handle.pending), value))
            held = len(handle.pending)
            assert held < sent  # its reads stopped
            # (the budget, plus the answers of one write on their way out, plus a frame)
            bound = budget + MAX_WRITE_BYTES + 2 * len(value)
            assert server.budget.used <= bound, server.budget.used
            other = await RawConnection.open(port)
            for i in range(5):
                await other.send(_append(i))
                await handle.wait_for(held + i + 1)
                handle.pending[-1][1].set(MessageAppended(i + 1))
                assert await other.receive() == {"status": "success", "sequence_num": i + 1}
            assert len(handle.pending) == held + 5  # the stalled connection is still paused
            await other.aclose()
        await stalled.aclose()


async def test_answers_outstanding_at_shutdown_are_written_within_the_grace():
    handle = _Handle()
    async with _serving(handle, shutdown_grace=5.0) as (server, port, connections):
        conn = await RawConnection.open(port)
        with trio.fail_after(DEADLINE):
            await conn.send(_append(0), _append(1))
            await handle.wait_for(2)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, connections)
                await trio.sleep(0.05)
                for data, pending in handle.pending:
                    pending.set(MessageAppended(data + 1))
            assert await conn.receive() == {"status": "success", "sequence_num": 1}
            assert await conn.receive() == {"status": "success", "sequence_num": 2}
            assert await conn.receive() is None  # then the broker closed it
            assert server.connections == 0


async def test_an_answer_never_settled_ends_with_the_grace_and_a_late_outcome_is_dropped():
    handle = _Handle()
    async with _serving(handle, shutdown_grace=0.2) as (server, port, connections):
        conn = await RawConnection.open(port)
        with trio.fail_after(DEADLINE):
            await conn.send(_append(0))
            await handle.wait_for(1)
            await server.shutdown(connections)  # cancels the connection after the grace
            assert await conn.receive() is None
            handle.pending[0][1].set(MessageAppended(1))  # the connection is gone: nothing
        await conn.aclose()


async def test_a_lone_append_is_proposed_without_the_one_by_one_path(ram_path):
    """A receive of one original-contract APPEND is checked and proposed by ``Runs`` itself
    (no ``decide``, no queue lookup), and answered as the one-by-one path answers it; any other
    lone request still goes to ``decide``."""
    config = BrokerConfig(data_dir=ram_path / "b", port=0, max_frame=2048)
    async with open_broker(config) as broker:
        queue_id = await create_queue(broker.port)
        decided: list[str] = []
        decide = broker.runs.handle

        async def counted(request: Any, session: Any) -> Any:
            decided.append(type(request).__name__)
            return await decide(request, session)

        broker.runs.handle = counted
        conn = await RawConnection.open(broker.port)
        with trio.fail_after(DEADLINE):
            answers = [await conn.call(_append(i) | {"queue_name": queue_id}) for i in range(5)]
            too_large = await conn.call({**_append(0), "queue_name": queue_id, "data": "x" * 1900})
            named = await conn.call({**_append(0), "queue_name": "no-such-queue"})
            read = await conn.call({"operation": "READ", "queue_name": queue_id, "client_id": "C"})
        assert answers == [{"status": "success", "sequence_num": i + 1} for i in range(5)]
        assert too_large["code"] == "TOO_LARGE" and named["code"] == "QUEUE_NOT_FOUND"
        assert read == {"status": "success", "sequence_num": 1, "data": 0}
        assert decided == ["Append", "Read"]  # the named queue's APPEND, and the READ
        await conn.aclose()


async def test_answers_mapped_from_a_proposal_are_written_by_the_task_that_settles_it(ram_path):
    """A lone READ, an APPEND naming a queue (with headers), a GROUP_READ without a wait and a
    GROUP_ACK are each answered through a ``Mapped`` proposal outcome: the task that settles
    the outcome writes the answer, as for a plain APPEND (the connection's writer task took a
    step per answer)."""
    config = BrokerConfig(data_dir=ram_path / "b", port=0)
    steps = _Steps()
    async with open_broker(config) as broker:
        queue_id = await create_queue(broker.port, name="jobs")
        conn = await RawConnection.open(broker.port)
        n = 10

        async def ok(request: dict[str, Any]) -> dict[str, Any]:
            answer = await conn.call(request)
            assert answer["status"] == "success", (request, answer)
            return answer

        group = {"queue_name": "jobs", "group": "w", "member": "m"}
        kinds: dict[str, Callable[[int], dict[str, Any]]] = {
            "named append": lambda i: {**_append(i), "queue_name": "jobs", "headers": {"i": "1"}},
            "read": lambda i: {"operation": "READ", "queue_name": queue_id, "client_id": "C"},
            "group read": lambda i: {"operation": "GROUP_READ", **group},
            "group ack": lambda i: {"operation": "GROUP_ACK", **group, "sequence_nums": [i + 1]},
        }
        with trio.fail_after(DEADLINE):
            await ok(_append(-1) | {"queue_name": queue_id})  # (the connection's tasks start)
            await ok({"operation": "GROUP_JOIN", "queue_name": "jobs", "group": "w"})
            trio.lowlevel.add_instrument(steps)
            try:
                taken: dict[str, int] = {}
                for kind, request in kinds.items():
                    before = steps.writer_steps()
                    for i in range(n):
                        await ok(request(i))
                    taken[kind] = steps.writer_steps() - before
            finally:
                trio.lowlevel.remove_instrument(steps)
        assert all(count <= 2 for count in taken.values()), taken
        await conn.aclose()


def test_a_mapped_outcome_calls_back_as_its_proposal_does_and_a_poll_does_not():
    called: list[int] = []
    pending = Pending()
    mapped = Mapped(pending, lambda result: result + 1)
    assert mapped.when_done(lambda: called.append(mapped.result))
    pending.set(1)
    assert called == [2]
    assert not mapped.when_done(called.append)  # (known now: nothing registered)
    poll = Mapped(trio.Event(), lambda result: result)  # (no when_done: a long poll)
    assert not poll.when_done(called.append) and called == [2]


def test_a_lone_appends_frame_is_the_general_encoding():
    for result in (MessageAppended(7), MessageAppended(2**40), MessageAppended(3, True)):
        pending = Pending()
        answer = AppendAnswer(later=pending)
        assert answer.frame() is None  # not known yet
        pending.set(result)
        general = encode_frame(encode_response(response_for(result)))
        assert answer.frame() in (general, None)
        assert (answer.frame() is None) == result.duplicate  # (a duplicate: the general path)


async def test_outcomes_settled_together_leave_in_one_write(monkeypatch):
    """The driver settles a Ready's outcomes inside ``settling()``: a connection whose answers
    several of them made known writes them once (outside it, one write per outcome settled in
    request order)."""
    writes: list[int] = []
    send_now = DirectSocket.send_now

    def counted(self: DirectSocket, data: Any) -> int:
        writes.append(len(data))
        return send_now(self, data)

    monkeypatch.setattr(DirectSocket, "send_now", counted)
    handle = _Handle()
    n = 10
    async with _serving(handle) as (_, port, _n):
        conn = await RawConnection.open(port)
        with trio.fail_after(DEADLINE):
            for together in (True, False):
                first = len(handle.pending)
                await conn.send(*[_append(i) for i in range(n)])
                await handle.wait_for(first + n)
                writes.clear()
                with settling() if together else contextlib.nullcontext():
                    for i, (_data, pending) in enumerate(handle.pending[first:]):
                        pending.set(MessageAppended(first + i + 1))
                answers = [await conn.receive() for _ in range(n)]
                assert [a["sequence_num"] for a in answers] == list(range(first + 1, first + n + 1))
                assert len(writes) == (1 if together else n), writes
        await conn.aclose()


async def test_a_task_started_inside_settling_calls_back_once_the_block_has_ended():
    """trio copies the context into each task it starts: a task started inside ``settling()``
    sees that block's variable. Once the block has ended, an outcome the task sets calls back
    at once (it was added to a list nobody read: the answer was never written), and a
    ``settling()`` the task enters holds its own callbacks."""
    called: list[str] = []
    alone, member, nested = Pending(), PendingGroup(1), Pending()
    assert alone.when_done(lambda: called.append("alone"))
    assert member.when_done(lambda: called.append("group"))
    assert nested.when_done(lambda: called.append("nested"))

    async def later() -> None:
        await trio.sleep(0.01)  # (the block has ended)
        alone.set("x")
        member.set(0, "y")
        assert called == ["alone", "group"]
        with settling():
            nested.set("z")
            assert called == ["alone", "group"]  # (held by this task's own block)
        assert called == ["alone", "group", "nested"]

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            with settling():
                nursery.start_soon(later)
    assert called == ["alone", "group", "nested"]


async def test_tls_connections_answer_in_order_through_the_writer_task(monkeypatch):
    """On TLS the socket is not the connection's to write: answers go through the writer
    task and the stream's own calls, still in request order whatever the settling order."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    immediate: list[int] = []
    send_now = DirectSocket.send_now

    def counted(self: DirectSocket, data: Any) -> int:
        immediate.append(len(data))
        return send_now(self, data)

    monkeypatch.setattr(DirectSocket, "send_now", counted)
    handle = _Handle()
    n = 20
    async with _serving(handle, tls_context=server_context) as (_, port, _n):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_context, server_hostname="127.0.0.1")
        conn = RawConnection(stream)  # type: ignore[arg-type]
        with trio.fail_after(DEADLINE):
            await conn.send(*[_append(i) for i in range(n)])
            await handle.wait_for(n)
            for data, pending in reversed(handle.pending):
                pending.set(MessageAppended(data + 1))
                await trio.lowlevel.checkpoint()
            answers = [await conn.receive() for _ in range(n)]
        assert answers == [{"status": "success", "sequence_num": i + 1} for i in range(n)]
        assert not immediate
        await conn.aclose()
