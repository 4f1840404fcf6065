"""What the upgrade to the current schema version costs: ``python -m benchmarks.schema_upgrade
[N] [FROM]``.

Builds a database of version ``FROM`` (7, the default, or 6) with that version's definitions
(``_schema.upgrade(db, to=FROM)``) holding ``N`` 100-byte messages (default 1,000,000) over 10
queues, each row with its checksum, then
opens it as a broker does (``Store``, which runs ``_schema.upgrade`` at its first start) and
prints the CPU the upgrade took (the process's user and system time, the store's opening
checks included), its wall time, and the file's size before and after and at its largest
(what docs/operations.md, "Upgrade one broker at a time", tells an operator to expect).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import apsw

from trio_broker._storage._integrity import value_checksum
from trio_broker._storage._schema import SCHEMA_VERSION, upgrade
from trio_broker._storage._store import Store

QUEUES = 10
VALUE = b'"' + b"x" * 98 + b'"'


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


BUILT = (6, 7)
"""The versions :func:`build` writes."""


def build(folder: Path, count: int, version: int) -> None:
    """A database of schema ``version`` (6 or 7, its own definitions: ``upgrade(db,
    to=version)``) in ``folder``, ``count`` messages over :data:`QUEUES` queues, each row with
    its checksum. The two versions differ only in how a row names its queue: version 6 by its
    id, version 7 by the queue's number (``queues.queue_number``, 1 to 10 here)."""
    if version not in BUILT:
        raise ValueError(f"builds versions {BUILT}, not {version}")
    numbered = version == 7
    db = apsw.Connection(str(folder / "broker.sqlite3"))
    upgrade(db, to=version)
    with db:
        db.execute("INSERT INTO meta VALUES ('broker_id', 'B-BENCH'), ('cluster_id', 'G-BENCH')")
        per_queue = -(-count // QUEUES)
        for q in range(QUEUES):
            queue_id = f"Q-BENCH{q:05d}"
            length = min(per_queue, count - q * per_queue)
            if numbered:
                db.execute(
                    "INSERT INTO queues (queue_id, length, queue_number) VALUES (?, ?, ?)",
                    (queue_id, length, q + 1),
                )
            else:
                db.execute(
                    "INSERT INTO queues (queue_id, length) VALUES (?, ?)", (queue_id, length)
                )
            key: int | str = q + 1 if numbered else queue_id
            db.executemany(
                f"INSERT INTO queue_data ({'queue_number' if numbered else 'queue_id'},"
                " sequence_num, appended_ms, headers, checksum, data) VALUES (?, ?, ?, NULL, ?, ?)",
                (
                    (key, seq, 1000 + seq, value_checksum(queue_id, seq, VALUE, None), VALUE)
                    for seq in range(1, length + 1)
                ),
            )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def main(count: int, version: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        build(folder, count, version)
        before = _size(folder)
        cpu, wall = _cpu(), time.perf_counter()
        store = Store(folder)
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
        largest = _size(folder)
        store.close()
        after = _size(folder)
    print(
        f"{count:,} messages: upgrade from version {version} to {SCHEMA_VERSION} took"
        f" {cpu:.2f} s of CPU ({wall:.2f} s wall);"
        f" files {before / 1e6:.0f} MB before, {largest / 1e6:.0f} MB at the upgrade's end"
        f" (WAL included), {after / 1e6:.0f} MB after closing"
    )


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000,
        int(sys.argv[2]) if len(sys.argv) > 2 else 7,
    )
