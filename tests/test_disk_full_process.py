"""Full disks with real processes on a small tmpfs (issue 14, item 3): a broker whose disk
fills stays up, refuses writes with ``UNAVAILABLE`` and ``"reason": "disk_full"``, and resumes
by itself once space is freed; a replica on a full disk keeps its place and catches up.

Mounting a tmpfs needs root: these tests skip cleanly otherwise (or when mount fails).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import orjson
import trio

from .processes import NodeProcess, Nodes, free_port, open_nodes
from .test_cluster_process import (
    FAST,
    check_queue,
    eventually,
    must_call,
    query,
    read_all,
    try_call,
    wait_formed,
)
from .test_disk_full import fill, small_tmpfs
from .wire import RawConnection

PAD = "x" * 1000


def big_value(i: int) -> dict[str, Any]:
    return {"i": i, "pad": PAD}


def is_disk_full(answer: dict[str, Any]) -> bool:
    return (
        answer.get("status") == "error"
        and answer.get("code") == "UNAVAILABLE"
        and answer.get("reason") == "disk_full"
    )


async def status_json(port: int) -> dict[str, Any]:
    """The status page's data (``/status.json`` on the metrics port)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /status.json HTTP/1.0\r\nHost: test\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return orjson.loads(body)


async def metrics_text(port: int) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2].decode()


async def appends_until_refused(
    port: int, queue_id: str, *, first: int, limit: int, depth: int = 32
) -> tuple[list[tuple[int, Any]], list[Any], list[Any]]:
    """Pipelined APPENDs of ~1 KB values ``big_value(first..)`` until one is refused (those
    in flight are still answered) or ``limit`` are sent. Returns the acknowledged (seq, value)
    pairs, the values of unknown outcome, and the values refused (checked to be disk_full)."""
    acked: list[tuple[int, Any]] = []
    unknown: list[Any] = []
    refused: list[Any] = []
    conn = await RawConnection.open(port)
    in_flight: deque[Any] = deque()
    sent = 0
    try:
        with trio.fail_after(60):
            while True:
                while sent < limit and len(in_flight) < depth and not (unknown or refused):
                    value = big_value(first + sent)
                    await conn.send({"operation": "APPEND", "queue_name": queue_id, "data": value})
                    in_flight.append(value)
                    sent += 1
                if not in_flight:
                    break
                answer = await conn.receive()
                assert answer is not None, "the broker closed the connection"
                value = in_flight.popleft()
                if answer["status"] == "success":
                    acked.append((answer["sequence_num"], value))
                    continue
                assert is_disk_full(answer), answer
                (unknown if answer.get("outcome") == "unknown" else refused).append(value)
    finally:
        await trio.aclose_forcefully(conn.stream)
    return acked, unknown, refused


async def test_a_single_broker_on_a_full_disk_stays_up_refuses_writes_and_resumes(tmp_path):
    """The issue's case: no reserve (``--min-free-mb 0``), the disk fills under pipelined
    appends. The broker answers every request (outcome unknown for those in flight, refused
    after), stays up and leading, says so on its status page and metrics, and resumes by
    itself once space is freed, with every acknowledged value still readable."""
    with small_tmpfs(tmp_path / "disk", 32) as disk:
        async with open_nodes(tmp_path / "nodes") as nodes:
            with trio.fail_after(45):
                metrics = free_port()
                node = await nodes.start(
                    disk / "data", extra_args=["--min-free-mb", "0", "--metrics-port", str(metrics)]
                )
                queue_id = (await must_call(node.port, {"operation": "CREATE_QUEUE"}))["queue_id"]
                acked, unknown, refused = await appends_until_refused(
                    node.port, queue_id, first=0, limit=200
                )
                assert len(acked) == 200 and not unknown and not refused

                pad = fill(disk)
                more, unknown, refused = await appends_until_refused(
                    node.port, queue_id, first=200, limit=30_000
                )
                acked += more
                assert unknown or refused, "30 MB of appends to a full 32 MiB disk all succeeded"
                await eventually(lambda: "disk.full" in node.stderr_text(), 5, "no disk.full log")
                await trio.sleep(2)  # it used to exit within a second
                assert node.running, node.describe()
                topology = await must_call(node.port, {"operation": "CLUSTER_QUERY"})
                assert topology["self_role"] == "leader"
                read = {"operation": "READ", "queue_name": queue_id, "client_id": "C-FULL1"}
                answer = await try_call(node.port, read)
                assert answer is not None and is_disk_full(answer), answer  # a READ writes
                status = await status_json(metrics)
                assert status["broker"]["disk"] == "full", status["broker"]
                assert "trio_broker_disk_full{" in await metrics_text(metrics)
                assert 'trio_broker_disk_full{broker_id="' + node.broker_id in (
                    await metrics_text(metrics)
                )
                assert any(
                    line.startswith("trio_broker_disk_full{") and line.endswith(" 1.0")
                    for line in (await metrics_text(metrics)).splitlines()
                )

                pad.unlink()
                after: list[tuple[int, Any]] = []

                async def resumed() -> bool:
                    value = big_value(100_000 + len(after))
                    request = {"operation": "APPEND", "queue_name": queue_id, "data": value}
                    answer = await try_call(node.port, request)
                    if answer is not None and answer["status"] == "success":
                        after.append((answer["sequence_num"], value))
                        return True
                    assert answer is None or is_disk_full(answer), answer
                    return False

                with trio.fail_after(15):
                    while not await resumed():  # noqa: ASYNC110 (polls the broker)
                        await trio.sleep(0.2)
                acked += after
                await eventually(
                    lambda: "disk.space_recovered" in node.stderr_text(), 5, "no recovery log"
                )
                assert (await status_json(metrics))["broker"]["disk"] == "ok"
                stored = await read_all(node.port, queue_id, "C-CHECK")
                check_queue(stored, acked, indeterminate=unknown)
                assert node.running
                assert "driver.crashed" not in node.stderr_text()


