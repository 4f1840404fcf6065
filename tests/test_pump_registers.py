"""``AnswerWriter.pump`` with a head not known yet registers its callback without asking the
answer for its frame or its response (docs/performance-history.md, "Pipelined appends and 100
connections (eighth round)"): at one request in flight that is the reader's kick after each
proposal's answer is queued. What it writes, and when, is as before: the answer settled later
is written by the settling task, in order, once; one known at once is written at once; one
that cannot call back wakes the writer task."""

from __future__ import annotations

from typing import Any

from trio_broker._core._commands import MessageAppended
from trio_broker._protocol import encode_frame, encode_response
from trio_broker._protocol._messages import Appended
from trio_broker._runtime._answer import Answer
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import Pending
from trio_broker._runtime._runs import AppendAnswer
from trio_broker._runtime._writer import AnswerWriter


class _Socket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_now(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)


class _Counted(AppendAnswer):
    """An APPEND's answer that counts the writer's questions."""

    __slots__ = ("asked",)

    def __init__(self, later: Pending) -> None:
        super().__init__(later)
        self.asked: list[str] = []

    def frame(self) -> bytes | None:
        self.asked.append("frame")
        return super().frame()

    def known(self) -> Any:
        self.asked.append("known")
        return super().known()


def _writer() -> tuple[AnswerWriter, Outbox, _Socket]:
    outbox = Outbox(BufferBudget(1 << 20).account())
    socket = _Socket()
    writer = AnswerWriter(
        socket,  # type: ignore[arg-type]
        outbox,
        observe=lambda tally, now: None,
        plaintext_hint=None,
    )
    writer._on_known = writer.pump  # (as on a DirectSocket: the settling task writes)
    writer._idle = True  # (the writer task waits for answers)
    return writer, outbox, socket


def _frame(sequence_num: int) -> bytes:
    return encode_frame(encode_response(Appended(sequence_num)))


def test_a_head_not_known_registers_without_asking_for_its_frame() -> None:
    writer, outbox, socket = _writer()
    pending = Pending()
    answer = _Counted(pending)
    outbox.put("APPEND", 1.0, answer, 10)
    writer.pump()
    assert answer.asked == []  # (before: its frame, then its response, then the same call)
    assert socket.sent == []
    assert pending._notify == writer.pump
    pending.set(MessageAppended(7))  # (the settling task's call back writes it)
    assert socket.sent == [_frame(7)]
    assert not outbox.answers and outbox.in_flight == 0


def test_answers_behind_a_head_not_known_wait_for_it_and_leave_in_order() -> None:
    writer, outbox, socket = _writer()
    first, second = Pending(), Pending()
    outbox.put("APPEND", 1.0, _Counted(first), 10)
    outbox.put("APPEND", 1.0, _Counted(second), 10)
    second.set(MessageAppended(2))
    writer.pump()
    assert socket.sent == []
    first.set(MessageAppended(1))
    assert b"".join(socket.sent) == _frame(1) + _frame(2)


def test_a_known_head_is_written_at_once() -> None:
    writer, outbox, socket = _writer()
    pending = Pending()
    pending.set(MessageAppended(3))
    outbox.put("APPEND", 1.0, _Counted(pending), 10)
    writer.pump()
    assert socket.sent == [_frame(3)]


def test_a_head_that_cannot_call_back_wakes_the_writer_task() -> None:
    writer, outbox, socket = _writer()

    class _Poll:  # (a long poll: no when_done)
        done = False
        result = None

    woken: list[bool] = []

    class _Event:  # (the writer task's wait: set by _wake)
        def set(self) -> None:
            woken.append(True)

    writer._more = _Event()  # type: ignore[assignment]
    outbox.put("READ", 1.0, Answer(later=_Poll()), 10)  # type: ignore[arg-type]
    writer.pump()
    assert woken == [True] and socket.sent == []
