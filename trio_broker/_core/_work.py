"""Work queues and the queue lifecycle as a pure state machine: the reference semantics.

Consumer groups (competing consumers with leases), dead letters, named and deletable queues,
forgetting positions, message headers and fenced idempotent producers; the commands are in
:mod:`._work_commands`. :class:`WorkState` lives in :class:`~trio_broker._core.QueueState`
(attribute ``work``), whose ``apply`` hands these commands to :func:`apply_work`.
``_storage/_work_sql.py`` is the SQL twin; the stateless rules (:mod:`._work_rules`) serve
both.

A group's state is a cursor (the last message delivered to it for the first time) and its
pending messages (delivered, not acknowledged): each either leased to a member until a
deadline, or waiting for a redelivery from a time on. A message up to the cursor that is not
pending is done. Every deadline is a leader's clock carried by a command, so every replica
ends the same leases at the same point of the log.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import attrs

from ._commands import (
    MAX_PRODUCERS,
    CommandRejected,
    CreateQueue,
    ProducerState,
    ReadBatch,
    RetentionPolicy,
    bad_request,
    next_producer_state,
    queue_not_found,
)
from ._work_commands import (
    EXPIRIES_PER_APPLY,
    FORGETS_PER_APPLY,
    MAX_GROUPS_PER_QUEUE,
    MAX_IN_FLIGHT,
    Acknowledged,
    CreateNamedQueue,
    DeleteGroup,
    DeleteQueue,
    Delivered,
    Delivery,
    ExpireLeases,
    ForgetIdlePositions,
    ForgetPosition,
    GroupAck,
    GroupDeleted,
    GroupExtend,
    GroupJoined,
    GroupNack,
    GroupRead,
    GroupSettings,
    Headers,
    JoinGroup,
    LeasesChanged,
    LeasesExpired,
    NamedQueue,
    PositionForgotten,
    PositionsForgotten,
    Publish,
    Published,
    QueueDeleted,
    ReadRecords,
    WorkCommand,
    WorkResult,
)

if TYPE_CHECKING:
    from ._queues import QueueState

from ._work_rules import (
    LEASE_EXPIRED,
    command_problem,
    dead_letter_headers,
    dead_letter_in_use,
    dead_letter_not_found,
    delivered_within,
    forget_problem,
    group_not_found,
    in_use_by_leases,
    name_problem,
    not_delivered,
    other_settings,
    publish_decided,
    read_problem,
    too_many_groups,
)

# -- the state ------------------------------------------------------------------------------------


@attrs.define
class Pending:
    """A message delivered to a group and not acknowledged."""

    deliveries: int
    member: str | None
    """Who holds its lease; None while it waits for a redelivery."""
    until_ms: int
    """The lease's deadline; for a waiting message, when it may be redelivered."""
    last_error: str | None = None


@attrs.define
class Group:
    settings: GroupSettings
    cursor: int
    pending: dict[int, Pending] = attrs.field(factory=dict)


@attrs.define
class EpochProducer:
    epoch: int
    state: ProducerState | None


