"""The SQL twin of how a consumer group's lease ends (``_work._end_lease`` and its callers):
expired (``EXPIRE_LEASES``, and before a group read), given back (``GROUP_NACK``) or extended
(``GROUP_EXTEND``); a message past its group's ``max_deliveries`` moves to the dead-letter
queue, appended as ``PUBLISH`` appends (:func:`append_rows`, here for that reason).

Called by :mod:`._work_sql` inside ``Store._apply_one``'s transaction, with its connection.
"""

from __future__ import annotations

import apsw
import orjson

from .._core._queues import monotonic_stamp
from .._core._work_commands import (
    GroupExtend,
    GroupNack,
    GroupSettings,
    Headers,
    LeasesChanged,
    LeasesExpired,
)
from .._core._work_rules import LEASE_EXPIRED, dead_letter_headers
from ._integrity import UNCHECKED, insert_values, read_values
from ._read_columns import decode_headers
from ._schema import MAX_SEQUENCE


def encode_headers(headers: Headers) -> str | None:
    return orjson.dumps(dict(headers)).decode() if headers else None


def append_rows(
    db: apsw.Connection,
    queue_id: str,
    rows: list[tuple[bytes, Headers]],
    stamp_ms: int | None,
    last_stamp: int | None,
) -> int:
    """Append as ``Store._append`` does (the same stamps and undated front); the first
    sequence number."""
    stamp = monotonic_stamp(stamp_ms, last_stamp)
    (length, number) = db.execute(
        "UPDATE queues SET length = length + ?1, last_appended_ms = ?2,"
        " undated_through = iif(?2 IS NULL, length + ?1, undated_through)"
        " WHERE queue_id = ?3 RETURNING length, queue_number",
        (len(rows), stamp, queue_id),
    ).fetchone()
    first = length - len(rows) + 1
    insert_values(
        db, queue_id, first, [(d, stamp, encode_headers(h)) for d, h in rows], number=number
    )
    return first


def _end_lease(
    db: apsw.Connection,
    key: tuple[str, str],
    settings: GroupSettings,
    seq: int,
    deliveries: int,
    available_ms: int,
    error: str | None,
    now_ms: int,
) -> str:
    """The twin of ``_work._end_lease``: ``"waiting"``, ``"dead"`` (moved to the dead-letter
    queue) or ``"gone"`` (due for the dead-letter queue, but retention had deleted it). A
    message due for a dead-letter queue that holds ``_schema.MAX_SEQUENCE`` messages (the last
    sequence number a queue can have) waits as if under its limit: kept, never lost, and
    decided by the queue's length alike on every broker."""
    limit = settings.max_deliveries
    if limit is None or deliveries < limit or _dead_letter_full(db, settings):
        db.execute(
            "UPDATE group_pending SET member = NULL, until_ms = ?, last_error = ?"
            " WHERE queue_id = ? AND group_name = ? AND sequence_num = ?",
            (available_ms, error, *key, seq),
        )
        return "waiting"
    db.execute(
        "DELETE FROM group_pending WHERE queue_id = ? AND group_name = ? AND sequence_num = ?",
        (*key, seq),
    )
    row = _value_to_move(db, key[0], seq)
    if row is None:
        return "gone"
    target = settings.dead_letter_queue
    assert target is not None
    headers = dead_letter_headers(
        decode_headers(row[1]), key[0], key[1], seq, deliveries, error or ""
    )
    (last_stamp,) = db.execute(
        "SELECT last_appended_ms FROM queues WHERE queue_id = ?", (target,)
    ).fetchone()
    append_rows(db, target, [(row[0], headers)], now_ms, last_stamp)
    return "dead"


def _dead_letter_full(db: apsw.Connection, settings: GroupSettings) -> bool:
    row = db.execute(
        "SELECT length FROM queues WHERE queue_id = ?", (settings.dead_letter_queue,)
    ).fetchone()
    return row is not None and row[0] >= MAX_SEQUENCE


def _value_to_move(db: apsw.Connection, queue_id: str, seq: int) -> tuple[bytes, str | None] | None:
    """The message ``seq`` a dead-letter move copies, checked (:func:`read_values`); None when
    retention deleted it (at or before the queue's deleted front). Its bytes are written
    again, so even within a read applied for nobody (``UNCHECKED``, a group read's expired
    leases) a damaged one is never copied as empty bytes, and a missing one after the front is
    never taken as deleted: either raises :class:`StorageDamaged` (held for a repair)."""
    row = db.execute(
        "SELECT deleted_through FROM queues WHERE queue_id = ?", (queue_id,)
    ).fetchone()
    if row is None or seq <= row[0]:
        return None  # (no queue row: the queue and its leases are gone together)
    token = UNCHECKED.set(None)
    try:
        ((_, data, headers),) = read_values(db, queue_id, seq, seq)
    finally:
        UNCHECKED.reset(token)
    return data, headers


def _group_settings(db: apsw.Connection, key: tuple[str, str]) -> GroupSettings:
    row = db.execute(
        "SELECT visibility_ms, max_deliveries, dead_letter_queue, max_in_flight"
        " FROM consumer_groups WHERE queue_id = ? AND group_name = ?",
        key,
    ).fetchone()
    return GroupSettings(*row)


def expire_leases(
    db: apsw.Connection, key: tuple[str, str] | None, now_ms: int, budget: int
) -> LeasesExpired:
    """End the leases due at ``now_ms``: one group's, or (``key`` None) every group's."""
    where = "" if key is None else " AND queue_id = ? AND group_name = ?"
    due = db.execute(
        "SELECT queue_id, group_name, sequence_num, deliveries FROM group_pending"
        f" WHERE member IS NOT NULL AND until_ms <= ?{where}"
        " ORDER BY queue_id, group_name, sequence_num LIMIT ?",
        (now_ms, *(key or ()), budget),
    ).fetchall()
    settings: dict[tuple[str, str], GroupSettings] = {}
    dead = 0
    for queue_id, group, seq, deliveries in due:
        group_key = (queue_id, group)
        if group_key not in settings:
            settings[group_key] = _group_settings(db, group_key)
        outcome = _end_lease(
            db, group_key, settings[group_key], seq, deliveries, now_ms, LEASE_EXPIRED, now_ms
        )
        dead += outcome == "dead"
    return LeasesExpired(len(due), dead)


def change_leases(
    db: apsw.Connection, command: GroupNack | GroupExtend, settings: GroupSettings
) -> LeasesChanged:
    key, now = (command.queue_id, command.group), command.now_ms
    changed, not_held, dead = [], [], []
    for seq in command.sequence_nums:
        row = db.execute(
            "SELECT deliveries, member FROM group_pending WHERE queue_id = ?"
            " AND group_name = ? AND sequence_num = ?",
            (*key, seq),
        ).fetchone()
        if row is None or row[1] != command.member:
            not_held.append(seq)
        elif isinstance(command, GroupExtend):
            db.execute(
                "UPDATE group_pending SET until_ms = ? WHERE queue_id = ? AND group_name = ?"
                " AND sequence_num = ?",
                (now + (command.visibility_ms or settings.visibility_ms), *key, seq),
            )
            changed.append(seq)
        else:
            outcome = _end_lease(
                db, key, settings, seq, row[0], now + command.delay_ms, command.error, now
            )
            if outcome == "dead":
                dead.append(seq)
            elif outcome == "waiting":
                changed.append(seq)
    return LeasesChanged(tuple(changed), tuple(not_held), tuple(dead))
