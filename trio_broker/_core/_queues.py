"""The queues as a pure in-memory state machine.

This is the reference semantics of every command. ``_storage`` implements the same semantics in
SQLite; a property test checks that both agree on any sequence of commands.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import attrs

from ._commands import (
    GROUPS_FIXED_BY_LIST,
    GROUPS_FIXED_BY_MAP,
    MAX_PRODUCERS,
    RETENTION_DELETES_PER_APPLY,
    Ack,
    AppendBatch,
    AppendMessage,
    ApplyRetention,
    BatchAppended,
    BrokerAddressSet,
    Command,
    CommandGroup,
    CommandRejected,
    CreateQueue,
    GroupApplied,
    GroupsSet,
    MapCommand,
    MessageAppended,
    MessageRead,
    MessagesRead,
    PositionSet,
    ProducerState,
    QueueCreated,
    ReadBatch,
    ReadNext,
    Result,
    RetentionApplied,
    RetentionPolicy,
    RetentionSet,
    Seek,
    SetBrokerAddress,
    SetGroups,
    SetRetention,
    bad_request,
    check_producer,
    groups_problem,
    next_producer_state,
    queue_exists,
    queue_not_found,
    take_within,
)
from ._metadata import ClusterMap, FoundCluster, MetadataResult
from ._work import WorkState, apply_work, touch
from ._work_commands import WORK_COMMANDS


@attrs.define
class QueueState:
    """Queues, their messages, each client's read position per queue, and producer dedup.

    A queue's messages have sequence numbers 1, 2, 3, ...; a position is the sequence number of
    the last message the client read (0 before the first). Retention deletes messages from the
    front only: ``messages[q]`` holds the retained ones, the first being number
    ``deleted[q] + 1``, and the queue's length (its last sequence number) is
    ``deleted[q] + len(messages[q])``.
    """

    messages: dict[str, list[bytes]] = attrs.field(factory=dict)
    """Queue id -> the retained messages, oldest first."""
    deleted: dict[str, int] = attrs.field(factory=dict)
    """Queue id -> how many messages retention deleted from its front."""
    stamps: dict[str, list[int | None]] = attrs.field(factory=dict)
    """Queue id -> when each retained message was appended (ms; None: unknown, appended before
    retention existed). Never decreasing along a queue."""
    last_stamp: dict[str, int | None] = attrs.field(factory=dict)
    """Queue id -> the stamp of its last appended message (kept when that message is gone)."""
    retention: dict[str, RetentionPolicy] = attrs.field(factory=dict)
    """Queue id -> its policy; queues that keep everything are absent."""
    positions: dict[tuple[str, str], int] = attrs.field(factory=dict)
    brokers: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    """The address book: broker id -> (host, port)."""
    producers: OrderedDict[tuple[str, str], ProducerState] = attrs.field(factory=OrderedDict)
    """(producer id, queue id) -> dedup state, least recently used first."""
    producer_clock: int = 0
    work: WorkState = attrs.field(factory=WorkState)
    """Names, consumer groups, headers, fenced producers, position activity (``_work``)."""
    groups: tuple[str, ...] = ()
    """The cluster's replication groups, once founded with several by the stage-1 list
    (:class:`SetGroups`: every broker hosts every group)."""
    cluster_map: ClusterMap = attrs.field(factory=ClusterMap)
    """The metadata group's state (docs/replication.md, "The metadata group"): founded
    (``settings`` set) by ``FoundCluster`` in a cluster founded with several groups."""

    def apply(self, command: Command) -> Result:
        if isinstance(command, CommandGroup):
            return GroupApplied(tuple(self.apply(c) for c in command.commands))
        if isinstance(command, CreateQueue):
            if command.queue_id in self.messages:
                return queue_exists(command.queue_id)
            policy = command.retention
            if policy is not None and (problem := policy.problem()) is not None:
                return bad_request(problem)
            self.messages[command.queue_id] = []
            self.deleted[command.queue_id] = 0
            self.stamps[command.queue_id] = []
            self.last_stamp[command.queue_id] = None
            if policy is not None and not policy.keeps_everything:
                self.retention[command.queue_id] = policy
            return QueueCreated(command.queue_id)
        if isinstance(command, SetBrokerAddress):
            self.brokers[command.broker_id] = (command.host, command.port)
            return BrokerAddressSet(command.broker_id)
        if isinstance(command, SetGroups):
            if self.cluster_map.settings is not None:
                return bad_request(GROUPS_FIXED_BY_MAP)
            if (problem := groups_problem(command.group_ids, self.groups)) is not None:
                return bad_request(problem)
            self.groups = command.group_ids
            return GroupsSet(command.group_ids)
        if isinstance(command, MapCommand):
            return apply_map_command(self.cluster_map, self.groups, command)
        if isinstance(command, ApplyRetention):
            return self._apply_retention(command.now_ms)
        if isinstance(command, WORK_COMMANDS):
            return apply_work(self, command)
        if not isinstance(command, Command):
            raise TypeError(f"not a command: {command!r}")
        queue = self.messages.get(command.queue_id)
        if queue is None:
            return queue_not_found(command.queue_id)
        if isinstance(command, SetRetention):
            if (problem := command.policy.problem()) is not None:
                return bad_request(problem)
            if command.policy.keeps_everything:
                self.retention.pop(command.queue_id, None)
            else:
                self.retention[command.queue_id] = command.policy
            return RetentionSet(command.queue_id, command.policy)
        if isinstance(command, AppendMessage | AppendBatch):
            return self._append(command, queue)
        key = (command.client_id, command.queue_id)
        touch(self, *key)
        position = self.positions.get(key, 0)
        deleted = self.deleted[command.queue_id]
        length = deleted + len(queue)
        if isinstance(command, ReadNext | ReadBatch):
            start, end = read_range(position, deleted, length, command)
            read = tuple((seq, queue[seq - deleted - 1]) for seq in range(start, end + 1))
            result, moved_to = read_result(command, read)
        elif isinstance(command, Ack | Seek):
            result, moved_to = position_result(command, position, length)
        else:
            raise TypeError(f"not a command: {command!r}")  # pragma: no cover
        if moved_to is not None:
            self.positions[key] = moved_to
        return result

    def _append(self, command: AppendMessage | AppendBatch, queue: list[bytes]) -> Result:
        batch = isinstance(command, AppendBatch)
        data = command.data if batch else (command.data,)
        queue_id = command.queue_id
        if command.producer_id is not None and command.producer_seq is not None:
            key = (command.producer_id, queue_id)
            state = self.producers.get(key)
            decided = check_producer(state, command.producer_seq, batch)
            if decided is not None:
                return decided
        queue.extend(data)
        stamp = monotonic_stamp(command.appended_ms, self.last_stamp[queue_id])
        self.stamps[queue_id].extend([stamp] * len(data))
        self.last_stamp[queue_id] = stamp
        first = self.deleted[queue_id] + len(queue) - len(data) + 1
        if command.producer_id is not None and command.producer_seq is not None:
            self.producer_clock += 1
            self.producers[key] = next_producer_state(
                state, command.producer_seq, first, len(data), self.producer_clock
            )
            self.producers.move_to_end(key)
            while len(self.producers) > MAX_PRODUCERS:
                self.producers.popitem(last=False)
        return BatchAppended(first, len(data)) if batch else MessageAppended(first)

    def _apply_retention(self, now_ms: int) -> RetentionApplied:
        budget = RETENTION_DELETES_PER_APPLY
        trimmed = []
        for queue_id, policy in sorted(self.retention.items()):
            if budget <= 0:
                break
            queue, stamps = self.messages[queue_id], self.stamps[queue_id]
            deleted = self.deleted[queue_id]
            length = deleted + len(queue)
            too_old = None
            if policy.max_age_ms is not None:
                cutoff = now_ms - policy.max_age_ms
                # Stamps never decrease along a queue, and unknown ones (None) come first: a
                # message of unknown age goes with the first dated message after it that is
                # too old. Looking further than the budget is pointless.
                for i, stamp in enumerate(stamps):
                    if stamp is None:
                        continue
                    if stamp >= cutoff:
                        break
                    too_old = deleted + i + 1
                    if i + 1 >= budget:
                        break
            slowest = None
            if policy.delete_acknowledged:
                readers = [p for (_, q), p in self.positions.items() if q == queue_id]
                slowest = min(readers) if readers else None
            unfinished = self.work.lowest_unfinished(queue_id, deleted)
            through = retention_through(
                policy, deleted, length, too_old, slowest, budget, unfinished
            )
            if through > deleted:
                count = through - deleted
                del queue[:count], stamps[:count]
                self.deleted[queue_id] = through
                budget -= count
                trimmed.append((queue_id, through + 1))
        return RetentionApplied(tuple(trimmed))

    def apply_all(self, commands: list[Command]) -> list[Result]:
        return [self.apply(c) for c in commands]

    def queue_length(self, queue_id: str) -> int | None:
        """The queue's last sequence number (retained or not), None if there is no queue."""
        queue = self.messages.get(queue_id)
        return None if queue is None else self.deleted[queue_id] + len(queue)

    def first_retained(self, queue_id: str) -> int:
        """The sequence number of the queue's first retained message (its length + 1 when it
        retains none)."""
        return self.deleted[queue_id] + 1

    def message(self, queue_id: str, sequence_num: int) -> bytes | None:
        """Message ``sequence_num`` if the queue holds it (retention may have deleted it)."""
        queue = self.messages.get(queue_id, [])
        index = sequence_num - self.deleted.get(queue_id, 0) - 1
        return queue[index] if 0 <= index < len(queue) else None

    def position(self, client_id: str, queue_id: str) -> int:
        return self.positions.get((client_id, queue_id), 0)