@attrs.define
class WorkState:
    names: dict[str, str] = attrs.field(factory=dict)
    """Queue name -> queue id."""
    headers: dict[str, dict[int, Headers]] = attrs.field(factory=dict)
    """Queue id -> sequence number -> headers, for messages that have some. Entries of
    messages retention deleted may linger until the queue's next append: look them up only
    for messages the queue holds (:meth:`retained_headers`)."""
    groups: dict[tuple[str, str], Group] = attrs.field(factory=dict)
    """(queue id, group name) -> the group."""
    activity: dict[tuple[str, str], int | None] = attrs.field(factory=dict)
    """(client id, queue id) -> the time of the first sweep after its last use (None: used
    since the last sweep). Kept only once a sweep has run (``sweep_ms`` set)."""
    sweep_ms: int | None = None
    producers: OrderedDict[tuple[str, str], EpochProducer] = attrs.field(factory=OrderedDict)
    """(producer id, queue id) -> the fenced producer's epoch and dedup state, least recently
    used first; at most ``MAX_PRODUCERS``."""
    producer_clock: int = 0

    def queue_id_for_name(self, name: str) -> str | None:
        return self.names.get(name)

    def next_lease_deadline(self) -> int | None:
        """The earliest deadline of a lease (None: no lease): when an :class:`ExpireLeases`
        is due (the leader proposes one while some lease is past it)."""
        deadlines = [
            p.until_ms
            for g in self.groups.values()
            for p in g.pending.values()
            if p.member is not None
        ]
        return min(deadlines, default=None)

    def lowest_unfinished(self, queue_id: str, deleted: int) -> int | None:
        """The lowest message the queue holds that one of its groups has not finished:
        pending (delivered, not acknowledged nor dead-lettered) or after the group's cursor
        (None: the queue has no group). Retention deletes nothing from it on. The deleted front
        (``deleted`` is its last) does not count: it is gone already (a state from before this
        rule may have a cursor or pending messages there)."""
        lowest = [
            min([max(g.cursor, deleted) + 1, *(s for s in g.pending if s > deleted)])
            for (q, _), g in self.groups.items()
            if q == queue_id
        ]
        return min(lowest, default=None)

    def retained_headers(self, queue_id: str, first_retained: int) -> dict[int, Headers]:
        return {s: h for s, h in self.headers.get(queue_id, {}).items() if s >= first_retained}


def touch(state: QueueState, client_id: str, queue_id: str) -> None:
    """A read, ACK or SEEK used this position (recorded once idle forgetting has started)."""
    if state.work.sweep_ms is not None:
        state.work.activity[(client_id, queue_id)] = None


# -- the semantics --------------------------------------------------------------------------------


def apply_work(state: QueueState, command: WorkCommand) -> WorkResult | CommandRejected:
    work = state.work
    if isinstance(command, ExpireLeases):
        return _expire_all(state, command.now_ms)
    if isinstance(command, ForgetIdlePositions):
        return _forget_idle(state, command)
    if isinstance(command, CreateNamedQueue):
        if (problem := name_problem(command.name, "queue name")) is not None:
            return bad_request(problem)
        if (existing := work.names.get(command.name)) is not None:
            return NamedQueue(existing, command.name, created=False)
        assert command.retention is None or isinstance(command.retention, RetentionPolicy)
        result = state.apply(CreateQueue(command.queue_id, command.retention))
        if isinstance(result, CommandRejected):
            return result
        work.names[command.name] = command.queue_id
        return NamedQueue(command.queue_id, command.name, created=True)
    if (problem := command_problem(command)) is not None:
        return bad_request(problem)
    if command.queue_id not in state.messages:
        return queue_not_found(command.queue_id)
    if isinstance(command, DeleteQueue):
        return _delete_queue(state, command)
    if isinstance(command, Publish):
        return _publish(state, command)
    if isinstance(command, ReadRecords):
        return _read_records(state, command)
    if isinstance(command, ForgetPosition):
        work.activity.pop((command.client_id, command.queue_id), None)
        existed = state.positions.pop((command.client_id, command.queue_id), None) is not None
        return PositionForgotten(existed)
    if isinstance(command, JoinGroup):
        return _join(state, command)
    group = work.groups.get((command.queue_id, command.group))
    if group is None:
        return group_not_found(command.queue_id, command.group)
    if isinstance(command, DeleteGroup):
        if not command.force and (leased := _leased(group, command.now_ms)):
            return in_use_by_leases(
                "GROUP_IN_USE", f"cannot delete group {command.group!r}", command.group, leased
            )
        del work.groups[(command.queue_id, command.group)]
        return GroupDeleted(command.queue_id, command.group)
    if isinstance(command, GroupRead):
        return _group_read(state, group, command)
    if isinstance(command, GroupAck):
        return _ack(group, command)
    return _change_leases(state, group, command)


def _leased(group: Group, now_ms: int) -> int:
    return sum(1 for p in group.pending.values() if p.member is not None and p.until_ms > now_ms)


