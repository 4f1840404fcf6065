"""One connection's answers on their way out, in request order (:mod:`._connections`).

The connection's reader decides the requests of one receive and queues their answers here; the
connection's :class:`~._writer.AnswerWriter` takes every answer known at that moment, in order,
and writes them in one write. Nothing here waits per request: the reader waits only when all
``max_in_flight`` slots are taken.
"""

from __future__ import annotations

import collections
from typing import Any

import trio

from ._answer import Answer
from ._limits import Account
from ._pending import GroupRun


class Outbox:
    """One connection's answers, in request order, from its reader to its writer.

    Holds at most ``max_in_flight`` answers (the reader waits for a slot before it dispatches
    a request, having asked the writer to write what is known).
    """

    __slots__ = ("_space", "account", "answers", "closed", "in_flight")

    def __init__(self, account: Account) -> None:
        self.account = account
        self.answers: collections.deque[tuple[Any, Any]] = collections.deque()
        """Each answer with its request's ``(operation, started, charged)``, in request order
        (the reader's tuple kept as it is: a run's answers are queued by one ``zip``); or a
        :class:`~._pending.GroupRun` with the list of its requests' tuples, one entry for
        all its answers."""
        self.in_flight = 0
        """Requests dispatched whose answers are not written yet (queued, or being written)."""
        self.closed = False
        """No more answers will come: the writer ends once the queued ones are written."""
        self._space: trio.Event | None = None

    def put(self, operation: str, started: float, answer: Answer, charged: int) -> None:
        """Queue the answer to a request: the operation's name, when the request arrived,
        the answer, and the request's bytes charged to the budget until the answer is written."""
        self.answers.append((answer, (operation, started, charged)))
        self.in_flight += 1

    def put_many(
        self, infos: list[tuple[str, float, int]], answers: list[Answer] | GroupRun
    ) -> None:
        """:meth:`put` for each answer, with its ``(operation, started, charged)``; a
        :class:`~._pending.GroupRun` is queued as one entry, with ``infos`` (a list this
        outbox then owns)."""
        if len(infos) != len(answers):
            raise ValueError(f"{len(answers)} answers for {len(infos)} requests")
        if type(answers) is GroupRun:
            self.answers.append((answers, infos))
        else:
            self.answers.extend(zip(answers, infos, strict=True))
        self.in_flight += len(answers)

    def close(self) -> None:
        """No more answers will come (the writer, woken by its ``kick``, ends once the queued
        ones are written)."""
        self.closed = True

    async def wait_for_slot(self, limit: int) -> None:
        """(The reader) wait until fewer than ``limit`` answers are unwritten."""
        while self.in_flight >= limit:
            self._space = event = trio.Event()
            await event.wait()

    def written(self, count: int) -> None:
        """(The writer) ``count`` answers left: their slots are free."""
        self.in_flight -= count
        if self._space is not None:
            self._space.set()
            self._space = None
