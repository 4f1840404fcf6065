"""How many queues a group hosted here holds (docs/replication.md, "Queue counts in the
map"): counted by the group's leader for its reports to the cluster map
(:func:`~._metamap.report_replicas`, ``SetQueueCount``) and for placing a CREATE_QUEUE that
names no group (:class:`~._group_routing.GroupRouting`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._broker import Broker


class QueueCounter:
    """How many queues a group hosted here holds, for its leader's reports and placement.

    Counted exactly in the group's store (its ``queues`` rows: a deleted queue's row is
    gone), as of the applied index read just before; read again on the next check after this
    broker created a queue in the group, and otherwise at most once per ``every`` seconds
    while the log moves (deletes). Between reads, :meth:`estimate` adds the queues created
    here since (the broker's in-memory count of queue ids only grows)."""

    def __init__(self, replica: Broker) -> None:
        self.replica = replica
        self.exact: int | None = None
        self.as_of = 0
        self._seen = 0
        self._read_at = -math.inf

    def forget(self) -> None:
        """This broker no longer leads the group: what it counted may go stale."""
        self.exact = None

    def estimate(self) -> int | None:
        if self.exact is None:
            return None
        return self.exact + max(0, self.replica.queue_count - self._seen)

    async def refresh(self, every: float) -> None:
        replica = self.replica
        now = trio.current_time()
        unchanged = replica.applied_index == self.as_of or now - self._read_at < every
        if self.exact is not None and replica.queue_count == self._seen and unchanged:
            return
        # The store holds at least what was applied when the read is asked for: the count
        # is of a state at least as new as ``as_of`` (a later report corrects a count that
        # raced with an apply; the index only orders reports).
        seen, as_of = replica.queue_count, replica.applied_index
        queues = await replica._worker.run(replica._store.queue_lengths)
        self.exact, self.as_of, self._seen, self._read_at = len(queues), as_of, seen, now


__all__ = ["QueueCounter"]
