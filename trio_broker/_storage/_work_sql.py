"""The SQL twin of :mod:`trio_broker._core._work`: work queues and the queue lifecycle.

Called by ``Store._apply_one`` inside its transaction, with its connection. Every decision
that does not need SQL (validation, refusals, what a dead-lettered message carries, how many
messages fit) is the reference's own function; the property test in
``tests/test_work_queues.py`` checks that both give the same results and state.

One twin per work command, which that test reads side by side with the reference; how a
lease ends (expiry, nack, extend, the dead-letter move) lives in ``_lease_sql.py``, what reads
values as columns in ``_read_columns.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat

import apsw
import orjson

from .._core._commands import (
    CommandRejected,
    ProducerState,
    ReadBatch,
    RetentionPolicy,
    bad_request,
    queue_exists,
    queue_not_found,
    take_within,
)
from .._core._queues import read_range
from .._core._work_commands import (
    EXPIRIES_PER_APPLY,
    FORGETS_PER_APPLY,
    MAX_GROUPS_PER_QUEUE,
    MAX_IN_FLIGHT,
    WORK_COMMANDS,
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
    GroupJoined,
    GroupRead,
    GroupSettings,
    Headers,
    JoinGroup,
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
from .._core._work_rules import (
    command_problem,
    dead_letter_in_use,
    dead_letter_not_found,
    delivered_within,
    delivery_sizes,
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
from ._integrity import read_values
from ._lease_sql import append_rows, change_leases, expire_leases
from ._producers_sql import save_producer
from ._read_columns import Deliveries, decode_headers, intact_columns, records_sizes
from ._schema import (
    MAX_SEQUENCE,
    QUEUE_KEY,
    QUEUE_SPAN,
    next_queue_number,
    past_last_sequence,
    too_many_queues,
)

__all__ = ["WORK_COMMANDS", "apply_work", "decode_headers", "touch_position"]

_QUEUE_TABLES = (
    "queues",
    "client_positions",
    "producers",
    "queue_names",
    "consumer_groups",
    "group_pending",
    "position_activity",
    "fenced_producers",
)
"""Every table with a ``queue_id`` column: what a deleted queue leaves nowhere (and its rows
in ``queue_data``, found by its number, deleted before its row in ``queues``)."""


def touch_position(
    db: apsw.Connection, client_id: str, queue_id: str, *, sweeping: bool | None = None
) -> None:
    """A read, ACK or SEEK used this position: mark it, once idle forgetting has started and
    if the queue exists (writes nothing when it is marked already). ``sweeping``: whether
    idle forgetting has started, when the caller's own query answered it (None: look)."""
    # A read-only check first: the upsert costs about 10 µs even when it writes nothing, the
    # check a few, and idle forgetting is off unless the operator sets an idle time.
    if sweeping is None:
        sweeping = (
            db.execute("SELECT 1 FROM work_meta WHERE key = 'sweep_ms'").fetchone() is not None
        )
    if not sweeping:
        return
    db.execute(
        "INSERT INTO position_activity (client_id, queue_id, touched_ms) SELECT ?1, ?2, NULL"
        " WHERE EXISTS (SELECT 1 FROM queues WHERE queue_id = ?2)"
        " ON CONFLICT (client_id, queue_id) DO UPDATE SET touched_ms = NULL"
        " WHERE touched_ms IS NOT NULL",
        (client_id, queue_id),
    )


Sizer = Callable[[apsw.Connection, str, range], "list[int] | None"]
"""Checked sizes of a queue's messages, for a read nobody waits for
(``_budget_reads.checked_sizes``)."""


