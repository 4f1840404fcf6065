"""A group cut by the task that proposes (docs/performance.md, "100 connections: the cycle"):
once SPLIT_AT proposals are queued in one batch of tasks while the driver waits for work,
the proposing task turns them into entries and starts their durable transaction on the
storage thread, and the rest of the batch's requests form the next group. Orders and
counts, never timings."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import trio

from trio_broker._runtime._in_step import SPLIT_AT
from trio_broker.testing import open_local_cluster

CONNECTIONS = SPLIT_AT + 16


async def _answer(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        await trio.lowlevel.wait_readable(sock)
        data += sock.recv(65536)
    return json.loads(data[4:])  # type: ignore[no-any-return]


async def test_a_group_cut_in_a_step_is_counted_only_after_its_fsync(tmp_path):
    from tests.wire import RawConnection, create_queue

    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        append = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}
        for _ in range(3):  # (the links connected)
            await connection.send(append)
            assert (await connection.receive() or {}).get("status") == "success"
        await connection.aclose()
        # Plain sockets: the requests of a round are written without a checkpoint, so the
        # leader's readers find them all in one batch.
        sockets = [socket.create_connection(("127.0.0.1", leader.port)) for _ in range(CONNECTIONS)]
        body = json.dumps(append).encode()
        request = struct.pack(">I", len(body)) + body
        driver = leader.driver
        events: list[tuple[str, int]] = []
        store, node = driver._store, driver.node
        save, advance, submit = store.save, node.advance, driver._worker.submit

        def recording_save(**kwargs: Any) -> Any:
            results = save(**kwargs)
            entries = kwargs.get("entries") or ()
            if entries:
                events.append(("saved", entries[-1].index))  # (list.append: thread-safe)
            return results

        def recording_submit(fn: Any, done: Any) -> None:
            entries = getattr(fn, "keywords", {}).get("entries") or ()
            if entries:
                events.append(("submitted", entries[-1].index))
            submit(fn, done)

        def recording_advance() -> None:
            rd = node._inflight
            if rd is not None and rd.entries:
                events.append(("advanced", rd.entries[-1].index))
            advance()

        store.save = recording_save
        driver._worker.submit = recording_submit
        node.advance = recording_advance
        for _ in range(10):
            for sock in sockets:
                sock.sendall(request)
            for sock in sockets:
                assert (await _answer(sock)).get("status") == "success"
            if getattr(driver, "started_in_step", 0) >= 3:
                break
        for sock in sockets:
            sock.close()
    cut = [index for kind, index in events if kind == "submitted"]
    assert len(cut) >= 3, events  # groups were cut and started by a proposing task
    for index in cut:
        # The leader counts itself for these entries (advance) only once they are durable.
        saved = events.index(("saved", index))
        assert events.index(("advanced", index)) > saved
        assert events.index(("submitted", index)) < saved
