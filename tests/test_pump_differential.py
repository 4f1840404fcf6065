"""``AnswerWriter.pump`` registering a head not known yet before anything else (the eighth
round) against the pump before it, driven through the same random histories: answers of
lone proposals, known ones, runs of a group (``GroupRun``) and answers that cannot call back
queued; the reader's kicks; outcomes settled one by one or several in one ``settling`` block
(a head settled between its registration and the next kick included); sends the socket
takes only in part (the rest to the writer task, which then writes it); the outbox closed.
Both must write the same bytes in the same writes, wake the writer task at the same points
and count the same answers for the metrics."""

from __future__ import annotations

import random
from typing import Any

import pytest

from trio_broker._core._commands import BatchAppended, MessageAppended
from trio_broker._runtime._answer import Answer
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import GroupRun, Pending, PendingGroup, settling
from trio_broker._runtime._runs import AppendAnswer
from trio_broker._runtime._writer import AnswerWriter


class _OldPump(AnswerWriter):
    """The pump as it was before the head's registration came first."""

    __slots__ = ()

    def pump(self) -> None:
        if not self._idle or self._rest is not None:
            return
        outbox = self._outbox
        answers = outbox.answers
        io = self._io
        try:
            while answers:
                taken = self._take()
                if taken is None:
                    if not (
                        self._on_known is not None and answers[0][0].when_known(self._on_known)
                    ):
                        self._wake()
                    return
                out, size, charged, count = taken
                data = b"".join(out) if len(out) > 1 else out[0]
                sent = io.send_now(data)  # type: ignore[union-attr]
                if sent < len(data):
                    outbox.account.charge(size)
                    self._rest = (memoryview(data)[sent:], charged, size, count)
                    self._wake()
                    return
                outbox.account.release(charged)
                outbox.written(count)
            if outbox.closed:
                self._wake()
        except Exception as exc:
            self._failed = exc
            self._wake()


class _Socket:
    def __init__(self, log: list[Any], rng: random.Random) -> None:
        self.log, self.rng = log, rng

    def send_now(self, data: bytes) -> int:
        sent = len(data) if self.rng.random() < 0.85 else self.rng.randrange(len(data))
        self.log.append(("sent", bytes(data[:sent])))
        return sent


class _Wake:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def set(self) -> None:
        self.log.append(("woken",))


class _Poll:  # (a long poll: its answer cannot call back)
    done = False
    result = None


def _history(seed: int, cls: type[AnswerWriter]) -> list[Any]:
    rng = random.Random(seed)
    log: list[Any] = []
    outbox = Outbox(BufferBudget(1 << 20).account())
    writer = cls(
        _Socket(log, random.Random(seed + 1)),  # type: ignore[arg-type]
        outbox,
        observe=lambda tally, now: log.append(("tally", sorted(tally.items()))),
        plaintext_hint=None,
    )
    writer._on_known = writer.pump

    def idle() -> None:  # (the writer task back to its wait, holding nothing)
        writer._more = _Wake(log)  # type: ignore[assignment]
        writer._idle = True

    def task_turn() -> None:
        """The writer task's turn once woken: the rest of a write, then back to its wait
        (what it would write of the queue itself, the pump writes at its next call)."""
        if writer._rest is not None:
            rest, charged, size, count = writer._rest
            log.append(("task sent", bytes(rest)))
            writer._rest = None
            outbox.account.release(charged + size)
            outbox.written(count)
        idle()

    idle()
    open_ones: list[tuple[Any, Any]] = []  # (what settles each: a Pending or a group's index)
    seq = 0
    for _ in range(60):
        r = rng.random()
        if r < 0.35 and not outbox.closed:
            kind = rng.random()
            if kind < 0.5:
                pending = Pending()
                outbox.put("APPEND", 1.0, AppendAnswer(pending), 10)
                open_ones.append(("one", pending))
            elif kind < 0.6:
                pending = Pending()
                seq += 1
                pending.set(MessageAppended(seq))
                outbox.put("APPEND", 1.0, AppendAnswer(pending), 10)
            elif kind < 0.65:
                outbox.put("READ", 1.0, Answer(later=_Poll()), 10)  # type: ignore[arg-type]
            else:
                count = rng.randrange(1, 5)
                group = PendingGroup(count)
                outbox.put_many([("APPEND", 2.0, 10)] * count, GroupRun(group, 0, count))
                open_ones.extend(("group", (group, i)) for i in range(count))
            if rng.random() < 0.8:
                writer.kick()
        elif r < 0.75 and open_ones:
            chosen = [open_ones.pop(rng.randrange(len(open_ones)))]
            if open_ones and rng.random() < 0.3:
                chosen.append(open_ones.pop(rng.randrange(len(open_ones))))
            with settling():
                for kind, target in chosen:
                    seq += 1
                    outcome: Any = MessageAppended(seq, duplicate=rng.random() < 0.1)
                    if rng.random() < 0.05:
                        outcome = BatchAppended(seq, 2)
                    if kind == "one":
                        target.set(outcome)
                    else:
                        target[0].set(target[1], outcome)
        elif r < 0.85:
            writer.kick()
        elif r < 0.95:
            if not writer._idle or writer._rest is not None:
                task_turn()
                writer.kick()
        elif not outbox.closed:
            outbox.close()
            writer.kick()
        log.append(("state", writer._idle, writer._rest is not None, len(outbox.answers)))
    return log


@pytest.mark.parametrize("seed", range(40))
def test_the_pump_writes_as_before(seed: int) -> None:
    assert _history(seed, AnswerWriter) == _history(seed, _OldPump)
