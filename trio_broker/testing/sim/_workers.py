"""The consumer-group workload: members of one group sharing a work queue with a dead-letter
queue, reading with leases, acknowledging, nacking, extending, and dying (their leases then
expire on the leader's clock), and the leader proposing lease expiries.

On a seed whose ``groups`` parameter is set, :class:`SimWorker` clients join the simulation's
clients: their requests go through the same machinery (deadlines, NOT_LEADER redirects,
retries, outcomes left unknown). They draw from their own streams (``group:<id>``) and touch
none of the log-pattern queues (:data:`~._clients.QUEUES`), so that the other clients' checks
are unchanged. The work queue is created with a retention policy drawn for the seed (or none):
retention must never delete what the group has not finished, however eager its rule.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..._core._commands import AppendMessage, CreateQueue, RetentionPolicy
from ..._core._work_commands import (
    ExpireLeases,
    GroupAck,
    GroupExtend,
    GroupNack,
    GroupRead,
    GroupSettings,
    JoinGroup,
)
from ._clients import ClientRequest, SimClient
from ._lifecycle import LifecycleMixin, SimLifecycle
from ._params import stream

WORK_QUEUE = "Q-SIMWQ"
DEAD_LETTERS = "Q-SIMDL"
GROUP = "workers"
GROUP_KINDS = frozenset(("wcreate", "join", "wappend", "gread", "gack", "gnack", "gextend"))
"""The operations of :class:`SimWorker` (checked by :class:`~._group_checker.GroupChecker`)."""
EXPIRE_EVERY = 25
"""Steps between the leader's checks for a lease due to expire."""


@attrs.define
class SimWorker(SimClient):
    """A member of the group (a new member id after each death) and, now and then, a
    producer of the work queue. ``held``: the leases its last answered read gave it."""

    joined: bool = False
    incarnation: int = 0
    held: list[int] = attrs.field(factory=list)
    dead_until: int = 0

    @property
    def member(self) -> str:
        return f"{self.id}.{self.incarnation}"


def group_settings(rng: Any) -> GroupSettings:
    return GroupSettings(
        visibility_ms=rng.choice([300, 1000, 3000]),
        max_deliveries=rng.choice([1, 2, 3]),
        dead_letter_queue=DEAD_LETTERS,
    )


def work_queue_retention(seed: int) -> RetentionPolicy | None:
    """The work queue's retention policy: each rule would delete unfinished messages if
    retention did not stop before them."""
    return stream(seed, "group:retention").choice(
        [
            None,
            RetentionPolicy(max_messages=1),
            RetentionPolicy(max_age_ms=100),
            RetentionPolicy(delete_acknowledged=True),
            RetentionPolicy(max_messages=3, max_age_ms=1000, delete_acknowledged=True),
        ]
    )


class WorkersMixin(LifecycleMixin):
    """The group members' steps, on the simulation's state (see :class:`Simulation`); the
    lifecycle clients' are in :class:`~._lifecycle.LifecycleMixin`."""

    def _group_drained(self) -> bool:
        """The leader holds no message of the group unfinished (the members may stop)."""
        if all(isinstance(w, SimLifecycle) for w in self.workers.values()):
            return True  # no group workload on this seed, only lifecycle clients
        leaders = [i for i in self.live() if self.nodes[i].is_leader]
        if len(leaders) != 1:
            return False
        app = self.apps[leaders[0]]
        group = app.work.groups.get((WORK_QUEUE, GROUP))
        if group is None:
            return False
        return not group.pending and group.cursor == app.queue_length(WORK_QUEUE)

    def _worker_idle(self, c: SimWorker) -> bool:
        """Whether ``c`` sends nothing this step (dead, or the run is finishing and done)."""
        if isinstance(c, SimLifecycle):
            return self.quiescing
        if self.now < c.dead_until:
            return True
        return self.quiescing and not c.held and self._group_drained()

    def _worker_op(self, c: SimWorker) -> tuple | None:
        if isinstance(c, SimLifecycle):
            return self._lifecycle_op(c)
        rng = self.client_rng[c.id]
        if c.to_create:
            return ("wcreate", c.to_create[0], None)
        if not c.joined:
            if not self.checker.group.created >= {WORK_QUEUE, DEAD_LETTERS}:
                c.next_at = self.now + 10  # W-0 creates the queues first
                return None
            return ("join", WORK_QUEUE, None)
        finishing = self.quiescing or not self.faults_on
        if c.held:
            if not finishing and rng.random() < self.p.group_death:
                # Dies holding its leases: they expire; it comes back as a new member.
                self._trace(f"worker {c.member} dies holding {c.held}")
                self.stats["worker_deaths"] += 1
                c.held = []
                c.incarnation += 1
                c.dead_until = c.next_at = self.now + rng.randint(50, 400)
                return None
            kind = rng.random()
            held = tuple(c.held)
            if finishing or kind < 0.65:
                return ("gack", WORK_QUEUE, held)
            if kind < 0.85:
                return ("gnack", WORK_QUEUE, held)
            return ("gextend", WORK_QUEUE, held)
        if not self.quiescing and rng.random() < 0.35:
            value = f'"{c.id}:{c.counter}"'.encode()  # (JSON, as every stored value)
            self.checker.on_append_sent(value)
            return ("wappend", WORK_QUEUE, value)
        return ("gread", WORK_QUEUE, rng.randint(1, 3))

    def _group_command(self, c: SimWorker) -> Any:
        """The command of a group operation; ``now_ms`` is stamped by the proposing leader."""
        if isinstance(c, SimLifecycle):
            return self._lifecycle_command(c)
        kind, q, data = c.op
        if kind == "wcreate":
            return CreateQueue(q, work_queue_retention(self.seed) if q == WORK_QUEUE else None)
        if kind == "join":
            return JoinGroup(q, GROUP, self.group_settings)
        if kind == "wappend":
            return AppendMessage(q, data)
        if kind == "gread":
            return GroupRead(q, GROUP, c.member, data, now_ms=0)
        if kind == "gack":
            return GroupAck(q, GROUP, c.member, tuple((s, s) for s in data))
        if kind == "gnack":
            return GroupNack(q, GROUP, c.member, data, now_ms=0, error="sim nack")
        return GroupExtend(q, GROUP, c.member, data, now_ms=0)

    def _expire_leases(self) -> None:
        """The leader proposes an expiry while some lease is past its deadline (its clock);
        and an idle sweep now and then (:meth:`_sweep_idle`)."""
        self._sweep_idle()
        if self.now % EXPIRE_EVERY or self.quiescing:
            return
        leaders = [i for i in self.live() if self.nodes[i].is_leader]
        if not leaders:
            return
        i = leaders[0]
        due = self.apps[i].work.next_lease_deadline()
        if due is not None and due <= self.wall_ms(i):
            self._serve(i, self.nodes[i], ClientRequest(None, i, 0, ExpireLeases(0)))
            self.dirty.add(i)
            self.stats["lease_expiries"] += 1
