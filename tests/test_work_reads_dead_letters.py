"""What a dead-letter move does to the idle-group hints (docs/replication.md, "Work-queue
reads without a log entry"): a GROUP_READ whose own clock expires a lease and moves the
message to the dead-letter queue leaves the dead-letter queue's groups their hints (its
result, ``Delivered``, does not say it moved anything); their next read is still answered
with the message, since the run on the applied state, not the hint, decides."""

from __future__ import annotations

import trio

from trio_broker.testing import open_mock_cluster

from .test_read_index import append, within_deadline
from .test_work_reads import group_read


async def _queue(cluster, leader: str) -> str:
    r = await cluster.call(leader, {"operation": "CREATE_QUEUE"})
    assert r["status"] == "success", r
    return r["queue_id"]


async def _join(cluster, leader: str, queue_id: str, group: str, **settings) -> None:
    r = await cluster.call(
        leader, {"operation": "GROUP_JOIN", "queue_name": queue_id, "group": group, **settings}
    )
    assert r["status"] == "success", r


@within_deadline
async def test_a_group_reads_own_dead_letter_move_keeps_hints_and_is_still_delivered(
    autojump_clock,
):
    async with open_mock_cluster(3, wall_clock=trio.current_time) as cluster:
        leader = cluster.name_of(await cluster.stabilize())
        cluster.brokers[leader].work._may_sweep = lambda: False  # (the read expires, not a sweep)
        source, dead = await _queue(cluster, leader), await _queue(cluster, leader)
        await _join(
            cluster,
            leader,
            source,
            "workers",
            visibility_ms=1000,
            max_deliveries=1,
            dead_letter_queue=dead,
        )
        await _join(cluster, leader, dead, "workers")
        reads = cluster.brokers[leader].driver.reads
        r = await cluster.call(leader, group_read(dead))
        assert r["messages"] == [], r
        assert (dead, "workers") in reads.exhausted.groups  # idle: known to find nothing
        await append(cluster, leader, source, "job")
        r = await cluster.call(leader, group_read(source))
        assert [(m["data"], m["delivery_count"]) for m in r["messages"]] == [("job", 1)], r
        await trio.sleep(1.5)  # the lease expires, by the clock alone
        r = await cluster.call(leader, group_read(source, member="m2"))
        assert (r["messages"], r["in_flight"]) == ([], 0), r  # moved to the dead-letter queue
        # The move is the GROUP_READ's own: its result says nothing of it, the hint stays...
        assert (dead, "workers") in reads.exhausted.groups
        logged = reads.sent_to_log
        # ... and the dead-letter queue's group still gets the message, through the log.
        r = await cluster.call(leader, group_read(dead))
        assert [(m["data"], m["delivery_count"]) for m in r["messages"]] == [("job", 1)], r
        assert reads.sent_to_log == logged + 1