# -- the queue rules, shared by QueueState and the SQLite store -----------------------------------
# Each backend fetches the numbers (a position, the deleted front, the length, the messages in
# a range) its own way; what to answer and where the position goes is decided here, once.


def read_range(
    position: int, deleted: int, length: int, command: ReadNext | ReadBatch
) -> tuple[int, int]:
    """The sequence numbers a read may return, ``start`` to ``end`` inclusive (empty when
    ``start > end``): from the message after ``position``, a position inside the deleted front
    reading the first retained message; one message for a ReadNext, at most
    ``max_messages`` for a ReadBatch."""
    start = max(position, deleted) + 1
    count = 1 if isinstance(command, ReadNext) else command.max_messages
    return start, min(length, start + count - 1)


def read_result(
    command: ReadNext | ReadBatch, read: tuple[tuple[int, bytes], ...]
) -> tuple[Result, int | None]:
    """The answer to a read given the messages in its :func:`read_range`, and the position the
    client moves to (None: it stays)."""
    if isinstance(command, ReadNext):
        if not read:
            return MessageRead(None, None), None
        seq, data = read[0]
        return MessageRead(seq, data), seq
    read = read[: take_within([len(d) for _, d in read], command.max_bytes)]
    moved_to = read[-1][0] if read and not command.peek else None
    return MessagesRead(read), moved_to