def _delete_queue(state: QueueState, command: DeleteQueue) -> WorkResult | CommandRejected:
    work, queue_id = state.work, command.queue_id
    for key, group in sorted(work.groups.items()):
        if key[0] != queue_id and group.settings.dead_letter_queue == queue_id:
            return dead_letter_in_use(queue_id, key)
    if not command.force:
        for (q, name), group in sorted(work.groups.items()):
            if q == queue_id and (leased := _leased(group, command.now_ms)):
                return in_use_by_leases(
                    "QUEUE_IN_USE", f"cannot delete queue {queue_id!r}", name, leased
                )
    for table in (state.messages, state.deleted, state.stamps, state.last_stamp):
        del table[queue_id]
    state.retention.pop(queue_id, None)
    work.headers.pop(queue_id, None)
    for keyed in (state.positions, state.producers, work.groups, work.activity, work.producers):
        for key in [k for k in keyed if k[1 if keyed is not work.groups else 0] == queue_id]:
            del keyed[key]
    for name in [n for n, q in work.names.items() if q == queue_id]:
        del work.names[name]
    return QueueDeleted(queue_id)


def _append_records(
    state: QueueState, queue_id: str, records: list[tuple[bytes, Headers]], stamp_ms: int | None
) -> int:
    """Append to a queue as every append does (stamps never decreasing); the first number."""
    from ._queues import monotonic_stamp

    queue = state.messages[queue_id]
    first = state.deleted[queue_id] + len(queue) + 1
    stamp = monotonic_stamp(stamp_ms, state.last_stamp[queue_id])
    queue.extend(d for d, _ in records)
    state.stamps[queue_id].extend([stamp] * len(records))
    state.last_stamp[queue_id] = stamp
    headers = state.work.headers.setdefault(queue_id, {})
    for seq in [s for s in headers if s <= state.deleted[queue_id]]:
        del headers[seq]
    for offset, (_, h) in enumerate(records):
        if h:
            headers[first + offset] = h
    return first


def _publish(state: QueueState, command: Publish) -> WorkResult | CommandRejected:
    work = state.work
    producer = entry = None
    if command.producer_id is not None:
        assert command.producer_epoch is not None and command.producer_seq is not None
        producer = (command.producer_id, command.queue_id)
        entry = work.producers.get(producer)
        known = None if entry is None else entry.epoch
        dedup = entry.state if entry is not None and known == command.producer_epoch else None
        if (decided := publish_decided(command, known, dedup)) is not None:
            return decided
    records = [(r.data, r.headers) for r in command.records]
    first = _append_records(state, command.queue_id, records, command.appended_ms)
    if producer is not None:
        assert command.producer_epoch is not None and command.producer_seq is not None
        dedup = entry.state if entry is not None and entry.epoch == command.producer_epoch else None
        work.producer_clock += 1
        new = next_producer_state(
            dedup, command.producer_seq, first, len(records), work.producer_clock
        )
        work.producers[producer] = EpochProducer(command.producer_epoch, new)
        work.producers.move_to_end(producer)
        while len(work.producers) > MAX_PRODUCERS:
            work.producers.popitem(last=False)
    return Published(first, len(records))


def _read_records(state: QueueState, command: ReadRecords) -> WorkResult | CommandRejected:
    from ._queues import read_range

    if (problem := read_problem(command)) is not None:
        return bad_request(problem)
    queue_id, key = command.queue_id, (command.client_id, command.queue_id)
    touch(state, *key)
    deleted = state.deleted[queue_id]
    queue = state.messages[queue_id]
    start, end = read_range(
        state.positions.get(key, 0),
        deleted,
        deleted + len(queue),
        ReadBatch(command.client_id, queue_id, command.max_messages),
    )
    headers = state.work.headers.get(queue_id, {})
    candidates = [
        (seq, queue[seq - deleted - 1], headers.get(seq, ())) for seq in range(start, end + 1)
    ]
    taken = delivered_within(candidates, command.max_bytes)
    if taken and not command.peek:
        state.positions[key] = taken[-1][0]
    return Delivered(tuple(Delivery(s, d, h, 1) for s, d, h in taken))