def apply_work(
    db: apsw.Connection, command: WorkCommand, sized: Sizer | None = None
) -> WorkResult | CommandRejected:
    """The SQL twin of :func:`trio_broker._core._work.apply_work`. With ``sized``, nobody waits
    for the result: a ``GROUP_READ`` sizes the messages it hands out for the first time by it
    and answers them without their bytes and headers."""
    if isinstance(command, ExpireLeases):
        return expire_leases(db, None, command.now_ms, EXPIRIES_PER_APPLY)
    if isinstance(command, ForgetIdlePositions):
        return _forget_idle(db, command)
    if isinstance(command, CreateNamedQueue):
        return _create_named(db, command)
    if (problem := command_problem(command)) is not None:
        return bad_request(problem)
    queue = db.execute(
        "SELECT length, deleted_through, last_appended_ms FROM queues WHERE queue_id = ?",
        (command.queue_id,),
    ).fetchone()
    if queue is None:
        return queue_not_found(command.queue_id)
    if isinstance(command, DeleteQueue):
        return _delete_queue(db, command)
    if isinstance(command, Publish):
        return _publish(db, command, queue[0], queue[2])
    if isinstance(command, ReadRecords):
        return _read_records(db, command, queue[0], queue[1])
    if isinstance(command, ForgetPosition):
        key = (command.client_id, command.queue_id)
        db.execute("DELETE FROM position_activity WHERE client_id = ? AND queue_id = ?", key)
        db.execute("DELETE FROM client_positions WHERE client_id = ? AND queue_id = ?", key)
        return PositionForgotten(db.changes() > 0)
    if isinstance(command, JoinGroup):
        return _join(db, command, queue[1])
    row = db.execute(
        "SELECT visibility_ms, max_deliveries, dead_letter_queue, max_in_flight, cursor"
        " FROM consumer_groups WHERE queue_id = ? AND group_name = ?",
        (command.queue_id, command.group),
    ).fetchone()
    if row is None:
        return group_not_found(command.queue_id, command.group)
    settings, cursor = GroupSettings(*row[:4]), row[4]
    key = (command.queue_id, command.group)
    if isinstance(command, DeleteGroup):
        if not command.force and (leased := _leased(db, key, command.now_ms)):
            return in_use_by_leases(
                "GROUP_IN_USE", f"cannot delete group {command.group!r}", command.group, leased
            )
        for table in ("consumer_groups", "group_pending"):
            db.execute(f"DELETE FROM {table} WHERE queue_id = ? AND group_name = ?", key)
        return GroupDeleted(*key)
    if isinstance(command, GroupRead):
        return _group_read(db, command, settings, cursor, queue[0], queue[1], sized)
    if isinstance(command, GroupAck):
        last = max(last for _, last in command.ranges)
        if last > cursor:
            return not_delivered(command.group, last, cursor)
        done = 0
        for first, last in command.ranges:
            db.execute(
                "DELETE FROM group_pending WHERE queue_id = ? AND group_name = ?"
                " AND sequence_num BETWEEN ? AND ?",
                (*key, first, last),
            )
            done += db.changes()
        return Acknowledged(done)
    return change_leases(db, command, settings)


def _create_named(db: apsw.Connection, command: CreateNamedQueue) -> WorkResult | CommandRejected:
    if (problem := name_problem(command.name, "queue name")) is not None:
        return bad_request(problem)
    row = db.execute("SELECT queue_id FROM queue_names WHERE name = ?", (command.name,)).fetchone()
    if row is not None:
        return NamedQueue(row[0], command.name, created=False)
    if db.execute("SELECT 1 FROM queues WHERE queue_id = ?", (command.queue_id,)).fetchone():
        return queue_exists(command.queue_id)
    policy = command.retention or RetentionPolicy()
    assert isinstance(policy, RetentionPolicy)
    if (problem := policy.problem()) is not None:
        return bad_request(problem)
    number = next_queue_number(db)
    if number is None:
        return bad_request(too_many_queues())
    db.execute(
        "INSERT INTO queues (queue_id, max_messages, max_age_ms, delete_acknowledged,"
        " queue_number) VALUES (?, ?, ?, ?, ?)",
        (
            command.queue_id,
            policy.max_messages,
            policy.max_age_ms,
            policy.delete_acknowledged,
            number,
        ),
    )
    db.execute(
        "INSERT INTO queue_names (name, queue_id) VALUES (?, ?)", (command.name, command.queue_id)
    )
    return NamedQueue(command.queue_id, command.name, created=True)


def _leased(db: apsw.Connection, key: tuple[str, str], now_ms: int) -> int:
    (count,) = db.execute(
        "SELECT count(*) FROM group_pending WHERE queue_id = ? AND group_name = ?"
        " AND member IS NOT NULL AND until_ms > ?",
        (*key, now_ms),
    ).fetchone()
    return count


