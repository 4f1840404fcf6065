"""ReadIndex: reads that change nothing, answered without a log entry (Raft thesis 6.4).

A read that would change nothing (a peek, a listing, a read that finds nothing) need not be
written to the log and fsynced on a majority: it is linearizable if the leader

1. records an index when the read arrives: its commit index (or beyond: the runtime passes
   the leader's last index, so that a read pipelined after a write answers after it, as its
   log entry would have);
2. has committed an entry of its own term (its no-op): before that, its commit index may
   trail what the previous leader committed, so the read waits for it and its index is at
   least that entry's;
3. confirms that it still led after the read arrived: a majority of the voters answered a
   heartbeat sent after that moment (one heartbeat round, shared by every read waiting for
   it);
4. waits until its applied index reaches the recorded one, then answers from its applied
   state.

Rounds: every heartbeat broadcast of a leader carries a round number, counted from 1 in its
term, that the answer echoes (``Heartbeat.round``). A read arriving when round ``r`` was the
last sent needs an echo of round ``r + 1`` or later from a majority (the leader counts as
having echoed every round). An echo says the member answered a heartbeat sent after the
read arrived, whatever the link did meanwhile: counting answers per member instead would
let an answer to an older heartbeat, delayed across a reconnection, count for a newer read.
A member whose answers carry no round (a peer that predates them) never confirms a round:
reads then wait, and the runtime gives up on them after its own bound and takes the log.

At most one round is outstanding for reads: a read arriving while one is in flight waits
for the next, sent as soon as the outstanding one is confirmed (or with the next periodic
heartbeat, itself a round, if answers were lost). So a burst of reads costs one round.

Losing the leadership (a new term, check-quorum stepping down, a removal), or starting a
leadership transfer, fails every waiting read: none is ever answered from a deposed
leader's state. This module holds the bookkeeping; :class:`~._raft.RaftNode` calls it
(``read_index``, ``take_reads``, the heartbeat rounds).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from typing import Any

import attrs


@attrs.define
class _Read:
    token: Any
    index: int
    round: int
    """The first round whose majority echo confirms it (the one sent after it arrived)."""


class ReadIndex:
    """The leader's reads waiting for their confirmation and their applied index.

    Reads are kept in arrival order; both their round and their index never decrease along
    it (the commit and last indexes of a leader only grow in its term), so the confirmed
    ones are always a prefix: each step looks at the front only.
    """

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.round = 0
        """The last round sent in this term."""
        self._echoed: dict[Any, int] = {}
        """The highest round each member echoed in this term."""
        self._silent: set[Any] = set()
        """Members whose last heartbeat answer in this term echoed no round (a version that
        predates rounds)."""
        self._waiting: collections.deque[_Read] = collections.deque()
        self._failed: list[tuple[Any, Exception]] = []
        self.confirmed_round = 0
        """The highest round a majority echoed (as of the last :meth:`confirm`)."""
        self.read_rounds = 0
        """Rounds sent while reads waited, in every term (a counter for the metrics)."""

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def full(self) -> bool:
        return len(self._waiting) >= self.max_waiting

    def reset(self) -> None:
        """A new term of leadership: rounds count from 1 again, no echo counts."""
        self.round = 0
        self.confirmed_round = 0
        self._echoed = {}
        self._silent = set()

    def add(self, token: Any, index: int) -> None:
        self._waiting.append(_Read(token, index, self.round + 1))

    def wants_round(self) -> bool:
        """Whether a round should leave now: a read waits for one not sent yet, and no round
        sent for reads is outstanding."""
        if not self._waiting:
            return False
        last = self._waiting[-1].round
        return last > self.round and last > self.confirmed_round >= self.round

    def next_round(self) -> int:
        if self._waiting:
            self.read_rounds += 1
        self.round += 1
        return self.round

    def echo(self, member: Any, round_: int) -> None:
        """``member`` answered the heartbeat of ``round_`` (0: it does not echo rounds)."""
        if not round_:
            self._silent.add(member)
            return
        self._silent.discard(member)
        if round_ <= self.round and round_ > self._echoed.get(member, 0):
            self._echoed[member] = round_

    def unconfirmable(self, self_id: Any, voters: Iterable[Any], quorum: int) -> bool:
        """Whether too many voters answer without rounds for a quorum to ever echo one."""
        if not self._silent:
            return False
        return sum(1 for v in voters if v == self_id or v not in self._silent) < quorum

    def confirm(self, self_id: Any, voters: Iterable[Any], quorum: int) -> int:
        """The highest round a quorum of ``voters`` echoed (this broker echoes every round,
        even one not sent yet: alone in its group it confirms any read at once)."""
        echoes = sorted(
            (math.inf if v == self_id else self._echoed.get(v, 0) for v in voters), reverse=True
        )
        if quorum > len(echoes) or quorum < 1:
            return self.confirmed_round
        best = echoes[quorum - 1]
        confirmed = self.round + 1 if best == math.inf else int(best)
        # (A voter added since may lower the count: a confirmation once made stays made.)
        self.confirmed_round = max(self.confirmed_round, min(confirmed, self.round + 1))
        return self.confirmed_round

    def take(self, applied: int, floor: int) -> list[tuple[Any, int]]:
        """The reads confirmed (as of the last :meth:`confirm`) whose index, raised to
        ``floor`` (the leader's first entry of its term, once committed), is applied: to be
        answered from the applied state now. Removed from the waiting ones."""
        ready = []
        waiting = self._waiting
        while waiting:
            read = waiting[0]
            index = max(read.index, floor)
            if read.round > self.confirmed_round or index > applied:
                break
            waiting.popleft()
            ready.append((read.token, index))
        return ready

    def fail_all(self, error: Exception) -> None:
        """Every waiting read fails with ``error`` (taken by :meth:`take_failed`)."""
        self._failed.extend((read.token, error) for read in self._waiting)
        self._waiting.clear()

    def take_failed(self) -> list[tuple[Any, Exception]]:
        failed, self._failed = self._failed, []
        return failed


__all__ = ["ReadIndex"]
