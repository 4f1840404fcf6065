"""Helpers for tests of replicas applying READs on a local cluster of real brokers: a queue
filled with batches over the wire, and every broker's read positions once they agree."""

from __future__ import annotations

from typing import Any

import trio


async def fill(connection: Any, queue_id: str, batches: int = 20) -> None:
    """APPEND_BATCH ``batches`` times 100 values of 100 bytes, each acknowledged."""
    for _ in range(batches):
        answer = await connection.call(
            {"operation": "APPEND_BATCH", "queue_name": queue_id, "values": ["x" * 100] * 100}
        )
        assert answer.get("status") == "success", answer


async def agreed_positions(cluster: Any) -> list[tuple[str, int]]:
    """Every broker's read positions, once they are the same on all (each broker applies the
    same READs, once), read on each broker's storage thread (its connection is that
    thread's); fails after 10 seconds."""
    with trio.fail_after(10):
        while True:
            positions = {
                n: await b.driver._worker.run(
                    lambda db=b.driver._store._db: db.execute(
                        "SELECT client_id, read_position FROM client_positions ORDER BY client_id"
                    ).fetchall()
                )
                for n, b in cluster.brokers.items()
            }
            if len({tuple(v) for v in positions.values()}) == 1:
                return positions[next(iter(positions))]
            await trio.sleep(0.01)