def _delete_queue(db: apsw.Connection, command: DeleteQueue) -> WorkResult | CommandRejected:
    queue_id = command.queue_id
    source = db.execute(
        "SELECT queue_id, group_name FROM consumer_groups WHERE dead_letter_queue = ?"
        " AND queue_id != ? ORDER BY queue_id, group_name LIMIT 1",
        (queue_id, queue_id),
    ).fetchone()
    if source is not None:
        return dead_letter_in_use(queue_id, tuple(source))
    if not command.force:
        row = db.execute(
            "SELECT group_name, count(*) FROM group_pending WHERE queue_id = ?"
            " AND member IS NOT NULL AND until_ms > ? GROUP BY group_name"
            " ORDER BY group_name LIMIT 1",
            (queue_id, command.now_ms),
        ).fetchone()
        if row is not None:
            return in_use_by_leases("QUEUE_IN_USE", f"cannot delete queue {queue_id!r}", *row)
    db.execute(
        f"DELETE FROM queue_data WHERE key > {QUEUE_KEY} AND key < {QUEUE_KEY} + ?2",
        (queue_id, QUEUE_SPAN),
    )
    for table in _QUEUE_TABLES:
        db.execute(f"DELETE FROM {table} WHERE queue_id = ?", (queue_id,))
    return QueueDeleted(queue_id)


def _publish(
    db: apsw.Connection, command: Publish, length: int, last_stamp: int | None
) -> WorkResult | CommandRejected:
    """A PUBLISH: a fenced producer's decided first (a retry answered as the duplicate it
    is, as ``_append_sql._append`` answers one, even once the queue holds its last sequence
    number: refused there, the producer would take stored messages for lost), then refused
    when it would take the queue past ``_schema.MAX_SEQUENCE`` (the queue's length decides,
    alike on every broker)."""
    producer = dedup = None
    if command.producer_id is not None:
        assert command.producer_epoch is not None and command.producer_seq is not None
        producer = (command.producer_id, command.queue_id)
        row = db.execute(
            "SELECT epoch, last_seq, recent, last_used FROM fenced_producers"
            " WHERE producer_id = ? AND queue_id = ?",
            producer,
        ).fetchone()
        if row is not None and command.producer_epoch == row[0]:
            recent = tuple(tuple(r) for r in orjson.loads(row[2]))
            dedup = ProducerState(row[1], recent, row[3])
        known = None if row is None else row[0]
        if (decided := publish_decided(command, known, dedup)) is not None:
            return decided
    if length + len(command.records) > MAX_SEQUENCE:
        return bad_request(past_last_sequence(command.queue_id, length, len(command.records)))
    rows = [(r.data, r.headers) for r in command.records]
    first = append_rows(db, command.queue_id, rows, command.appended_ms, last_stamp)
    if producer is not None:
        assert command.producer_seq is not None
        save_producer(
            db,
            "fenced_producers",
            producer,
            dedup,
            command.producer_seq,
            first,
            len(rows),
            {"epoch": command.producer_epoch},
        )
    return Published(first, len(rows))


def _read_records(
    db: apsw.Connection, command: ReadRecords, length: int, deleted: int
) -> WorkResult | CommandRejected:
    if (problem := read_problem(command)) is not None:
        return bad_request(problem)
    key = (command.client_id, command.queue_id)
    touch_position(db, *key)
    row = db.execute(
        "SELECT read_position FROM client_positions WHERE client_id = ? AND queue_id = ?", key
    ).fetchone()
    start, end = read_range(
        0 if row is None else row[0],
        deleted,
        length,
        ReadBatch(command.client_id, command.queue_id, command.max_messages),
    )
    columns = intact_columns(db, command.queue_id, start, end)
    messages: Deliveries | tuple[Delivery, ...]
    if columns is not None:
        # Whole and intact (the usual case): answered as columns, no object per message.
        seqs, datas, texts, _ = columns
        sizes, headers = records_sizes(seqs, datas, texts)
        count = take_within(sizes, command.max_bytes)
        messages = Deliveries(
            seqs[:count], datas[:count], None if headers is None else headers[:count]
        )
        last = seqs[count - 1] if count else None
    else:
        # A value missing, moved or damaged: the checking path finds it (raises it, or reads
        # rows that only came out of order, or leaves a value nobody waits for empty).
        candidates = [
            (seq, data, decode_headers(headers))
            for seq, data, headers in read_values(db, command.queue_id, start, end)
        ]
        taken = delivered_within(candidates, command.max_bytes)
        messages = tuple(Delivery(s, d, h, 1) for s, d, h in taken)
        last = taken[-1][0] if taken else None
    if last is not None and not command.peek:
        db.execute(
            "INSERT INTO client_positions (client_id, queue_id, read_position) VALUES (?, ?, ?)"
            " ON CONFLICT (client_id, queue_id) DO UPDATE SET"
            " read_position = excluded.read_position",
            (*key, last),
        )
    return Delivered(messages)  # type: ignore[arg-type]


