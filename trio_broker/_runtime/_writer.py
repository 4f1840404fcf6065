"""One connection's answers written in request order (:mod:`._connections`), and, on a TCP
connection, written by whoever learns they are known (docs/performance-history.md, "One request in
flight: answers written as they are settled").

The connection's reader queues each answer in the :class:`~._outbox.Outbox`; every answer
known at that moment (up to a bound) leaves in one write. Who makes the write:

- On a plain TCP connection (:class:`~._direct.DirectSocket`), while the writer task is idle:
  the reader once it queued answers known at once (a refusal), or, for a proposal, the task that
  settles its outcome (the driver): the answer at the head of the queue holds a callback
  (``Answer.when_known``), :meth:`AnswerWriter.pump`, which writes every answer known then with
  one non-blocking system call (``DirectSocket.send_now``). No task wakes per answer.
- The writer task writes what could not be written at once (the rest of a partial write: a
  client that does not read), and awaits every answer that cannot call back (a long poll), as
  it does every answer on TLS and in-memory streams.

Order: one of them writes at a time. :meth:`~AnswerWriter.pump` writes only while the writer
task holds nothing (it waits for answers, and no rest of a write is left); both take answers
from the head of the queue, and the pump completes its write, or hands the rest to the writer
task, without yielding. A client that does not read: the rest waits in the writer task's
``send_all`` (cancellable), its bytes charged to the buffer budget until written as every
answer's are, so that reading stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

import trio

from .._errors import BrokerError
from .._protocol import encode_frame, encode_response
from ._direct import DirectSocket
from ._outbox import Outbox
from ._pending import GroupRun

MAX_WRITE_BATCH = 64
MAX_WRITE_BYTES = 1024 * 1024
"""Answers already known that go out in one write: at most so many, and about so many bytes
(each charged to the buffer budget while it is written)."""

ObserveBatch = Callable[[dict[tuple[str, Any, float], int], float], None]
"""Told the answers of each write: how many per (operation, error code or None, when their
receive began), and when they were encoded to leave."""


class AnswerWriter:
    """The answers of one connection, written in request order (see the module's docstring)."""

    __slots__ = (
        "_failed",
        "_idle",
        "_io",
        "_more",
        "_observe",
        "_on_known",
        "_outbox",
        "_plaintext_hint",
        "_rest",
    )

    def __init__(
        self,
        io: trio.abc.Stream | DirectSocket,
        outbox: Outbox,
        *,
        observe: ObserveBatch,
        plaintext_hint: Callable[[BrokerError], BrokerError] | None,
    ) -> None:
        self._io = io
        self._outbox = outbox
        self._observe = observe
        self._plaintext_hint = plaintext_hint
        self._idle = False
        """The writer task waits for answers and holds none: another task may write."""
        self._more: trio.Event | None = None
        self._rest: tuple[Any, int, int, int] | None = None
        """A write the immediate path could not complete: (the bytes left, the requests'
        bytes held, the answers' size, how many answers), for the writer task."""
        self._failed: Exception | None = None
        """What the immediate path failed with (a bug): the writer task raises it."""
        self._on_known: Callable[[], None] | None = (
            self._known if isinstance(io, DirectSocket) else None
        )
        """What an answer calls once it is known (a TCP connection's): :meth:`_known`."""

    def kick(self) -> None:
        """Answers were queued (or the outbox closed): write those known now, or see that the
        writer task will."""
        if self._on_known is not None:
            self.pump()
        elif self._outbox.answers or self._outbox.closed:
            self._wake()

    def _wake(self) -> None:
        if self._more is not None:
            self._more.set()
            self._more = None
            self._idle = False

    def pump(self) -> None:
        """Write every answer known now, at once, if the writer task holds nothing; what is
        left of a write, or an answer that cannot call back, goes to the writer task."""
        if not self._idle or self._rest is not None:
            return  # the writer task holds answers: it takes these after them
        answers = self._outbox.answers
        on_known = self._on_known
        # A head not known yet (the reader's kick after it queued a proposal's answer: once
        # per request at one request in flight) registers at once: ``when_known`` is True
        # only for an answer not known now, of which ``_take`` takes nothing, so its
        # ``frame`` and ``known`` before the same registration were calls for nothing.
        try:
            if answers and on_known is not None and answers[0][0].when_known(on_known):
                return
        except Exception as exc:  # (a bug must not reach the task that queued the answer)
            self._failed = exc
            self._wake()
            return
        self._known()

    def _known(self) -> None:
        """:meth:`pump` without its first question: what a head's ``when_known`` calls once
        it is known (asking it again whether it is known would only answer False, about
        0.09 µs per answer at one request in flight)."""
        if not self._idle or self._rest is not None:
            return  # the writer task holds answers: it takes these after them
        outbox = self._outbox
        answers = outbox.answers
        io = self._io
        on_known = self._on_known
        try:
            while answers:
                taken = self._take()
                if taken is None:  # the head is not known yet
                    if not (on_known is not None and answers[0][0].when_known(on_known)):
                        self._wake()
                    return
                out, size, charged, count = taken
                data = b"".join(out) if len(out) > 1 else out[0]
                sent = io.send_now(data)  # type: ignore[union-attr]  (a DirectSocket here)
                if sent < len(data):
                    outbox.account.charge(size)
                    self._rest = (memoryview(data)[sent:], charged, size, count)
                    self._wake()
                    return
                outbox.account.release(charged)
                outbox.written(count)
            if outbox.closed:
                self._wake()  # the writer task ends
        except Exception as exc:  # (a bug must not reach the task that settled an outcome)
            self._failed = exc  # (answers may be lost: the writer task ends the connection)
            self._wake()

    async def run(self) -> None:
        """The writer task: writes what the immediate path leaves, until the outbox is closed
        and empty. Its bytes are charged to the budget until written: answers waiting for a
        client that does not read count there, so that reading stops (not only once the
        socket's buffers are full)."""
        outbox = self._outbox
        answers = outbox.answers
        account = outbox.account
        io = self._io
        try:
            while True:
                if self._failed is not None:
                    raise self._failed
                if self._rest is not None:
                    rest, charged, size, count = self._rest
                    await io.send_all(rest)
                    self._rest = None
                    account.release(charged + size)
                    outbox.written(count)
                    continue
                if not answers:
                    if outbox.closed:
                        return
                    await self._wait()
                    continue
                taken = self._take()
                if taken is None:
                    head = answers[0][0]
                    if self._on_known is not None and head.when_known(self._on_known):
                        await self._wait()
                        continue
                    # What cannot call back is awaited here (and a long poll's response is
                    # known only as the value its wait returns: written with it).
                    taken = self._take(await head.response())
                    assert taken is not None
                out, size, charged, count = taken
                account.charge(size)
                await io.send_all(b"".join(out) if len(out) > 1 else out[0])
                account.release(charged + size)
                outbox.written(count)
        finally:
            self._idle = False
            self._on_known = None  # (late outcomes: nobody writes any more)

    async def _wait(self) -> None:
        """Idle until :meth:`_wake`: meanwhile the immediate path may write."""
        self._more = event = trio.Event()
        self._idle = True
        try:
            await event.wait()
        finally:
            self._idle = False
            self._more = None

    def _take(self, head: Any = None) -> tuple[list[bytes], int, int, int] | None:
        """Take the answers known at the head of the queue (up to the bounds), encoded, and
        count them for the metrics: (their frames, their size, the requests' bytes held,
        how many answers); None when the head is not known. ``head``: the first answer's
        response, awaited.

        The metrics' tally is counted in runs of one key (the answers of one receive share
        their operation, outcome and start): one dictionary update per run, not per answer.
        A :class:`~._pending.GroupRun`'s appended messages are taken together, their frames
        written in one join (:meth:`~._pending.GroupRun.appended`); what it holds otherwise
        (a refusal, a duplicate, an outcome not known yet past its first) is taken one
        answer at a time, as any other."""
        answers = self._outbox.answers
        if len(answers) == 1 and head is None:  # (one request in flight: one answer a write)
            answer, info = answers[0]
            if type(answer) is not GroupRun:
                frame = answer.frame()  # (an appended message's: a success, no error code)
                if frame is not None:
                    answers.popleft()
                    operation, started, held = info
                    self._observe({(operation, None, started): 1}, time.perf_counter())
                    return [frame], len(frame), held, 1
                head = answer.known()
                if head is None:
                    return None  # (not known yet: the reader's kick after it queued it)
                # (known: the loop below encodes it from this response, not a second
                # ``known``, whose conversion may be most of the answer's cost: a
                # GROUP_READ's messages)
        hint = self._plaintext_hint
        out: list[bytes] = []
        size = charged = taken = 0
        tally: dict[tuple[str, Any, float], int] = {}
        key: tuple[str, Any, float] | None = None
        count = 0
        """The answers taken since the key of the run being counted last changed."""
        while answers and taken < MAX_WRITE_BATCH and size < MAX_WRITE_BYTES:
            answer, info = answers[0]
            if type(answer) is GroupRun:
                head = None  # (awaited for a run: only that its first answer is known)
                if not answer.head_known():
                    break  # write what is known; then wait for this one
                got = answer.appended(MAX_WRITE_BATCH - taken)
                if got is None:  # (one by one, in place of the run)
                    answers.popleft()
                    answers.extendleft(reversed(list(zip(answer.answers(), info, strict=True))))
                    continue
                frames, number = got
                if number < len(info):
                    answers[0] = (answer, info[number:])
                    info = info[:number]
                else:
                    answers.popleft()
                if key is not None:
                    tally[key] = tally.get(key, 0) + count
                    key, count = None, 0
                operation, started, _ = info[0]
                if started == info[-1][1]:  # (one receive's: the start only grows)
                    run_key = (operation, None, started)
                    tally[run_key] = tally.get(run_key, 0) + number
                else:
                    for operation, started, _ in info:
                        run_key = (operation, None, started)
                        tally[run_key] = tally.get(run_key, 0) + 1
                out.append(frames)
                size += len(frames)
                charged += sum(map(_CHARGED, info))
                taken += number
                continue
            frame, code = answer.frame(), None  # (an appended message's: its bytes)
            response, head = head, None
            if frame is None:
                if response is None:
                    response = answer.known()
                if response is None:
                    break  # write what is known; then wait for this one
                if hint is not None and isinstance(response, BrokerError):
                    response = hint(response)
                code = getattr(response, "code", None)
                frame = encode_frame(encode_response(response))
            answers.popleft()
            operation, started, held = info
            if key is None or code != key[1] or started != key[2] or operation != key[0]:
                if key is not None:
                    tally[key] = tally.get(key, 0) + count
                key, count = (operation, code, started), 0
            count += 1
            out.append(frame)
            size += len(frame)
            charged += held
            taken += 1
        if not taken:
            return None
        if key is not None:
            tally[key] = tally.get(key, 0) + count
        self._observe(tally, time.perf_counter())
        return out, size, charged, taken


_CHARGED = itemgetter(2)
