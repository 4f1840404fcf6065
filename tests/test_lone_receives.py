"""The leader loop at one request in flight (docs/performance-history.md, "The leader loop per
request (sixth round)"):

- a receive that is exactly one whole frame is taken at once (``FrameDecoder.take_whole``):
  the frames and the errors are those ``feed`` then ``next_frame`` give, for any cut of a
  stream, frames of ``max_frame`` bytes, empty frames and frames too large included;
- a connection reads such a receive without a call of ``next_frame``, and answers each
  request, in order;
- a write of one answer (the writer's path for it) takes the frame, sizes and metrics tally
  the general path took;
- a proposal's ``Pending`` makes its ``trio.Event`` only for a task that waits.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from trio_broker._core._commands import MessageAppended
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol import Done, encode_response
from trio_broker._protocol._framing import FrameDecoder, FrameTooLarge, encode_frame
from trio_broker._runtime._answer import Answer, response_for
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._connections import ConnectionServer
from trio_broker._runtime._limits import BufferBudget
from trio_broker._runtime._outbox import Outbox
from trio_broker._runtime._pending import Pending
from trio_broker._runtime._runs import AppendAnswer
from trio_broker._runtime._security import Security
from trio_broker._runtime._work import Mapped
from trio_broker._runtime._writer import AnswerWriter

from .wire import RawConnection

MAX_FRAME = 300


def _cut(decoder: FrameDecoder, chunk: bytes, whole: bool) -> list[bytes | str]:
    """What one receive gives: its frames, then "too large" if the next frame is."""
    out: list[bytes | str] = []
    if whole:
        taken = decoder.take_whole(chunk)
        if taken is not None:
            return [taken]
    else:
        decoder.feed(chunk)
    try:
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    except FrameTooLarge:
        out.append("too large")
    return out


def test_take_whole_cuts_as_feed_and_next_frame_do():
    rng = random.Random(11)
    taken_whole = 0
    for _ in range(300):
        payloads = [b"p" * rng.choice([0, 1, 50, MAX_FRAME - 1, MAX_FRAME]) for _ in range(12)]
        if rng.random() < 0.3:  # a frame too large somewhere: the stream ends there
            payloads.insert(rng.randrange(len(payloads) + 1), b"L" * (MAX_FRAME + 1))
        stream = b"".join(map(encode_frame, payloads))
        chunks, start = [], 0
        while start < len(stream):
            if rng.random() < 0.5:  # a receive of exactly the next frame (one in flight)
                length = int.from_bytes(stream[start : start + 4], "big")
                size = 4 + length
            else:
                size = rng.choice([1, 3, 4, 5, 60, 400, 4096])
            chunks.append(stream[start : start + size])
            start += size
        one, two = FrameDecoder(MAX_FRAME), FrameDecoder(MAX_FRAME)
        for chunk in chunks:
            got = _cut(one, chunk, whole=True)
            assert got == _cut(two, chunk, whole=False)
            assert one.buffered == two.buffered
            taken_whole += len(got) == 1 and one.buffered == 0
            if got and got[-1] == "too large":
                break
    assert taken_whole > 200  # (receives of exactly one frame, nothing buffered before)


@pytest.mark.parametrize("received", [bytearray(encode_frame(b"x")), b"\x00\x00", b""])
def test_what_is_not_one_whole_frame_of_bytes_is_fed(received: Any):
    decoder = FrameDecoder(MAX_FRAME)
    assert decoder.take_whole(received) is None
    assert decoder.buffered == len(received)


async def test_a_connection_reads_a_receive_of_one_frame_without_next_frame(monkeypatch):
    calls = 0
    next_frame = FrameDecoder.next_frame

    def counted(self: FrameDecoder) -> bytes | None:
        nonlocal calls
        calls += 1
        return next_frame(self)

    monkeypatch.setattr(FrameDecoder, "next_frame", counted)
    handled: list[Any] = []

    async def handle(request: Any, session: Any) -> Answer:
        handled.append(request.data)
        return Answer(now=Done())

    server = ConnectionServer(
        BrokerConfig(data_dir="unused", port=0),
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
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as connections:
        await connections.start(server.serve, listeners, connections)
        conn = await RawConnection.open(port)
        with trio.fail_after(20):
            for i in range(30):  # one at a time: each receive is the one frame
                answer = await conn.call({"operation": "APPEND", "queue_name": "Q-A", "data": i})
                assert answer == {"status": "success"}
        assert handled == list(range(30))
        assert calls == 0
        await conn.aclose()
        connections.cancel_scope.cancel()


class _IO:
    def send_now(self, data: bytes) -> int:
        return len(data)


@pytest.mark.parametrize("outcome", ["appended", "duplicate", "refused", "unknown"])
def test_a_write_of_one_answer_takes_its_frame_and_tally(outcome: str):
    """The writer's path for one answer queued (one request in flight): the frame, sizes and
    tally a write of it took before, for an appended message and for what has no frame of
    its own (a duplicate, a refusal: written from its response, with its error code)."""
    tallies: list[dict[tuple[str, Any, float], int]] = []
    outbox = Outbox(BufferBudget(1 << 20).account())
    writer = AnswerWriter(
        _IO(),  # type: ignore[arg-type]
        outbox,
        observe=lambda tally, now: tallies.append(tally),
        plaintext_hint=None,
    )
    pending = Pending()
    answer: Answer = AppendAnswer(pending)
    code = None
    if outcome == "appended":
        pending.set(MessageAppended(7))
        response: Any = {"status": "success", "sequence_num": 7}
    elif outcome == "duplicate":
        pending.set(MessageAppended(7, duplicate=True))
        response = orjson.loads(encode_response(response_for(MessageAppended(7, True))))
    elif outcome == "refused":
        error = BrokerError(ErrorCode.TOO_LARGE, "too large")
        answer, code = Answer(now=error), ErrorCode.TOO_LARGE
        response = orjson.loads(encode_response(error))
    else:
        assert writer._take() is None  # (nothing queued)
        outbox.put("APPEND", 2.5, answer, 40)
        assert writer._take() is None and len(outbox.answers) == 1  # (not known yet)
        return
    outbox.put("APPEND", 2.5, answer, 40)
    taken = writer._take()
    assert taken is not None
    frames, size, charged, count = taken
    assert [orjson.loads(frame[4:]) for frame in frames] == [response]
    assert (size, charged, count) == (len(frames[0]), 40, 1)
    assert tallies == [{("APPEND", code, 2.5): 1}] and not outbox.answers


async def test_a_pending_outcome_makes_its_event_only_for_a_waiter():
    """A connection's answer is written from ``when_done``'s callback: no ``trio.Event`` is
    made for it; a task that waits still gets the outcome, and a wait on an outcome known
    already still checkpoints, as a set Event's wait does."""
    written: list[Any] = []
    pending = Pending()
    assert pending.when_done(lambda: written.append(pending.result))
    pending.set("outcome")
    assert written == ["outcome"] and pending.done and pending._event is None
    assert not pending.when_done(lambda: written.append("again"))
    with trio.testing.assert_checkpoints():
        assert await pending.wait() == "outcome"

    waited = Pending()
    got: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            got.append(await waited.wait())

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not waited.done
        waited.set("later")
        waited.set("ignored")  # (a second outcome changes nothing)
    assert got == ["later"] and waited.result == "later"