_NO_MESSAGE = MessageRead(None, None)


def read_next_run(
    first: int, values: Sequence[bytes], count: int
) -> tuple[list[Result], int | None]:
    """The answers to ``count`` single READs (:class:`ReadNext`) of one client on one queue,
    one after another, and the position the client moves to (None: it stays): what
    :func:`read_result` answers for each in turn. ``first`` is the first READ's
    :func:`read_range` start, ``values`` the messages from ``first`` on, at most ``count``
    of them, that the queue holds (each READ reads the message after the one before it read);
    the READs past them read nothing. ``tests/test_read_leader_path.py`` holds it to
    :func:`read_range` and :func:`read_result` applied one READ at a time."""
    results: list[Result] = [MessageRead(seq, value) for seq, value in enumerate(values, first)]
    if len(results) < count:
        results += [_NO_MESSAGE] * (count - len(results))
    return results, (first + len(values) - 1 if values else None)


def position_result(command: Ack | Seek, position: int, length: int) -> tuple[Result, int | None]:
    """The answer to an Ack or a Seek of a client at ``position`` in a queue of ``length``
    messages, and the position it moves to (None: it stays)."""
    if isinstance(command, Ack):
        if not 0 <= command.sequence_num <= length:
            return bad_request(
                f"cannot acknowledge message {command.sequence_num}: the queue has {length}"
            ), None
        moved_to = command.sequence_num if command.sequence_num > position else None
        return PositionSet(max(position, command.sequence_num) + 1), moved_to
    target = length + 1 if command.next_sequence_num is None else command.next_sequence_num
    if not 1 <= target <= length + 1:
        return bad_request(
            f"cannot seek to message {target}: the queue has {length} "
            f"(seek to 1 for the start, {length + 1} for the end)"
        ), None
    return PositionSet(target), target - 1


