"""The queue lifecycle's invariants, on the state each entry leaves on each replica (compared
with the state before it), on what the lifecycle clients observe, and after convergence.

- names: a create with a name gives the id the name has while the queue lives (``created``
  false), or makes a queue with the create's own id, never used before, when the name is free;
  a deleted queue's name is free; the replicas' names are exactly what this implies;
- a deleted queue leaves nothing behind on any replica: no message, position, group, lease,
  header, producer state, retention policy, activity or name; a delete without force is
  refused exactly while one of the queue's groups holds an unexpired lease;
- headers come back as stored: what a publish stores, and what reads return, are the
  published data with the published headers;
- a forgotten position is gone (explicitly, or by an idle sweep), and an idle sweep forgets a
  position only once its idle time has passed since the sweep that followed its last use (the
  granularity of the sweeps, docs/protocol.md); a position no longer there holds no retention:
  after an enforcement, a ``delete_acknowledged`` queue holds nothing before its slowest reader
  and group;
- every acknowledged publish is held by every replica at the end, unless its queue was deleted
  or retention deleted it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._core._commands import (
    Ack,
    ApplyRetention,
    CommandRejected,
    QueueCreated,
    ReadBatch,
    ReadNext,
    RetentionApplied,
    Seek,
)
from ..._core._work_commands import (
    CreateNamedQueue,
    DeleteQueue,
    Delivered,
    ForgetIdlePositions,
    ForgetPosition,
    GroupJoined,
    NamedQueue,
    PositionForgotten,
    PositionsForgotten,
    Published,
    QueueDeleted,
    ReadRecords,
)
from ._lifecycle import KINDS, SimLifecycle

if TYPE_CHECKING:
    from ._run import Simulation

USES = (ReadNext, ReadBatch, Ack, Seek, ReadRecords)
"""Commands that use a client's position (what keeps it from an idle sweep)."""

STATS = (
    *(f"life_{kind}" for kind in KINDS),
    "idle_sweeps",
    "idle_forgotten",
)
"""The run's statistics of this workload (every run has them, at 0 without it)."""

LifeView = tuple[dict[str, str], frozenset[tuple[str, str]], dict[str, int]]
"""(the names, the positions' keys, queue -> the latest deadline of a lease held in one of
its groups) before an entry."""


def traces(app: Any, q: str) -> list[str]:
    """Where queue ``q`` is still mentioned in a replica's state."""
    work = app.work
    found = [
        name
        for name, table in (
            ("messages", app.messages),
            ("deleted", app.deleted),
            ("stamps", app.stamps),
            ("last_stamp", app.last_stamp),
            ("retention", app.retention),
            ("headers", work.headers),
        )
        if q in table
    ]
    for name, keys, at in (
        ("positions", app.positions, 1),
        ("producers", app.producers, 1),
        ("activity", work.activity, 1),
        ("fenced producers", work.producers, 1),
        ("groups", work.groups, 0),
    ):
        if any(k[at] == q for k in keys):
            found.append(name)
    if q in work.names.values():
        found.append("names")
    return found


