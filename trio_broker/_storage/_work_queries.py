"""Queries on the work-queue tables: for the runtime (names, when a lease expiry is due) and
for the tests that compare the SQLite twin with the reference (:func:`dump`)."""

from __future__ import annotations

from typing import Any

import apsw
import orjson

from .._core._work_commands import GroupSettings
from ._work_sql import decode_headers


def queue_id_for_name(db: apsw.Connection, name: str) -> str | None:
    row = db.execute("SELECT queue_id FROM queue_names WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def next_lease_deadline(db: apsw.Connection) -> int | None:
    """The earliest deadline of a lease (None: no lease): when an :class:`ExpireLeases` is due."""
    (deadline,) = db.execute(
        "SELECT min(until_ms) FROM group_pending WHERE member IS NOT NULL"
    ).fetchone()
    return deadline


def lowest_unfinished(db: apsw.Connection, queue_id: str, deleted: int) -> int | None:
    """The twin of ``WorkState.lowest_unfinished``: the lowest message of the queue one of its
    groups has not finished (None: no group), ignoring pending messages in the deleted front."""
    (lowest,) = db.execute(
        "SELECT min(x) FROM (SELECT min(sequence_num) AS x FROM group_pending"
        " WHERE queue_id = ?1 AND sequence_num > ?2"
        " UNION ALL SELECT max(min(cursor), ?2) + 1 FROM consumer_groups WHERE queue_id = ?1)",
        (queue_id, deleted),
    ).fetchone()
    return lowest


def dump(db: apsw.Connection) -> dict[str, Any]:
    """The work-queue state in the reference's shapes (what the tests compare)."""
    groups = {}
    for queue_id, name, vis, max_del, dlq, max_in_flight, cursor in db.execute(
        "SELECT * FROM consumer_groups"
    ):
        pending = {
            seq: (deliveries, member, until, error)
            for seq, deliveries, member, until, error in db.execute(
                "SELECT sequence_num, deliveries, member, until_ms, last_error"
                " FROM group_pending WHERE queue_id = ? AND group_name = ?",
                (queue_id, name),
            )
        }
        groups[(queue_id, name)] = (
            GroupSettings(vis, max_del, dlq, max_in_flight),
            cursor,
            pending,
        )
    (orphans,) = db.execute(
        "SELECT count(*) FROM group_pending AS p WHERE NOT EXISTS (SELECT 1 FROM"
        " consumer_groups AS g WHERE g.queue_id = p.queue_id AND g.group_name = p.group_name)"
    ).fetchone()
    assert orphans == 0
    row = db.execute("SELECT value FROM work_meta WHERE key = 'sweep_ms'").fetchone()
    return {
        "names": dict(db.execute("SELECT name, queue_id FROM queue_names")),
        "headers": {
            (queue_id, seq): decode_headers(text)
            for queue_id, seq, text in db.execute(
                "SELECT q.queue_id, d.sequence_num, d.headers FROM queue_data AS d"
                " JOIN queues AS q ON q.queue_number = d.key >> 44"
                " WHERE d.headers IS NOT NULL"
            )
        },
        "groups": groups,
        "activity": {
            (client_id, queue_id): stamp
            for client_id, queue_id, stamp in db.execute("SELECT * FROM position_activity")
        },
        "sweep_ms": None if row is None else row[0],
        "producers": [
            (producer_id, queue_id, epoch, last_seq, tuple(tuple(r) for r in orjson.loads(recent)))
            for producer_id, queue_id, epoch, last_seq, recent in db.execute(
                "SELECT producer_id, queue_id, epoch, last_seq, recent FROM fenced_producers"
                " ORDER BY last_used"
            )
        ],
        "old_producers": [
            tuple(r)
            for r in db.execute("SELECT producer_id, queue_id FROM producers ORDER BY last_used")
        ],
    }