async def test_the_reserve_refuses_appends_on_a_real_disk_and_serves_reads(tmp_path):
    """With less free space than ``--min-free-mb``, APPEND is refused (nothing applied) and
    READ still works; freeing space lets appends in again."""
    with small_tmpfs(tmp_path / "disk", 16) as disk:
        async with open_nodes(tmp_path / "nodes") as nodes:
            with trio.fail_after(30):
                node = await nodes.start(disk / "data", extra_args=["--min-free-mb", "4"])
                queue_id = (await must_call(node.port, {"operation": "CREATE_QUEUE"}))["queue_id"]
                append = {"operation": "APPEND", "queue_name": queue_id, "data": "kept"}
                assert (await must_call(node.port, append))["sequence_num"] == 1
                pad = fill(disk, leave=2 * 1024 * 1024)
                refused, kept = None, 1
                with trio.fail_after(5):  # until the next measure (once a second)
                    while refused is None:
                        answer = await try_call(node.port, append)
                        assert answer is not None
                        if answer["status"] == "error":
                            refused = answer
                        else:
                            kept += 1
                            await trio.sleep(0.2)
                assert is_disk_full(refused) and "outcome" not in refused, refused
                assert refused["min_free_bytes"] == 4 * 1024 * 1024
                assert refused["free_bytes"] < refused["min_free_bytes"]
                assert "reserve" in refused["message"]
                read = {"operation": "READ", "queue_name": queue_id, "client_id": "C-RDR01"}
                assert (await must_call(node.port, read))["data"] == "kept"
                pad.unlink()
                with trio.fail_after(5):
                    while (answer := await try_call(node.port, append))["status"] != "success":
                        assert is_disk_full(answer), answer
                        await trio.sleep(0.2)
                stored = await read_all(node.port, queue_id, "C-CHECK")
                assert [v for _, v in stored] == ["kept"] * (kept + 1)
                assert "disk.space_recovered" in node.stderr_text()


async def lag_of(leader: NodeProcess, broker_id: str) -> tuple[int | None, str | None]:
    answer = await query_details(leader.port)
    for broker in answer["brokers"]:
        if broker["broker_id"] == broker_id:
            return broker.get("lag"), broker.get("status")
    raise AssertionError(f"{broker_id} is not a member any more: {answer}")


async def query_details(port: int) -> dict[str, Any]:
    return await must_call(port, {"operation": "CLUSTER_QUERY", "details": True})


def metrics_port(node: NodeProcess) -> int:
    return int(node.extra_args[node.extra_args.index("--metrics-port") + 1])


async def start_three(nodes: Nodes, tmp_path: Path, full_dir: Path) -> list[NodeProcess]:
    """b1 founds the cluster (it leads), b2 and then b3 (data on ``full_dir``) join."""
    started = []
    for data_dir in (tmp_path / "b1", tmp_path / "b2", full_dir):
        seeds = started[:1]
        flags = [*FAST, "--metrics-port", str(free_port())]
        started.append(await nodes.start_member(data_dir, seeds=seeds, extra_args=flags))
    await wait_formed(started, members=3, version=5)
    return started


