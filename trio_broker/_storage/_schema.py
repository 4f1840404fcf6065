"""The SQLite schema, versioned by ``PRAGMA user_version``.

Table and column names follow the design's read flow (``client_positions.read_position``,
``queue_data.sequence_num``) so that a reader of the diagrams finds them where expected. An
upgrade is a function from version N to N+1, run in the same transaction that bumps the version.
"""

from __future__ import annotations

from collections.abc import Callable

import apsw

SCHEMA_VERSION = 8

_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE queues (
    queue_id TEXT PRIMARY KEY,
    length   INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;

CREATE TABLE queue_data (
    queue_id     TEXT    NOT NULL,
    sequence_num INTEGER NOT NULL,
    data         BLOB    NOT NULL,
    PRIMARY KEY (queue_id, sequence_num)
) STRICT, WITHOUT ROWID;

CREATE TABLE client_positions (
    client_id     TEXT    NOT NULL,
    queue_id      TEXT    NOT NULL,
    read_position INTEGER NOT NULL,
    PRIMARY KEY (client_id, queue_id)
) STRICT, WITHOUT ROWID;
"""

# Version 2: the replicated log and the address book. The consensus state (term, vote, commit,
# applied index, snapshot point) lives in `meta`, written in the same transactions as the log.
_V2 = """
CREATE TABLE raft_log (
    log_index INTEGER PRIMARY KEY,
    term      INTEGER NOT NULL,
    payload   BLOB    NOT NULL
) STRICT;

CREATE TABLE brokers (
    broker_id TEXT    PRIMARY KEY,
    host      TEXT    NOT NULL,
    port      INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
"""

# Version 3: idempotent producers' dedup state (replicated, bounded, least recently used out).
_V3 = """
CREATE TABLE producers (
    producer_id TEXT    NOT NULL,
    queue_id    TEXT    NOT NULL,
    last_seq    INTEGER NOT NULL,
    recent      TEXT    NOT NULL,
    last_used   INTEGER NOT NULL,
    PRIMARY KEY (producer_id, queue_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX producers_by_use ON producers (last_used);
"""

# Version 4: retention (docs/protocol.md, "Retention"). `queues.length` stays the last
# sequence number; `deleted_through` is the last one retention deleted (the first retained
# message is the next). Each message keeps when it was appended (`appended_ms`, the proposing
# leader's clock, never decreasing along a queue); rows from before this version have NULL, an
# unknown age, and `undated_through` is the last of them (they come first in their queue). The
# index serves "every client has read it" and LIST_QUEUES without scanning every position.
_V4 = """
ALTER TABLE queues ADD COLUMN deleted_through INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queues ADD COLUMN undated_through INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queues ADD COLUMN last_appended_ms INTEGER;
ALTER TABLE queues ADD COLUMN max_messages INTEGER;
ALTER TABLE queues ADD COLUMN max_age_ms INTEGER;
ALTER TABLE queues ADD COLUMN delete_acknowledged INTEGER NOT NULL DEFAULT 0;
UPDATE queues SET undated_through = length;

ALTER TABLE queue_data ADD COLUMN appended_ms INTEGER;

CREATE INDEX queues_with_retention ON queues (queue_id)
    WHERE max_messages IS NOT NULL OR max_age_ms IS NOT NULL OR delete_acknowledged;
CREATE INDEX client_positions_by_queue ON client_positions (queue_id, read_position);
"""

# Version 5: work queues and the queue lifecycle (docs/protocol.md, "Work queues"). Message
# headers are a column of the message (NULL: none; a JSON object of strings), so retention
# deletes them with it. Consumer groups keep a cursor (the last message delivered to the group
# for the first time) and their pending messages (delivered, not acknowledged): leased to
# `member` until `until_ms`, or, with `member` NULL, waiting for a redelivery from `until_ms`
# on. The partial indexes serve "which leases are due" and "is this queue a dead-letter queue".
# `position_activity` records when each client position was last used, at the granularity of
# the idle-forgetting sweeps (`work_meta.sweep_ms`; NULL `touched_ms`: used since the last
# sweep). `fenced_producers` is the dedup state of producers that send an epoch.
_V5 = """
ALTER TABLE queue_data ADD COLUMN headers TEXT;

CREATE TABLE queue_names (
    name     TEXT PRIMARY KEY,
    queue_id TEXT NOT NULL UNIQUE
) STRICT, WITHOUT ROWID;

CREATE TABLE consumer_groups (
    queue_id          TEXT    NOT NULL,
    group_name        TEXT    NOT NULL,
    visibility_ms     INTEGER NOT NULL,
    max_deliveries    INTEGER,
    dead_letter_queue TEXT,
    max_in_flight     INTEGER NOT NULL,
    cursor            INTEGER NOT NULL,
    PRIMARY KEY (queue_id, group_name)
) STRICT, WITHOUT ROWID;

CREATE INDEX consumer_groups_by_dead_letter_queue ON consumer_groups (dead_letter_queue)
    WHERE dead_letter_queue IS NOT NULL;

CREATE TABLE group_pending (
    queue_id     TEXT    NOT NULL,
    group_name   TEXT    NOT NULL,
    sequence_num INTEGER NOT NULL,
    deliveries   INTEGER NOT NULL,
    member       TEXT,
    until_ms     INTEGER NOT NULL,
    last_error   TEXT,
    PRIMARY KEY (queue_id, group_name, sequence_num)
) STRICT, WITHOUT ROWID;

CREATE INDEX group_leases_by_deadline ON group_pending (until_ms) WHERE member IS NOT NULL;

CREATE TABLE position_activity (
    client_id  TEXT NOT NULL,
    queue_id   TEXT NOT NULL,
    touched_ms INTEGER,
    PRIMARY KEY (client_id, queue_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX position_activity_by_stamp ON position_activity (touched_ms, client_id, queue_id);

CREATE TABLE work_meta (
    key   TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE fenced_producers (
    producer_id TEXT    NOT NULL,
    queue_id    TEXT    NOT NULL,
    epoch       INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    recent      TEXT    NOT NULL,
    last_used   INTEGER NOT NULL,
    PRIMARY KEY (producer_id, queue_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX fenced_producers_by_use ON fenced_producers (last_used);
"""

WORK_TABLES = (
    "queue_names",
    "consumer_groups",
    "group_pending",
    "position_activity",
    "work_meta",
    "fenced_producers",
)
"""Replicated state of version 5: what a snapshot copies besides the older tables."""

# Version 6: checksums, and values stored beside their row (docs/reliability.md, "Damaged
# data"; docs/performance.md, "Bytes on disk"). Every message and every log entry carries the
# CRC32C its writer computed (``_integrity.value_checksum``, ``_entries.entry_checksum``);
# rows of older versions get theirs here, from the bytes as they are. `queue_data` becomes a
# rowid table with a unique index on its key: a WITHOUT ROWID table's row is an index cell,
# which keeps at most ~1 KB of a 4 KB page (the rest goes to overflow pages of its own, 4 KB
# each), while a rowid table keeps rows up to ~4 KB in the leaf. The value comes last in both
# tables, so that reading the small columns (retention's stamps, the headers) never walks it.
_V6 = """
CREATE TABLE queue_data_v6 (
    queue_id     TEXT    NOT NULL,
    sequence_num INTEGER NOT NULL,
    appended_ms  INTEGER,
    headers      TEXT,
    checksum     INTEGER NOT NULL,
    data         BLOB    NOT NULL,
    UNIQUE (queue_id, sequence_num)
) STRICT;

INSERT INTO queue_data_v6 (queue_id, sequence_num, appended_ms, headers, checksum, data)
    SELECT queue_id, sequence_num, appended_ms, headers,
           trio_value_checksum(queue_id, sequence_num, data, headers), data
    FROM queue_data ORDER BY queue_id, sequence_num;
DROP TABLE queue_data;
ALTER TABLE queue_data_v6 RENAME TO queue_data;

CREATE TABLE raft_log_v6 (
    log_index INTEGER PRIMARY KEY,
    term      INTEGER NOT NULL,
    checksum  INTEGER NOT NULL,
    payload   BLOB    NOT NULL
) STRICT;

INSERT INTO raft_log_v6 (log_index, term, checksum, payload)
    SELECT log_index, term, trio_entry_checksum(term, log_index, payload), payload FROM raft_log;
DROP TABLE raft_log;
ALTER TABLE raft_log_v6 RENAME TO raft_log;
"""


def _v6(db: apsw.Connection) -> None:
    from .._protocol._entries import entry_checksum
    from ._integrity import value_checksum

    db.create_scalar_function("trio_value_checksum", value_checksum, 4, deterministic=True)
    db.create_scalar_function("trio_entry_checksum", entry_checksum, 3, deterministic=True)
    try:
        db.execute(_V6)
    finally:
        db.create_scalar_function("trio_value_checksum", None)
        db.create_scalar_function("trio_entry_checksum", None)


# Version 7: the queue rows' key is the queue's number, not its id's text
# (docs/performance-history.md, "The queue rows' key (sixth round)"): the unique index on
# `(queue_id, sequence_num)` cost more per value than anything else a row holds. Each queue gets a
# number unique in this database (`queue_number`: the largest a live queue holds plus one at
# CREATE_QUEUE, so the number of the queue last made is taken again once that queue is deleted:
# DELETE_QUEUE deletes its rows in the same transaction, and nothing else holds a number), which
# never goes on the wire or into a checksum: brokers upgrade at different applied indexes and
# a snapshot installs its leader's numbers, so a queue's number differs from broker to broker.
# The rows keep everything else, their checksums included (which cover the queue id). A row
# whose queue is gone (none is left by DELETE_QUEUE) is not copied.
_V7 = """
ALTER TABLE queues ADD COLUMN queue_number INTEGER;
UPDATE queues SET queue_number = numbered.n
    FROM (SELECT queue_id, row_number() OVER (ORDER BY queue_id) AS n FROM queues) AS numbered
    WHERE queues.queue_id = numbered.queue_id;
CREATE UNIQUE INDEX queues_by_number ON queues (queue_number);

CREATE TABLE queue_data_v7 (
    queue_number INTEGER NOT NULL,
    sequence_num INTEGER NOT NULL,
    appended_ms  INTEGER,
    headers      TEXT,
    checksum     INTEGER NOT NULL,
    data         BLOB    NOT NULL,
    UNIQUE (queue_number, sequence_num)
) STRICT;

INSERT INTO queue_data_v7 (queue_number, sequence_num, appended_ms, headers, checksum, data)
    SELECT q.queue_number, d.sequence_num, d.appended_ms, d.headers, d.checksum, d.data
    FROM queue_data AS d JOIN queues AS q ON q.queue_id = d.queue_id
    ORDER BY q.queue_number, d.sequence_num;
DROP TABLE queue_data;
ALTER TABLE queue_data_v7 RENAME TO queue_data;
"""

# Version 8: the queue rows' key packed into the table's rowid (docs/performance-history.md, "The
# queue rows' packed key, schema version 8 (tenth round)"): ``key`` is the queue's number times
# :data:`QUEUE_SPAN` plus the message's sequence number, so the rows need no unique index of
# their own (version 7's ``UNIQUE (queue_number, sequence_num)`` was, after the values, the
# most SQLite wrote per row). ``queue_number`` and ``sequence_num`` stay readable as VIRTUAL
# generated columns: computed when read, never stored, so an insert writes only ``key``;
# statements that look rows up use ``key`` ranges (the rowid's b-tree), never those columns.
# The upgrade keeps the queues' numbers (when they are all within :data:`MAX_QUEUE_NUMBER`),
# copies each row with its checksum as it was, and drops a row whose number no queue holds,
# as version 7's did.
_V8 = """
CREATE TABLE queue_data_v8 (
    key          INTEGER PRIMARY KEY,
    appended_ms  INTEGER,
    headers      TEXT,
    checksum     INTEGER NOT NULL,
    data         BLOB    NOT NULL,
    queue_number INTEGER GENERATED ALWAYS AS (key >> 44) VIRTUAL,
    sequence_num INTEGER GENERATED ALWAYS AS (key & 17592186044415) VIRTUAL
) STRICT;

INSERT INTO queue_data_v8 (key, appended_ms, headers, checksum, data)
    SELECT (n.new << 44) + d.sequence_num, d.appended_ms, d.headers, d.checksum, d.data
    FROM queue_data AS d JOIN temp.v8_numbers AS n ON n.old = d.queue_number
    ORDER BY d.queue_number, d.sequence_num;
DROP TABLE queue_data;
ALTER TABLE queue_data_v8 RENAME TO queue_data;
"""


class SchemaTooNew(Exception):
    pass


SEQUENCE_BITS = 44
"""Bits of a row's key that hold its sequence number; the queue's number takes the 19 above
them, up to the sign bit of SQLite's 64-bit rowid.

Why 44 and 19: a queue's sequence numbers are spent once each, forever (retention deletes
rows, never numbers), so they get most of the key. :data:`MAX_SEQUENCE` is 1.76 * 10**13
messages in one queue: 2.8 years of 200,000 appends a second (the whole cluster's target,
every append into that one queue), 28 years at 20,000. Queue numbers are reused (a new queue
takes a free one, :func:`next_queue_number`), so 19 bits bound how many queues live at
once, 524,287, not how many are ever made. Past either bound the apply refuses, on every
broker alike (each rule reads only replicated state: a queue's length, how many queues
there are), with a ``BAD_REQUEST`` that says which bound; nothing is stored."""

QUEUE_SPAN = 1 << SEQUENCE_BITS
"""How far apart two queues' keys are: a row's key is ``number * QUEUE_SPAN + sequence``."""

MAX_SEQUENCE = QUEUE_SPAN - 1
"""The last sequence number a queue can hold (2**44 - 1): an append past it is refused."""

MAX_QUEUE_NUMBER = (1 << (63 - SEQUENCE_BITS)) - 1
"""The largest queue number (2**19 - 1): so many queues can live at once, then CREATE_QUEUE
and CREATE_NAMED_QUEUE are refused until one is deleted."""

QUEUE_KEY = "(SELECT queue_number << 44 FROM queues WHERE queue_id = ?1)"
"""A queue's first key (the key of its sequence number 0, which no row holds) from its id,
inside a statement on ``queue_data`` whose first parameter is the queue's id: SQLite computes
it once per statement (a constant subquery), one seek in ``queues``."""


class SchemaCannotUpgrade(SchemaTooNew):
    """A database this version cannot take as it is: a sequence number past
    :data:`MAX_SEQUENCE` or more live queues than :data:`MAX_QUEUE_NUMBER` (neither reachable
    in practice: see :data:`SEQUENCE_BITS`). Nothing is changed. A :class:`SchemaTooNew`, so
    that every place that refuses a file it cannot use (the ``node`` command, a received
    snapshot: ``snapshot.too_new``) refuses this one the same way."""


def _v8(db: apsw.Connection) -> None:
    count, top = db.execute("SELECT count(*), max(queue_number) FROM queues").fetchone()
    if count > MAX_QUEUE_NUMBER:
        raise SchemaCannotUpgrade(
            f"{count} queues: schema version 8 keeps at most {MAX_QUEUE_NUMBER}; delete some"
            " with the previous version of trio_broker first"
        )
    (past,) = db.execute(
        "SELECT count(*) FROM queue_data WHERE sequence_num NOT BETWEEN 0 AND ?", (MAX_SEQUENCE,)
    ).fetchone()
    if past:
        raise SchemaCannotUpgrade(
            f"{past} messages past sequence number {MAX_SEQUENCE}, the last schema version 8 keeps"
        )
    # Each queue's number in version 8 (``new``): its own, unless version 7 numbered one past
    # the bound (it gave a new queue the largest number plus one, without a limit): then all
    # renumbered 1..count in their order, the rows with them.
    renumber = top is not None and top > MAX_QUEUE_NUMBER
    db.execute("CREATE TEMP TABLE v8_numbers (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
    try:
        db.execute(
            "INSERT INTO temp.v8_numbers SELECT queue_number,"
            " iif(?, row_number() OVER (ORDER BY queue_number), queue_number) FROM queues",
            (renumber,),
        )
        db.execute(_V8)
        if renumber:
            # (through negative numbers, so that the unique index never meets two alike)
            db.execute("UPDATE queues SET queue_number = -queue_number")
            db.execute(
                "UPDATE queues SET queue_number ="
                " (SELECT new FROM temp.v8_numbers WHERE old = -queues.queue_number)"
            )
    finally:
        db.execute("DROP TABLE temp.v8_numbers")


def next_queue_number(db: apsw.Connection) -> int | None:
    """The number a new queue takes: the largest a live queue holds plus one (one seek in
    ``queues_by_number``), or once that is past :data:`MAX_QUEUE_NUMBER` the lowest free one
    (a walk of the index, only then); None when every number is taken, which is exactly when
    :data:`MAX_QUEUE_NUMBER` queues live (every number a broker gives is within the bound), a
    count every broker holds alike: the creation is refused on each. A queue's number is local
    to its database (version 7: it never goes on the wire or into a checksum), so which free
    one it takes may differ from broker to broker."""
    (top,) = db.execute("SELECT max(queue_number) FROM queues").fetchone()
    if top is None:
        return 1
    if top < MAX_QUEUE_NUMBER:
        return int(top) + 1
    (free,) = db.execute(
        "SELECT min(n) FROM (SELECT 1 AS n WHERE NOT EXISTS"
        " (SELECT 1 FROM queues WHERE queue_number = 1)"
        " UNION ALL SELECT a.queue_number + 1 FROM queues AS a WHERE NOT EXISTS"
        " (SELECT 1 FROM queues AS b WHERE b.queue_number = a.queue_number + 1))"
    ).fetchone()
    return None if free is None or free > MAX_QUEUE_NUMBER else int(free)


def too_many_queues() -> str:
    """The refusal's words when :func:`next_queue_number` finds none free."""
    return (
        f"cannot create a queue: {MAX_QUEUE_NUMBER} queues exist, the most this broker's"
        " storage keeps (delete one first)"
    )


def past_last_sequence(queue_id: str, length: int, count: int) -> str:
    """The refusal's words for an append of ``count`` messages past :data:`MAX_SEQUENCE`."""
    return (
        f"cannot append {count} message(s) to queue {queue_id!r}: it holds {length}, and"
        f" {MAX_SEQUENCE} is the last sequence number a queue can have"
    )


# UPGRADES[n] takes a database at version n to version n + 1.
UPGRADES: dict[int, str | Callable[[apsw.Connection], None]] = {
    0: _V1,
    1: _V2,
    2: _V3,
    3: _V4,
    4: _V5,
    5: _v6,
    6: _V7,
    7: _v8,
}


def upgrade(db: apsw.Connection, to: int = SCHEMA_VERSION) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found before. ``to``
    stops at an older version, as that release's brokers left their files (what the upgrade
    tests and ``benchmarks.schema_upgrade`` start from)."""
    with db:
        (found,) = db.execute("PRAGMA user_version").fetchone()
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema version {found} is newer than this trio_broker "
                f"understands ({SCHEMA_VERSION}); upgrade trio_broker"
            )
        for version in range(found, to):
            step = UPGRADES[version]
            if callable(step):
                step(db)
            else:
                db.execute(step)
            db.execute(f"PRAGMA user_version = {version + 1}")
    return found


def upgrade_opened(db: apsw.Connection, path: str) -> int:
    """:func:`upgrade`, for a store's own file as it opens. An upgrade that copies
    ``queue_data`` (versions 7 and 8) needs about the table's size again in free space; on a
    full disk SQLite rolls it back whole (the file stays as it was, every row in it) and the
    store is refused with a :class:`SchemaCannotUpgrade` that says so, which the ``node`` and
    ``data`` commands print in one line, as a file too new: a bare ``apsw.FullError`` there
    was a traceback that named neither the upgrade nor the remedy."""
    try:
        return upgrade(db)
    except apsw.FullError as exc:
        raise SchemaCannotUpgrade(
            f"cannot upgrade {path} to schema version {SCHEMA_VERSION}: the disk is full"
            f" ({exc}); the upgrade writes a second copy of the stored messages, so it needs"
            " free space about twice the file's size: nothing was changed; free some space,"
            " then start again"
        ) from None


def upgrade_file(path: str) -> int:
    """Bring a database file made elsewhere to :data:`SCHEMA_VERSION`, in one transaction (a
    snapshot from a leader not yet upgraded, during a rolling upgrade: its tables are copied
    as they are, ``SELECT *``, so they must be this version's); returns the version found.
    :class:`SchemaTooNew` if it is newer, the file untouched."""
    db = apsw.Connection(path)
    try:
        (found,) = db.execute("PRAGMA user_version").fetchone()
        return found if found == SCHEMA_VERSION else upgrade(db)
    finally:
        db.close()
