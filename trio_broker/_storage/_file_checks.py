"""Checks of whole files: a snapshot the leader sent (every value), a received file before its
schema is upgraded, the log's entries against their checksums, and the file a store opens
(SQLite's ``quick_check``). Each raises :class:`._integrity.StorageDamaged` naming the file, the
table and the row (docs/reliability.md, "Damaged data"); the value and entry checksums they
check are defined in :mod:`._integrity` and ``_protocol._entries``."""

from __future__ import annotations

import apsw
import attrs

from .._core._raft_messages import Entry
from .._errors import RemoteProtocolError
from .._protocol._entries import decode_payload, entry_checksum
from ._integrity import DAMAGE_ERRORS, StorageDamaged, damage_from, value_checksum
from ._schema import SCHEMA_VERSION, SchemaTooNew


def check_snapshot_file(path: str) -> None:
    """Check every value of a snapshot file received from the leader, before it is handed to
    the consensus core (:class:`StorageDamaged` if one fails): a damaged snapshot is dropped
    and fetched again, never installed."""
    try:
        db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    except DAMAGE_ERRORS as exc:
        raise damage_from(exc, path, None, None) from None
    try:
        db.execute("ATTACH DATABASE ? AS incoming", (path,))
        check_incoming_values(db, path)
    finally:
        db.close()


def check_received_file(path: str) -> None:
    """What :func:`check_on_open` checks of a store's own file, for a snapshot file received
    from a leader, before its schema is upgraded (:class:`StorageDamaged` if it fails). An
    upgrade copies rows into STRICT tables, which refuse a value of the wrong type or a
    missing one with a constraint error, not a damage error: unchecked, a damaged snapshot
    of an older version ended the task that fetched it instead of being dropped. A file of
    this version or a newer one is not upgraded: nothing to check here (its values are
    checked by :func:`check_snapshot_file`)."""
    try:
        db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    except DAMAGE_ERRORS as exc:
        raise damage_from(exc, path, None, None) from None
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version >= SCHEMA_VERSION:
            return
        check_on_open(db)
        if 0 < version < 7:
            # Rows keyed by their queue's id, which their checksum covers: a row whose id is
            # no queue's is damaged (DELETE_QUEUE leaves none), and version 7's upgrade, which
            # keys rows by their queue's number, would drop it without a word.
            row = db.execute(
                "SELECT queue_id, sequence_num FROM queue_data AS d WHERE NOT EXISTS"
                " (SELECT 1 FROM queues AS q WHERE q.queue_id = d.queue_id) LIMIT 1"
            ).fetchone()
            if row is not None:
                raise StorageDamaged(
                    path,
                    "queue_data",
                    f"queue {row[0]} seq {row[1]}",
                    "a snapshot value of no queue (its queue id damaged)",
                )
        if version == 7:
            # Rows keyed by their queue's number, which no checksum covers: a row whose number
            # is no queue's is damaged (DELETE_QUEUE leaves none), and version 8's upgrade,
            # which packs the number into the row's key through its queue, would drop it.
            row = db.execute(
                "SELECT queue_number, sequence_num FROM queue_data AS d WHERE NOT EXISTS"
                " (SELECT 1 FROM queues AS q WHERE q.queue_number = d.queue_number) LIMIT 1"
            ).fetchone()
            if row is not None:
                raise StorageDamaged(
                    path,
                    "queue_data",
                    f"queue number {row[0]} seq {row[1]}",
                    "a snapshot value of no queue (its queue number damaged)",
                )
    except DAMAGE_ERRORS as exc:
        raise damage_from(exc, path, "queue_data", None) from None
    finally:
        db.close()


UPGRADE_DAMAGE_ERRORS = (*DAMAGE_ERRORS, apsw.ConstraintError)
"""What upgrading a received snapshot raises on damage :func:`check_received_file` does not
see (``quick_check`` does not compare an index with its table: two rows of one key)."""


