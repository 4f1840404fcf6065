"""``AnswerWriter._known`` (what an answer's ``when_known`` calls on a TCP connection) skips
the pump's first question, whether the head is known. It must stay right when the callback
comes for a head that is no longer the one it was registered on: a group's callback fires
once the whole group is known, after its first answer was written and another answer, not
known, became the head; or after the writer task ended. And several answers known in one
``settling`` block leave in one write, in request order, an answer known before an earlier
one waiting for it."""

from __future__ import annotations

import random
import socket as sockets

import trio
import trio.testing

from tests.test_peerpoll_writer import _Direct
from tests.test_poller_connections import (
    DEADLINE,
    Decisions,
    _append,
    _connect,
    _server,
    _serving,
)
from tests.test_pump_registers import _frame
from trio_broker._core._commands import MessageAppended
from trio_broker._protocol import Appended, encode_frame, encode_response
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import GroupAnswer, Pending, PendingGroup, settling
from trio_broker._runtime._runs import AppendAnswer
from trio_broker._runtime._writer import AnswerWriter


class _Woken:
    def __init__(self) -> None:
        self.count = 0

    def set(self) -> None:
        self.count += 1


def _writer() -> tuple[AnswerWriter, Outbox, _Direct, _Woken]:
    socket = _Direct()
    outbox = Outbox(BufferBudget(1 << 20).account())
    writer = AnswerWriter(socket, outbox, observe=lambda tally, now: None, plaintext_hint=None)
    woken = _Woken()
    writer._more = woken  # type: ignore[assignment]  (the writer task waits for answers)
    writer._idle = True
    return writer, outbox, socket, woken


def test_a_groups_callback_for_a_head_gone_registers_on_the_new_head_and_writes_nothing() -> None:
    writer, outbox, socket, woken = _writer()
    group = PendingGroup(2)
    outbox.put("APPEND", 1.0, GroupAnswer(group, 0), 10)
    writer.kick()  # registers on the group (its answer 0 not known)
    assert group._notify is not None
    group.set(0, MessageAppended(1))  # (the group not done: no callback)
    later = Pending()
    outbox.put("APPEND", 1.0, AppendAnswer(later), 10)
    writer.kick()  # writes the group's answer, registers on the new head
    assert socket.sent == [_frame(1)]
    assert later._notify is not None
    later._notify = None  # (so that only the group's callback can register it again)
    group.set(1, MessageAppended(2))  # the group's callback: its head left, the new one unknown
    assert socket.sent == [_frame(1)]  # nothing written
    assert woken.count == 0  # and the writer task not woken: a callback will come
    assert later._notify is not None  # registered again on the head
    later.set(MessageAppended(3))
    assert socket.sent == [_frame(1), _frame(3)]
    assert not outbox.answers and outbox.in_flight == 0


def test_a_callback_after_the_writer_task_ended_writes_nothing() -> None:
    writer, outbox, socket, _ = _writer()
    pending = Pending()
    outbox.put("APPEND", 1.0, AppendAnswer(pending), 10)
    writer.kick()
    writer._idle = False  # (the writer task's end: ``run``'s finally)
    writer._on_known = None
    pending.set(MessageAppended(1))
    assert socket.sent == []
    assert len(outbox.answers) == 1


def test_answers_known_in_one_block_leave_in_one_write_in_request_order() -> None:
    writer, outbox, socket, _ = _writer()
    first, second, third = Pending(), Pending(), Pending()
    for pending in (first, second, third):
        outbox.put("APPEND", 1.0, AppendAnswer(pending), 10)
        writer.kick()
    third.set(MessageAppended(3))  # known before the earlier ones: waits for them
    second.set(MessageAppended(2))
    assert socket.sent == []
    with settling():  # the head and what follows it known together: one callback
        first.set(MessageAppended(1))
        assert socket.sent == []  # (called on leaving the block)
    assert socket.sent == [_frame(1) + _frame(2) + _frame(3)]
    assert not outbox.answers and outbox.in_flight == 0


async def test_late_answers_settled_while_a_write_is_stuck_all_arrive_in_order() -> None:
    """Real TCP: answers of 256 KiB for a client that does not read, so a write is left to
    the writer task (``_rest``) while lone APPENDs' outcomes, known later, keep settling and
    calling back (``_known`` then writes nothing); others wait in ``handle_many``. Once the
    client reads, every answer arrives, whole and in request order."""
    rng = random.Random(3)
    decisions = Decisions(big=256 * 1024)
    server = _server(decisions, max_in_flight=8)
    kinds = [rng.choice(["LATE", "LATE", "WAIT", "LONE"]) for _ in range(40)]

    async def settler() -> None:
        while True:
            await trio.sleep(0.002)
            decisions.settle()

    with trio.fail_after(DEADLINE):
        async with _serving(server) as port, trio.open_nursery() as nursery:
            nursery.start_soon(settler)
            client = await _connect(port)
            client.stream.setsockopt(sockets.SOL_SOCKET, sockets.SO_RCVBUF, 64 * 1024)

            async def send() -> None:
                for index, kind in enumerate(kinds):
                    await client.stream.send_all(_append(f"Q-{kind}", f"m{index}"))
                    await trio.sleep(0.001)

            nursery.start_soon(send)
            await trio.sleep(0.05)  # (not reading: the writes stick)
            got = await client.answers(len(kinds))
            assert [text.split(":")[1].rstrip(".") for text in got] == [
                f"m{index}" for index in range(len(kinds))
            ]
            assert all(len(text) > 256 * 1024 for text in got)
            await client.stream.aclose()
            nursery.cancel_scope.cancel()


class _Stuck(_Direct):
    """Takes half of the first immediate write; the writer task's writes whole."""

    __slots__ = ("task_sent",)

    def __init__(self) -> None:
        super().__init__()
        self.task_sent: list[bytes] = []

    def send_now(self, data: bytes | memoryview) -> int:
        half = len(data) // 2 if not self.sent else len(data)
        self.sent.append(bytes(data[:half]))
        return half

    async def send_all(self, data: bytes | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.task_sent.append(bytes(data))


async def test_a_groups_callback_while_the_rest_of_a_write_waits_loses_nothing() -> None:
    """A group's head registered, its first answer written by the reader's kick, in part (the
    rest to the writer task); the group's last outcome then calls back: nothing may be
    written before the rest (``_known`` leaves it), and the writer task writes the rest, then
    the group's second answer."""
    socket = _Stuck()
    outbox = Outbox(BufferBudget(1 << 20).account())
    writer = AnswerWriter(socket, outbox, observe=lambda tally, now: None, plaintext_hint=None)
    group = PendingGroup(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        outbox.put("APPEND", 1.0, GroupAnswer(group, 0), 10)
        outbox.put("APPEND", 1.0, GroupAnswer(group, 1), 10)
        writer.kick()  # registers on the group
        group.set(0, MessageAppended(1))  # (the group not done: no callback)
        writer.kick()  # writes the first answer, half of it: the rest to the writer task
        assert writer._rest is not None and len(socket.sent) == 1
        group.set(1, MessageAppended(2))  # the group's callback, the rest still waiting
        assert len(socket.sent) == 1 and writer._rest is not None
        await trio.testing.wait_all_tasks_blocked()
        outbox.close()
        writer.kick()
    written = b"".join(socket.sent) + b"".join(socket.task_sent)
    first = encode_frame(encode_response(Appended(1, False)))
    second = encode_frame(encode_response(Appended(2, False)))
    assert written == first + second
    assert not outbox.answers and outbox.in_flight == 0
