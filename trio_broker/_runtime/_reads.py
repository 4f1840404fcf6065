"""Reads that change nothing, answered without a log entry (ReadIndex, Raft thesis 6.4).

A READ in peek mode, or a READ that finds nothing (an exhausted queue, a long-poll round
that finds no message), changes no replicated state: writing it to the log, fsyncing it on
a majority and applying it everywhere buys nothing but its order. Such a read goes to the
core's ReadIndex instead (:mod:`trio_broker._core._read_index`): once a majority confirmed
that this broker still led after the read arrived, and the applied state reached every
entry the leader held when the read arrived (so a read pipelined after a write on one
connection sees that write, as its log entry would have), the read runs on the applied
state, inside a transaction that is always rolled back. If that run changed nothing (no
position moved, no idle-forgetting mark set) its result is the answer: the same result the
log would have given at that index. If it would have changed something, the read goes to
the log after all, as before, and the log's result answers it.

``LIST_QUEUES`` reads the applied state itself once the same check says so
(:meth:`ReadPath.confirm_now`, with the commit index, settled from whichever task moves the
core: it needs no turn of the driver, which may be retrying a transaction on a full disk).

Which reads try this path (:meth:`ReadPath.qualifies`): peeks always; a read that moves the
position when the last read of that client on that queue, as applied here, found nothing
and no append to the queue was applied since; a work queue's GROUP_READ when the group's
last applied GROUP_READ delivered nothing and nothing that could make a message deliverable
was applied since (an append to the queue, an ACK, NACK or EXTEND of the group, an expiry
or a dead-letter move). Both are hints (:class:`Exhausted`): a wrong hint costs one
heartbeat round before the log, never a wrong answer, since the run on the applied state
decides. A GROUP_READ whose run would change something (a lease expired by its clock, a
NACK's delay ended, a message to lease) goes to the log, which leases or redelivers as
before (for the in-memory store, :func:`~trio_broker._core._work.group_read_changes`
decides it).

Every read waiting here holds one unit of the driver's proposal capacity, as a proposal
does, and the core holds at most ``max_reads`` of them; a client that goes away cancels its
wait (the read is then answered to nobody). Losing the leadership fails the waiting reads
with NOT_LEADER; peers that do not echo heartbeat rounds (an older version) send the reads
to the log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .._core import _commands as cmd
from .._core import _work_commands as work
from .._core._queues import QueueState
from .._core._raft import NotLeader, RaftError, RaftNode
from .._core._work import group_read_changes
from .._storage._integrity import StorageDamaged
from .._storage._queue_sql import apply_command

QUERY_CHUNK = 64
"""At most this many reads run in one storage job."""
MAX_EXHAUSTED = 10_000
"""At most this many (client, queue) pairs remembered as exhausted (then forgotten at once)."""

_MOVING_READS = (cmd.ReadNext, cmd.ReadBatch, work.ReadRecords)
_APPENDS = (cmd.AppendMessage, cmd.AppendBatch, work.Publish)
_POSITION = (cmd.Ack, cmd.Seek)
_GROUP_CHANGES = (work.GroupAck, work.GroupNack, work.GroupExtend, work.JoinGroup, work.DeleteGroup)
"""Group commands after which the group's next read may deliver (an ACK makes room below
``max_in_flight``, a NACK hands a message back, ...): its idle hint goes."""


def _empty(result: Any) -> bool:
    kind = type(result)
    if kind is cmd.MessageRead:
        return result.sequence_num is None
    if kind is cmd.MessagesRead or kind is work.Delivered:
        return not result.messages
    return False


class _ByQueue:
    """Names (clients, or groups) per queue, at most :data:`MAX_EXHAUSTED` in all (then all
    are forgotten at once: it is a hint)."""

    def __init__(self) -> None:
        self.by_queue: dict[str, set[str]] = {}
        """Queue id -> its names (the same dict for the object's life)."""
        self._count = 0

    def __contains__(self, key: tuple[str, str]) -> bool:
        names = self.by_queue.get(key[0])
        return names is not None and key[1] in names

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        self.by_queue.clear()
        self._count = 0

    def add(self, queue_id: str, name: str) -> None:
        names = self.by_queue.get(queue_id)
        if names is not None and name in names:
            return
        if self._count >= MAX_EXHAUSTED:
            self.clear()
            names = None
        if names is None:
            names = self.by_queue[queue_id] = set()
        names.add(name)
        self._count += 1

    def discard(self, queue_id: str, name: str) -> None:
        names = self.by_queue.get(queue_id)
        if names is not None and name in names:
            names.discard(name)
            self._count -= 1

    def drop_queue(self, queue_id: str) -> None:
        names = self.by_queue.pop(queue_id, None)
        if names is not None:
            self._count -= len(names)


class Exhausted:
    """Hints that the next read finds nothing: the (client, queue) pairs whose last applied
    read found nothing, with no append since; the (queue, group) pairs whose last applied
    GROUP_READ delivered nothing, with nothing since that could make a message deliverable
    but time (the run on the applied state sees what time changed)."""

    def __init__(self) -> None:
        self._clients = _ByQueue()
        self.groups = _ByQueue()
        """Idle consumer groups, as (queue id, group name)."""
        # (Their dicts, looked up first for every append: the hot path.)
        self._client_queues = self._clients.by_queue
        self._group_queues = self.groups.by_queue

    def __contains__(self, key: tuple[str, str]) -> bool:
        """Whether ``(client_id, queue_id)`` is exhausted."""
        return (key[1], key[0]) in self._clients

    def clear(self) -> None:
        self._clients.clear()
        self.groups.clear()

    def note(self, command: Any, result: Any) -> None:
        """An applied command (called for every one: cheap for all but reads and appends)."""
        kind = type(command)
        if kind in _APPENDS_SET:
            queue_id = command.queue_id
            if queue_id in self._client_queues:
                self._clients.drop_queue(queue_id)
            if queue_id in self._group_queues:
                self.groups.drop_queue(queue_id)
        elif kind in _READS_SET:
            if getattr(command, "peek", False):
                return
            if _empty(result):
                self._clients.add(command.queue_id, command.client_id)
            else:
                self._clients.discard(command.queue_id, command.client_id)
        elif kind in _POSITION_SET:
            self._clients.discard(command.queue_id, command.client_id)
        elif kind is work.GroupRead:
            if type(result) is work.Delivered and not result.messages:
                self.groups.add(command.queue_id, command.group)
            else:
                self.groups.discard(command.queue_id, command.group)
        elif kind in _GROUP_CHANGES_SET:
            if getattr(result, "dead_lettered", ()):
                self.groups.clear()  # (a dead-letter queue's groups may deliver now)
            else:
                self.groups.discard(command.queue_id, command.group)
        elif kind is work.ExpireLeases:
            if getattr(result, "expired", 0):
                self.groups.clear()
        elif kind is work.DeleteQueue:
            self._clients.drop_queue(command.queue_id)
            self.groups.drop_queue(command.queue_id)


READ_CANDIDATES: frozenset[type] = frozenset((*_MOVING_READS, work.GroupRead))
"""The commands :meth:`ReadPath.qualifies` may take (a type check first: the hot path)."""
_APPENDS_SET = frozenset(_APPENDS)
_READS_SET = frozenset(_MOVING_READS)
_POSITION_SET = frozenset(_POSITION)
_GROUP_CHANGES_SET = frozenset(_GROUP_CHANGES)


class _Undo(Exception):
    pass


def query(store: Any, commands: Sequence[Any]) -> list[tuple[Any, bool]]:
    """Run each read on the applied state and undo it: ``(result, changed)`` for each, where
    ``changed`` says it would have written something (then its result is not an answer).

    A storage job (on the storage worker). The SQLite store runs each in a transaction that
    is always rolled back (a read that meets a damaged value counts as changed: the log path
    repairs it); the in-memory store of the mock clock by :func:`trial_read`."""
    db = getattr(store, "_db", None)
    if db is None:
        return [_query_copy(store, command) for command in commands]
    answers: list[tuple[Any, bool]] = []
    for command in commands:
        before = db.total_changes()
        result: Any = None
        changed = True
        try:
            with db:
                result = apply_command(db, command, hold=True)
                changed = db.total_changes() != before
                raise _Undo
        except _Undo:
            pass
        except StorageDamaged:
            result, changed = None, True
        answers.append((result, changed))
    return answers


def _query_copy(store: Any, command: Any) -> tuple[Any, bool]:
    return trial_read(store.state, command)


def trial_read(state: QueueState, command: Any) -> tuple[Any, bool]:
    """Run a read (ReadNext, ReadBatch, ReadRecords, GroupRead) on a :class:`QueueState` and
    undo it: ``(result, changed)``. A per-client read changes at most a position and the
    position's activity mark (idle forgetting): both are swapped for copies while it runs.
    A GroupRead is applied only when :func:`group_read_changes` says it changes nothing
    (otherwise its result is None: it is not an answer)."""
    if type(command) is work.GroupRead:
        if group_read_changes(state, command):
            return None, True
        return state.apply(command), False
    positions, work_state = state.positions, state.work
    activity = work_state.activity
    state.positions, work_state.activity = dict(positions), dict(activity)
    try:
        result = state.apply(command)
        changed = state.positions != positions or work_state.activity != activity
    finally:
        state.positions, work_state.activity = positions, activity
    return result, changed


@attrs.frozen
class ReadStatistics:
    """The ReadIndex path's counters since the broker started (the metrics' source)."""

    rounds: int
    """Heartbeat rounds sent while reads waited for one (each confirms every read waiting)."""
    answered: int
    """Reads answered from the applied state, without a log entry."""
    to_log: int
    """Reads that tried the path and went to the log (their run would have changed state,
    or the core could not take them)."""
    failed: int
    """Waiting reads failed with NOT_LEADER: the leader stepped down or began a transfer."""


class ReadPath:
    """The driver's reads waiting for the core's ReadIndex (see the module docstring).

    ``settle(token, outcome)`` answers a read (and frees its capacity unit); ``to_log(command,
    token)`` sends it to the log instead, with its token (the unit goes with it)."""

    def __init__(
        self,
        settle: Callable[[Any, Any], None],
        to_log: Callable[[Any, Any], None],
        store: Any,
    ) -> None:
        self._settle = settle
        self._to_log = to_log
        self._store = store
        self.exhausted = Exhausted()
        self._arrived: list[tuple[Any, Any]] = []
        self._waiting: dict[int, tuple[Any, Any]] = {}
        self._ready: list[tuple[Any, Any]] = []
        """Released by the core, to run on the applied state (:meth:`serve`)."""
        self._next = 0
        self.served = 0
        """Reads answered without a log entry."""
        self.sent_to_log = 0
        """Reads that tried this path and went to the log."""
        self.failed = 0
        """Reads failed because this broker stopped leading or began a transfer while they
        waited (before the core took them, or in it)."""

    def __len__(self) -> int:
        return len(self._arrived) + len(self._waiting) + len(self._ready)

    def qualifies(self, command: Any) -> bool:
        kind = type(command)
        if kind is work.GroupRead:
            return (command.queue_id, command.group) in self.exhausted.groups
        if kind is cmd.ReadBatch or kind is work.ReadRecords:
            if command.peek:
                return True
        elif kind is not cmd.ReadNext:
            return False
        return (command.client_id, command.queue_id) in self.exhausted

    def watching(self, on_applied: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        """``on_applied``, noting each applied command in :attr:`exhausted` first."""
        note = self.exhausted.note

        def noted(command: Any, result: Any) -> None:
            note(command, result)
            on_applied(command, result)

        return noted

    def submit(self, command: Any, token: Any) -> None:
        """A qualifying read, with the token its answer goes to; registered with the core at
        the driver's next turn (after the proposals that arrived before it are in the log).
        ``command`` None: nothing to run, the token is settled None once confirmed (a caller
        that reads the applied state itself, :meth:`RaftDriver.confirm_leading`)."""
        self._arrived.append((command, token))

    @property
    def arrived(self) -> bool:
        return bool(self._arrived)

    @property
    def waiting(self) -> bool:
        return bool(self._waiting or self._ready)

    def confirm_now(self, node: RaftNode, token: Any, errors: Callable[[Exception], Any]) -> None:
        """A caller's own read (``token`` settled None once confirmed), registered at once
        with the commit index (it has no place among a connection's proposals), so that it
        needs no turn of the driver (which may be retrying a transaction meanwhile)."""
        key = self._key()
        try:
            node.read_index(key)
        except RaftError as exc:
            self._failed(exc)
            self._refused(None, token, errors(exc))
            return
        self._waiting[key] = (None, token)
        self.collect(node, errors)

    def _key(self) -> int:
        self._next += 1
        return self._next

    def collect(self, node: RaftNode, errors: Callable[[Exception], Any]) -> bool:
        """Take what the core released or failed (callable from any task: it never waits):
        a caller's own reads are settled here, the others kept for :meth:`serve`. True if
        some wait for it."""
        ready, failed = node.take_reads()
        for key, exc in failed:
            self._failed(exc)
            entry = self._waiting.pop(key, None)
            if entry is not None:
                self._refused(*entry, errors(exc))
        for key, _ in ready:
            command, token = self._waiting.pop(key)
            if command is None:
                self.served += 1
                self._settle(token, None)
            else:
                self._ready.append((command, token))
        return bool(self._ready)

    def register(self, node: RaftNode, errors: Callable[[Exception], Any]) -> None:
        """Hand the reads that arrived to the core, each with the leader's last index (every
        proposal that arrived before it is in the log by now)."""
        arrived, self._arrived = self._arrived, []
        after = node.log.last_index
        for command, token in arrived:
            key = self._key()
            try:
                node.read_index(key, after)
            except RaftError as exc:  # not the leader, a transfer, too many, older peers
                self._failed(exc)
                self._refused(command, token, errors(exc))
                continue
            self._waiting[key] = (command, token)

    async def serve(
        self,
        node: RaftNode,
        run: Callable[..., Any],
        errors: Callable[[Exception], Any],
    ) -> bool:
        """Answer the reads the core released, fail those it failed; True if any went to the
        log (the driver then proposes them). ``run(fn, *args)`` runs a storage job."""
        logged = False
        self.collect(node, errors)
        entries, self._ready = self._ready, []
        for start in range(0, len(entries), QUERY_CHUNK):
            logged |= await self._answer(entries[start : start + QUERY_CHUNK], run)
        return logged

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, NotLeader):  # (a LeadershipTransferring too)
            self.failed += 1

    def _refused(self, command: Any, token: Any, outcome: Any) -> None:
        """The core refused or failed a read: ``outcome`` answers it, or with None it takes
        the log. (A caller's own read, ``command`` None, then reads unconfirmed, as every
        such read did before ReadIndex: only with voters that predate rounds, or too many
        reads waiting.)"""
        if outcome is not None:
            self._settle(token, outcome)
        elif command is None:
            self._settle(token, None)
        else:
            self.sent_to_log += 1
            self._to_log(command, token)

    async def _answer(self, entries: list[tuple[Any, Any]], run: Callable[..., Any]) -> bool:
        results = await run(query, self._store, [command for command, _ in entries])
        logged = False
        for (command, token), (result, changed) in zip(entries, results, strict=True):
            if changed:
                self.sent_to_log += 1
                self._to_log(command, token)
                logged = True
            else:
                self.served += 1
                self._settle(token, result)
        return logged

    def statistics(self, node: RaftNode) -> ReadStatistics:
        return ReadStatistics(node.reads.read_rounds, self.served, self.sent_to_log, self.failed)

    def fail_all(self, outcome: Any) -> None:
        """The core was rebuilt (the driver restarted): every read is answered ``outcome``."""
        for _, token in self._arrived:
            self._settle(token, outcome)
        for _, token in [*self._waiting.values(), *self._ready]:
            self._settle(token, outcome)
        self._arrived, self._waiting, self._ready = [], {}, []
        self.exhausted.clear()


__all__ = [
    "READ_CANDIDATES",
    "Exhausted",
    "ReadPath",
    "ReadStatistics",
    "query",
    "trial_read",
]