@pytest.mark.parametrize("kind", ["converted", "duplicate", "refused"])
def test_a_write_of_one_answer_without_a_frame_makes_its_response_once(kind: str, monkeypatch):
    """An answer with no frame of its own (a GROUP_READ's messages, a duplicate, a refusal)
    alone in the queue: the one-answer take asks its response once, as the general path did
    before it (the conversion of a GROUP_READ of 100 messages is most of its answer's CPU:
    made twice, a lone GROUP_READ cost half as much again as before this round)."""
    converted: list[Any] = []

    def convert(result: Any) -> Any:
        converted.append(result)
        return response_for(result)

    pending = Pending()
    if kind == "converted":
        pending.set(MessageAppended(7))
        answer: Answer = Answer(later=Mapped(pending, convert))
    elif kind == "duplicate":
        pending.set(MessageAppended(7, duplicate=True))
        answer = AppendAnswer(later=pending)
    else:
        answer = Answer(now=BrokerError(ErrorCode.TOO_LARGE, "too large"))
    asked = 0
    known = type(answer).known

    def counted(self: Answer) -> Any:
        nonlocal asked
        asked += 1
        return known(self)

    monkeypatch.setattr(type(answer), "known", counted)
    outbox = Outbox(BufferBudget(1 << 20).account())
    writer = AnswerWriter(
        _IO(),  # type: ignore[arg-type]
        outbox,
        observe=lambda tally, now: None,
        plaintext_hint=None,
    )
    outbox.put("GROUP_READ", 2.5, answer, 40)
    taken = writer._take()
    assert taken is not None and taken[3] == 1 and not outbox.answers
    assert asked == 1
    assert len(converted) == (kind == "converted")
