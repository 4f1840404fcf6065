"""The queue-lifecycle workload: named queues created (idempotently) and deleted by several
clients at once, messages published with headers, per-client reads, consumer groups on named
queues, positions forgotten explicitly and abandoned to the leader's idle sweeps.

On a seed whose ``lifecycle:clients`` stream draws some, :class:`SimLifecycle` clients join
the group members (``Simulation.workers``: their requests go through the same machinery,
deadlines, NOT_LEADER redirects, retries, outcomes left unknown). They draw from streams of
their own and use queues of their own (by the names :data:`NAMES`), so the other clients'
checks are unchanged.

Idle sweeps (``FORGET_IDLE_POSITIONS``, on seeds whose ``lifecycle:idle`` stream draws an idle
time) forget every idle position, the log-pattern clients' too. The log-pattern clients are
checked as readers whose positions are never forgotten, so the leader keeps their positions
in use: each sweep's entry starts with a peek by each of them (a peek moves nothing, but uses
the position). The lifecycle clients keep no such promise: they read under throwaway client
ids, and those positions are abandoned to the sweeps.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs

from ..._core._commands import ReadBatch, RetentionPolicy
from ..._core._work_commands import (
    CreateNamedQueue,
    DeleteQueue,
    ForgetIdlePositions,
    ForgetPosition,
    GroupRead,
    GroupSettings,
    JoinGroup,
    Publish,
    ReadRecords,
    Record,
)
from ._clients import QUEUES, ClientRequest, SimClient
from ._params import MS_PER_STEP, TICK_STEPS, stream

NAMES = ("life-a", "life-b")
"""The names the lifecycle clients create, use and delete (shared by all of them)."""
KINDS = ("ncreate", "ndelete", "npublish", "nread", "nforget", "njoin", "ngread")
"""The lifecycle clients' operations."""
LIFE_GROUP = "life"
HEADERS = ((), (("k", "v1"),), (("a", "1"), ("trace", "t")), (("k", ""),))
POLICIES = (None, RetentionPolicy(delete_acknowledged=True), RetentionPolicy(max_messages=4))


@attrs.define
class SimLifecycle(SimClient):
    """A client of named queues. ``known``: name -> the queue id it was last answered."""

    known: dict[str, str] = attrs.field(factory=dict)
    to_join: str | None = None
    """A name whose queue had no group when this client read it: it joins next."""
    dead_until: int = 0
    """Never dies (here for the simulation's healing, which revives every member)."""


def lifecycle_clients(seed: int) -> list[SimLifecycle]:
    count = stream(seed, "lifecycle:clients").choice([0, 0, 1, 2])
    return [SimLifecycle(f"L-{k}", to_create=[]) for k in range(count)]


@functools.cache
def idle_ms(seed: int) -> int | None:
    """The idle time after which the leader's sweeps forget a position (None: no sweeps)."""
    return stream(seed, "lifecycle:idle").choice([None, 500, 2000])


class LifecycleMixin:
    """The lifecycle clients' steps, on the simulation's state (see :class:`Simulation`)."""

    def _lifecycle_op(self, c: SimLifecycle) -> tuple | None:
        rng = self.client_rng[c.id]
        name = rng.choice(NAMES)
        q = c.known.get(name)
        kind = rng.random()
        if c.to_join is not None and c.to_join in c.known:
            name, c.to_join = c.to_join, None
            return ("njoin", name, c.known[name])
        if q is None or kind < 0.1:
            return ("ncreate", name, (f"Q-{c.id}-{c.counter}", rng.choice(POLICIES)))
        if kind < 0.18:
            return ("ndelete", name, (q, rng.random() < 0.3))
        if kind < 0.45:
            records = tuple(
                Record(f'"{c.id}:{c.counter}.{k}"'.encode(), rng.choice(HEADERS))
                for k in range(rng.randint(1, 2))
            )
            for r in records:
                self.checker.on_append_sent(r.data)
            return ("npublish", name, (q, records))
        if kind < 0.7:
            # Half the reads are by a client id used once: a position abandoned at once.
            reader = c.id if rng.random() < 0.5 else f"{c.id}/t{c.counter}"
            return ("nread", name, (q, reader, rng.randint(1, 3), rng.random() < 0.3))
        if kind < 0.8:
            return ("nforget", name, (q, c.id))
        if kind < 0.87:
            return ("njoin", name, q)
        return ("ngread", name, (q, rng.randint(1, 2)))

    @staticmethod
    def _lifecycle_command(c: SimLifecycle) -> Any:
        kind, name, data = c.op
        if kind == "ncreate":
            return CreateNamedQueue(data[0], name, data[1])
        if kind == "ndelete":
            return DeleteQueue(data[0], force=data[1])
        if kind == "npublish":
            return Publish(data[0], data[1])
        if kind == "nread":
            q, reader, n, peek = data
            return ReadRecords(reader, q, n, peek)
        if kind == "nforget":
            return ForgetPosition(data[1], data[0])
        if kind == "njoin":
            return JoinGroup(data, LIFE_GROUP, GroupSettings(visibility_ms=3000))
        return GroupRead(data[0], LIFE_GROUP, c.id, data[1], now_ms=0)

    def _sweep_idle(self) -> None:
        """The leader's idle sweep, every quarter of the idle time (as the runtime's), behind
        a peek by each log-pattern reader in the same entry (see the module's docstring).

        As the runtime's ``run_forget``, which awaits each sweep's outcome (for at most ten
        failure timeouts) before the next: a sweep not answered yet skips the next ones, so a
        slow cluster is never handed more sweeps than it commits."""
        idle = idle_ms(self.seed)
        if idle is None or self.quiescing or self.now % (idle // 4 // MS_PER_STEP):
            return
        leaders = [i for i in self.live() if self.nodes[i].is_leader]
        if not leaders:
            return
        i = leaders[0]
        node = self.nodes[i]
        pending = self.sweep_pending
        if pending is not None:
            leader, term, since = pending
            waited = self.now - since < 10 * self.p.election_ticks * TICK_STEPS
            if waited and leader == i and node.term == term:
                return  # the previous sweep is still outstanding on this leader
        self.sweep_id += 1
        self.sweep_pending = (i, node.term, self.now)
        created = [q for q in QUEUES if q in self.checker.created]
        for c in self.clients:
            if c.id not in self.workers:
                for q in created:
                    for reader in (c.id, c.consumer):
                        peek = ReadBatch(reader, q, 1, peek=True)
                        self._serve(i, node, ClientRequest(None, i, 0, peek))
        sweep = ForgetIdlePositions(self.wall_ms(i), idle)
        self._serve(i, node, ClientRequest(None, i, -self.sweep_id, sweep))
        self.dirty.add(i)
        self.stats["idle_sweeps"] += 1