def _join(state: QueueState, command: JoinGroup) -> WorkResult | CommandRejected:
    work, key = state.work, (command.queue_id, command.group)
    settings = command.settings
    dead_letter = None if settings is None else settings.dead_letter_queue
    if dead_letter is not None and dead_letter not in state.messages:
        return dead_letter_not_found(dead_letter)
    group = work.groups.get(key)
    if group is not None:
        if settings is not None and settings != group.settings:
            return other_settings(command.group, group.settings)
        return GroupJoined(command.queue_id, command.group, group.settings, created=False)
    if sum(1 for q, _ in work.groups if q == command.queue_id) >= MAX_GROUPS_PER_QUEUE:
        return too_many_groups(command.queue_id, MAX_GROUPS_PER_QUEUE)
    settings = settings or GroupSettings()
    work.groups[key] = Group(settings, cursor=state.deleted[command.queue_id])
    return GroupJoined(command.queue_id, command.group, settings, created=True)


def _end_lease(
    state: QueueState,
    queue_id: str,
    group_name: str,
    group: Group,
    seq: int,
    available_ms: int,
    error: str | None,
    now_ms: int,
) -> bool:
    """End the lease on ``seq``: back to waiting from ``available_ms``, or, past
    ``max_deliveries``, dead-lettered (True) in the same command."""
    pending = group.pending[seq]
    limit = group.settings.max_deliveries
    if limit is None or pending.deliveries < limit:
        pending.member, pending.until_ms, pending.last_error = None, available_ms, error
        return False
    del group.pending[seq]
    data = state.message(queue_id, seq)
    if data is None:  # retention deleted it: nothing left to move
        return False
    target = group.settings.dead_letter_queue
    assert target is not None
    headers = dead_letter_headers(
        state.work.headers.get(queue_id, {}).get(seq, ()),
        queue_id,
        group_name,
        seq,
        pending.deliveries,
        error or "",
    )
    _append_records(state, target, [(data, headers)], now_ms)
    return True


def _expire(
    state: QueueState, key: tuple[str, str], group: Group, now: int, budget: int
) -> tuple[int, int]:
    expired = [
        s for s, p in sorted(group.pending.items()) if p.member is not None and p.until_ms <= now
    ][:budget]
    dead = sum(_end_lease(state, *key, group, s, now, LEASE_EXPIRED, now) for s in expired)
    return len(expired), dead


def _expire_all(state: QueueState, now_ms: int) -> LeasesExpired:
    budget, expired, dead = EXPIRIES_PER_APPLY, 0, 0
    for key, group in sorted(state.work.groups.items()):
        if budget <= 0:
            break
        ended, moved = _expire(state, key, group, now_ms, budget)
        budget -= ended
        expired += ended
        dead += moved
    return LeasesExpired(expired, dead)


def _group_read(state: QueueState, group: Group, command: GroupRead) -> WorkResult:
    now, queue_id = command.now_ms, command.queue_id
    _expire(state, (queue_id, command.group), group, now, MAX_IN_FLIGHT)
    deleted = state.deleted[queue_id]
    for seq in [s for s, p in group.pending.items() if s <= deleted and p.member is None]:
        del group.pending[seq]
    chosen = [
        s for s, p in sorted(group.pending.items()) if p.member is None and p.until_ms <= now
    ][: command.max_messages]
    room = group.settings.max_in_flight - len(group.pending)
    length = state.queue_length(queue_id) or 0
    start = max(group.cursor, deleted) + 1
    fresh = min(length - start + 1, room, command.max_messages - len(chosen))
    chosen += range(start, start + max(fresh, 0))
    headers = state.work.headers.get(queue_id, {})
    candidates = [(s, state.message(queue_id, s), headers.get(s, ())) for s in chosen]
    taken = delivered_within(
        [(s, d, h) for s, d, h in candidates if d is not None], command.max_bytes
    )
    deliveries = []
    until = now + group.settings.visibility_ms
    for seq, data, h in taken:
        pending = group.pending.get(seq)
        if pending is None:
            pending = group.pending[seq] = Pending(0, None, until)
            group.cursor = max(group.cursor, seq)
        pending.deliveries += 1
        pending.member, pending.until_ms = command.member, until
        deliveries.append(Delivery(seq, data, h, pending.deliveries))
    return Delivered(tuple(deliveries), in_flight=len(group.pending))


