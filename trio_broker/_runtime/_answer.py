"""The one type a request is answered with, and command results as client responses.

A request is decided when it is read (a refusal, a value known at once, or a command proposed
to the log) and answered in request order once its answer is known. :class:`Answer` is that
decision: what the connection's writer awaits, whichever request it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

from .._core import _commands as cmd
from .._errors import BrokerError
from .._protocol import _messages as m
from .._protocol import stored_value
from .._protocol._codec import appended_frame, appended_frames


class Waitable(Protocol):
    """A result known later: a committed command (the driver's ``Pending``) or a long poll."""

    @property
    def done(self) -> bool: ...

    @property
    def result(self) -> Any: ...

    async def wait(self) -> Any: ...


class Answer:
    """A response known now, or the result of a :class:`Waitable` to turn into one."""

    __slots__ = ("_later", "_now")

    def __init__(
        self, now: m.Response | BrokerError | None = None, later: Waitable | None = None
    ) -> None:
        assert (now is None) != (later is None)
        self._now = now
        self._later = later

    @classmethod
    def of(cls, outcome: BrokerError | Waitable) -> Answer:
        """An answer from a refusal, or from a command's pending result."""
        if isinstance(outcome, BrokerError):
            return cls(now=outcome)
        return cls(later=outcome)

    @property
    def now(self) -> m.Response | BrokerError | None:
        """The response, when it was known as the request was decided."""
        return self._now

    def known(self) -> m.Response | BrokerError | None:
        """The response if it is known now, else None (without waiting)."""
        if self._now is not None:
            return self._now
        later = self._later
        assert later is not None
        return response_for(later.result) if later.done else None

    def when_known(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` once (synchronously, from the task that settles the outcome)
        when :meth:`known` would give the response; False, and nothing registered, when it
        is known now or its waitable cannot say (a long poll: the writer awaits
        :meth:`response` then)."""
        later = self._later
        if later is None:
            return False
        when_done = getattr(later, "when_done", None)  # (a proposal's Pending, or Mapped)
        return when_done is not None and when_done(callback)

    def frame(self) -> bytes | None:
        """The answer's whole frame when it is known now and a success whose bytes need no
        decision of the connection (an appended message's sequence number); else None, and
        the writer takes :meth:`known` or :meth:`response` and encodes it."""
        return None

    async def response(self) -> m.Response | BrokerError:
        """The response, once known; checkpoints only when it must wait."""
        later = self._later
        if later is None:
            assert self._now is not None
            return self._now
        if later.done:
            return response_for(later.result)  # answered already: no need to yield here
        return response_for(await later.wait())


def response_for(result: Any) -> m.Response | BrokerError:
    """The answer to a client for the result of its command."""
    kind = type(result)
    if kind is cmd.MessageAppended:  # the most frequent ones first, by their exact type
        return m.Appended(result.sequence_num, result.duplicate)
    if kind is cmd.MessageRead:
        if result.sequence_num is None:
            return m.NoMessages()
        return m.Message(result.sequence_num, stored_value(result.data))
    if isinstance(result, BrokerError | m.Response):  # decided by the room that proposed it
        return result
    if result is None or isinstance(result, cmd.BrokerAddressSet):
        return m.Done()
    if isinstance(result, cmd.MessageAppended):
        return m.Appended(result.sequence_num, result.duplicate)
    if isinstance(result, cmd.BatchAppended):
        first = result.first_sequence_num
        return m.BatchAppended(list(range(first, first + result.count)), result.duplicate)
    if isinstance(result, cmd.MessageRead):
        if result.sequence_num is None:
            return m.NoMessages()
        assert result.data is not None
        return m.Message(result.sequence_num, stored_value(result.data))
    if isinstance(result, cmd.MessagesRead):
        return m.MessageBatch([m.Message(seq, stored_value(d)) for seq, d in result.messages])
    if isinstance(result, cmd.PositionSet):
        return m.Position(result.next_sequence_num)
    if isinstance(result, cmd.QueueCreated):
        return m.QueueCreated(result.queue_id)
    if isinstance(result, cmd.RetentionSet):
        return m.RetentionChanged(result.queue_id, retention_wire(result.policy))
    if isinstance(result, cmd.CommandRejected):
        return BrokerError(result.code, result.message)
    raise AssertionError(f"unhandled result {result!r}")  # pragma: no cover


def retention_wire(policy: cmd.RetentionPolicy) -> m.Retention:
    return m.Retention(policy.max_messages, policy.max_age_ms, policy.delete_acknowledged)


def _heads_and_joins() -> tuple[list[bytes], list[bytes]]:
    """For each count of digits (1 to 20), what an appended answer's frame holds before its
    number (cut from :func:`~.._protocol._codec.appended_frame`'s own bytes), and what stands
    between one such number and the next in a run of frames: ``}`` and the head."""
    heads = []
    for digits in range(1, 21):
        number = 10 ** (digits - 1)
        heads.append(appended_frame(number)[: -(digits + 1)])
    return heads, [b"}" + head for head in heads]


_HEADS, _JOINS = _heads_and_joins()
_dumps = orjson.dumps


def appended_run_frames(first: int, count: int) -> bytes:
    """The frames of the answers to ``count`` APPENDs (``count >= 1``) that were not duplicates
    and got the numbers ``first`` to ``first + count - 1``: the bytes of
    ``appended_frames(list(range(first, first + count)))``.

    A run's numbers are consecutive: orjson writes them all in one call, as the JSON array
    ``[first,first+1,...]``, whose commas become each frame's end and the next one's head when
    every number has as many digits (the first and the last do: the numbers only grow); a run
    that crosses a power of ten, or a number orjson does not write (none a log makes), takes
    ``appended_frames``'s way. About 1.6 µs for 16 answers against 3.5 for their numbers'
    list and ``appended_frames`` (docs/performance.md, "Where the pipelined cycle waits
    (fourteenth round)")."""
    numbers = list(range(first, first + count))
    if first >= 0:
        try:
            array = _dumps(numbers)
        except orjson.JSONEncodeError:  # (beyond 64 bits)
            return appended_frames(numbers)
        comma = array.find(b",")
        if comma == -1:  # (one number: ``[n]``)
            return _HEADS[len(array) - 3] + array[1:-1] + b"}"
        width = comma - 1
        if width == len(array) - 2 - array.rfind(b","):  # (the last has as many digits)
            return _HEADS[width - 1] + array[1:-1].replace(b",", _JOINS[width - 1]) + b"}"
    return appended_frames(numbers)