def _join(db: apsw.Connection, command: JoinGroup, deleted: int) -> WorkResult | CommandRejected:
    settings = command.settings
    dead_letter = None if settings is None else settings.dead_letter_queue
    if (
        dead_letter is not None
        and db.execute("SELECT 1 FROM queues WHERE queue_id = ?", (dead_letter,)).fetchone() is None
    ):
        return dead_letter_not_found(dead_letter)
    row = db.execute(
        "SELECT visibility_ms, max_deliveries, dead_letter_queue, max_in_flight"
        " FROM consumer_groups WHERE queue_id = ? AND group_name = ?",
        (command.queue_id, command.group),
    ).fetchone()
    if row is not None:
        existing = GroupSettings(*row)
        if settings is not None and settings != existing:
            return other_settings(command.group, existing)
        return GroupJoined(command.queue_id, command.group, existing, created=False)
    (groups,) = db.execute(
        "SELECT count(*) FROM consumer_groups WHERE queue_id = ?", (command.queue_id,)
    ).fetchone()
    if groups >= MAX_GROUPS_PER_QUEUE:
        return too_many_groups(command.queue_id, MAX_GROUPS_PER_QUEUE)
    settings = settings or GroupSettings()
    db.execute(
        "INSERT INTO consumer_groups (queue_id, group_name, visibility_ms, max_deliveries,"
        " dead_letter_queue, max_in_flight, cursor) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            command.queue_id,
            command.group,
            settings.visibility_ms,
            settings.max_deliveries,
            settings.dead_letter_queue,
            settings.max_in_flight,
            deleted,
        ),
    )
    return GroupJoined(command.queue_id, command.group, settings, created=True)


def _values_of(
    db: apsw.Connection, queue_id: str, seqs: Sequence[int]
) -> list[tuple[int, bytes, Headers]]:
    """The messages ``seqs`` of a queue, each read and checked on its own by
    :func:`read_values`. Every one must be there: a group read asks only for messages after
    the queue's deleted front (``_group_read`` drops the waiting ones at or before it first)
    and within its length, so a missing row is damage, as a damaged one is: it raises
    :class:`StorageDamaged` for its sequence number (the transaction held for a repair), or,
    in a read whose outcome does not depend on the values applied for nobody (``UNCHECKED``),
    reads as empty bytes and is noted for a repair. Never skipped: a skipped message would
    never be delivered, and a replica missing it would lease otherwise than the leader."""
    found = []
    for seq in seqs:
        for _, data, headers in read_values(db, queue_id, seq, seq):
            found.append((seq, data, decode_headers(headers)))
    return found


_LEASE = (
    "INSERT INTO group_pending (queue_id, group_name, sequence_num, deliveries, member,"
    " until_ms) VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT DO UPDATE SET"
    " deliveries = deliveries + 1, member = excluded.member,"
    " until_ms = excluded.until_ms RETURNING deliveries"
)
"""A message leased to a group's member: its deliveries to the group so far."""


