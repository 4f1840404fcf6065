"""An answer's callback once it is known (``AnswerWriter._known``, what ``when_known``
registers on a TCP connection) writes without asking the head again whether it is known: at
one request in flight the head that calls back is the one it was registered on, known. What
it writes, and when, is what the pump wrote before (the pump's random histories of
``tests/test_pump_differential.py``, the callback registered being ``_known``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_pump_differential import _history, _OldPump
from tests.test_pump_registers import _Counted, _frame
from trio_broker._core._commands import MessageAppended
from trio_broker._runtime._direct import DirectSocket
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import Pending
from trio_broker._runtime._writer import AnswerWriter


class _Asked(_Counted):
    """Also counts ``when_known``."""

    __slots__ = ()

    def when_known(self, callback: Any) -> bool:
        self.asked.append("when_known")
        return super().when_known(callback)


class _Direct(DirectSocket):
    """A TCP connection's socket, its sends kept (the writer's immediate path is taken)."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self._sending = False

    def send_now(self, data: bytes | memoryview) -> int:
        self.sent.append(bytes(data))
        return len(data)


def test_the_callback_of_a_known_head_writes_it_without_asking_again() -> None:
    socket = _Direct()
    outbox = Outbox(BufferBudget(1 << 20).account())
    writer = AnswerWriter(socket, outbox, observe=lambda tally, now: None, plaintext_hint=None)
    writer._idle = True  # (the writer task waits for answers)
    for sequence_num in (1, 2, 3):
        pending = Pending()
        answer = _Asked(pending)
        outbox.put("APPEND", 1.0, answer, 10)
        writer.kick()  # (the reader's, once it queued the answer: registers)
        assert answer.asked == ["when_known"]
        pending.set(MessageAppended(sequence_num))
        assert answer.asked == ["when_known", "frame"]  # (before: when_known twice)
        assert socket.sent[-1] == _frame(sequence_num)
    assert socket.sent == [_frame(1), _frame(2), _frame(3)]
    assert not outbox.answers and outbox.in_flight == 0


class _KnownCallback(AnswerWriter):
    """The writer as on a TCP connection: what ``_history`` registers as the callback
    (``pump``) is the writer's own (``_known``)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_on_known" and value is not None and value == self.pump:
            value = self._known
        object.__setattr__(self, name, value)


@pytest.mark.parametrize("seed", range(40))
def test_the_known_callback_writes_as_the_pump_did(seed: int) -> None:
    assert _history(seed, _KnownCallback) == _history(seed, _OldPump)
