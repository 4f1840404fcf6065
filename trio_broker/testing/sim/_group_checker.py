"""The consumer group's invariants: on the state each entry leaves on each replica (compared
with the state before it), on what the members observe, and after convergence.

- a message acknowledged or dead-lettered is never delivered to the group again;
- a message is leased to one member at a time: a new delivery of a leased message only once
  its lease has expired by the clock of the command that delivers it;
- a message leaves the group only acknowledged (by an ACK in the same entry) or dead-lettered
  (in the dead-letter queue, in the same entry, with its data and delivery count, once);
- retention never deletes what the group has not finished: a message it deletes was
  acknowledged or dead-lettered before (or in the same entry), and every pending message and
  every message after the cursor is held (for every group of every queue);
- at the end, every message appended to the work queue is acknowledged or dead-lettered.

The lifecycle clients' invariants are :class:`~._lifecycle_checker.LifecycleChecker`'s, which
this checker feeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._core._commands import CommandGroup, CommandRejected, GroupApplied, MessageAppended
from ..._core._work_commands import (
    Acknowledged,
    Delivered,
    GroupAck,
    GroupJoined,
    GroupNack,
    LeasesChanged,
)
from ._lifecycle import SimLifecycle
from ._lifecycle_checker import LifecycleChecker
from ._workers import DEAD_LETTERS, GROUP, WORK_QUEUE, SimWorker

if TYPE_CHECKING:
    from ._run import Simulation

View = tuple[int, dict[int, tuple[int, str | None, int]], int, int]
"""(the group's cursor, seq -> (deliveries, member, until_ms) of its pending messages, the
dead-letter queue's length, the work queue's first retained message)."""


class GroupChecker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.done: dict[int, int] = {}
        """Work-queue seq -> the log index of the entry that acknowledged or dead-lettered it."""
        self.dead: dict[int, int] = {}
        """Work-queue seq -> the log index of the entry that moved it to the DLQ."""
        self.acked_answered: dict[int, int] = {}
        """Work-queue seq -> the step at which a member's ACK of it was answered success."""
        self.created: set[str] = set()
        """The work queue and the DLQ, once their creation is answered."""
        self.life = LifecycleChecker(sim)

    def fail(self, message: str) -> None:
        self.sim.checker.fail(f"group: {message}")

    def view(self, app: Any) -> tuple[View, Any]:
        """What :meth:`on_entry` compares with the state after an entry: the group's and the
        lifecycle's views."""
        return self._group_view(app), self.life.view(app)

    @staticmethod
    def _group_view(app: Any) -> View:
        group = app.work.groups.get((WORK_QUEUE, GROUP))
        dlq = app.queue_length(DEAD_LETTERS) or 0
        first = app.deleted.get(WORK_QUEUE, 0) + 1
        if group is None:
            return 0, {}, dlq, first
        pending = {s: (p.deliveries, p.member, p.until_ms) for s, p in group.pending.items()}
        return group.cursor, pending, dlq, first

    # -- the reference state, entry by entry ----------------------------------------------------

    def on_entry(self, i: int, e: Any, result: Any, before: tuple[View, Any]) -> None:
        commands = e.payload.commands if isinstance(e.payload, CommandGroup) else [e.payload]
        results = result.results if isinstance(result, GroupApplied) else [result]
        self._on_group_entry(i, e, commands, results, before[0])
        self._check_retention_kept_unfinished(i, e)
        self.life.on_entry(i, e.index, commands, results, before[1])

    def _check_retention_kept_unfinished(self, i: int, e: Any) -> None:
        """For every group of every queue: every pending message, and every message after
        the cursor, is still held."""
        app = self.sim.apps[i]
        for (q, name), group in app.work.groups.items():
            first = app.first_retained(q)
            if first > group.cursor + 1 or any(s < first for s in group.pending):
                self.fail(
                    f"node {i} entry {e.index}: {q} starts at #{first}, but group {name!r} "
                    f"has not finished {sorted(group.pending)} nor what follows #{group.cursor}"
                )

    def _held(self, app: Any, seq: int, first: int, default: Any = None) -> Any:
        """Work-queue message ``seq``'s data: as held, or, if retention deleted it later in
        the entry (``first``: the first held after it), as acknowledged to its producer."""
        if seq >= first:
            return app.message(WORK_QUEUE, seq)
        return self.sim.checker.acked.get((WORK_QUEUE, seq), default)

    def _on_group_entry(self, i: int, e: Any, commands: list, results: list, before: View) -> None:
        app = self.sim.apps[i]
        cursor_b, pending_b, dlq_b, first_b = before
        cursor_a, pending_a, dlq_a, first_a = self._group_view(app)
        clocks = [c.now_ms for c in commands if hasattr(c, "now_ms")]
        now = max(clocks, default=None)
        limit = self.sim.group_settings.max_deliveries
        where = f"node {i} entry {e.index}"
        nacked: dict[int, int] = {}
        for c, r in zip(commands, results, strict=True):
            if (
                isinstance(c, GroupNack)
                and c.queue_id == WORK_QUEUE
                and isinstance(r, LeasesChanged)
            ):
                for s in (*r.changed, *r.dead_lettered):
                    nacked[s] = nacked.get(s, 0) + 1
        if cursor_a < cursor_b:
            self.fail(f"{where}: cursor moved back from {cursor_b} to {cursor_a}")
        for s, (d, member, _) in pending_a.items():
            if self.done.get(s, e.index + 1) <= e.index:
                self.fail(f"{where}: #{s} pending again after it was done at {self.done[s]}")
            if s not in pending_b and s <= cursor_b:
                self.fail(f"{where}: #{s} delivered again after it was acknowledged or dead")
            if d > limit:
                self.fail(f"{where}: #{s} delivered {d} times, max_deliveries is {limit}")
            if member is None and d >= limit:
                self.fail(f"{where}: #{s} waits for delivery {d + 1} of at most {limit}")
            old = pending_b.get(s)
            delivered = d - (0 if old is None else old[0])
            if delivered < 0:
                self.fail(f"{where}: #{s} delivery count went from {old[0]} to {d}")
            # Each delivery but the first of the entry ends a lease: a NACK by its holder in
            # the entry, or the lease held before the entry having expired by its clock.
            free = old is None or old[1] is None or (now is not None and old[2] <= now)
            if delivered > int(free) + nacked.get(s, 0):
                self.fail(
                    f"{where}: #{s} delivered {delivered} times (now to {member}) while "
                    f"{old and old[1]} held it until {old and old[2]} (command clock {now}), "
                    f"NACKed {nacked.get(s, 0)} times"
                )
        left = set(pending_b) - set(pending_a)
        dead: set[int] = set()
        for n in range(dlq_b + 1, dlq_a + 1):
            headers = dict(app.work.headers.get(DEAD_LETTERS, {}).get(n, ()))
            if headers.get("dlq-source-queue") != WORK_QUEUE or headers.get("dlq-group") != GROUP:
                self.fail(f"{where}: DLQ #{n} has headers {headers}")
            s = int(headers["dlq-sequence-num"])
            if s not in left or s in dead:
                self.fail(f"{where}: DLQ #{n} holds #{s}, which did not just leave the group")
            if int(headers["dlq-delivery-count"]) != pending_b[s][0] or pending_b[s][0] != limit:
                self.fail(f"{where}: #{s} dead-lettered with {headers}, pending was {pending_b[s]}")
            moved = app.message(DEAD_LETTERS, n)
            if moved != self._held(app, s, first_a, moved):
                self.fail(f"{where}: DLQ #{n} does not hold the data of #{s}")
            if self.dead.setdefault(s, e.index) != e.index:
                self.fail(f"{where}: #{s} dead-lettered again (first at {self.dead[s]})")
            dead.add(s)
        acked = [
            c.ranges
            for c, r in zip(commands, results, strict=True)
            if isinstance(c, GroupAck) and c.queue_id == WORK_QUEUE and isinstance(r, Acknowledged)
        ]
        for s, (d, member, until) in pending_b.items():
            # A lease ends before its deadline (by the command's clock) only by its holder's
            # NACK: not by an expiry, a dead-lettering or another member's read.
            if member is None or s in left - dead:
                continue
            after = pending_a.get(s)
            ended = after is None or after[1] is None or after[0] != d
            if ended and not nacked.get(s) and (now is None or until > now):
                self.fail(
                    f"{where}: #{s}'s lease held by {member} until {until} ended early "
                    f"(command clock {now}), now {after}"
                )
        for s in left - dead:
            if not any(lo <= s <= hi for ranges in acked for lo, hi in ranges):
                self.fail(f"{where}: #{s} left the group neither acknowledged nor dead-lettered")
        for s in left:
            if self.done.setdefault(s, e.index) != e.index:
                self.fail(f"{where}: #{s} done at {e.index}, but already at {self.done[s]}")
        for s in range(first_b, first_a):
            if s not in self.done:
                self.fail(f"{where}: retention deleted #{s}, which the group has not finished")
        for c, r in zip(commands, results, strict=True):
            if isinstance(r, Delivered) and c.queue_id == WORK_QUEUE:
                for m in r.messages:
                    if m.data != self._held(app, m.sequence_num, first_a, m.data):
                        self.fail(f"{where}: delivered {m} is not #{m.sequence_num}'s data")

    # -- what the members observe ---------------------------------------------------------------

    def on_unknown(self, c: SimWorker) -> None:
        if isinstance(c, SimLifecycle):
            self.life.on_unknown(c)
            return
        if c.op[0] in ("gread", "gack", "gnack", "gextend"):
            c.held = []  # what it holds, if anything, expires

    def on_result(self, c: SimWorker, op: tuple, result: Any, src: Any) -> None:
        if isinstance(c, SimLifecycle):
            self.life.on_result(c, op, result)
            return
        kind, q, data = op
        checker, stats = self.sim.checker, self.sim.stats
        exists = kind == "wcreate" and getattr(result, "code", None) == "QUEUE_EXISTS"
        if isinstance(result, CommandRejected) and not exists:
            self.fail(f"{c.member}: {op!r} rejected: {result!r}")
        if kind == "wcreate":
            c.to_create.remove(q)
            self.created.add(q)
        elif kind == "join":
            if not isinstance(result, GroupJoined):
                self.fail(f"join: unexpected {result!r}")
            c.joined = True
        elif kind == "wappend":
            if not isinstance(result, MessageAppended):
                self.fail(f"append: unexpected {result!r}")
            checker._on_append_result(c, "append", q, data, result, src)
        elif kind == "gread":
            self._on_read(c, data, result)
        elif kind == "gack":
            stats["group_acks"] += 1
            if not isinstance(result, Acknowledged) or not 0 <= result.acknowledged <= len(data):
                self.fail(f"ack of {data}: unexpected {result!r}")
            for s in data:
                self.acked_answered.setdefault(s, self.sim.now)
            c.held = []
        else:
            stats["group_nacks" if kind == "gnack" else "group_extends"] += 1
            if not isinstance(result, LeasesChanged):
                self.fail(f"{kind} of {data}: unexpected {result!r}")
            named = {*result.changed, *result.not_held, *result.dead_lettered}
            if named != set(data) or len(named) != len(data):
                self.fail(f"{kind} of {data}: answer names other messages: {result!r}")
            # Extended leases are kept (acknowledged or nacked next); the others are gone.
            c.held = list(result.changed) if kind == "gextend" else []

    def _on_read(self, c: SimWorker, n: int, result: Any) -> None:
        stats = self.sim.stats
        stats["group_reads"] += 1
        if not isinstance(result, Delivered) or len(result.messages) > n:
            self.fail(f"read of {n}: unexpected {result!r}")
        limit = self.sim.group_settings.max_deliveries
        for m in result.messages:
            stats["group_delivered"] += 1
            stats["group_redelivered"] += m.delivery_count > 1
            answered = self.acked_answered.get(m.sequence_num)
            if answered is not None and answered < c.sent_at:
                self.fail(
                    f"{c.member} was delivered #{m.sequence_num}, whose ACK was answered at "
                    f"step {answered}, before the read was sent at step {c.sent_at}"
                )
            if not 1 <= m.delivery_count <= limit:
                self.fail(f"{c.member}: {m} delivered with a count outside [1, {limit}]")
            self.sim.checker._check_data(c.member, WORK_QUEUE, m.sequence_num, m.data)
        c.held = [m.sequence_num for m in result.messages]

    # -- after convergence ----------------------------------------------------------------------

    def final_check(self, members: list[int]) -> None:
        """Every message appended to the work queue was acknowledged or dead-lettered, on
        every member; the DLQ holds exactly the dead-lettered ones. Then the lifecycle's."""
        self.sim.stats["dead_lettered"] = len(self.dead)
        self.life.final_check(members)
        if all(isinstance(w, SimLifecycle) for w in self.sim.workers.values()):
            return  # no group workload on this seed
        for i in members:
            app = self.sim.apps[i]
            cursor, pending, dlq, _ = self._group_view(app)
            length = app.queue_length(WORK_QUEUE) or 0
            if pending or cursor != length:
                self.fail(f"node {i}: {len(pending)} pending, cursor {cursor} of {length}")
            missing = [s for s in range(1, length + 1) if s not in self.done]
            if missing:
                self.fail(f"node {i}: #{missing} never acknowledged nor dead-lettered")
            if dlq != len(self.dead):
                self.fail(f"node {i}: the DLQ holds {dlq}, {len(self.dead)} were dead-lettered")
