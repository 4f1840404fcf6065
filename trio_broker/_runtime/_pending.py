"""What a proposal waits on (:class:`Pending`, one request; :class:`PendingGroup`, a run of
them submitted together) and the driver's capacity.

:meth:`~._driver.RaftDriver.propose_many` takes the requests of one receive in one call
(docs/performance-history.md, "A receive's requests in one call"): one charge of
:class:`Capacity` for all of them, and one :class:`PendingGroup` whose outcomes are filled in
by index as the driver settles each. Either calls back once its outcomes are known
(``when_done``): the connection then writes the answer (:mod:`._writer`).
"""

from __future__ import annotations

import collections
import contextvars
from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any

import trio

from .._core._appended_run import appended_results
from .._core._commands import BatchAppended, MessageAppended
from .._protocol._codec import appended_frame, appended_frames, batch_appended_frame
from ._answer import Answer, appended_run_frames, response_for

_UNSET: Any = object()
_IN_RUN: Any = object()
"""An outcome held in a :class:`PendingGroup`'s run of appended messages (its number)."""
_APPENDED_ONLY = {MessageAppended}


class _Held(list[Callable[[], None]]):
    """The callbacks one :func:`settling` block holds; ``open`` until it ends. A task started
    inside the block inherits the variable (trio copies the context into each task it starts):
    once the block has ended, an outcome that task sets calls back at once instead of adding
    to a list nobody reads any more."""

    open = True


_held: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("_held", default=None)
"""Inside :func:`settling` (in the task that entered it, and only there: brokers may run in
several threads of one process): the callbacks of the outcomes set so far."""


class settling:  # (lower case: used as the function it was, ``with settling():``)
    """Hold the callbacks (``when_done``) of the outcomes set inside, and call each once on
    leaving: a connection whose answers several outcomes made known (the groups of several
    receives, settled by one Ready) writes them in one write, not one per outcome. Nothing
    inside may wait: it is one stretch of the loop's thread, no other task runs meanwhile.

    A class, not a generator-based context manager: it is entered once or twice per applied
    Ready, and the generator's machinery cost about 1.5 µs of the loop's thread each time
    (docs/performance-history.md, "The leader's Python per write and per Ready (tenth round)")."""

    __slots__ = ("_held", "_token")

    def __enter__(self) -> None:
        outer = _held.get()
        if outer is not None and outer.open:  # (nested: the outer one calls them)
            self._held = None
            return
        self._held = _Held()
        self._token = _held.set(self._held)

    def __exit__(self, *exc_info: object) -> None:
        held = self._held
        if held is None:
            return
        held.open = False
        _held.reset(self._token)
        if held:
            for callback in dict.fromkeys(held):  # (once each, in the order they were set)
                callback()


def _notify(callback: Callable[[], None]) -> None:
    held = _held.get()
    if held is None or not held.open:
        callback()
    else:
        held.append(callback)