async def test_a_replica_on_a_full_disk_keeps_its_place_and_catches_up(tmp_path):
    """The replica does not exit and acknowledges nothing it could not persist (the leader
    sees it lag, yet active and a member); the leader commits with the other replica; once
    space is freed the replica catches up and holds every acknowledged value."""
    with small_tmpfs(tmp_path / "disk", 24) as disk:
        async with open_nodes(tmp_path / "nodes") as nodes:
            with trio.fail_after(50):
                leader, _other, replica = await start_three(nodes, tmp_path, disk / "b3")
                assert (await query(leader.port))["self_role"] == "leader"
                queue_id = (await must_call(leader.port, {"operation": "CREATE_QUEUE"}))["queue_id"]
                pad = fill(disk)
                acked: list[tuple[int, Any]] = []
                replica_metrics = metrics_port(replica)
                for _ in range(40):  # bounded: ~20 MB at most
                    # "full": a write failed (the reserve alone does not stop a replica).
                    if (await status_json(replica_metrics))["broker"]["disk"] == "full":
                        break
                    more, unknown, refused = await appends_until_refused(
                        leader.port, queue_id, first=len(acked), limit=500
                    )
                    assert not unknown and not refused, (unknown[:1], refused[:1])
                    acked += more
                assert (await status_json(replica_metrics))["broker"]["disk"] == "full", (
                    f"no write failed on the replica after {len(acked)} appends"
                )
                more, unknown, refused = await appends_until_refused(
                    leader.port, queue_id, first=len(acked), limit=300
                )
                assert not unknown and not refused
                acked += more
                await trio.sleep(1)
                assert replica.running, replica.describe()
                lag, status = await lag_of(leader, replica.broker_id)
                assert status == "active" and lag is not None and lag > 0, (lag, status)
                assert (await query(replica.port))["self_role"] == "replica"

                pad.unlink()

                async def caught_up() -> bool:
                    lag, _ = await lag_of(leader, replica.broker_id)
                    return lag == 0

                with trio.fail_after(20):
                    while not await caught_up():  # noqa: ASYNC110 (polls the leader)
                        await trio.sleep(0.1)
                await eventually(
                    lambda: "disk.space_recovered" in replica.stderr_text(), 5, "no recovery log"
                )
                stored = await read_all(leader.port, queue_id, "C-CHECK")
                check_queue(stored, acked)
                assert len(stored) == len(acked)
                assert replica.running and "driver.crashed" not in replica.stderr_text()

                # And the replica holds all of it itself: its own store, once it has applied
                # what the leader has and is stopped.
                target = (await status_json(metrics_port(leader)))["broker"]["applied_index"]
                with trio.fail_after(10):
                    while True:
                        mine = (await status_json(metrics_port(replica)))["broker"]
                        if mine["applied_index"] >= target:
                            break
                        await trio.sleep(0.1)
                replica.terminate()
                assert await replica.wait() == 0, replica.describe()
        from trio_broker._storage import Store

        store = Store(disk / "b3")
        try:
            held = [orjson.loads(v) for v in store.messages(queue_id)]
            state = store.raft_state()
        finally:
            store.close()
        assert held == [v for _, v in sorted(acked)], (len(held), len(acked))
        # Its term and vote are those it ran with: nothing it promised was lost.
        assert (state.hard_state.term, state.applied) == (mine["term"], mine["applied_index"])


async def test_a_node_that_cannot_start_on_a_full_disk_says_so(tmp_path):
    """SQLite cannot open its database without room for the ``-wal`` and ``-shm`` files: the
    node says what to do in one line, not with a traceback, and exits 1."""
    with small_tmpfs(tmp_path / "disk", 8) as disk:
        async with open_nodes(tmp_path / "nodes") as nodes:
            with trio.fail_after(30):
                node = await nodes.start(disk / "data")
                node.terminate()
                assert await node.wait() == 0, node.describe()
                # (a clean stop keeps the WAL and its index, whose room lets a start write:
                # without them, as an older version leaves the folder, SQLite needs new room)
                for kept in ("broker.sqlite3-wal", "broker.sqlite3-shm"):
                    (disk / "data" / kept).unlink()
                pad = fill(disk)
                again = await nodes.start(disk / "data", port=node.port, wait_ready=False)
                assert await again.wait() == 1, again.describe()
                stderr = again.stderr_text()
                assert "its filesystem is full" in stderr and "free some space" in stderr, stderr
                assert "Traceback" not in stderr, stderr
                pad.unlink()
                back = await nodes.start(disk / "data", port=node.port)
                assert back.broker_id == node.broker_id
