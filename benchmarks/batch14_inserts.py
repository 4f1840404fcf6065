"""The rows' insert of a batch append's values, each row's key bound or computed by SQLite:
``python -m benchmarks.batch14_inserts``.

``insert_plain`` as it is (the statement's first key bound once, each row's key that plus its
place in the statement: ``_integrity._PLAIN_STATEMENTS``) against its form before (each row's
key bound: :func:`_bound_keys`, written out here), on a run of the bench's batch appends: two
stretches of ``--values`` values of 100 bytes, one stamp each, numbered from 1,000,001, in a
transaction rolled back (a store in a temporary folder). Thread CPU (``time.thread_time_ns``)
per row, the two alternated within each of ``--rounds`` rounds; the median and lowest of each.
Both store the same rows (checked before timing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import apsw

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._protocol._codec import dumps_value
from trio_broker._storage import _integrity
from trio_broker._storage._row_sums import plain_checksums
from trio_broker._storage._store import Store

QUEUE = "Q-0123456789abcdef"
STAMP = 1_765_000_000_000

_BOUND = {
    size: _integrity._INSERT
    + ",".join(f"(?{2 + 3 * k},?1,NULL,?{3 + 3 * k},?{4 + 3 * k})" for k in range(size))
    for size in _integrity._CHUNKS
}


def _bound_keys(
    db: apsw.Connection, queue_id: str, first: int, data: Sequence[bytes], stamp: int, number: int
) -> None:
    """``insert_plain`` before: each row binds its key, checksum and bytes."""
    base = _integrity._base(db, queue_id, number) + first
    count = len(data)
    rows: list[Any] = [None] * (3 * count)
    rows[0::3] = range(base, base + count)
    rows[1::3] = plain_checksums(_integrity._place(queue_id), first, data)
    rows[2::3] = data
    for start, end in _integrity._chunk_spans(count):
        params: list[Any] = [stamp]
        params += rows[3 * start : 3 * end]
        db.execute(_BOUND[end - start], params)


def _computed_keys(
    db: apsw.Connection, queue_id: str, first: int, data: Sequence[bytes], stamp: int, number: int
) -> None:
    _integrity.insert_plain(db, queue_id, first, data, stamp, number=number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=950, help="values per stretch")
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        store = Store(directory)
        try:
            create = rm.Entry(1, 1, cmd.CreateQueue(QUEUE))
            store.save(entries=[create], hard_state=rm.HardState(1, None, 0))
            store.save(committed=[create], hard_state=rm.HardState(1, None, 1))
            db = store._db
            (number,) = db.execute(
                "SELECT queue_number FROM queues WHERE queue_id = ?", (QUEUE,)
            ).fetchone()
            data = [dumps_value(f"{n:04d}-" + "x" * 92) for n in range(args.values)]
            forms = {"keys bound (before)": _bound_keys, "keys computed": _computed_keys}
            stored = []
            for insert in forms.values():
                db.execute("BEGIN")
                insert(db, QUEUE, 1_000_001, data, STAMP, number)
                stored.append(db.execute("SELECT * FROM queue_data ORDER BY key").fetchall())
                db.execute("ROLLBACK")
            if stored[0] != stored[1]:
                raise SystemExit("the two forms store different rows")
            spent: dict[str, list[float]] = {name: [] for name in forms}
            rows = 2 * args.values
            for _ in range(args.rounds):
                for name, insert in forms.items():
                    db.execute("BEGIN")
                    began = time.thread_time_ns()
                    insert(db, QUEUE, 1_000_001, data, STAMP, number)
                    insert(db, QUEUE, 1_000_001 + args.values, data, STAMP + 1, number)
                    spent[name].append((time.thread_time_ns() - began) / rows)
                    db.execute("ROLLBACK")
        finally:
            store.close()
    print(f"thread CPU per row of {rows}, median (lowest) of {args.rounds} rounds")
    for name, figures in spent.items():
        print(f"  {name:22} {statistics.median(figures):6.0f} ns ({min(figures):.0f})")


if __name__ == "__main__":
    main()
