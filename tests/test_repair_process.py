"""Damaged stored values repaired from the other brokers, under real broker processes
(docs/reliability.md, "Repairing damaged values"): bytes flipped in a stopped broker's
``queue_data`` pages; restarted, as a replica and as the leader, it finds them (the start-up
scrub), repairs them from a peer, and every value read, from it or from another, is the one
acknowledged. The byte flipping is ``test_integrity_process.py``'s."""

from __future__ import annotations

import re
from pathlib import Path

import apsw
import pytest
import trio

from trio_broker._storage import DB_FILE
from trio_broker._storage._integrity import read_values

from .processes import NodeProcess, Nodes
from .test_cluster_process import must_call, start_cluster, wait_formed
from .test_integrity_process import (
    _append_all,
    _assert_nothing_altered,
    _lag,
    _offset_in_queue_data,
    _read_everything,
    _stored_length,
    nodes,  # noqa: F401 (the fixture)
    wait_stored,
)
from .wire import create_queue

DAMAGED = (7, 123, 150)


def _flip_values(data_dir: Path, seqs: tuple[int, ...]) -> None:
    """One bit of each value's bytes in ``queue_data``'s pages (never the log's copy)."""
    raw = bytearray((data_dir / DB_FILE).read_bytes())
    for seq in seqs:
        at = _offset_in_queue_data(data_dir, raw, f"value-{seq - 1:05d}-".encode())
        raw[at + 4] ^= 0x01
    (data_dir / DB_FILE).write_bytes(bytes(raw))


def _intact_on_disk(data_dir: Path, queue_id: str, length: int) -> bool:
    db = apsw.Connection(str(data_dir / DB_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return len(read_values(db, queue_id, 1, length)) == length  # (raises on damage)
    finally:
        db.close()


async def _wait_repaired(node: NodeProcess, count: int) -> None:
    with trio.fail_after(20):
        while True:
            text = node.stderr_text()
            found = len(re.findall(r"storage\.damaged", text))
            if found >= count and "storage.repaired" in text:
                return
            await trio.sleep(0.1)


@pytest.mark.parametrize("role", ["replica", "leader"])
async def test_values_flipped_on_a_stopped_broker_are_repaired_from_a_peer(
    nodes: Nodes,  # noqa: F811
    tmp_path,
    role,
):
    started = await start_cluster(nodes, tmp_path)
    leader = started[0]
    queue_id = await create_queue(leader.port)
    acked = await _append_all(leader.port, queue_id, 200)
    index = 0 if role == "leader" else 2
    damaged = started[index]
    with trio.fail_after(20):  # every broker holds every entry, and has heard they committed
        for other in started[1:]:
            while True:
                if await _lag(leader.port, other.broker_id) == 0:
                    break
                await trio.sleep(0.1)
        await wait_stored(started, queue_id, len(acked))  # (a fixed 1 s wait before)
    damaged.terminate()  # (a leader hands over first)
    assert await damaged.wait() == 0
    assert _stored_length(damaged.data_dir, queue_id) == len(acked)
    _flip_values(damaged.data_dir, DAMAGED)
    assert not _intact_on_disk_or_false(damaged.data_dir, queue_id, len(acked))

    damaged = await nodes.restart_same(damaged)
    started[index] = damaged
    current = await wait_formed(started, members=3)
    # Its start-up scrub found every flipped value (one ERROR line each) and repaired them.
    await _wait_repaired(damaged, len(DAMAGED))
    lines = [ln for ln in damaged.stderr_text().splitlines() if "storage.damaged" in ln]
    assert len(lines) == len(DAMAGED), lines
    for seq in DAMAGED:
        assert any(f"seq={seq} " in ln and "ERROR" in ln for ln in lines), lines
    if role == "replica":
        # Read through the leader: the damaged broker applies every READ, as the others do.
        served, errors = await _read_everything(current.port, queue_id, len(acked))
        assert not errors and served.keys() == acked.keys()
        _assert_nothing_altered(served, acked)
    # Led by the broker whose values were damaged: every value served, each the one acknowledged.
    if current is not damaged:
        await must_call(
            damaged.port, {"operation": "TRANSFER_LEADERSHIP", "broker_id": damaged.broker_id}
        )
    served, errors = await _read_everything(damaged.port, queue_id, len(acked), "C-CHECKER2")
    assert not errors, errors
    assert served.keys() == acked.keys()
    _assert_nothing_altered(served, acked)
    assert damaged.running and "driver.crashed" not in damaged.stderr_text()
    damaged.terminate()
    assert await damaged.wait() == 0
    assert _intact_on_disk(damaged.data_dir, queue_id, len(acked))


def _intact_on_disk_or_false(data_dir: Path, queue_id: str, length: int) -> bool:
    try:
        return _intact_on_disk(data_dir, queue_id, length)
    except Exception:
        return False
