"""Long polls (READ and GROUP_READ with ``wait_ms``) are woken by every append applied after
their read looked, and their wake-up events go once no poll holds them (docs/protocol.md,
docs/work_queues.md)."""

from __future__ import annotations

import gc
import math

import trio

from trio_broker.testing import open_mock_cluster

from .test_read_index import append, read, started, within_deadline
from .test_work_reads import group_read, idle, joined
from .wire import RawConnection

LONG_WAIT_MS = 10_000
AT_ONCE = 0.5
"""Answered "at once" (virtual seconds): well under the group poll's once-a-second re-read,
far under the wait. Every step of the mock cluster takes no virtual time here."""


async def _after_a_whole_second() -> None:
    """Start just after a whole second of the clock: a group poll that missed its wake-up
    would then sit until its next re-read, most of a second later."""
    await trio.sleep_until(math.floor(trio.current_time()) + 1.01)


@within_deadline
async def test_a_read_sent_with_an_append_is_answered_with_it_at_once(autojump_clock):
    """A READ and an APPEND pipelined on one connection are applied in order, often in one
    Ready: the READ finds nothing, the APPEND is applied before the READ's answer reaches
    its long poll. The poll took its wake-up event before the read, so it reads again at
    once (it used to take it after the answer and sit out its whole wait)."""
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        conn = RawConnection(await cluster.connect(leader))
        for trial in range(6):
            client = f"C-LP{trial:03d}"
            started_at = trio.current_time()
            await conn.send(
                read(queue_id, client=client, wait_ms=LONG_WAIT_MS),
                {"operation": "APPEND", "queue_name": queue_id, "data": trial},
            )
            r = await conn.receive()
            took = trio.current_time() - started_at
            assert r["status"] == "success" and r["data"] == 0, r
            assert took < AT_ONCE, f"trial {trial}: answered after {took:.3f} s"
            assert (await conn.receive())["sequence_num"] == trial + 1
            # Past the message: the next trial's client reads from the start again.
        await conn.aclose()


@within_deadline
async def test_a_read_waiting_long_before_an_append_gets_it(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        got: list[tuple[float, dict]] = []

        async def poll() -> None:
            r = await cluster.call(leader, read(queue_id, wait_ms=LONG_WAIT_MS))
            got.append((trio.current_time(), r))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(2)
            await append(cluster, leader, queue_id, "late")
            appended_at = trio.current_time()
        [(at, r)] = got
        assert r["data"] == "late" and at - appended_at < AT_ONCE, r


@within_deadline
async def test_a_group_read_sent_with_an_append_is_answered_with_it_at_once(autojump_clock):
    """As for READ, for GROUP_READ's long poll, with the group known idle so that its first
    read is answered after a ReadIndex check, not a log entry: an APPEND applied between
    that read's look and its answer must wake the next round at once, not at the next
    once-a-second re-read."""
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await joined(cluster)
        await idle(cluster, leader, queue_id)
        conn = RawConnection(await cluster.connect(leader))
        for trial in range(10):
            await _after_a_whole_second()
            started_at = trio.current_time()
            await conn.send(
                group_read(queue_id, wait_ms=LONG_WAIT_MS),
                {"operation": "APPEND", "queue_name": queue_id, "data": trial},
            )
            r = await conn.receive()
            took = trio.current_time() - started_at
            assert [m["data"] for m in r["messages"]] == [trial], r
            assert took < AT_ONCE, f"trial {trial}: answered after {took:.3f} s"
            assert (await conn.receive())["sequence_num"] == trial + 1
            ack = {
                "operation": "GROUP_ACK",
                "queue_name": queue_id,
                "group": "workers",
                "member": "m1",
                "sequence_nums": [m["sequence_num"] for m in r["messages"]],
            }
            assert (await cluster.call(leader, ack))["status"] == "success"
        await conn.aclose()


async def test_polls_on_missing_queues_leave_no_wake_up_events(autojump_clock):
    """A GROUP_READ or READ with ``wait_ms`` naming a queue id that is not there is answered
    with an error; the wake-up event it took goes with it (it was kept for ever, one per
    queue id asked about), on the leader and on a follower."""
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await joined(cluster)
        follower = next(n for n in cluster.brokers if n != leader)
        for i in range(50):
            missing = f"Q-nope{i:06d}"
            for name in (leader, follower):
                r = await cluster.call(name, group_read(missing, wait_ms=1000))
                assert r["status"] == "error", r
            r = await cluster.call(leader, read(missing, wait_ms=1000))
            assert r["status"] == "error", r
        await trio.sleep(1)  # (the last connections' handlers finish)
        gc.collect()
        for name in (leader, follower):
            broker = cluster.brokers[name]
            assert not [q for q in broker.work._changed if q.startswith("Q-nope")]
            assert not [q for q in broker._appended if q.startswith("Q-nope")]
        # A real waiting poll still holds its event, and an append wakes it.
        await idle(cluster, leader, queue_id)
        got: list[dict] = []

        async def poll() -> None:
            got.append(await cluster.call(leader, group_read(queue_id, wait_ms=LONG_WAIT_MS)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.5)
            gc.collect()
            assert queue_id in cluster.brokers[leader].work._changed
            await append(cluster, leader, queue_id, "x")
            appended_at = trio.current_time()
        assert [m["data"] for m in got[0]["messages"]] == ["x"]
        assert trio.current_time() - appended_at < AT_ONCE
        gc.collect()
        assert queue_id not in cluster.brokers[leader].work._changed
