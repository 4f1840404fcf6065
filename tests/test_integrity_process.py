"""Damaged data under a real broker process (docs/reliability.md, "Damaged data"): bytes flipped
in a stopped broker's ``queue_data`` pages, WAL frames cut, a file that is not a database.
Whatever happens, no value read is other than the one acknowledged: the broker answers an
error instead, or refuses to start with a report that says what to do."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import apsw
import orjson
import pytest
import trio

from trio_broker._storage import DB_FILE

from .processes import NodeFailed, NodeProcess, Nodes, open_nodes
from .test_cluster_process import must_call, start_cluster, wait_formed
from .test_wal12_kept import valid_frames
from .wire import RawConnection, call, create_queue

PAGE = 4096
WAL_HEADER = 32
WAL_FRAME = 24 + PAGE


@pytest.fixture
async def nodes(tmp_path: Path):
    async with open_nodes(tmp_path) as nodes:
        yield nodes


def _value(i: int) -> Any:
    return {"n": i, "text": f"value-{i:05d}-" + "payload " * 100}  # ~0.8 KB each


async def _append_all(port: int, queue_id: str, count: int) -> dict[int, Any]:
    """Append ``count`` values, pipelined; every one must be acknowledged. seq -> value."""
    conn = await RawConnection.open(port)
    acked: dict[int, Any] = {}
    try:
        with trio.fail_after(30):
            for start in range(0, count, 50):
                batch = range(start, min(count, start + 50))
                await conn.send(
                    *[
                        {"operation": "APPEND", "queue_name": queue_id, "data": _value(i)}
                        for i in batch
                    ]
                )
                for i in batch:
                    response = await conn.receive()
                    assert response is not None and response["status"] == "success", response
                    acked[response["sequence_num"]] = _value(i)
    finally:
        await conn.aclose()
    return acked


async def _read_everything(
    port: int, queue_id: str, length: int, client: str = "C-CHECKER1"
) -> tuple[dict[int, Any], list[dict[str, Any]]]:
    """Read every message 1..length, one READ at a time, seeking past each one refused:
    (seq -> value served, the error answers)."""
    served: dict[int, Any] = {}
    errors: list[dict[str, Any]] = []
    conn = await RawConnection.open(port)
    try:
        with trio.fail_after(60):
            seq = 1
            while seq <= length:
                response = await conn.call(
                    {"operation": "READ", "queue_name": queue_id, "client_id": client}
                )
                if response["status"] == "success" and "sequence_num" in response:
                    assert response["sequence_num"] >= seq, response
                    served[response["sequence_num"]] = response["data"]
                    seq = response["sequence_num"] + 1
                    continue
                if response["status"] == "success":  # no_messages: nothing more is held
                    break
                errors.append(response)
                seq += 1
                sought = await conn.call(
                    {
                        "operation": "SEEK",
                        "queue_name": queue_id,
                        "client_id": client,
                        "next_sequence_num": seq,
                    }
                )
                assert sought["status"] == "success", sought
    finally:
        await conn.aclose()
    return served, errors


def _same(a: Any, b: Any) -> bool:
    return orjson.dumps(a) == orjson.dumps(b)


def _assert_nothing_altered(served: dict[int, Any], acked: dict[int, Any]) -> None:
    for seq, value in served.items():
        assert seq in acked, f"seq {seq} was never acknowledged: {value!r}"
        assert _same(value, acked[seq]), f"seq {seq} was served altered: {value!r}"


async def _single_broker_with_values(
    nodes: Nodes, data_dir: Path, count: int
) -> tuple[NodeProcess, str, dict[int, Any]]:
    node = await nodes.start(data_dir)
    queue_id = await create_queue(node.port)
    acked = await _append_all(node.port, queue_id, count)
    return node, queue_id, acked


def _queue_data_pages(data_dir: Path) -> list[int]:
    """The leaf pages of queue_data (where the values are) in a stopped broker's file."""
    db = apsw.Connection(str(data_dir / DB_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [
            p
            for (p,) in db.execute(
                "SELECT pageno FROM dbstat WHERE name = 'queue_data' AND pagetype = 'leaf'"
            )
        ]
    finally:
        db.close()


def _offset_in_queue_data(data_dir: Path, raw: bytes, marker: bytes) -> int:
    """Where ``marker`` is in queue_data's pages (the log holds the same bytes elsewhere)."""
    pages = set(_queue_data_pages(data_dir))
    found = []
    at = raw.find(marker)
    while at >= 0:
        if at // PAGE + 1 in pages:
            found.append(at)
        at = raw.find(marker, at + 1)
    assert len(found) == 1, found
    return found[0]


async def test_a_value_flipped_on_disk_is_refused_and_the_rest_is_served(nodes: Nodes, tmp_path):
    data_dir = tmp_path / "data"
    node, queue_id, acked = await _single_broker_with_values(nodes, data_dir, 300)
    node.terminate()
    assert await node.wait() == 0
    # checkpointed at the clean stop: the WAL it keeps holds one frame, the first page's copy
    assert valid_frames(data_dir / (DB_FILE + "-wal")) == 1
    raw = bytearray((data_dir / DB_FILE).read_bytes())
    at = _offset_in_queue_data(data_dir, raw, b"value-00123-")
    raw[at + 4] ^= 0x01  # one bit: "value" -> "valud"
    (data_dir / DB_FILE).write_bytes(bytes(raw))

    node = await nodes.restart(node)
    served, errors = await _read_everything(node.port, queue_id, len(acked))
    _assert_nothing_altered(served, acked)
    assert set(served) == set(acked) - {124}  # seq 124 holds value 123 (values count from 0)
    (error,) = errors
    assert error["code"] == "UNAVAILABLE", error
    assert "queue_data" in error["message"] and "seq 124" in error["message"], error
    assert node.running
    health = await call(node.port, {"operation": "CLUSTER_QUERY"})
    assert health["status"] == "success"
    node.terminate()
    await node.wait()
    assert "storage.damaged" in node.stderr_text()
    assert "Traceback" not in node.stderr_text()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_flips_in_queue_data_pages_never_serve_an_altered_value(
    nodes: Nodes, tmp_path, seed
):
    """As the issue's reproduction did: 8 pages x 16 bytes flipped in queue_data's pages."""
    data_dir = tmp_path / "data"
    node, queue_id, acked = await _single_broker_with_values(nodes, data_dir, 300)
    node.terminate()
    assert await node.wait() == 0
    rng = random.Random(seed)
    pages = _queue_data_pages(data_dir)
    raw = bytearray((data_dir / DB_FILE).read_bytes())
    for page in rng.sample(pages, 8):
        start = (page - 1) * PAGE
        offset = rng.randrange(start, start + PAGE - 16)
        for k in range(16):
            raw[offset + k] ^= rng.randrange(1, 256)
    (data_dir / DB_FILE).write_bytes(bytes(raw))

    node = await nodes.start(data_dir, port=node.port, wait_ready=False)
    try:
        await node.wait_ready()
    except NodeFailed:  # refused to start: it must say why and what to do, without a traceback
        assert await node.wait() == 1, node.describe()
        stderr = node.stderr_text()
        assert str(data_dir / DB_FILE) in stderr and "data reset" in stderr, stderr
        assert "Traceback" not in stderr, stderr
        return
    served, errors = await _read_everything(node.port, queue_id, len(acked))
    _assert_nothing_altered(served, acked)
    assert errors, "8 pages of values were damaged and every value read back intact"
    for error in errors:
        assert error["status"] == "error", error
    assert node.running, node.describe()


@pytest.mark.parametrize("cut_frames", [1, 7, 40])
async def test_wal_frames_cut_never_serve_an_altered_value(nodes: Nodes, tmp_path, cut_frames):
    """A broker killed with its WAL holding recent commits loses the last frames (and a torn
    one): it restarts on what is left, and serves only values as they were acknowledged."""
    data_dir = tmp_path / "data"
    node, queue_id, acked = await _single_broker_with_values(nodes, data_dir, 120)
    node.kill()
    await node.wait()
    wal = data_dir / (DB_FILE + "-wal")
    size = wal.stat().st_size
    frames = (size - WAL_HEADER) // WAL_FRAME
    assert frames > cut_frames, frames
    keep = WAL_HEADER + (frames - cut_frames) * WAL_FRAME + WAL_FRAME // 3  # and a torn frame
    os.truncate(wal, keep)

    node = await nodes.restart(node)
    served, errors = await _read_everything(node.port, queue_id, len(acked))
    _assert_nothing_altered(served, acked)
    assert not errors, errors  # whole commits are lost, none is damaged
    # What is left is a prefix of what was acknowledged (a single broker had no other copy).
    assert sorted(served) == list(range(1, len(served) + 1))


async def test_a_damaged_log_entry_stops_the_start_with_a_report(nodes: Nodes, tmp_path):
    data_dir = tmp_path / "data"
    node, _, _ = await _single_broker_with_values(nodes, data_dir, 50)
    node.terminate()
    assert await node.wait() == 0
    raw = bytearray((data_dir / DB_FILE).read_bytes())
    in_values = _offset_in_queue_data(data_dir, raw, b"value-00033-")
    at = raw.find(b"value-00033-")
    if at == in_values:
        at = raw.find(b"value-00033-", at + 1)
    assert at >= 0 and at != in_values  # the log's copy of the entry
    raw[at + 4] ^= 0x01
    (data_dir / DB_FILE).write_bytes(bytes(raw))

    failed = await nodes.start(data_dir, port=node.port, wait_ready=False)
    assert await failed.wait() == 1, failed.describe()
    stderr = failed.stderr_text()
    assert "table raft_log" in stderr and "does not match its checksum" in stderr, stderr
    assert "data reset" in stderr and "Traceback" not in stderr, stderr


async def test_a_broker_whose_file_is_not_a_database_says_what_to_do(nodes: Nodes, tmp_path):
    data_dir = tmp_path / "data"
    node, _, _ = await _single_broker_with_values(nodes, data_dir, 5)
    node.terminate()
    assert await node.wait() == 0
    # (the WAL a clean stop keeps holds a copy of the first page, which SQLite would read
    # instead of the file's: the file alone is what is checked here)
    (data_dir / (DB_FILE + "-wal")).unlink()
    raw = (data_dir / DB_FILE).read_bytes()
    (data_dir / DB_FILE).write_bytes(b"this is no database at all" + raw[26:])

    failed = await nodes.start(data_dir, port=node.port, wait_ready=False)
    assert await failed.wait() == 1, failed.describe()
    stderr = failed.stderr_text()
    assert str(data_dir / DB_FILE) in stderr, stderr
    assert "found:" in stderr and "backup" in stderr, stderr
    assert f"data reset --data-dir {data_dir}" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert failed.stdout_text() == ""

    # The command the report names: the files go aside (kept), the broker starts empty.
    with trio.fail_after(30):
        reset = await trio.run_process(
            [sys.executable, "-m", "trio_broker", "data", "reset", "--data-dir", str(data_dir)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert reset.returncode == 0, reset.stderr
    (aside,) = data_dir.glob("damaged-*")
    assert (aside / DB_FILE).read_bytes().startswith(b"this is no database at all")
    fresh = await nodes.start(data_dir, port=node.port)
    assert fresh.cluster_id != node.cluster_id  # a new, empty broker: nothing was guessed


async def test_a_replica_with_a_flipped_value_never_serves_it_and_repairs_it(
    nodes: Nodes, tmp_path
):
    started = await start_cluster(nodes, tmp_path)
    leader, damaged = started[0], started[2]
    queue_id = await create_queue(leader.port)
    acked = await _append_all(leader.port, queue_id, 200)
    with trio.fail_after(20):  # the replica holds every entry, and has heard they committed
        while True:
            if await _lag(leader.port, damaged.broker_id) == 0:
                break
            await trio.sleep(0.1)
        await wait_stored([damaged], queue_id, len(acked))  # (a fixed 1 s wait before)
    damaged.terminate()
    assert await damaged.wait() == 0
    assert _stored_length(damaged.data_dir, queue_id) == len(acked)
    raw = bytearray((damaged.data_dir / DB_FILE).read_bytes())
    at = _offset_in_queue_data(damaged.data_dir, raw, b"value-00123-")
    raw[at + 4] ^= 0x01
    (damaged.data_dir / DB_FILE).write_bytes(bytes(raw))

    damaged = await nodes.restart_same(damaged)
    started[2] = damaged
    await wait_formed(started, members=3)
    # As a replica: the leader serves every value; the replica found the damage at start (its
    # scrub) and repaired seq 124 from a peer (docs/reliability.md, "Repairing damaged values").
    served, errors = await _read_everything(leader.port, queue_id, len(acked))
    assert not errors and served.keys() == acked.keys()
    _assert_nothing_altered(served, acked)
    # As the leader: everything, seq 124 as acknowledged.
    await must_call(
        damaged.port, {"operation": "TRANSFER_LEADERSHIP", "broker_id": damaged.broker_id}
    )
    served, errors = await _read_everything(damaged.port, queue_id, len(acked), "C-CHECKER2")
    _assert_nothing_altered(served, acked)
    assert not errors and set(served) == set(acked)
    assert damaged.running and "storage.damaged" in damaged.stderr_text()
    assert "storage.repaired" in damaged.stderr_text()


async def _lag(port: int, broker_id: str) -> int | None:
    answer = await call(port, {"operation": "CLUSTER_QUERY", "details": True})
    for broker in answer.get("brokers", []):
        if broker["broker_id"] == broker_id:
            return broker.get("lag")
    return None


async def wait_stored(live: list[NodeProcess], queue_id: str, count: int) -> None:
    """Until each of the ``live`` nodes has applied ``count`` messages of ``queue_id``: it
    holds them and has heard that they committed. (Read from their files, read-only, in a
    worker thread: SQLite's WAL lets another process read beside the broker's writer.)"""
    while True:
        stored = [
            await trio.to_thread.run_sync(_stored_length_or_none, node.data_dir, queue_id)
            for node in live
        ]
        if all(n == count for n in stored):
            return
        await trio.sleep(0.05)


def _stored_length_or_none(data_dir: Path, queue_id: str) -> int | None:
    try:
        return _stored_length(data_dir, queue_id)
    except apsw.Error:  # (busy, or not created yet)
        return None


def _stored_length(data_dir: Path, queue_id: str) -> int:
    db = apsw.Connection(str(data_dir / DB_FILE), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        (n,) = db.execute(
            "SELECT count(*) FROM queue_data WHERE queue_number = (SELECT queue_number"
            " FROM queues WHERE queue_id = ?)",
            (queue_id,),
        ).fetchone()
        return n
    finally:
        db.close()
