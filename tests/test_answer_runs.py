"""A receive's run of APPENDs answered as one (``GroupRun``, docs/performance-history.md, "The
leader's pipelined appends (fourth round)"):

- ``Runs.handle_many`` gives a run of the original contract's APPENDs as one ``GroupRun``,
  which reads as the list of ``RunAnswer`` it replaces;
- the writer takes its appended messages in one piece, with no ``RunAnswer`` and no
  ``appended_frame`` per answer, and writes the bytes, counts and tally the answers one by
  one give; within the write's bound of answers, the rest left at the head;
- what it holds otherwise (a duplicate, a refusal, an outcome not known yet) is taken one
  answer at a time, in order;
- ``appended_frames`` is the frames of ``appended_frame`` one after the other.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.stand_in_driver import StandInDriver
from trio_broker._core import _commands as cmd
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol import _messages as m
from trio_broker._protocol._codec import appended_frame, appended_frames
from trio_broker._runtime import _pending, _writer
from trio_broker._runtime._answer import Answer
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import GroupRun, PendingGroup, RunAnswer
from trio_broker._runtime._runs import Runs
from trio_broker._runtime._writer import MAX_WRITE_BATCH, AnswerWriter


class _IO:
    def send_now(self, data: bytes) -> int:
        return len(data)


def _writer_of(outbox: Outbox, tallies: list[dict[Any, int]]) -> AnswerWriter:
    return AnswerWriter(
        _IO(),  # type: ignore[arg-type]
        outbox,
        observe=lambda tally, now: tallies.append(dict(tally)),
        plaintext_hint=None,
    )


def _group(results: list[Any]) -> PendingGroup:
    group = PendingGroup(len(results))
    for index, result in enumerate(results):
        if result is not None:
            group.set(index, result)
    return group


def _one_by_one(group: PendingGroup, infos: list[tuple[str, float, int]]) -> Any:
    """What the writer takes of the same answers queued one by one (the path before)."""
    tallies: list[dict[Any, int]] = []
    outbox = Outbox(BufferBudget(1 << 20).account())
    outbox.put_many(infos, [RunAnswer(group, index) for index in range(len(infos))])
    writer = _writer_of(outbox, tallies)
    taken = []
    while (got := writer._take()) is not None:
        taken.append(got)
    return taken, tallies


async def test_a_run_of_appends_is_answered_as_one_group_run():
    driver = StandInDriver()
    runs = Runs(
        BrokerConfig(data_dir=".", port=0),
        driver,  # type: ignore[arg-type]
        handle=None,  # type: ignore[arg-type]  (every request joins the run)
        closing=lambda: False,
        wall_clock_ms=lambda: 1,
    )
    given: list[Any] = []
    await runs.handle_many([m.Append("Q-A", i) for i in range(5)], None, given.append)
    [run] = given
    assert type(run) is GroupRun and len(run) == 5
    assert [(type(a), a._group, a._index) for a in run] == [
        (RunAnswer, driver.groups[0], index) for index in range(5)
    ]
    # a run with anything else in it is answered as before, one answer each
    given.clear()
    await runs.handle_many([m.Append("Q-A", 1), m.AckRequest("Q-A", "c", 1)], None, given.append)
    assert [type(a) for a in given[0]] == [RunAnswer, RunAnswer]


def test_the_writer_takes_a_group_run_in_one_piece(monkeypatch):
    numbers = [7, 8, 9, 10, 11] + [random.randrange(2**63) for _ in range(40)]
    group = _group([cmd.MessageAppended(number) for number in numbers])
    infos = [("APPEND", 1.5, 100 + index) for index in range(len(numbers))]
    expected, expected_tallies = _one_by_one(group, infos)

    def one_by_one(*_args: Any) -> Any:
        raise AssertionError("an answer taken alone")

    monkeypatch.setattr(_pending, "RunAnswer", one_by_one)
    monkeypatch.setattr(_pending, "appended_frame", one_by_one)
    tallies: list[dict[Any, int]] = []
    outbox = Outbox(BufferBudget(1 << 20).account())
    outbox.put_many(infos, GroupRun(group, 0, len(numbers)))
    assert outbox.in_flight == len(numbers)
    taken = _writer_of(outbox, tallies)._take()
    assert taken is not None
    frames, size, charged, count = taken
    assert b"".join(frames) == b"".join(b"".join(got[0]) for got in expected)
    assert count == len(numbers) and charged == sum(info[2] for info in infos)
    assert size == sum(map(len, frames))
    assert tallies == expected_tallies == [{("APPEND", None, 1.5): len(numbers)}]
    assert not outbox.answers


def test_a_group_run_longer_than_a_write_leaves_the_rest_at_the_head():
    count = MAX_WRITE_BATCH + 10
    group = _group([cmd.MessageAppended(1000 + index) for index in range(count)])
    infos = [("APPEND", 1.0, 1) for _ in range(count)]
    tallies: list[dict[Any, int]] = []
    outbox = Outbox(BufferBudget(1 << 20).account())
    outbox.put_many(infos, GroupRun(group, 0, count))
    writer = _writer_of(outbox, tallies)
    first, second = writer._take(), writer._take()
    assert first is not None and second is not None and writer._take() is None
    assert (first[3], second[3]) == (MAX_WRITE_BATCH, 10)
    assert b"".join(first[0] + second[0]) == b"".join(
        appended_frame(1000 + index) for index in range(count)
    )
    assert tallies == [{("APPEND", None, 1.0): MAX_WRITE_BATCH}, {("APPEND", None, 1.0): 10}]


@pytest.mark.parametrize(
    "results",
    [
        # a duplicate among them
        [cmd.MessageAppended(1), cmd.MessageAppended(2, duplicate=True), cmd.MessageAppended(3)],
        # a refusal among them (the ledger's, or the disk's)
        [cmd.MessageAppended(1), BrokerError(ErrorCode.NOT_LEADER, "no"), cmd.MessageAppended(3)],
        # the first two known, the last not yet (the run cut over two entries)
        [cmd.MessageAppended(1), cmd.MessageAppended(2), None],
        # none known yet
        [None, None, None],
    ],
)
def test_what_a_group_run_holds_otherwise_is_taken_one_by_one(results):
    group = _group(results)
    infos = [("APPEND", 1.0, 10) for _ in results]
    expected, expected_tallies = _one_by_one(group, infos)
    tallies: list[dict[Any, int]] = []
    outbox = Outbox(BufferBudget(1 << 20).account())
    outbox.put_many(infos, GroupRun(group, 0, len(results)))
    writer = _writer_of(outbox, tallies)
    taken = []
    while (got := writer._take()) is not None:
        taken.append(got)
    assert taken == expected and tallies == expected_tallies
    known = sum(result is not None for result in results) if results[0] is not None else 0
    assert sum(got[3] for got in taken) == known
    waiting = sum(len(e[0]) if type(e[0]) is GroupRun else 1 for e in outbox.answers)
    assert waiting == len(results) - known  # (the rest waits, in order)
    if known < len(results):
        head = outbox.answers[0][0]
        calls: list[int] = []
        assert head.when_known(lambda: calls.append(1))
        for index, result in enumerate(results):
            if result is None:
                group.set(index, cmd.MessageAppended(index + 1))
        assert calls == [1]
        rest = writer._take()
        assert rest is not None and rest[3] == len(results) - known


def test_a_group_run_answers_when_its_first_outcome_is_known():
    group = PendingGroup(3)
    run = GroupRun(group, 0, 3)
    calls: list[int] = []
    assert run.when_known(lambda: calls.append(1))
    group.set(0, cmd.MessageAppended(1))
    group.set(1, cmd.MessageAppended(2))
    assert calls == [] and run.head_known()
    group.set(2, cmd.MessageAppended(3))
    assert calls == [1] and not run.when_known(lambda: calls.append(2))


def test_appended_frames_are_the_frames_one_after_the_other():
    cases = [[0], [9, 10, 11], [99, 5, 100], [2**63 - 1, 1], [10**19, 10**19 + 1]]
    cases += [
        [random.randrange(2 ** random.randrange(1, 64)) for _ in range(random.randrange(1, 40))]
        for _ in range(300)
    ]
    for numbers in cases:
        assert appended_frames(numbers) == b"".join(map(appended_frame, numbers))


def test_the_writer_counts_what_it_wrote():
    """The outbox's slots are freed by the answers written, not by the writes' pieces."""
    group = _group([cmd.MessageAppended(index + 1) for index in range(20)])
    outbox = Outbox(BufferBudget(1 << 20).account())
    refused = Answer(now=BrokerError(ErrorCode.TOO_LARGE, "no"))
    outbox.put("APPEND", 1.0, refused, 5)
    outbox.put_many([("APPEND", 1.0, 5)] * 20, GroupRun(group, 0, 20))
    writer = _writer_of(outbox, [])
    writer._idle = True  # (the writer task waits: the pump writes)
    writer.pump()
    assert outbox.in_flight == 0 and not outbox.answers
    assert _writer.MAX_WRITE_BATCH >= 21


# -- the order and the bound of a write with a GroupRun among other answers -------------------


class _SentWhole:
    def send_now(self, data: bytes) -> int:
        return len(data)


def _plain_writer(outbox: Outbox) -> AnswerWriter:
    return AnswerWriter(_SentWhole(), outbox, observe=lambda t, n: None, plaintext_hint=None)  # type: ignore[arg-type]


def _frames(taken: list[Any]) -> list[bytes]:
    data = b"".join(b"".join(t[0]) for t in taken)
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def test_a_group_runs_fallback_keeps_the_answers_behind_it_behind_it():
    group = PendingGroup(3)
    group.set(0, cmd.MessageAppended(1))
    group.set(1, BrokerError(ErrorCode.NOT_LEADER, "lost"))  # (the fallback: one by one)
    group.set(2, cmd.MessageAppended(2))
    outbox = Outbox(BufferBudget(1 << 20).account())
    outbox.put_many([("APPEND", 1.0, 1)] * 3, GroupRun(group, 0, 3))
    outbox.put("READ", 1.0, Answer(now=BrokerError(ErrorCode.QUEUE_NOT_FOUND, "after")), 1)
    writer = _plain_writer(outbox)
    taken = []
    while (got := writer._take()) is not None:
        taken.append(got)
    frames = _frames(taken)
    assert len(frames) == 4
    assert b'"sequence_num":1' in frames[0] and b"lost" in frames[1]
    assert b'"sequence_num":2' in frames[2] and b"after" in frames[3]


def test_a_write_holds_at_most_max_write_batch_answers_with_a_group_run_after_others():
    count = MAX_WRITE_BATCH * 2
    group = PendingGroup(count)
    for index in range(count):
        group.set(index, cmd.MessageAppended(index + 1))
    outbox = Outbox(BufferBudget(1 << 20).account())
    for _ in range(10):
        outbox.put("READ", 1.0, Answer(now=BrokerError(ErrorCode.QUEUE_NOT_FOUND, "x")), 1)
    outbox.put_many([("APPEND", 1.0, 1)] * count, GroupRun(group, 0, count))
    writer = _plain_writer(outbox)
    sizes = []
    while (got := writer._take()) is not None:
        sizes.append(got[3])
        assert got[3] == len(_frames([got]))
    assert sum(sizes) == count + 10 and max(sizes) <= MAX_WRITE_BATCH, sizes
