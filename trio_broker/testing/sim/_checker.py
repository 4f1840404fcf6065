"""The invariants, checked on every step and after convergence."""

from __future__ import annotations

import hashlib
import itertools
from typing import TYPE_CHECKING, Any

from ..._core._commands import (
    ApplyRetention,
    BatchAppended,
    CommandRejected,
    GroupApplied,
    MessageAppended,
    MessageRead,
    MessagesRead,
    PositionSet,
    QueueCreated,
    RetentionApplied,
)
from ..._core._queues import QueueState
from ..._core._raft import RaftNode, Role
from ..._core._raft_messages import Entry
from ..._core._work_commands import DeleteQueue
from ._clients import QUEUES, SimClient
from ._group_checker import GroupChecker
from ._params import TICK_STEPS, SimulationFailure

if TYPE_CHECKING:
    from ._run import Simulation


VIEW_SETTLE_TIMEOUTS = 6
"""Once the cluster converged (faults healed): within this many election timeouts every live
member's view of the members (CLUSTER_QUERY's roles and statuses) is the leader's. The leader
sends its view again to a member not known to hold it once per refresh period (two election
timeouts), and counts the member's answer as holding it only once a refresh period passed
since it sent another view (``_raft_membership._maybe_announce``): two periods, plus the round
trips, and a slow clock's share."""


def settle_views(sim: Simulation) -> None:
    """After convergence: step until, in every group, every live member shows the leader's
    view of the members (``Checker.views_disagree``), within ``VIEW_SETTLE_TIMEOUTS`` election
    timeouts (counted on the slowest clock); a member that keeps an older view (a lost
    CLUSTER_UPDATE never sent again) fails the run."""
    p = sim.p
    ticks = VIEW_SETTLE_TIMEOUTS * p.election_ticks
    steps = int(ticks * TICK_STEPS / min(p.clock_rates)) + 4 * p.delay_max
    for _ in range(steps):
        if not any(sim.checker.views_disagree() for _ in sim.each_group()):
            return
        sim.step()
    for group in sim.each_group():
        problem = sim.checker.views_disagree()
        if problem:
            name = f"{group.id}: " if len(sim.groups) > 1 else ""
            raise SimulationFailure(f"{name}{problem} {steps} steps after convergence")


