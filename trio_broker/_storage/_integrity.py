"""Checksums of what the store keeps, and what it does with damage.

Every stored message value carries the CRC32C of its queue id, sequence number, bytes and
headers (:func:`value_checksum`), computed when it is inserted; every log entry the CRC32C of
its term, index and payload bytes (``_protocol._entries.entry_checksum``), computed when the
entry is encoded. Both are checked whenever the store reads them back for someone: values
read for a client, entries read for recovery or replication, values of an incoming snapshot.

A mismatch is never served. It raises :class:`StorageDamaged`, which names the file, the
table and the row; the store turns it into an ``UNAVAILABLE`` answer for the one request that
met it (nothing it did is kept), logs one ``storage.damaged`` line, and goes on serving what is
intact. Damage that keeps the broker from starting (a file SQLite cannot read, a failed
``PRAGMA quick_check``, a damaged log entry) is reported by the ``node`` command as
:meth:`StorageDamaged.report`: what was found, and the operator's two choices.

Longer than the house's 600 lines on purpose: the hot loops that insert and read values
(one statement of many rows, one checksum call per value) stay beside the checksum's
definition, which they must give exactly (tests/test_batch_checksums.py, tests/test_colrun.py).
The checks of whole files (a snapshot, a received file, the log, the file at open) are in
:mod:`._file_checks`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Sequence
from typing import Any

import apsw
import google_crc32c

from .._core._commands import CommandRejected
from ._row_sums import plain_checksums
from ._schema import MAX_SEQUENCE, QUEUE_SPAN
from ._schema import QUEUE_KEY as QK

_logger = logging.getLogger("trio_broker")

DAMAGE_ERRORS = (apsw.CorruptError, apsw.NotADBError, apsw.IOError, UnicodeDecodeError)
"""What SQLite (and apsw, decoding a text value) raise on a damaged file."""


class StorageDamaged(Exception):
    """Stored data that is not what was written: a checksum that does not match, a row that
    is missing or malformed, a page SQLite cannot read."""

    def __init__(
        self,
        file: str,
        table: str | None,
        where: str | None,
        found: str,
        *,
        queue_id: str | None = None,
        seq: int | None = None,
    ) -> None:
        self.file = file
        self.table = table
        self.where = where
        self.found = found
        self.queue_id = queue_id
        """For a damaged value (table ``queue_data``): its queue, and its sequence number when
        known, which a broker with peers repairs from them (``_runtime/_repair.py``)."""
        self.seq = seq
        place = ", ".join(x for x in (file, table and f"table {table}", where) if x)
        super().__init__(f"stored data is damaged ({place}): {found}")

    def report(self, data_dir: str) -> str:
        """What the ``node`` command prints when the damage keeps the broker from starting."""
        where = [x for x in (self.table and f"table {self.table}", self.where) if x]
        return (
            f"error: this broker's data is damaged and it will not start on it.\n"
            f"  file:  {self.file}\n"
            f"  where: {', '.join(where) or 'the file itself'}\n"
            f"  found: {self.found}\n"
            f"What to do (docs/reliability.md, 'Damaged data'):\n"
            f"  - restore this broker's data from a backup taken before the damage "
            f"(python -m trio_broker restore), or\n"
            f"  - rejoin empty and let the cluster refill it (the other brokers must hold a "
            f"majority): move the damaged files aside (nothing is deleted) with\n"
            f"      python -m trio_broker data reset --data-dir {data_dir}\n"
            f"    then start this broker with --seed naming a running member, and remove its "
            f"old broker id from the membership (client remove-member)."
        )


def damage_from(
    exc: BaseException, file: str, table: str | None, where: str | None, **place: Any
) -> Any:
    """``exc`` (one of :data:`DAMAGE_ERRORS`, or a log payload that does not decode) as
    :class:`StorageDamaged`."""
    return StorageDamaged(file, table, where, f"{type(exc).__name__}: {exc}", **place)


def report_damage(exc: StorageDamaged) -> CommandRejected:
    """Log one ``storage.damaged`` line; the answer for the request that met the damage."""
    fields = {"file": exc.file, "table": exc.table, "where": exc.where, "found": exc.found}
    text = "storage.damaged " + " ".join(f'{k}="{v}"' for k, v in fields.items())
    _logger.error(text, extra={"event": "storage.damaged", "fields": fields})
    return CommandRejected(
        "UNAVAILABLE", f"{exc}; this broker will not serve it (another broker may)"
    )


# -- queue values --------------------------------------------------------------------------------

UNCHECKED: contextvars.ContextVar[list[tuple[str, int]] | None] = contextvars.ContextVar(
    "unchecked_values", default=None
)
"""Set (to a list) while a read whose effect does not depend on the values' bytes is applied
for nobody (``_queue_sql.apply_command``'s ``unchecked``): a damaged or missing value then
reads as empty bytes, never served, and its place is added to the list."""


def _unchecked(queue_id: str, seq: int) -> bool:
    met = UNCHECKED.get()
    if met is None:
        return False
    met.append((queue_id, seq))
    return True


def value_checksum(queue_id: str, seq: int, data: bytes, headers: str | None) -> int:
    """CRC32C of one stored message: where it belongs (queue and sequence number), so that a
    row that moved is caught too, then its bytes and headers.

    This is the stored checksum's definition (data directories keep it: never change it).
    The store's hot loops compute the same number in one C call per value
    (:func:`_place`, :data:`_PLAIN`, :data:`_HEADED`; tests/test_batch_checksums.py holds them
    to this function)."""
    crc = google_crc32c.extend(google_crc32c.value(f"{queue_id}\0{seq}\0".encode()), data)
    if headers is not None:
        crc = google_crc32c.extend(crc, b"\0" + headers.encode())
    return crc


_crc32c = google_crc32c.value
_PLAIN = b"%b%d\0%b"
"""The bytes :func:`value_checksum` covers for a message without headers: its queue's
:func:`_place`, then its sequence number (an int: ``%d`` writes what the f-string writes),
a NUL and its bytes, checksummed in one call instead of an encoded f-string and two."""
_HEADED = b"%b%d\0%b\0%b"
"""The same for a message with headers: then a NUL and the headers' UTF-8."""


def _place(queue_id: str) -> bytes:
    """The first bytes :func:`value_checksum` covers for every message of a queue."""
    return queue_id.encode() + b"\0"


_INSERT = "INSERT INTO queue_data (key, appended_ms, headers, checksum, data) VALUES "
"""Every row is keyed by its queue's number and its sequence number packed into the rowid
(``_schema``, version 8): ``number * QUEUE_SPAN + seq``, the one key SQLite writes."""
_CHUNKS = (64, 32, 16, 8, 4, 2, 1)
"""Rows per ``INSERT`` statement: one statement of many rows costs SQLite and apsw less than
``executemany``'s step per row (100 values: 1.3 -> 0.7 µs each, docs/performance-history.md "Batches
in and out"). Every count is cut into statements of these sizes, largest first (at most one
of each size below 64), never ``executemany``: 4 rows left after 96 cost 1.8 µs each through
``executemany`` and 1.3 in one statement, and one row 3.3 against 2.9 µs
(docs/performance-history.md, "Batch appends: every broker's µs per message"). Seven statement texts
per shape, which apsw's cache keeps."""


def _chunk_spans(count: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each statement of :data:`_CHUNKS` rows for ``count`` rows, in
    order, covering them all: the one walk :func:`insert_values`, :func:`insert_plain` and
    :func:`insert_stamped` share."""
    spans: list[tuple[int, int]] = []
    done = 0
    for size in _CHUNKS:
        while count - done >= size:
            spans.append((done, done + size))
            done += size
    return spans


_CHUNK_STATEMENTS = {
    size: _INSERT
    + ",".join(
        f"(?{1 + 5 * k},?{2 + 5 * k},?{3 + 5 * k},?{4 + 5 * k},?{5 + 5 * k})" for k in range(size)
    )
    for size in _CHUNKS
}
"""A statement of ``size`` rows: each row's key, stamp, headers, checksum and bytes."""


def _base(db: apsw.Connection, queue_id: str, number: int | None) -> int:
    """The queue's first key (its number times ``QUEUE_SPAN``, ``_schema`` version 8), from
    ``number`` when the caller has it (the appends read it with the queue's length), else
    looked up."""
    if number is None:
        row = db.execute(
            "SELECT queue_number FROM queues WHERE queue_id = ?", (queue_id,)
        ).fetchone()
        if row is None:
            raise ValueError(f"no queue {queue_id!r} to insert into")
        number = int(row[0])
    return number * QUEUE_SPAN


def _row_checksum(place: bytes, seq: int, data: bytes, headers: str | None) -> int:
    """:func:`value_checksum`'s number for a row of queue ``place`` (:func:`_place`)."""
    if headers is None:
        return _crc32c(_PLAIN % (place, seq, data))
    return _crc32c(_HEADED % (place, seq, data, headers.encode()))


def insert_values(
    db: apsw.Connection,
    queue_id: str,
    first: int,
    rows: Sequence[tuple[bytes, int | None, str | None]],
    *,
    number: int | None = None,
) -> None:
    """Insert messages ``(data, appended_ms, headers)`` numbered from ``first``, each with its
    checksum (:func:`value_checksum`'s number), in order: runs of :data:`_CHUNKS` rows in one
    statement each. ``number``: the queue's number, if the caller has read it."""
    place = _place(queue_id)
    base = _base(db, queue_id, number)
    for start, end in _chunk_spans(len(rows)):
        params: list[Any] = []
        for seq, (data, stamp, headers) in enumerate(rows[start:end], first + start):
            params += (
                base + seq,
                stamp,
                headers,
                _row_checksum(place, seq, data, headers),
                data,
            )
        db.execute(_CHUNK_STATEMENTS[end - start], params)


_PLAIN_STATEMENTS = {
    size: _INSERT + ",".join(f"(?2+{k},?1,NULL,?{3 + 2 * k},?{4 + 2 * k})" for k in range(size))
    for size in _CHUNKS
}
"""As :data:`_CHUNK_STATEMENTS`, for messages without headers sharing one stamp (``?1``):
the statement's first key bound once (``?2``), each row's key that plus its place in the
statement, computed by SQLite (an addition per row costs it less than a bound integer costs
apsw and Python: 744 / 751 / 744 -> 709 / 718 / 714 ns a row of a run of 1,900, the same rows
stored; docs/performance.md, "Batch appends per value: the save's parts, the checkpoint, the
decode (fourteenth round)"); each row binds its checksum and bytes."""


def insert_plain(
    db: apsw.Connection,
    queue_id: str,
    first: int,
    data: Sequence[bytes],
    stamp: int | None,
    *,
    number: int | None = None,
) -> None:
    """What ``insert_values(db, queue_id, first, [(d, stamp, None) for d in data])`` stores,
    for messages without headers appended together (an APPEND_BATCH, a run of APPENDs of one
    stamp): two values bound per row instead of five (the key computed in the statement:
    :data:`_PLAIN_STATEMENTS`), and no tuple per message first. The checksums made at once
    (:func:`._row_sums.plain_checksums`) and the rows' parameters set by slice assignments, no
    Python step per row (a run of 1,800 values: 650 to 741 ->
    499 to 531 ns a row, docs/performance-history.md "Batch appends per message (eighth round)")."""
    base = _base(db, queue_id, number) + first
    count = len(data)
    rows: list[Any] = [None] * (2 * count)  # (each row's parameters, cut per statement)
    rows[0::2] = plain_checksums(_place(queue_id), first, data)
    rows[1::2] = data
    for start, end in _chunk_spans(count):
        params: list[Any] = [stamp, base + start]
        params += rows[2 * start : 2 * end]
        db.execute(_PLAIN_STATEMENTS[end - start], params)


_STAMPED_STATEMENTS = {
    size: _INSERT
    + ",".join(f"(?{1 + 4 * k},?{2 + 4 * k},NULL,?{3 + 4 * k},?{4 + 4 * k})" for k in range(size))
    for size in _CHUNKS
}
"""As :data:`_CHUNK_STATEMENTS`, for messages without headers: each row binds its key,
stamp, checksum and bytes (the headers a ``NULL`` in the statement)."""


def insert_stamped(
    db: apsw.Connection,
    queue_id: str,
    first: int,
    data: Sequence[bytes],
    stamps: Sequence[int | None],
    *,
    number: int | None = None,
) -> None:
    """What ``insert_values(db, queue_id, first, list(zip(data, stamps, [None] * n)))``
    stores, from the two columns as they are (a run of APPENDs whose stamps differ: the
    receives of one group, each stamped by the leader's clock): four values bound per row
    instead of five, and no tuple per message first. Its checksums and parameters made as
    :func:`insert_plain`'s (a run of 256 with a stamp per 16: 791 to 1,021 -> 559 to 628 ns
    a row, where a loop of one ``+=`` per row had cost less than passes of ``map`` and
    ``chain`` with the checksums made one by one)."""
    if len(data) != len(stamps):
        raise ValueError(f"{len(data)} values with {len(stamps)} stamps")
    base = _base(db, queue_id, number) + first
    count = len(data)
    rows: list[Any] = [None] * (4 * count)  # (as insert_plain's)
    rows[0::4] = range(base, base + count)
    rows[1::4] = stamps
    rows[2::4] = plain_checksums(_place(queue_id), first, data)
    rows[3::4] = data
    for start, end in _chunk_spans(count):
        db.execute(_STAMPED_STATEMENTS[end - start], rows[4 * start : 4 * end])


_READ_VALUES = (
    "SELECT sequence_num, data, headers, checksum FROM queue_data"
    f" WHERE key BETWEEN {QK} + ?2 AND {QK} + ?3"
)
"""The values :func:`read_values` reads: the rows' keys as one range of the table's rowid
(``EXPLAIN QUERY PLAN``: ``SEARCH queue_data USING INTEGER PRIMARY KEY (rowid>? AND
rowid<?)``; ``sequence_num`` is computed from the key), its bounds from the queue's number,
two constant subqueries SQLite runs once each per execution. A join with ``queues`` (one
seek there instead of two) cost 15.0 to 15.6 µs per execution of one row against 5.2 to 5.3
(thread CPU, 20,000 executions; docs/performance-history.md, "The queue rows' packed key, schema
version 8 (tenth round)"). No ``ORDER BY``: the rows come in key order, which is sequence
order, without a sort,
and the plan with ``ORDER BY`` (the same bytecode but a ``Noop``) cost 6.5 µs per execution
of one row against 1.9 µs without (docs/performance-history.md, "A single READ on the leader").
Nothing depends on the order for correctness: :func:`_intact_run` takes the rows only when
each is the next one expected, and otherwise :func:`read_values` places each row by its
sequence number (tests/test_read_leader.py)."""


def read_values(
    db: apsw.Connection, queue_id: str, start: int, end: int
) -> list[tuple[int, bytes, str | None]]:
    """The messages ``start..end`` of a queue (all retained: every one must be there), checked,
    in order."""
    if end < start:
        return []
    try:
        rows = db.execute(_READ_VALUES, (queue_id, start, end)).fetchall()
    except DAMAGE_ERRORS as exc:
        raise damage_from(
            exc, db.filename, "queue_data", f"queue {queue_id}", queue_id=queue_id, seq=start
        ) from None
    if len(rows) == end - start + 1:
        whole = _intact_run(queue_id, start, rows)
        if whole is not None:
            return whole
    # Some row is missing, moved or damaged: each message on its own.
    by_seq = {row[0]: row for row in rows}
    out: list[tuple[int, bytes, str | None]] = []
    for seq in range(start, end + 1):
        row = by_seq.get(seq)
        if row is None:
            if not _unchecked(queue_id, seq):
                raise _missing(db, queue_id, seq)
            out.append((seq, b"", None))
            continue
        _, data, headers, checksum = row
        if _intact(queue_id, seq, data, headers, checksum):
            out.append((seq, data, headers))
        elif _unchecked(queue_id, seq):
            out.append((seq, b"", None))
        else:
            raise _mismatch(db, queue_id, seq)
    return out


def _intact_run(
    queue_id: str, start: int, rows: list[Any]
) -> list[tuple[int, bytes, str | None]] | None:
    """``rows`` (sequence number, bytes, headers, checksum) as :func:`read_values` returns
    them when they are the messages from ``start`` in order, one each, every one of the
    expected types and matching its checksum (the usual case: one pass, no lookup per
    message); None at the first row that is not, to be read row by row (nothing noted).

    A run of :data:`COLUMN_CHECKS` rows or more without headers (the usual case) is checked
    as columns: its checksums made at once by :func:`._row_sums.plain_checksums`, the numbers
    the writes stored, and compared in one test (a value that is not bytes, SQLite's ``str``,
    ``int``, ``float`` or ``NULL`` of a damaged row, raises ``TypeError`` there as the ``%``
    did). Shorter runs, and rows with headers, take the loop."""
    if len(rows) >= COLUMN_CHECKS:
        seqs, datas, texts, checksums = zip(*rows, strict=True)
        if texts.count(None) == len(rows):
            return _intact_columns(queue_id, start, seqs, datas, texts, checksums)
    place = _place(queue_id)
    out = []
    seq = start
    for row_seq, data, headers, checksum in rows:
        if row_seq != seq or type(data) is not bytes:
            return None
        if headers is None:
            if checksum != _crc32c(_PLAIN % (place, seq, data)):
                return None
        elif type(headers) is not str or checksum != _crc32c(
            _HEADED % (place, seq, data, headers.encode())
        ):
            return None
        out.append((seq, data, headers))
        seq += 1
    return out


COLUMN_CHECKS = 32
"""Rows from which :func:`_intact_run` checks a run as columns: below it, the loop of one
``%`` per row costs about as much (thread CPU per row of 100 bytes, rows already read,
``benchmarks.read_path --checks``: 16 rows 301 to 325 ns by the loop, 305 to 309 as columns;
100 rows 293 to 301 against 256 to 265; 1,000 rows 292 to 299 against 229 to 231;
docs/performance-history.md, "A replica's CPU per append (ninth round)")."""


def _intact_columns(
    queue_id: str,
    start: int,
    seqs: tuple[Any, ...],
    datas: tuple[Any, ...],
    texts: tuple[None, ...],
    checksums: tuple[Any, ...],
) -> list[tuple[int, bytes, str | None]] | None:
    """:func:`_intact_run`'s answer for rows without headers, from their columns."""
    if seqs != tuple(range(start, start + len(seqs))):
        return None
    try:
        found = plain_checksums(_place(queue_id), start, datas)
    except TypeError:
        return None
    if found != list(checksums):
        return None
    return list(zip(seqs, datas, texts, strict=True))


_READ_DATA = f"SELECT data, headers, checksum FROM queue_data WHERE key = {QK} + ?2"
"""One message by its key (``_schema`` version 8): a seek in ``queues``, one in the table."""


def read_data(db: apsw.Connection, queue_id: str, seq: int) -> bytes:
    """The bytes of message ``seq`` of a queue (retained: it must be there), checked: what
    ``read_values(db, queue_id, seq, seq)`` gives for it, for a single READ (one row sought by
    its key, no list or tuple per row; docs/performance-history.md, "A single READ on the
    leader")."""
    try:
        row = db.execute(_READ_DATA, (queue_id, seq)).fetchone()
    except DAMAGE_ERRORS as exc:
        raise damage_from(
            exc, db.filename, "queue_data", f"queue {queue_id}", queue_id=queue_id, seq=seq
        ) from None
    if row is None:
        if not _unchecked(queue_id, seq):
            raise _missing(db, queue_id, seq)
        return b""
    data, headers, checksum = row
    if type(data) is bytes and (
        checksum == _crc32c(_PLAIN % (_place(queue_id), seq, data))
        if headers is None
        else type(headers) is str
        and checksum == _crc32c(_HEADED % (_place(queue_id), seq, data, headers.encode()))
    ):
        return data
    if _unchecked(queue_id, seq):
        return b""
    raise _mismatch(db, queue_id, seq)


def _missing(db: apsw.Connection, queue_id: str, seq: int) -> StorageDamaged:
    where = f"queue {queue_id} seq {seq}"
    return StorageDamaged(
        db.filename, "queue_data", where, "the row is missing", queue_id=queue_id, seq=seq
    )


def read_value(db: apsw.Connection, queue_id: str, seq: int) -> tuple[bytes, str | None] | None:
    """One message (None if the queue does not hold it), checked."""
    try:
        row = db.execute(_READ_DATA, (queue_id, seq)).fetchone()
    except DAMAGE_ERRORS as exc:
        where = f"queue {queue_id} seq {seq}"
        raise damage_from(
            exc, db.filename, "queue_data", where, queue_id=queue_id, seq=seq
        ) from None
    if row is None:
        return None
    data, headers, checksum = row
    if _intact(queue_id, seq, data, headers, checksum):
        return data, headers
    if _unchecked(queue_id, seq):
        return b"", None
    raise _mismatch(db, queue_id, seq)


def _mismatch(db: apsw.Connection, queue_id: str, seq: int) -> StorageDamaged:
    return StorageDamaged(
        db.filename,
        "queue_data",
        f"queue {queue_id} seq {seq}",
        "the value does not match its checksum",
        queue_id=queue_id,
        seq=seq,
    )


# -- repair from peers ---------------------------------------------------------------------------

StoredRow = tuple[int, bytes, str | None, int | None, int]
"""One stored message as brokers hand it to each other for a repair: (sequence number, bytes,
headers, stamp, checksum). A message's row is the same on every broker that holds it (applying
is deterministic, and a row never changes once written), so any intact copy repairs another."""


def intact_rows(
    db: apsw.Connection, queue_id: str, first: int, max_rows: int, max_bytes: int
) -> list[StoredRow]:
    """The rows of a queue from ``first`` (at most ``max_rows``, and ``max_bytes`` of values
    unless the first alone is larger) that match their checksums: what this broker gives a peer
    that repairs its copy. Damaged rows are left out, never sent."""
    out: list[StoredRow] = []
    size = 0
    try:
        for seq, data, headers, stamp, checksum in db.execute(
            "SELECT sequence_num, data, headers, appended_ms, checksum FROM queue_data"
            f" WHERE key >= {QK} + ?2 AND key < {QK} + ?4 ORDER BY key LIMIT ?3",
            (queue_id, max(first, 0), max_rows, QUEUE_SPAN),
        ):
            if not _intact(queue_id, seq, data, headers, checksum):
                continue
            if out and size + len(data) > max_bytes:
                break
            out.append((seq, data, headers, stamp, checksum))
            size += len(data)
    except DAMAGE_ERRORS:
        pass  # (what was read before the damage is intact, and still worth sending)
    return out


def repair_rows(db: apsw.Connection, queue_id: str, rows: Sequence[StoredRow]) -> list[int]:
    """Replace this broker's damaged or missing copies of ``rows`` (from a peer) in one
    transaction; returns the sequence numbers repaired. A row that fails its own checksum
    (changed on the way), that this broker holds intact, or that is outside the messages it
    retains (not yet applied here, or already deleted) is left alone."""
    row = db.execute(
        "SELECT deleted_through, length, queue_number FROM queues WHERE queue_id = ?",
        (queue_id,),
    ).fetchone()
    if row is None:
        return []
    deleted, length, number = row
    repaired = []
    with db:
        for seq, data, headers, stamp, checksum in rows:
            if not deleted < seq <= length or not _intact(queue_id, seq, data, headers, checksum):
                continue
            try:
                local = db.execute(_READ_DATA, (queue_id, seq)).fetchone()
            except DAMAGE_ERRORS:
                local = None
            if local is not None and _intact(queue_id, seq, *local):
                continue
            db.execute(
                "INSERT OR REPLACE INTO queue_data (key, appended_ms, headers, checksum, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (number * QUEUE_SPAN + seq, stamp, headers, checksum, data),
            )
            repaired.append(seq)
    return repaired


def needs_repair(db: apsw.Connection, queue_id: str, seq: int) -> bool:
    """Whether this broker holds a message it retains damaged, or not at all."""
    row = db.execute(
        "SELECT deleted_through, length FROM queues WHERE queue_id = ?", (queue_id,)
    ).fetchone()
    if row is None or not row[0] < seq <= row[1]:
        return False
    try:
        found = db.execute(_READ_DATA, (queue_id, seq)).fetchone()
    except DAMAGE_ERRORS:
        return True
    return found is None or not _intact(queue_id, seq, *found)


def damaged_values(
    db: apsw.Connection, after: tuple[str, int], limit: int, max_bytes: int | None = None
) -> tuple[list[tuple[str, int]], tuple[str, int] | None]:
    """One step of the value scrub: check up to ``limit`` stored values after ``(queue id,
    sequence number)``, and no more once ``max_bytes`` of them are read (None: no bound), and
    look for rows missing there (a lost write: a queue holds every message from its first
    retained one to its length); returns the damaged or missing ones, in order, and where to
    go on (None: the end)."""
    found: list[tuple[str, int]] = []
    seen: list[tuple[str, int]] = []
    size = 0
    at_end = True
    try:
        # (Rows in the order of their queues' ids, through their numbers: each queue's rows a
        # range of keys, the first queue's from after ``after``, as a row value
        # ``(q.queue_id, d.sequence_num) > (?1, ?2)`` would not seek them: it read the queue's
        # rows from its first at every step. Its last key is its first plus MAX_SEQUENCE, not
        # the next queue's first minus one: for the largest number that is 2**63, which
        # ``<<`` wraps to SQLite's smallest integer, and the scrub saw none of its rows.)
        for queue_id, seq, data, headers, checksum in db.execute(
            "SELECT q.queue_id, d.sequence_num, d.data, d.headers, d.checksum"
            " FROM queues AS q JOIN queue_data AS d"
            " ON d.key > (q.queue_number << 44) + iif(q.queue_id = ?1, max(?2, 0), 0)"
            f" AND d.key <= (q.queue_number << 44) + {MAX_SEQUENCE}"
            " WHERE q.queue_id >= ?1 ORDER BY q.queue_id, d.key LIMIT ?3",
            (*after, limit),
        ):
            seen.append((queue_id, seq))
            if not _intact(queue_id, seq, data, headers, checksum):
                found.append((queue_id, seq))
            if max_bytes is not None:
                size += len(data) if isinstance(data, bytes | str) else 0
                if size >= max_bytes:
                    break
        at_end = len(seen) < limit and not (max_bytes is not None and size >= max_bytes)
        upto = None if at_end else seen[-1]
        missing = _missing_rows(db, after, upto, seen, limit)
    except DAMAGE_ERRORS:
        # A page SQLite cannot read: the start's check would have refused it; skip past.
        return found, None
    if len(missing) >= limit:  # (at most ``limit`` of them a step: go on after the last)
        last: tuple[str, int] | None = missing[-1]
        return sorted({p for p in found if p <= missing[-1]} | set(missing)), last
    return sorted(set(found) | set(missing)), upto


def _missing_rows(
    db: apsw.Connection,
    after: tuple[str, int],
    upto: tuple[str, int] | None,
    seen: list[tuple[str, int]],
    limit: int,
) -> list[tuple[str, int]]:
    """The messages the queues retain after ``after`` and up to ``upto`` (None: to the end)
    whose rows are not among ``seen`` (every row there is); at most ``limit``, in order."""
    present: dict[str, set[int]] = {}
    for queue_id, seq in seen:
        present.setdefault(queue_id, set()).add(seq)
    missing: list[tuple[str, int]] = []
    for queue_id, deleted, length in db.execute(
        "SELECT queue_id, deleted_through, length FROM queues WHERE queue_id >= ?1"
        " AND (?2 IS NULL OR queue_id <= ?2) AND length > deleted_through ORDER BY queue_id",
        (after[0], None if upto is None else upto[0]),
    ):
        first = max(deleted, after[1] if queue_id == after[0] else 0) + 1
        last = min(length, upto[1]) if upto is not None and queue_id == upto[0] else length
        have = present.get(queue_id, set())
        for seq in range(first, last + 1):  # (every row of it was seen, or counts to limit)
            if seq not in have:
                missing.append((queue_id, seq))
                if len(missing) >= limit:
                    return missing
    return missing


def _intact(queue_id: str, seq: Any, data: Any, headers: Any, checksum: Any) -> bool:
    return (
        isinstance(data, bytes)
        and (headers is None or isinstance(headers, str))
        and checksum == value_checksum(queue_id, seq, data, headers)
    )
