"""The bench's read workloads have something to read, whichever workloads run before them."""

from __future__ import annotations

import orjson
import trio

from trio_broker._cli._bench import SEED_MESSAGES, messages_to_seed, seed_queue
from trio_broker._cli._bench_load import PAYLOAD

from .wire import call


def test_the_reads_alone_are_seeded_and_after_appends_topped_up() -> None:
    assert messages_to_seed({"reads"}, 0) == SEED_MESSAGES
    assert messages_to_seed({"batch-reads"}, 0) == SEED_MESSAGES
    assert messages_to_seed({"sequential", "reads"}, 3_000) == SEED_MESSAGES - 3_000
    assert messages_to_seed({"pipelined", "reads"}, 10 * SEED_MESSAGES) == 0
    assert messages_to_seed({"pipelined", "failover"}, 0) == 0  # nothing reads


async def test_seeding_appends_every_message_in_batches(broker) -> None:
    queue = (await call(broker.port, {"operation": "CREATE_QUEUE"}))["queue_id"]
    await seed_queue("127.0.0.1", broker.port, queue, 2_345)  # batches of 1000, 1000, 345
    read = {"operation": "READ", "queue_name": queue, "client_id": "C-T0001"}
    seen = []
    with trio.fail_after(30):
        while True:
            answer = await call(broker.port, read | {"max_messages": 1000})
            assert answer["status"] == "success", answer
            messages = answer.get("messages", [])
            if not messages:
                break
            seen += messages
    assert len(seen) == 2_345
    assert [m["sequence_num"] for m in seen] == list(
        range(seen[0]["sequence_num"], seen[0]["sequence_num"] + 2_345)
    )
    assert all(orjson.dumps(m["data"]) == orjson.dumps(PAYLOAD) for m in seen)