def check_incoming_values(db: apsw.Connection, path: str) -> None:
    """Check every value of a snapshot attached as ``incoming`` before it is installed: first
    that it is of this broker's schema version (a snapshot of an older one is upgraded when
    it is received, ``_runtime/_snapshots.py``; one of a newer one is refused)."""
    (version,) = db.execute("PRAGMA incoming.user_version").fetchone()
    if version != SCHEMA_VERSION:
        raise SchemaTooNew(
            f"snapshot {path} has schema version {version}, this broker's is"
            f" {SCHEMA_VERSION}: not installed"
            + ("; upgrade trio_broker" if version > SCHEMA_VERSION else "")
        )
    try:
        for queue_id, seq, data, headers, checksum in db.execute(
            "SELECT q.queue_id, d.sequence_num, d.data, d.headers, d.checksum"
            " FROM incoming.queue_data AS d LEFT JOIN incoming.queues AS q"
            " ON q.queue_number = d.key >> 44"
        ):
            if (
                not isinstance(data, bytes)
                or queue_id is None
                or checksum != value_checksum(queue_id, seq, data, headers)
            ):
                raise StorageDamaged(
                    path,
                    "queue_data",
                    f"queue {queue_id} seq {seq}",
                    "a snapshot value does not match its checksum",
                )
    except DAMAGE_ERRORS as exc:
        raise damage_from(exc, path, "queue_data", None) from None


# -- the log -------------------------------------------------------------------------------------


@attrs.frozen
class LogDamage:
    """What :meth:`Store.log_damage` found: the log is intact up to ``first_damaged - 1``."""

    first_damaged: int
    """The first index whose entry is damaged or missing."""
    last_index: int
    """The last index the log holds (what this broker may have acknowledged)."""


def check_log(db: apsw.Connection, snapshot_index: int) -> LogDamage | None:
    """Check every log entry after the snapshot point: its checksum, and that none is missing."""
    expected = snapshot_index + 1
    first_damaged = None
    last = snapshot_index
    try:
        rows = db.execute(
            "SELECT log_index, term, payload, checksum FROM raft_log WHERE log_index > ?"
            " ORDER BY log_index",
            (snapshot_index,),
        )
        for index, term, payload, checksum in rows:
            last = index
            if first_damaged is None and (
                index != expected
                or not isinstance(payload, bytes)
                or not isinstance(term, int)
                or checksum != entry_checksum(term, index, payload)
            ):
                first_damaged = min(index, expected)
            expected = index + 1
    except DAMAGE_ERRORS:
        first_damaged = expected if first_damaged is None else first_damaged
        (top,) = db.execute("SELECT coalesce(max(log_index), 0) FROM raft_log").fetchone()
        last = max(last, top)
    return None if first_damaged is None else LogDamage(first_damaged, last)


def read_log(db: apsw.Connection, snapshot_index: int, below: int | None = None) -> list[Entry]:
    """The log after the snapshot point (and before ``below``, if given), every entry checked;
    the first damaged one raises."""
    entries = []
    expected = snapshot_index + 1
    try:
        for index, term, payload, checksum in db.execute(
            "SELECT log_index, term, payload, checksum FROM raft_log WHERE log_index > ?"
            " AND log_index < coalesce(?, log_index + 1) ORDER BY log_index",
            (snapshot_index, below),
        ):
            where = f"index {expected}"
            if index != expected:
                raise StorageDamaged(db.filename, "raft_log", where, "the entry is missing")
            if not isinstance(payload, bytes) or checksum != entry_checksum(term, index, payload):
                raise StorageDamaged(
                    db.filename, "raft_log", where, "the entry does not match its checksum"
                )
            entries.append(Entry(term, index, decode_payload(payload)))
            expected += 1
    except (*DAMAGE_ERRORS, RemoteProtocolError) as exc:
        raise damage_from(exc, db.filename, "raft_log", f"index {expected}") from None
    return entries


def check_on_open(db: apsw.Connection) -> None:
    """What the store checks when it opens, before any upgrade of the schema (which must not
    give damaged values fresh checksums): SQLite's ``quick_check`` (every page readable, every
    b-tree well formed, every row of the type its table says) and the metadata's text. It reads
    the whole file: 0.25 s for 140 MB in the page cache here, once per start."""
    try:
        found = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        found = [line for line in found if not line.startswith("*** in database")]
        if found != ["ok"]:
            raise StorageDamaged(
                db.filename, None, None, "SQLite's integrity check: " + "; ".join(found)
            )
        if db.execute("SELECT 1 FROM sqlite_schema WHERE name = 'meta'").fetchone():
            db.execute("SELECT key, value FROM meta").fetchall()
    except DAMAGE_ERRORS as exc:
        raise damage_from(exc, db.filename, None, None) from None


__all__ = [
    "UPGRADE_DAMAGE_ERRORS",
    "LogDamage",
    "check_incoming_values",
    "check_log",
    "check_on_open",
    "check_received_file",
    "check_snapshot_file",
    "read_log",
]