class Checker:
    """The invariants, checked as the run goes (a violation raises SimulationFailure).

    One per replication group: it watches that group's nodes (the simulation's current
    group's, ``sim.nodes`` and the like, whenever it is called) and the clients' operations
    on ``queues``, that group's queues."""

    def __init__(self, sim: Simulation, queues: tuple[str, ...] = QUEUES) -> None:
        self.sim = sim
        self.queues = queues
        self.leader_of_term: dict[int, int] = {}
        self.committed: dict[int, tuple[int, Any]] = {}
        self.checked_commit: dict[int, int] = {}
        self.leader_checked: dict[int, int] = {}
        self.applied_at: dict[int, tuple[int, Any, str]] = {}
        self.snapshot_digest: dict[int, str] = {}
        self.created: set[str] = set()
        self.appended_data: set[bytes] = set()
        self.producer_data: dict[bytes, str] = {}
        """Values of idempotent appends -> their queue."""
        self.acked: dict[tuple[str, int], bytes] = {}
        self.read_seen: dict[tuple[str, int], bytes] = {}
        self.max_acked: dict[str, int] = {}
        self.trimmed: dict[str, int] = {}
        """Queue -> the highest sequence number retention deleted on any node so far (the
        same on every node at the same applied index; the checks below make sure)."""
        self.retained_at: dict[int, str] = {}
        """Applied index of an enforcement -> digest of the retained messages after it."""
        self.group = GroupChecker(sim)
        """The consumer group's invariants (seeds with the group workload)."""

    def fail(self, message: str) -> None:
        raise SimulationFailure(message)

    # -- consensus ---------------------------------------------------------------------------

    def on_start(self, i: int) -> None:
        self.checked_commit[i] = 0

    def after_step(self, i: int) -> None:
        node = self.sim.nodes[i]
        if node is None:
            return
        if node.role is Role.LEADER:
            first = self.leader_of_term.setdefault(node.term, i)
            if first != i:
                self.fail(f"election safety: nodes {first} and {i} both lead term {node.term}")
            if self.leader_checked.get(i) != node.term:
                self.leader_checked[i] = node.term
                self._check_leader_completeness(i, node)
        start = max(self.checked_commit[i], node.log.snapshot_index)
        if node.commit > start:
            for index in range(start + 1, node.commit + 1):
                e = node.log.entry(index)
                prev = self.committed.setdefault(index, (e.term, e.payload))
                if prev != (e.term, e.payload):
                    self.fail(
                        f"committed entry {index} changed: node {i} has {e}, "
                        f"earlier committed {prev}"
                    )
            self.checked_commit[i] = node.commit

    def _check_leader_completeness(self, i: int, node: RaftNode) -> None:
        for index in range(node.log.first_index, max(self.committed, default=0) + 1):
            if index not in self.committed:
                continue
            term = self.committed[index][0]
            if node.log.term(index) != term:
                self.fail(
                    f"leader completeness: node {i} leads term {node.term} without "
                    f"committed entry {index} (term {term})"
                )

    def on_apply(self, i: int, e: Entry, result: Any) -> None:
        record = (e.term, e.payload, repr(result))
        prev = self.applied_at.setdefault(e.index, record)
        if prev != record:
            self.fail(f"state machine safety: node {i} applied {record} at {e.index}, not {prev}")
        app = self.sim.apps[i]
        if isinstance(result, GroupApplied):
            # The state is checked after the whole entry: what a read or an enforcement in a
            # group saw may have been deleted by a later enforcement, or its queue by a later
            # DeleteQueue, in the same group.
            commands = e.payload.commands
            for k, (command, one) in enumerate(zip(commands, result.results, strict=True)):
                later = any(isinstance(c, ApplyRetention | DeleteQueue) for c in commands[k + 1 :])
                self._check_applied(i, app, e.index, command, one, final=not later)
        else:
            self._check_applied(i, app, e.index, e.payload, result)

    def _check_applied(
        self,
        i: int,
        app: QueueState,
        index: int,
        command: Any,
        result: Any,
        final: bool = True,
    ) -> None:
        """``final``: no enforcement follows in the entry, so the state after the entry is
        the state right after this command as far as retention is concerned."""
        if isinstance(result, RetentionApplied):
            for q, first in result.trimmed:
                if final and app.first_retained(q) != first:
                    self.fail(f"node {i}: enforcement says {q} starts at #{first}, it does not")
                if first - 1 > self.trimmed.get(q, 0):
                    self.sim.stats["retention_deleted"] += first - 1 - self.trimmed.get(q, 0)
                    self.trimmed[q] = first - 1
            # Every replica retains the same messages after the same enforcement.
            retained = repr(sorted((q, app.deleted[q], m) for q, m in app.messages.items()))
            digest = hashlib.blake2b(retained.encode(), digest_size=12).hexdigest()
            if self.retained_at.setdefault(index, digest) != digest:
                self.fail(f"node {i} retains other messages than another node after {index}")
        elif isinstance(result, MessageRead | MessagesRead) and final:
            # A read never returns what retention deleted on this replica before it.
            q = command.queue_id
            if isinstance(result, MessageRead):
                read = [] if result.sequence_num is None else [result.sequence_num]
            else:
                read = [seq for seq, _ in result.messages]
            for seq in read:
                if seq < app.first_retained(q):
                    self.fail(f"node {i} read {q} #{seq}, deleted by retention before the read")

    def excused(self, q: str, last: int, seq: int) -> int:
        """How many of the sequence numbers between ``last`` and ``seq`` (exclusive) a read
        may skip because retention deleted them: only a front that some node has deleted."""
        return max(0, min(seq - 1, self.trimmed.get(q, 0)) - last)

    def on_snapshot(self, i: int, index: int, app: QueueState) -> None:
        digest = hashlib.blake2b(repr(app).encode(), digest_size=12).hexdigest()
        prev = self.snapshot_digest.setdefault(index, digest)
        if prev != digest:
            self.fail(f"node {i}: state at {index} differs from another node's at {index}")

    # -- clients -----------------------------------------------------------------------------

    def on_append_sent(self, data: bytes, producer: bool = False, queue: str = "") -> None:
        self.appended_data.add(data)
        if producer:
            self.producer_data[data] = queue

    def on_unknown(self, c: SimClient) -> None:
        if c.id in self.sim.workers:
            self.group.on_unknown(c)
            return
        kind, q, arg = c.op
        if kind == "read":
            # A read applied but not answered moved this client's position.
            c.skippable[q] = c.skippable.get(q, 0) + 1
        elif kind == "rbatch":
            # ... by up to ``max_messages``.
            c.skippable[q] = c.skippable.get(q, 0) + arg
        elif kind == "ack":
            # An Ack applied but not answered (or applied later) moves the position to ``arg``.
            c.unknown_acks.setdefault(q, []).append(arg)

    def on_result(self, c: SimClient, op: tuple, result: Any, src: Any = None) -> None:
        if c.id in self.sim.workers:
            self.group.on_result(c, op, result, src)
            return
        kind, q, data = op
        if kind == "create":
            if not isinstance(result, QueueCreated) and not (
                isinstance(result, CommandRejected) and result.code == "QUEUE_EXISTS"
            ):
                self.fail(f"create {q}: unexpected {result!r}")
            self.created.add(q)
            if q in c.to_create:
                c.to_create.remove(q)
            return
        if isinstance(result, CommandRejected):
            if result.code == "QUEUE_NOT_FOUND" and q not in self.created:
                return
            if result.code in ("OUT_OF_ORDER_SEQUENCE", "SEQUENCE_TOO_OLD"):
                self.fail(f"{c.id}: idempotent {op!r} answered {result.code}: {result.message}")
            if result.code == "QUEUE_NOT_FOUND":
                self.fail(f"{c.id}: {q} not found after its creation was acknowledged")
            self.fail(f"{c.id}: {op!r} unexpectedly rejected: {result!r}")
        if kind in ("append", "pappend", "batch"):
            self._on_append_result(c, kind, q, data, result, src)
            return
        self.sim.stats["reads"] += 1
        if kind == "ack":
            self._on_ack_result(c, q, data, result)
        elif kind == "peek":
            self._on_peek_result(c, q, data, result)
        elif kind == "rbatch":
            self.sim.stats["batch_reads"] += 1
            if not isinstance(result, MessagesRead) or len(result.messages) > data:
                self.fail(f"read batch of {data}: unexpected {result!r}")
            self._check_consecutive(c.id, q, result.messages)
            if not result.messages:
                self._check_nothing_read(c, q)
            for seq, value in result.messages:
                self._check_read(c, q, seq, value)
            if result.messages and len(result.messages) < data:
                # Fewer than asked: the position reached the end of the queue, which held at
                # least every message acknowledged before the read was sent.
                last = result.messages[-1][0]
                if c.read_floor > last:
                    self.fail(
                        f"{c.id} read batch of {q} stopped at #{last} although message "
                        f"{c.read_floor} was acknowledged before the read"
                    )
        else:
            if not isinstance(result, MessageRead):
                self.fail(f"read: unexpected {result!r}")
            if result.sequence_num is None:
                self._check_nothing_read(c, q)
            else:
                self._check_read(c, q, result.sequence_num, result.data)

    def _on_append_result(
        self, c: SimClient, kind: str, q: str, data: Any, result: Any, src: Any
    ) -> None:
        stats = self.sim.stats
        stats["appends"] += 1
        if kind == "append":
            values, pseq = (data,), None
        elif kind == "pappend":
            values, pseq = (data[0],), data[1]
        else:
            values, pseq = data
        if kind == "batch":
            stats["batch_appends"] += 1
            if not isinstance(result, BatchAppended) or result.count != len(values):
                self.fail(f"append batch of {len(values)}: unexpected {result!r}")
            first = result.first_sequence_num
        else:
            if not isinstance(result, MessageAppended):
                self.fail(f"append: unexpected {result!r}")
            first = result.sequence_num
        if pseq is not None:
            stats["producer_appends"] += 1
        if result.duplicate:
            stats["duplicates"] += 1
            if pseq is None:
                self.fail(f"{c.id}: append without a producer answered duplicate: {result!r}")
        for k, value in enumerate(values):
            self._acknowledge(q, first + k, value)
        if pseq is not None and src in self.sim.apps:
            # The answering broker stores each value once, where the answer says (it may have
            # restarted from an older snapshot since: then it does not hold the append yet).
            app = self.sim.apps[src]
            queue = app.messages.get(q, [])
            for k, value in enumerate(values):
                if queue.count(value) > 1:
                    self.fail(
                        f"producer {c.id} seq {pseq}: {value!r} stored {queue.count(value)} "
                        f"times in {q} (answer {result!r})"
                    )
                stored = app.message(q, first + k)
                if stored is not None and stored != value:
                    self.fail(
                        f"producer {c.id} seq {pseq}: answered {result!r} but #{first + k} of "
                        f"{q} is {stored!r}, not {value!r}"
                    )

    def _acknowledge(self, q: str, seq: int, data: bytes) -> None:
        key = (q, seq)
        if self.acked.setdefault(key, data) != data:
            self.fail(f"two acknowledged appends at {key}: {self.acked[key]!r}, {data!r}")
        if self.read_seen.get(key, data) != data:
            self.fail(f"acknowledged {data!r} at {key} but {self.read_seen[key]!r} was read")
        self.max_acked[q] = max(self.max_acked.get(q, 0), seq)

    def _check_consecutive(self, who: str, q: str, messages: tuple) -> None:
        for (a, _), (b, _) in itertools.pairwise(messages):
            if b != a + 1:
                self.fail(f"{who} got a batch of {q} with #{b} after #{a}: {messages!r}")

    def _check_nothing_read(self, c: SimClient, q: str) -> None:
        last = c.last_read.get(q, 0)
        skippable = c.skippable.get(q, 0)
        # Nothing to read: the position was at the end, or everything after it was deleted
        # (and reads of unknown outcome may have jumped over a deleted front).
        if c.read_floor > max(last, self.trimmed.get(q, 0)) + skippable:
            self.fail(
                f"{c.id} read nothing in {q} at position <= {last + skippable} although "
                f"message {c.read_floor} was acknowledged before the read"
            )

    def _check_data(self, who: str, q: str, seq: int, data: bytes) -> None:
        """Read (or peeked) data was appended, and agrees with what #seq is known to hold."""
        if data not in self.appended_data:
            self.fail(f"{who} read {data!r} that no client ever appended")
        key = (q, seq)
        if self.acked.get(key, data) != data:
            self.fail(f"read {data!r} at {key}, acknowledged {self.acked[key]!r}")
        if self.read_seen.setdefault(key, data) != data:
            self.fail(f"two different messages read at {key}")

    def _check_read(self, c: SimClient, q: str, seq: int, data: bytes) -> None:
        """One message moved to by ``c``: after its last, skipping only what it may have read."""
        last = c.last_read.get(q, 0)
        skippable = c.skippable.get(q, 0)
        if seq <= last:
            self.fail(f"{c.id} read {q} #{seq} after #{last}: repeat or out of order")
        gap = seq - last - 1 - self.excused(q, last, seq)
        if gap > skippable:
            self.fail(
                f"{c.id} read {q} #{seq} after #{last}: gap of {gap} with only {skippable} "
                "reads of unknown outcome (and no deletion by retention there)"
            )
        c.skippable[q] = skippable - gap
        c.last_read[q] = seq
        self._check_data(c.id, q, seq, data)

    def _on_peek_result(self, c: SimClient, q: str, n: int, result: Any) -> None:
        self.sim.stats["peeks"] += 1
        if not isinstance(result, MessagesRead) or len(result.messages) > n:
            self.fail(f"peek of {n}: unexpected {result!r}")
        messages = result.messages
        lo, hi = c.ack_bounds(q)
        if not messages:
            # Nothing after the position: the queue ended there (or retention deleted all
            # that followed), and it held at least every message acknowledged before the peek.
            if c.read_floor > max(hi, self.trimmed.get(q, 0)):
                self.fail(
                    f"{c.consumer} peeked nothing in {q} at position <= {hi} although message "
                    f"{c.read_floor} was acknowledged before the peek"
                )
            return
        self._check_consecutive(c.consumer, q, messages)
        first, last = messages[0][0], messages[-1][0]
        if not lo < first <= hi + 1 + self.excused(q, hi, first):
            self.fail(
                f"{c.consumer} peeked {q} from #{first}, but its acknowledged position is "
                f"within [{lo}, {hi}]"
            )
        if first <= hi + 1 and first - 1 > self.trimmed.get(q, 0):
            c.ack_known(q, first - 1)
        # Otherwise retention deleted what followed the position, which stays as unknown: a
        # peek that starts at the first retained message says nothing about the position
        # below it (an Ack of unknown outcome may or may not have moved it there).
        for seq, value in messages:
            self._check_data(c.consumer, q, seq, value)
        if len(messages) < n and c.read_floor > last:
            self.fail(
                f"{c.consumer} peek of {q} stopped at #{last} although message "
                f"{c.read_floor} was acknowledged before the peek"
            )
        c.to_ack = (q, last)

    def _on_ack_result(self, c: SimClient, q: str, seq: int, result: Any) -> None:
        self.sim.stats["acks"] += 1
        lo, hi = c.ack_bounds(q)
        if not isinstance(result, PositionSet):
            self.fail(f"ack: unexpected {result!r}")
        position = result.next_sequence_num - 1
        if not max(lo, seq) <= position <= max(hi, seq):
            self.fail(
                f"{c.consumer} acked {q} #{seq} with its position within [{lo}, {hi}], "
                f"answered position {position}"
            )
        c.ack_known(q, position)

    def views_disagree(self) -> str | None:
        """Which live member of the current group shows a view of the members (roles and
        statuses, CLUSTER_QUERY's) other than its one leader's, if any (None also while the
        group has no one leader)."""
        sim = self.sim
        leaders = [i for i in sim.live() if sim.nodes[i].is_leader]
        if len(leaders) != 1:
            return None
        leader = sim.nodes[leaders[0]]
        view = leader.member_statuses()
        for i in sim.live():
            node = sim.nodes[i]
            if i in leader.config.members and node.member_statuses() != view:
                shown = {m: (v.role, v.status) for m, v in node.member_statuses().items()}
                wanted = {m: (v.role, v.status) for m, v in view.items()}
                return f"member {i} shows {shown}, leader {leaders[0]} {wanted}"
        return None

    def final_check(self) -> None:
        """After convergence: every node holds every acknowledged append at its number, each
        idempotent producer's value exactly once, and every client's positions where its
        answers put them."""
        sim = self.sim
        leader = next(sim.nodes[i] for i in sim.live() if sim.nodes[i].is_leader)
        members = [i for i in sim.live() if i in leader.config.members]
        states = {i: repr(sim.apps[i]) for i in members}
        if len(set(states.values())) != 1:
            self.fail("converged members disagree on the queues")
        if sim.hosts_workers:
            self.group.final_check(members)
        for (q, seq), data in self.acked.items():
            for i in members:
                app = sim.apps[i]
                if q in app.messages and seq < app.first_retained(q):
                    # Deleted by retention: only ever from the front of a queue that had a
                    # policy, as every node agrees.
                    if seq > self.trimmed.get(q, 0):
                        self.fail(f"{q} #{seq} is gone from node {i}, never deleted by retention")
                    continue
                if app.message(q, seq) != data:
                    self.fail(f"acknowledged append {q} #{seq} = {data!r} missing on node {i}")
        # Every idempotent append was retried until answered, so each value is there once
        # (or, in a queue that retention trimmed, at most once).
        for i in members:
            counts: dict[bytes, int] = {}
            for queue in sim.apps[i].messages.values():
                for value in queue:
                    counts[value] = counts.get(value, 0) + 1
            for value, q in self.producer_data.items():
                allowed = (0, 1) if self.trimmed.get(q, 0) else (1,)
                if counts.get(value, 0) not in allowed:
                    self.fail(
                        f"idempotent producer's {value!r} stored {counts.get(value, 0)} times "
                        f"on node {i}"
                    )
        app = sim.apps[members[0]]
        for c in sim.clients:
            for q in self.queues:
                last = c.last_read.get(q, 0)
                # Reads of unknown outcome may also have jumped over a deleted front.
                high = max(last, self.trimmed.get(q, 0)) + c.skippable.get(q, 0)
                if not last <= app.position(c.id, q) <= high:
                    self.fail(
                        f"{c.id}'s position in {q} is {app.position(c.id, q)}, not within "
                        f"[{last}, {high}]"
                    )
                lo, hi = c.ack_bounds(q)
                if not lo <= app.position(c.consumer, q) <= hi:
                    self.fail(
                        f"{c.consumer}'s position in {q} is {app.position(c.consumer, q)}, "
                        f"not within [{lo}, {hi}]"
                    )