class PendingGroup:
    """The outcomes of a run of proposals submitted together (:meth:`RaftDriver.propose_many`),
    filled in by index; one event for the group, set once every outcome is known (and the
    callback of :meth:`when_done` called then).

    A stretch of appended messages (:meth:`set_appended`, an applied run of plain appends) is
    held as its first sequence number and its count: the writer frames their answers from the
    numbers (:meth:`GroupRun.appended`), and their ``MessageAppended`` objects are made only
    if something reads :attr:`results` (docs/performance-history.md, "The leader's CPU per pipelined
    append (twelfth round)")."""

    __slots__ = ("_event", "_left", "_notify", "_results", "_runs")

    def __init__(self, count: int) -> None:
        self._results: list[Any] = [_UNSET] * count
        self._runs: list[tuple[int, int, int]] | None = None
        """The stretches set by :meth:`set_appended` not yet made into objects: (start,
        count, first sequence number), in the order set; their slots hold ``_IN_RUN``."""
        self._left = count
        self._event: trio.Event | None = None
        """Made by the first :meth:`wait` of a group not done (as :class:`Pending`'s: a
        receive's group is answered through :meth:`when_done`, and none is made)."""
        self._notify: Callable[[], None] | None = None

    @property
    def results(self) -> list[Any]:
        """Each proposal's outcome by index (``_UNSET`` while unknown)."""
        if self._runs is not None:
            self._make_runs()
        return self._results

    def _make_runs(self) -> None:
        runs, self._runs = self._runs, None
        results = self._results
        for start, count, first in runs or ():
            results[start : start + count] = appended_results(first, count)

    def set(self, index: int, result: Any) -> None:
        if self._results[index] is _UNSET:
            self._results[index] = result
            self._left -= 1
            if not self._left:
                self._done()

    def set_appended(self, start: int, count: int, first: int) -> bool:
        """Set the outcomes at ``start`` to ``start + count - 1`` to ``MessageAppended(first)``
        and the numbers after it (not duplicates), held as numbers until read. False, and
        nothing set, if any of them is known already (:meth:`set` then sets each)."""
        results = self._results
        stop = start + count
        if count < 1 or results[start:stop].count(_UNSET) != count:
            return False
        results[start:stop] = repeat(_IN_RUN, count)
        if self._runs is None:
            self._runs = [(start, count, first)]
        else:
            self._runs.append((start, count, first))
        self._left -= count
        if not self._left:
            self._done()
        return True

    def appended_frames(self, start: int, stop: int) -> bytes | None:
        """The answers' frames of the outcomes ``start`` to ``stop - 1`` (``start < stop``)
        when every one was set by :meth:`set_appended`; None otherwise. Each stretch's frames
        are written from its first number and its count (:func:`~._answer.appended_run_frames`:
        its numbers are consecutive), without a list of its numbers to frame one by one."""
        pieces: list[bytes] = []
        at = start
        for run_start, count, first in self._runs or ():
            if run_start <= at < run_start + count:
                end = min(stop, run_start + count)
                pieces.append(appended_run_frames(first + at - run_start, end - at))
                at = end
                if at == stop:
                    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return None

    def _done(self) -> None:
        if self._event is not None:
            self._event.set()
        notify, self._notify = self._notify, None
        if notify is not None:
            _notify(notify)

    def when_done(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` (once, in the task that settles the last outcome: at once, or on
        leaving :func:`settling`) when every outcome is known; False, and nothing registered,
        if they are known now. One callback at a time: the connection that proposed the
        group (a later one replaces an earlier one)."""
        if not self._left:
            return False
        self._notify = callback
        return True

    def done_at(self, index: int) -> bool:
        return self._results[index] is not _UNSET

    async def wait(self) -> None:
        """Until every outcome of the group is known."""
        if not self._left:
            await trio.lowlevel.checkpoint()  # (as a set Event's wait: it checkpoints)
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()

    def member(self, index: int) -> GroupMember:
        return GroupMember(self, index)


class GroupMember:
    """One proposal of a :class:`PendingGroup`, waitable as a :class:`Pending` is."""

    __slots__ = ("group", "index")

    def __init__(self, group: PendingGroup, index: int) -> None:
        self.group = group
        self.index = index

    @property
    def done(self) -> bool:
        return self.group.results[self.index] is not _UNSET

    @property
    def result(self) -> Any:
        result = self.group.results[self.index]
        return None if result is _UNSET else result

    async def wait(self) -> Any:
        if not self.done:
            await self.group.wait()
        return self.group.results[self.index]


class GroupAnswer(Answer):
    """The answer to one request of a :class:`PendingGroup`: an :class:`Answer` that reads
    its outcome from the group's list (one object per request, no waitable of its own)."""

    __slots__ = ("_group", "_index")

    def __init__(self, group: PendingGroup, index: int) -> None:  # (no Answer.__init__)
        self._now = None
        self._later = None
        self._group = group
        self._index = index

    def known(self) -> Any:
        result = self._group.results[self._index]
        return None if result is _UNSET else response_for(result)

    def when_known(self, callback: Callable[[], None]) -> bool:
        group = self._group
        return group.results[self._index] is _UNSET and group.when_done(callback)

    async def response(self) -> Any:
        group = self._group
        result = group.results[self._index]
        if result is _UNSET:
            await group.wait()
            result = group.results[self._index]
        return response_for(result)


class RunAnswer(GroupAnswer):
    """The answer to a request of a run whose result is its answer (an append, ACK, SEEK):
    a :class:`GroupAnswer` whose frame, for appended messages, is written straight from
    their sequence numbers (no response object, no general encoder)."""

    __slots__ = ()

    def frame(self) -> bytes | None:
        result = self._group.results[self._index]
        kind = type(result)
        if kind is MessageAppended and not result.duplicate:
            return appended_frame(result.sequence_num)
        if kind is BatchAppended and not result.duplicate:
            return batch_appended_frame(result.first_sequence_num, result.count)
        return None


class GroupRun:
    """The answers to a whole run of requests that are a :class:`PendingGroup`'s, in its order
    (indexes ``start`` to ``stop``), given as one: a sequence of :class:`RunAnswer` to whoever
    reads it as a list, and one entry of the connection's :class:`~._outbox.Outbox`, whose
    writer takes the appended messages' answers together (:meth:`appended`) instead of one
    object, one call and one frame per answer (docs/performance-history.md, "The leader's
    pipelined appends"). Its requests are of one operation (``Runs.handle_many`` makes one
    for a run of APPENDs only): the writer counts them for the metrics under the first's."""

    __slots__ = ("group", "start", "stop")

    def __init__(self, group: PendingGroup, start: int, stop: int) -> None:
        self.group = group
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> RunAnswer:
        if not 0 <= index < self.stop - self.start:
            raise IndexError(index)
        return RunAnswer(self.group, self.start + index)

    def __iter__(self) -> Iterator[RunAnswer]:
        return iter(self.answers())

    def answers(self) -> list[RunAnswer]:
        """One :class:`RunAnswer` each (the writer's way for what :meth:`appended` leaves)."""
        group = self.group
        return [RunAnswer(group, index) for index in range(self.start, self.stop)]

    def when_known(self, callback: Callable[[], None]) -> bool:
        """As :meth:`Answer.when_known` for the first answer: ``callback`` once the group's
        outcomes are all known; False when the first is known now."""
        group = self.group
        return group._results[self.start] is _UNSET and group.when_done(callback)

    async def response(self) -> None:
        """Until the first answer is known (the writer task's way when nothing calls back)."""
        group = self.group
        if group._results[self.start] is _UNSET:
            await group.wait()

    def head_known(self) -> bool:
        """The first answer's outcome is known."""
        return self.group._results[self.start] is not _UNSET

    def appended(self, limit: int) -> tuple[bytes, int] | None:
        """The frames of the answers at the head of the run, up to ``limit`` of them, when
        each is known and an appended message (not a duplicate), and how many: those taken
        leave the run. None when any of them is not (the writer takes them one by one)."""
        stop = min(self.stop, self.start + limit)
        group = self.group
        if group._runs is not None:  # (a run's numbers: no object, no pass over objects)
            frames = group.appended_frames(self.start, stop)
            if frames is not None:
                count = stop - self.start
                self.start = stop
                return frames, count
        results = group.results
        if self.start or stop != len(results):
            results = results[self.start : stop]
        if set(map(type, results)) != _APPENDED_ONLY:
            return None
        numbers = [result.sequence_num for result in results if not result.duplicate]
        if len(numbers) != len(results):
            return None
        self.start = stop
        return appended_frames(numbers), len(numbers)


class Capacity:
    """The driver's bound on proposals not yet settled: ``total`` units, taken one per
    proposal, several at once for a group (one charge), given back one per settled proposal.

    Takes what is free without yielding (as :func:`acquire` does for a semaphore); waits only
    when short. Waiters are served first come, first served, each with its whole charge at
    once: :meth:`release` hands the freed units to the longest waiter while they cover its
    charge, so a newcomer never takes units a waiter was woken for, and a group's charge is
    not overtaken by lone proposals arriving after it (the head waits until its charge is
    free; those behind it wait for it)."""

    __slots__ = ("_waiters", "total", "value")

    def __init__(self, total: int) -> None:
        self.total = total
        self.value = total
        self._waiters: collections.deque[tuple[int, trio.lowlevel.Task]] = collections.deque()

    def acquire_nowait(self, count: int = 1) -> None:
        if not self.take(count):
            raise trio.WouldBlock

    def take(self, count: int) -> bool:
        """Take ``count`` units if they are free and nobody waits; False otherwise."""
        if count > self.value or self._waiters:
            return False
        self.value -= count
        return True

    async def acquire(self, count: int = 1) -> None:
        """Take ``count`` units (at most ``total``), waiting in turn while fewer are free.

        A cancelled wait takes nothing (its place is given up, which may let the waiters
        behind it go); a wait that was handed its units returns with them."""
        if count > self.total:
            raise ValueError(f"{count} units asked of a capacity of {self.total}")
        if count <= self.value and not self._waiters:
            self.value -= count
            return
        waiter = (count, trio.lowlevel.current_task())
        self._waiters.append(waiter)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiters.remove(waiter)
            self._hand_out()
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def release(self, count: int = 1) -> None:
        self.value += count
        if self._waiters:
            self._hand_out()

    def _hand_out(self) -> None:
        """Give the free units to the waiters in turn, each its whole charge, while they cover
        the charge of the longest waiter."""
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.value:
            count, task = waiters.popleft()
            self.value -= count
            trio.lowlevel.reschedule(task)


class Pending:
    """A proposal's outcome, filled in once its entry is applied (or known not to be).

    Its ``trio.Event`` is made only when a task waits for it (:meth:`wait`): a connection's
    answer is written from :meth:`when_done`'s callback, so most outcomes are never awaited
    (one per request at one request in flight: docs/performance-history.md, "The leader loop per
    request (sixth round)")."""

    __slots__ = ("_done", "_event", "_notify", "result")

    def __init__(self) -> None:
        self._done = False
        self._event: trio.Event | None = None
        self._notify: Callable[[], None] | None = None
        self.result: Any = None

    def set(self, result: Any) -> None:
        if not self._done:
            self.result = result
            self._done = True
            if self._event is not None:
                self._event.set()
            notify, self._notify = self._notify, None
            if notify is not None:
                _notify(notify)

    def when_done(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` (once, in the task that sets the outcome: at once, or on leaving
        :func:`settling`) when the outcome is known; False, and nothing registered, if it is
        known now. One callback at a time (the connection whose answer this is)."""
        if self._done:
            return False
        self._notify = callback
        return True

    @property
    def done(self) -> bool:
        return self._done

    async def wait(self) -> Any:
        if self._done:
            await trio.lowlevel.checkpoint()  # (as a set Event's wait: it checkpoints)
        else:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        return self.result


async def acquire(semaphore: trio.Semaphore) -> None:
    """``semaphore.acquire()``, without the two scheduler round trips when a unit is free.

    The request path takes a unit of two semaphores per request; when none is short, yielding
    there only costs time (the connection's reads and writes already yield), so this takes the
    unit at once and only waits when it must.
    """
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        await semaphore.acquire()