def retention_through(
    policy: RetentionPolicy,
    deleted: int,
    length: int,
    too_old: int | None,
    slowest_reader: int | None,
    budget: int,
    unfinished: int | None = None,
) -> int:
    """The last sequence number an enforcement deletes (``deleted`` when none): what
    ``max_messages`` leaves out, the last message ``too_old`` for ``max_age_ms`` (found by the
    backend, at most ``budget`` messages in), what the slowest reader has read when the policy
    deletes acknowledged messages; never more than ``budget`` messages nor past the end.

    ``unfinished`` is the lowest message some consumer group of the queue has not finished
    (delivered and not acknowledged nor dead-lettered, or not delivered yet; None: the queue
    has no group). No rule deletes it or anything after it, and for ``delete_acknowledged`` a
    group counts as a reader that has read everything before it."""
    through = deleted
    if policy.max_messages is not None:
        through = max(through, length - policy.max_messages)
    if too_old is not None:
        through = max(through, too_old)
    if policy.delete_acknowledged:
        done = [
            r
            for r in (slowest_reader, None if unfinished is None else unfinished - 1)
            if r is not None
        ]
        if done:
            through = max(through, min(done))
    if unfinished is not None:
        through = min(through, unfinished - 1)
    return max(deleted, min(through, deleted + budget, length))


def client_lag(length: int, position: int, deleted: int) -> int:
    """How many retained messages a client at ``position`` has not read."""
    return length - max(position, deleted)


def monotonic_stamp(proposed: int | None, last: int | None) -> int | None:
    """The stamp an append gets: the leader's, but never before the queue's last one (clocks
    of successive leaders may disagree); an entry without a stamp inherits the last one."""
    if proposed is None:
        return last
    return proposed if last is None else max(proposed, last)


__all__ = [
    "CommandRejected",
    "QueueState",
    "client_lag",
    "monotonic_stamp",
    "position_result",
    "read_next_run",
    "read_range",
    "read_result",
    "retention_through",
]


def apply_map_command(
    cmap: ClusterMap, groups: tuple[str, ...], command: MapCommand
) -> MetadataResult:
    """A metadata command applied to ``cmap`` (the SQL twin stores the map it changes): as
    :meth:`ClusterMap.apply`, except that a cluster placed by the stage-1 list (``groups``)
    refuses to be founded again by a map."""
    if isinstance(command, FoundCluster) and groups:
        return bad_request(GROUPS_FIXED_BY_LIST)
    return cmap.apply(command)  # type: ignore[arg-type]
