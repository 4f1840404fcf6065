"""A connection's answers stay in request order when lone APPENDs (decided at once by
``handle_lone``) and receives of several requests (decided by ``handle_many``) interleave:
docs/performance-history.md, "The leader's CPU per request (ninth round)"."""

from __future__ import annotations

from typing import Any

import trio

from trio_broker._runtime import open_broker
from trio_broker._runtime._config import BrokerConfig

from .wire import RawConnection, create_queue


async def test_lone_and_many_answers_leave_in_request_order(ram_path):
    """One APPEND at a time (each its receive's one frame: ``handle_lone``), then frames sent
    together whose first names a queue that does not exist (``handle_many``'s run) and whose
    next ones append by id: every answer in its request's place, the appends numbered in the
    order sent. A frame of a receive of several decided at once (not its receive's only one)
    would answer before the frames ahead of it."""
    async with open_broker(BrokerConfig(data_dir=ram_path / "b", port=0)) as broker:
        queue_id = await create_queue(broker.port)
        conn = await RawConnection.open(broker.port)
        by_id = {"operation": "APPEND", "queue_name": queue_id}
        missing = {"operation": "APPEND", "queue_name": "no-such-queue", "data": 0}
        expected: list[Any] = []
        got: list[Any] = []
        sequence = 0

        def appended() -> dict[str, Any]:
            nonlocal sequence
            sequence += 1
            return {"status": "success", "sequence_num": sequence}

        with trio.fail_after(20):
            for round_ in range(3):
                for i in range(2):  # lone: one request in flight
                    expected.append(appended())
                    got.append(await conn.call(by_id | {"data": [round_, i]}))
                frames = [missing, by_id | {"data": round_}, missing, by_id | {"data": -round_}]
                await conn.send(*frames)
                for frame in frames:
                    expected.append("QUEUE_NOT_FOUND" if frame is missing else appended())
                    answer = await conn.receive()
                    assert answer is not None
                    got.append(answer["code"] if answer["status"] == "error" else answer)
        assert got == expected
        await conn.aclose()
