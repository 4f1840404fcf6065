"""Values stored through a broker by the checksums made at once (``_storage/_row_sums.py``:
``insert_plain`` for an APPEND_BATCH or a run of APPENDs of one stamp, ``insert_stamped`` for
runs of several) hold exactly the stored definition's checksum (``value_checksum``), across
the thousands where the digits' pieces change; and a value damaged afterwards is found by the
scrub and refused by reads, its neighbours served."""

from __future__ import annotations

import apsw
import orjson
import pytest
import trio

from trio_broker._runtime import open_broker
from trio_broker._runtime._config import BrokerConfig
from trio_broker._storage import DB_FILE, StorageDamaged, Store
from trio_broker._storage._integrity import read_values, value_checksum
from trio_broker._storage._row_sums import plain_checksums

from .wire import RawConnection, create_queue

DEADLINE = 30


async def _fill(port: int, queue_id: str) -> int:
    """Batches up to 990, a batch across 1,000, pipelined APPENDs (one receive: a run),
    then a batch across 2,000; the last sequence number."""
    conn = await RawConnection.open(port)
    try:
        expected = 0
        for size in (330, 330, 330, 30):
            answer = await conn.call(
                {
                    "operation": "APPEND_BATCH",
                    "queue_name": queue_id,
                    "values": [{"v": expected + i + 1} for i in range(size)],
                }
            )
            assert answer["status"] == "success", answer
            assert answer["sequence_nums"][0] == expected + 1
            expected += size
        appends = [
            {"operation": "APPEND", "queue_name": queue_id, "data": {"v": expected + i + 1}}
            for i in range(980)
        ]
        await conn.send(*appends)
        for i in range(len(appends)):
            answer = await conn.receive()
            assert answer is not None and answer["sequence_num"] == expected + i + 1, answer
        expected += len(appends)
        answer = await conn.call(
            {
                "operation": "APPEND_BATCH",
                "queue_name": queue_id,
                "values": [{"v": expected + i + 1} for i in range(40)],
            }
        )
        assert answer["sequence_nums"][0] == expected + 1
        return expected + 40
    finally:
        await conn.aclose()


async def test_stored_checksums_are_the_definitions_and_damage_is_found(ram_path):
    data_dir = ram_path / "b"
    with trio.fail_after(DEADLINE):
        async with open_broker(BrokerConfig(data_dir=data_dir, port=0)) as broker:
            queue_id = await create_queue(broker.port)
            last = await _fill(broker.port, queue_id)
    assert last == 2_040
    (path,) = data_dir.rglob(DB_FILE)
    db = apsw.Connection(str(path))
    try:
        rows = db.execute(
            "SELECT sequence_num, checksum, data, headers FROM queue_data ORDER BY sequence_num"
        ).fetchall()
        assert [r[0] for r in rows] == list(range(1, last + 1))
        assert all(
            checksum == value_checksum(queue_id, seq, data, headers)
            and data == orjson.dumps({"v": seq})
            for seq, checksum, data, headers in rows
        )
        damaged = [999, 1_001, 2_000, 2_002]
        with db:
            for seq in damaged[::2]:  # (its bytes)
                db.execute(
                    "UPDATE queue_data SET data = ? WHERE sequence_num = ?",
                    (orjson.dumps({"v": -seq}), seq),
                )
            for seq in damaged[1::2]:  # (its checksum)
                db.execute(
                    "UPDATE queue_data SET checksum = checksum + 1 WHERE sequence_num = ?", (seq,)
                )
    finally:
        db.close()
    store = Store(path.parent)
    try:
        assert store.damaged_values(("", 0), 10_000) == ([(queue_id, s) for s in damaged], None)
        db = store._db
        for seq in damaged:
            with pytest.raises(StorageDamaged, match=f"seq {seq}"):
                read_values(db, queue_id, seq, seq + 5)
        assert [s for s, _, _ in read_values(db, queue_id, 1, 998)] == list(range(1, 999))
        assert [s for s, _, _ in read_values(db, queue_id, 1_002, 1_999)] == list(
            range(1_002, 2_000)
        )
        assert [s for s, _, _ in read_values(db, queue_id, 1_000, 1_000)] == [1_000]
    finally:
        store.close()


def test_every_digit_boundary_and_the_ends_of_63_bits_are_the_definitions():
    """Runs that cross each power of ten (the number gains a digit: its thousands' piece
    changes length, or the table changes from the first thousand's to the last three's)
    and the ends of a signed 64-bit number, each with values of their own."""
    firsts = [10**k - off for k in range(1, 20) for off in (1, 3, 1_000, 1_001)]
    firsts += [2**63 - 9, 2**63 - 1, 2**63, 2**64 - 2]
    for first in firsts:
        if first < 0:
            continue
        data = [b"%d" % (first + i) for i in range(9)]
        want = [value_checksum("Q-\u00e9", s, d, None) for s, d in enumerate(data, first)]
        assert plain_checksums("Q-\u00e9".encode() + b"\0", first, data) == want, first
