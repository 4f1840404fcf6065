"""What the queue rows' layout costs per value under batch appends, a prototype in plain
SQLite: ``python -m benchmarks.row_layouts``.

Each save is one transaction at ``synchronous = FULL`` in WAL mode, as a broker's: a log row
whose payload holds ``--per-save`` 100-byte values (the entry's JSON, as the log stores it),
then one queue row per value in statements of 64 rows, each with its CRC32C computed in
Python as ``_storage/_integrity.insert_plain`` does; every ``--compact-every`` saves the log
rows older than ``--keep`` saves are deleted (a compaction). Layouts:

- ``now``: the store's ``queue_data`` (a rowid table, ``UNIQUE (queue_id, sequence_num)``,
  the value in the row): what every broker does today;
- ``noindex``: ``now`` without its unique index (what the index costs; reads need it);
- ``intkey``: ``now`` with an integer queue number instead of the queue id's text in the row
  and its unique index (``UNIQUE (queue_number, sequence_num)``): no limit on either number;
- ``packed``: the row's key packed into its rowid (a queue number times 2**40 plus the
  sequence number): no queue id text per row and no index;
- ``v8``: ``packed`` as schema version 8 has it, with the queue's number and the sequence
  number readable as two VIRTUAL generated columns (computed when read, never stored: what
  they cost an insert, which should be nothing);
- ``once``: ``packed`` without the value in the row, which points into the log row instead
  (the entry's index and the value's offset in its payload): each value written once.

Prints the thread's CPU (``time.thread_time``: user and system, not the fsync's wait) and
the bytes written (``wchar`` of ``/proc/self/io``: the WAL and the checkpoints) per value,
and the CPU per value of reading back the values of the last ``--keep`` saves (those whose
log rows are still there) in READs of ``--read-batch``, each value checked (``once``: each
log row opened as a blob once, each value read at its offset),
every layout in each of ``--rounds`` rounds, alternated. A prototype: it measures what the
storage would cost, not the reads, the compaction rule or the snapshots a layout needs
(docs/performance-history.md, "Batch appends per message (fifth round)").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import apsw
import google_crc32c
import orjson

_CHUNKS = (64, 32, 16, 8, 4, 2, 1)
QUEUE = "Q-0123456789abcdef"

_SCHEMAS = {
    "now": """
        CREATE TABLE queue_data (
            queue_id TEXT NOT NULL, sequence_num INTEGER NOT NULL, appended_ms INTEGER,
            headers TEXT, checksum INTEGER NOT NULL, data BLOB NOT NULL,
            UNIQUE (queue_id, sequence_num)) STRICT;""",
    "noindex": """
        CREATE TABLE queue_data (
            queue_id TEXT NOT NULL, sequence_num INTEGER NOT NULL, appended_ms INTEGER,
            headers TEXT, checksum INTEGER NOT NULL, data BLOB NOT NULL) STRICT;""",
    "intkey": """
        CREATE TABLE queue_data (
            queue_number INTEGER NOT NULL, sequence_num INTEGER NOT NULL, appended_ms INTEGER,
            headers TEXT, checksum INTEGER NOT NULL, data BLOB NOT NULL,
            UNIQUE (queue_number, sequence_num)) STRICT;""",
    "packed": """
        CREATE TABLE queue_data (
            key INTEGER PRIMARY KEY, appended_ms INTEGER, headers TEXT,
            checksum INTEGER NOT NULL, data BLOB NOT NULL) STRICT;""",
    "v8": """
        CREATE TABLE queue_data (
            key INTEGER PRIMARY KEY, appended_ms INTEGER, headers TEXT,
            checksum INTEGER NOT NULL, data BLOB NOT NULL,
            queue_number INTEGER GENERATED ALWAYS AS (key >> 44) VIRTUAL,
            sequence_num INTEGER GENERATED ALWAYS AS (key & 17592186044415) VIRTUAL) STRICT;""",
    "once": """
        CREATE TABLE queue_data (
            key INTEGER PRIMARY KEY, appended_ms INTEGER, headers TEXT,
            checksum INTEGER NOT NULL, log_index INTEGER NOT NULL, at INTEGER NOT NULL,
            size INTEGER NOT NULL) STRICT;""",
}
_LOG = """
CREATE TABLE raft_log (log_index INTEGER PRIMARY KEY, term INTEGER NOT NULL,
    checksum INTEGER NOT NULL, payload BLOB NOT NULL) STRICT;"""


def _statements(layout: str) -> dict[int, str]:
    if layout in ("now", "noindex", "intkey"):
        column = "queue_number" if layout == "intkey" else "queue_id"
        head = f"INSERT INTO queue_data ({column}, sequence_num, appended_ms, headers, checksum,"
        head += " data) VALUES "
        row = "(?1,?{},?2,NULL,?{},?{})"
        per = 3
    elif layout in ("packed", "v8"):
        head = "INSERT INTO queue_data (key, appended_ms, headers, checksum, data) VALUES "
        row = "(?{},?2,NULL,?{},?{})"
        per = 3
    else:
        head = "INSERT INTO queue_data (key, appended_ms, headers, checksum, log_index, at, size)"
        head += " VALUES "
        row = "(?{},?2,NULL,?{},?1,?{},?{})"
        per = 4
    return {
        size: head
        + ",".join(row.format(*range(3 + per * k, 3 + per * (k + 1))) for k in range(size))
        for size in _CHUNKS
    }


def _spans(count: int) -> list[tuple[int, int]]:
    spans, done = [], 0
    for size in _CHUNKS:
        while count - done >= size:
            spans.append((done, done + size))
            done += size
    return spans


def run(layout: str, args: argparse.Namespace) -> tuple[float, float, float]:
    value = orjson.dumps("x" * 100)
    values = [value] * args.per_save
    payload = b'{"type":"APPEND_BATCH","data":[' + b",".join(values) + b"]}"
    first_at = payload.index(b"[") + 1
    offsets = [first_at + i * (len(value) + 1) for i in range(len(values))]
    statements = _statements(layout)
    place = QUEUE.encode() + b"\0"
    crc = google_crc32c.value
    spent = 0.0
    with open("/proc/self/io") as io:

        def wchar() -> int:
            io.seek(0)
            return int(next(line for line in io if line.startswith("wchar")).split()[1])

        with tempfile.TemporaryDirectory() as d:
            db = apsw.Connection(os.path.join(d, "store.sqlite3"))
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA cache_size = -16000")
            db.execute(_SCHEMAS[layout] + _LOG)
            seq = 0
            written = 0
            for n in range(args.saves):
                index = n + 1
                started, wrote = time.thread_time(), wchar()
                with db:
                    db.execute(
                        "INSERT INTO raft_log (log_index, term, checksum, payload)"
                        " VALUES (?, 1, ?, ?)",
                        (index, crc(payload), payload),
                    )
                    stamp = 1_765_000_000_000 + index
                    for start, end in _spans(len(values)):
                        params: list[object]
                        if layout in ("now", "noindex", "intkey"):
                            params = [1 if layout == "intkey" else QUEUE, stamp]
                            for s, v in enumerate(values[start:end], seq + 1 + start):
                                params += (s, crc(b"%b%d\0%b" % (place, s, v)), v)
                        elif layout in ("packed", "v8"):
                            params = [None, stamp]
                            for s, v in enumerate(values[start:end], seq + 1 + start):
                                params += ((1 << 40) + s, crc(b"%b%d\0%b" % (place, s, v)), v)
                        else:
                            params = [index, stamp]
                            for i, (s, v) in enumerate(
                                zip(
                                    range(seq + 1 + start, seq + 1 + end),
                                    values[start:end],
                                    strict=True,
                                ),
                                start,
                            ):
                                params += (
                                    (1 << 40) + s,
                                    crc(b"%b%d\0%b" % (place, s, v)),
                                    offsets[i],
                                    len(v),
                                )
                        db.execute(statements[end - start], params)
                    seq += len(values)
                if index % args.compact_every == 0:
                    with db:
                        db.execute(
                            "DELETE FROM raft_log WHERE log_index <= ?", (index - args.keep,)
                        )
                if n >= args.warm:
                    spent += time.thread_time() - started
                    written += wchar() - wrote
            first = seq - (args.keep - 1) * len(values) + 1  # (values whose log rows are kept)
            started = time.thread_time()
            read = _read(db, layout, first, seq, args.read_batch)
            reading = time.thread_time() - started
            db.close()
    count = (args.saves - args.warm) * args.per_save
    return spent / count * 1e6, written / count, reading / read * 1e6


def _read(db: apsw.Connection, layout: str, first: int, last: int, batch: int) -> int:
    """Read and check the values ``first..last`` in READs of ``batch``; how many were read."""
    place = QUEUE.encode() + b"\0"
    crc = google_crc32c.value
    read = 0
    for start in range(first, last + 1, batch):
        end = min(start + batch - 1, last)
        if layout == "once":
            rows = db.execute(
                "SELECT key, checksum, log_index, at, size FROM queue_data"
                " WHERE key BETWEEN ? AND ?",
                ((1 << 40) + start, (1 << 40) + end),
            ).fetchall()
            blob, open_index = None, None
            out = []
            for key, checksum, log_index, at, size in rows:
                if log_index != open_index:
                    if blob is not None:
                        blob.close()
                    blob = db.blob_open("main", "raft_log", "payload", log_index, False)
                    open_index = log_index
                blob.seek(at)
                data = blob.read(size)
                if crc(b"%b%d\0%b" % (place, key - (1 << 40), data)) != checksum:
                    raise AssertionError("damaged")
                out.append(data)
            if blob is not None:
                blob.close()
        else:
            if layout in ("packed", "v8"):
                rows = db.execute(
                    "SELECT key - 1099511627776, data, checksum FROM queue_data"
                    " WHERE key BETWEEN ? AND ?",
                    ((1 << 40) + start, (1 << 40) + end),
                ).fetchall()
            elif layout == "intkey":
                rows = db.execute(
                    "SELECT sequence_num, data, checksum FROM queue_data"
                    " WHERE queue_number = ? AND sequence_num BETWEEN ? AND ?",
                    (1, start, end),
                ).fetchall()
            else:
                rows = db.execute(
                    "SELECT sequence_num, data, checksum FROM queue_data"
                    " WHERE queue_id = ? AND sequence_num BETWEEN ? AND ?",
                    (QUEUE, start, end),
                ).fetchall()
            out = []
            for seq, data, checksum in rows:
                if crc(b"%b%d\0%b" % (place, seq, data)) != checksum:
                    raise AssertionError("damaged")
                out.append(data)
        if len(out) != end - start + 1:
            raise AssertionError(f"{len(out)} values read of {end - start + 1}")
        read += len(out)
    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-save", type=int, default=1900, help="values per save")
    parser.add_argument("--saves", type=int, default=300)
    parser.add_argument("--warm", type=int, default=30)
    parser.add_argument("--compact-every", type=int, default=64)
    parser.add_argument("--keep", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--read-batch", type=int, default=1000, help="values per READ")
    parser.add_argument("--layouts", default="now,packed,once")
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    for round_ in range(args.rounds):
        figures = []
        for layout in layouts:
            us, written, reading = run(layout, args)
            figures.append(f"{layout} {us:.3f} us {written:.0f} B, read {reading:.3f} us")
        print(f"round {round_ + 1}: " + "; ".join(figures) + " per value", flush=True)


if __name__ == "__main__":
    main()