def _group_read(
    db: apsw.Connection,
    command: GroupRead,
    settings: GroupSettings,
    cursor: int,
    length: int,
    deleted: int,
    sized: Sizer | None = None,
) -> WorkResult:
    now, key = command.now_ms, (command.queue_id, command.group)
    expire_leases(db, key, now, MAX_IN_FLIGHT)
    db.execute(
        "DELETE FROM group_pending WHERE queue_id = ? AND group_name = ? AND sequence_num <= ?"
        " AND member IS NULL",
        (*key, deleted),
    )
    chosen = [
        seq
        for (seq,) in db.execute(
            "SELECT sequence_num FROM group_pending WHERE queue_id = ? AND group_name = ?"
            " AND member IS NULL AND until_ms <= ? ORDER BY sequence_num LIMIT ?",
            (*key, now, command.max_messages),
        )
    ]
    (in_flight,) = db.execute(
        "SELECT count(*) FROM group_pending WHERE queue_id = ? AND group_name = ?", key
    ).fetchone()
    start = max(cursor, deleted) + 1
    fresh = min(
        length - start + 1, settings.max_in_flight - in_flight, command.max_messages - len(chosen)
    )
    candidates = _values_of(db, command.queue_id, chosen)
    fresh_seqs = range(start, start + max(fresh, 0))
    fresh_sizes = None if sized is None or not fresh_seqs else sized(db, key[0], fresh_seqs)
    columns = None
    if fresh_sizes is None and fresh_seqs:
        columns = intact_columns(db, command.queue_id, start, fresh_seqs[-1])
    if fresh_sizes is not None:
        # Nobody waits: the new messages sized from bytes checked now or before, none kept
        # (``_budget_reads.checked_sizes``); the budget's two steps, as ``delivered_within``.
        sizes = delivery_sizes(candidates) + fresh_sizes
        candidates += zip(fresh_seqs, repeat(b""), repeat(()))
        taken = candidates[: take_within(sizes, command.max_bytes)]
    elif columns is not None:
        # Never delivered to the group, whole and intact (the usual case): read and checked
        # as columns, one query, no step per message (``_read_columns.py``).
        seqs, datas, texts, _ = columns
        plain = texts.count(None) == len(texts)
        # (strict=False: ``repeat`` is endless; the other two are alike.)
        candidates += zip(
            seqs, datas, repeat(()) if plain else map(decode_headers, texts), strict=False
        )
        taken = delivered_within(candidates, command.max_bytes)
    else:
        # A value missing, moved or damaged: each on its own, as the checking path reads them.
        candidates += _values_of(db, command.queue_id, fresh_seqs)
        taken = delivered_within(candidates, command.max_bytes)
    until = now + settings.visibility_ms
    # One statement for every lease (the same row each, in order): its deliveries counted.
    counts = (
        db.executemany(_LEASE, [(*key, seq, command.member, until) for seq, _, _ in taken])
        if taken
        else ()
    )
    if sized is not None:  # (the answer reaches nobody: its bytes and headers left out)
        taken = [(seq, b"", ()) for seq, _, _ in taken]
    deliveries = [
        Delivery(seq, data, headers, count)
        for (seq, data, headers), (count,) in zip(taken, counts, strict=True)
    ]
    in_flight += sum(d.delivery_count == 1 for d in deliveries)
    if taken and taken[-1][0] > cursor:
        db.execute(
            "UPDATE consumer_groups SET cursor = ? WHERE queue_id = ? AND group_name = ?",
            (taken[-1][0], *key),
        )
    return Delivered(tuple(deliveries), in_flight=in_flight)


def _forget_idle(db: apsw.Connection, command: ForgetIdlePositions) -> WorkResult | CommandRejected:
    if (problem := forget_problem(command)) is not None:
        return bad_request(problem)
    row = db.execute("SELECT value FROM work_meta WHERE key = 'sweep_ms'").fetchone()
    now = command.now_ms if row is None else max(row[0], command.now_ms)
    db.execute(
        "INSERT INTO work_meta (key, value) VALUES ('sweep_ms', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (now,),
    )
    db.execute("UPDATE position_activity SET touched_ms = ? WHERE touched_ms IS NULL", (now,))
    if row is None:
        db.execute(
            "INSERT OR IGNORE INTO position_activity (client_id, queue_id, touched_ms)"
            " SELECT client_id, queue_id, ? FROM client_positions",
            (now,),
        )
    idle = db.execute(
        "SELECT client_id, queue_id FROM position_activity WHERE touched_ms <= ?"
        " ORDER BY touched_ms, client_id, queue_id LIMIT ?",
        (now - command.idle_ms, FORGETS_PER_APPLY),
    ).fetchall()
    forgotten = 0
    for key in idle:
        db.execute("DELETE FROM position_activity WHERE client_id = ? AND queue_id = ?", key)
        db.execute("DELETE FROM client_positions WHERE client_id = ? AND queue_id = ?", key)
        forgotten += db.changes()
    return PositionsForgotten(forgotten)