class LifecycleChecker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        sim.stats.update(dict.fromkeys(STATS, 0))
        self.made: dict[str, int] = {}
        """Queue id -> the log index of the entry that created it (ids are never reused)."""
        self.gone: dict[str, int] = {}
        """Deleted queue id -> the log index of the entry that deleted it."""
        self.published: dict[bytes, tuple] = {}
        """Published value -> its headers."""
        self.acked: dict[tuple[str, int], bytes] = {}
        """(queue, seq) -> the value an answered publish put there."""
        self.processed = 0
        """The last log index whose first application fed the sweep bookkeeping below."""
        self.last_use: dict[tuple[str, str], tuple[int, int]] = {}
        """Position key -> (log index, command in the entry) of its last use."""
        self.sweeps: list[tuple[tuple[int, int], int]] = []
        """(log index, command in the entry) and effective clock of every idle sweep."""

    def fail(self, message: str) -> None:
        self.sim.checker.fail(f"lifecycle: {message}")

    @staticmethod
    def view(app: Any) -> LifeView:
        leases: dict[str, int] = {}
        for (q, _), group in app.work.groups.items():
            for p in group.pending.values():
                if p.member is not None:
                    leases[q] = max(leases.get(q, p.until_ms), p.until_ms)
        return dict(app.work.names), frozenset(app.positions), leases

    def _check_delete_refusal(
        self, where: str, k: int, c: DeleteQueue, r: Any, pairs: list, before: LifeView
    ) -> None:
        """A delete without force is refused exactly while a group of the queue holds a lease
        unexpired by the command's clock (checked when nothing before it in the entry touched
        the queue)."""
        if c.force or any(getattr(d, "queue_id", None) == c.queue_id for d, _ in pairs[:k]):
            return
        # (No lease at all is never a lease: a skewed clock reads below zero early on.)
        until = before[2].get(c.queue_id)
        leased = until is not None and until > c.now_ms
        refused = isinstance(r, CommandRejected) and r.code == "QUEUE_IN_USE"
        if refused != leased and (refused or isinstance(r, QueueDeleted)):
            self.fail(f"{where}: {c} answered {r}, leases until {before[2].get(c.queue_id)}")

    # -- the state each entry leaves --------------------------------------------------------------

    def on_entry(self, i: int, index: int, commands: list, results: list, before: LifeView) -> None:
        app = self.sim.apps[i]
        where = f"node {i} entry {index}"
        names = dict(before[0])
        deleted, published = [], []
        pairs = list(zip(commands, results, strict=True))
        # Positions an entry removes other than by an idle sweep.
        explained = {
            (c.client_id, c.queue_id)
            for c, r in pairs
            if isinstance(c, ForgetPosition) and isinstance(r, PositionForgotten)
        }
        explained.update(
            key
            for c, r in pairs
            if isinstance(r, QueueDeleted)
            for key in before[1]
            if key[1] == r.queue_id
        )
        for k, (c, r) in enumerate(pairs):
            made = isinstance(r, QueueCreated) or (isinstance(r, NamedQueue) and r.created)
            if made and self.made.setdefault(r.queue_id, index) != index:
                self.fail(f"{where}: {r.queue_id} created again (first at {self.made[r.queue_id]})")
            if isinstance(c, CreateNamedQueue) and isinstance(r, NamedQueue):
                if r.created and (c.name in names or r.queue_id != c.queue_id):
                    self.fail(f"{where}: {r} although {c.name!r} names {names.get(c.name)}")
                if not r.created and names.get(c.name) != r.queue_id:
                    self.fail(f"{where}: {r} although {c.name!r} names {names.get(c.name)}")
                names[c.name] = r.queue_id
            if isinstance(c, DeleteQueue):
                self._check_delete_refusal(where, k, c, r, pairs, before)
            if isinstance(c, DeleteQueue) and isinstance(r, QueueDeleted):
                names = {n: q for n, q in names.items() if q != r.queue_id}
                self.gone.setdefault(r.queue_id, index)
                deleted.append(r.queue_id)
            elif isinstance(c, DeleteQueue) and c.force and isinstance(r, CommandRejected):
                if r.code == "QUEUE_IN_USE":  # no lifecycle queue is a dead-letter queue
                    self.fail(f"{where}: a forced delete of {c.queue_id} refused: {r}")
            elif isinstance(r, Published):
                published.append((c, r))
            elif (
                isinstance(c, ForgetPosition)
                and isinstance(r, PositionForgotten)
                and k == 0
                and r.existed != ((c.client_id, c.queue_id) in before[1])
            ):
                self.fail(f"{where}: {c} answered {r}")
        if index > self.processed:
            self._feed_sweeps(i, index, pairs, before, explained)
        self.processed = max(self.processed, index)
        if names != app.work.names:
            self.fail(f"{where}: names are {app.work.names}, the entry's creates make {names}")
        for q in deleted:
            if q not in app.messages and (left := traces(app, q)):
                self.fail(f"{where}: deleted queue {q} is still in {left}")
        for c, r in published:
            self._check_published(where, app, c, r)
        for k, (c, r) in enumerate(pairs):
            if isinstance(c, ForgetPosition) and isinstance(r, PositionForgotten):
                key = (c.client_id, c.queue_id)
                used_after = any(
                    isinstance(d, USES) and (d.client_id, d.queue_id) == key
                    for d in commands[k + 1 :]
                )
                if key in app.positions and not used_after:
                    self.fail(f"{where}: {key} forgotten, but its position is still there")
        if isinstance(commands[-1], ApplyRetention) and isinstance(results[-1], RetentionApplied):
            self._check_retention_floor(where, app)

    def _check_published(self, where: str, app: Any, c: Any, r: Published) -> None:
        q = c.queue_id
        if q not in app.messages:
            return  # deleted later in the entry
        for k, record in enumerate(c.records):
            seq = r.first_sequence_num + k
            if seq < app.first_retained(q):
                continue  # retention deleted it later in the entry
            stored = app.work.headers.get(q, {}).get(seq, ())
            if app.message(q, seq) != record.data or stored != record.headers:
                self.fail(
                    f"{where}: published {record} at {q} #{seq}, stored "
                    f"{app.message(q, seq)!r} with headers {stored}"
                )

    def _feed_sweeps(
        self, i: int, index: int, pairs: list, before: LifeView, explained: set
    ) -> None:
        """On the first application of an entry anywhere (the log is the same everywhere):
        record the uses of positions, and check that each position an idle sweep of the entry
        forgot was idle enough for one of them."""
        could: set[tuple[str, str]] = set()
        """Positions one of the entry's sweeps so far may forget."""
        sweeps = []
        for k, (c, r) in enumerate(pairs):
            if isinstance(r, CommandRejected):
                continue
            if isinstance(c, USES):
                self.last_use[(c.client_id, c.queue_id)] = (index, k)
            elif isinstance(c, ForgetPosition):
                self.last_use.pop((c.client_id, c.queue_id), None)
            elif isinstance(r, QueueDeleted):
                for key in [key for key in self.last_use if key[1] == r.queue_id]:
                    del self.last_use[key]
            elif isinstance(c, ForgetIdlePositions) and isinstance(r, PositionsForgotten):
                clock = c.now_ms if not self.sweeps else max(self.sweeps[-1][1], c.now_ms)
                self.sweeps.append(((index, k), clock))
                sweeps.append((clock, c.idle_ms))
                for key in before[1]:
                    use = self.last_use.get(key, (0, 0))
                    stamp = next(t for pos, t in self.sweeps if pos > use)
                    if clock - c.idle_ms >= stamp:
                        could.add(key)
        if not sweeps:
            return
        after = self.sim.apps[i].positions
        for key in before[1]:
            if key in after or key in explained:
                continue
            if key not in could:
                use = self.last_use.get(key, (0, 0))
                stamp = next(t for pos, t in self.sweeps if pos > use)
                self.fail(
                    f"node {i} entry {index}: sweeps {sweeps} (clock, idle time) forgot {key}, "
                    f"last used at {use} (stamped {stamp} by the sweep after)"
                )
            self.last_use.pop(key, None)
            self.sim.stats["idle_forgotten"] += 1

    def _check_retention_floor(self, where: str, app: Any) -> None:
        """After an enforcement: every ``delete_acknowledged`` queue holds nothing that all its
        present readers and groups are done with (forgotten positions hold nothing)."""
        for q, policy in app.retention.items():
            if not policy.delete_acknowledged:
                continue
            done = [p for (_, queue), p in app.positions.items() if queue == q]
            for (queue, _), g in app.work.groups.items():
                if queue == q:
                    done.append(min([g.cursor + 1, *g.pending]) - 1)
            if done and app.deleted[q] < min(min(done), app.queue_length(q)):
                self.fail(
                    f"{where}: {q} keeps from #{app.deleted[q] + 1} although every reader "
                    f"and group is past #{min(done)}"
                )

    # -- what the lifecycle clients observe --------------------------------------------------

    def on_unknown(self, c: SimLifecycle) -> None:
        if c.op[0] == "ndelete":
            c.known.pop(c.op[1], None)  # it may be gone: create the name again to find out

    def on_result(self, c: SimLifecycle, op: tuple, result: Any) -> None:
        kind, name, data = op
        stats = self.sim.stats
        stats[f"life_{kind}"] += 1
        if isinstance(result, CommandRejected):
            stale = result.code in ("QUEUE_NOT_FOUND", "GROUP_NOT_FOUND")
            in_use = kind == "ndelete" and result.code == "QUEUE_IN_USE" and not data[1]
            if not (stale and kind != "ncreate") and not in_use:
                self.fail(f"{c.id}: {op!r} rejected: {result!r}")
            if result.code == "QUEUE_NOT_FOUND":
                c.known.pop(name, None)
            elif result.code == "GROUP_NOT_FOUND":
                c.to_join = name
            return
        if kind == "ncreate":
            if not isinstance(result, NamedQueue) or result.name != name:
                self.fail(f"{c.id}: create {name!r}: unexpected {result!r}")
            if result.created and result.queue_id != data[0]:
                self.fail(f"{c.id}: create {name!r} made {result.queue_id}, not {data[0]}")
            c.known[name] = result.queue_id
        elif kind == "ndelete":
            if result != QueueDeleted(data[0]):
                self.fail(f"{c.id}: delete of {data[0]}: unexpected {result!r}")
            if c.known.get(name) == data[0]:
                del c.known[name]
        elif kind == "npublish":
            q, records = data
            if not isinstance(result, Published) or result.count != len(records):
                self.fail(f"{c.id}: publish to {q}: unexpected {result!r}")
            for k, record in enumerate(records):
                self.published[record.data] = record.headers
                self.acked[(q, result.first_sequence_num + k)] = record.data
        elif kind in ("nread", "ngread"):
            if not isinstance(result, Delivered):
                self.fail(f"{c.id}: {kind} of {data[0]}: unexpected {result!r}")
            for m in result.messages:
                self._check_delivery(c, data[0], m)
        elif kind == "nforget" and not isinstance(result, PositionForgotten):
            self.fail(f"{c.id}: forget: unexpected {result!r}")
        elif kind == "njoin" and not isinstance(result, GroupJoined):
            self.fail(f"{c.id}: join: unexpected {result!r}")

    def _check_delivery(self, c: SimLifecycle, q: str, m: Any) -> None:
        if m.data not in self.sim.checker.appended_data:
            self.fail(f"{c.id} read {m.data!r} from {q}, which nobody published")
        headers = self.published.get(m.data)
        if headers is not None and m.headers != headers:
            self.fail(f"{c.id} read {m.data!r} with headers {m.headers}, published {headers}")
        if self.acked.get((q, m.sequence_num), m.data) != m.data:
            self.fail(f"{c.id} read {m.data!r} at {q} #{m.sequence_num}: not what was published")

    # -- after convergence ----------------------------------------------------------------------

    def final_check(self, members: list[int]) -> None:
        trimmed = self.sim.checker.trimmed
        for i in members:
            app = self.sim.apps[i]
            for q in self.gone:
                if left := traces(app, q):
                    self.fail(f"node {i}: deleted queue {q} is still in {left}")
            for (q, seq), data in self.acked.items():
                if q in self.gone or seq <= trimmed.get(q, 0):
                    continue
                if app.message(q, seq) != data:
                    self.fail(f"node {i}: published {data!r} at {q} #{seq} is missing")
                if app.work.headers.get(q, {}).get(seq, ()) != self.published[data]:
                    self.fail(f"node {i}: {q} #{seq} lost its headers")