def group_read_changes(state: QueueState, command: GroupRead) -> bool:
    """Whether applying ``command`` would change ``state`` (False: its result, the same at
    this point of the log, can answer it without a log entry; docs/replication.md,
    "Work-queue reads without a log entry").

    :func:`_group_read` changes the state exactly when a lease of the group has expired at
    ``now_ms`` (it ends, or moves to the dead-letter queue), a message waiting for a
    redelivery is at or before the queue's deleted front (it is dropped) or its delay has
    ended (it is leased), or a message past the group's cursor may be leased (the queue
    holds one and the group is below ``max_in_flight``): one chosen message is always
    leased (:func:`delivered_within` takes at least one). A refused read changes nothing."""
    queue_id = command.queue_id
    if command_problem(command) is not None or queue_id not in state.messages:
        return False
    group = state.work.groups.get((queue_id, command.group))
    if group is None:
        return False
    now, deleted = command.now_ms, state.deleted[queue_id]
    for seq, pending in group.pending.items():
        if pending.until_ms <= now or (pending.member is None and seq <= deleted):
            return True
    room = group.settings.max_in_flight - len(group.pending)
    last = state.queue_length(queue_id) or 0
    return room > 0 and last > max(group.cursor, deleted)


def _ack(group: Group, command: GroupAck) -> WorkResult | CommandRejected:
    last = max(last for _, last in command.ranges)
    if last > group.cursor:
        return not_delivered(command.group, last, group.cursor)
    done = [s for s in group.pending if any(first <= s <= end for first, end in command.ranges)]
    for seq in done:
        del group.pending[seq]
    return Acknowledged(len(done))


def _change_leases(
    state: QueueState, group: Group, command: GroupNack | GroupExtend
) -> LeasesChanged:
    changed, not_held, dead = [], [], []
    now = command.now_ms
    for seq in command.sequence_nums:
        pending = group.pending.get(seq)
        if pending is None or pending.member != command.member:
            not_held.append(seq)
        elif isinstance(command, GroupExtend):
            pending.until_ms = now + (command.visibility_ms or group.settings.visibility_ms)
            changed.append(seq)
        elif _end_lease(
            state,
            command.queue_id,
            command.group,
            group,
            seq,
            now + command.delay_ms,
            command.error,
            now,
        ):
            dead.append(seq)
        elif seq in group.pending:
            changed.append(seq)
    return LeasesChanged(tuple(changed), tuple(not_held), tuple(dead))


def _forget_idle(state: QueueState, command: ForgetIdlePositions) -> WorkResult | CommandRejected:
    if (problem := forget_problem(command)) is not None:
        return bad_request(problem)
    work = state.work
    first_sweep = work.sweep_ms is None
    now = command.now_ms if work.sweep_ms is None else max(work.sweep_ms, command.now_ms)
    work.sweep_ms = now
    for key, stamp in work.activity.items():
        if stamp is None:
            work.activity[key] = now
    if first_sweep:
        for key in state.positions:
            work.activity.setdefault(key, now)
    idle = sorted(
        ((stamp, key) for key, stamp in work.activity.items() if stamp <= now - command.idle_ms),
        key=lambda item: (item[0], item[1]),
    )[:FORGETS_PER_APPLY]
    forgotten = 0
    for _, key in idle:
        del work.activity[key]
        forgotten += state.positions.pop(key, None) is not None
    return PositionsForgotten(forgotten)


__all__ = ["WorkState", "apply_work", "touch"]
