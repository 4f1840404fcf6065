"""A long-polling READ and a FORGET_POSITION of the same client and queue (docs/protocol.md,
"FORGET_POSITION"): the forget ends the poll, which answers what it found (nothing) and reads
no more, so no position is left behind, whether the poll's wait then runs out or a message
arrives. (A poll that read again after the forget read from the first retained message, as a
new client, and set the position the forget had just removed.)"""

from __future__ import annotations

import trio

from trio_broker.testing import open_mock_cluster

from .test_read_index import append, last_index, read, started, within_deadline
from .wire import RawConnection

WAIT_MS = 10_000
AT_ONCE = 0.5
"""Answered "at once" (virtual seconds): far under the wait."""


async def _positions(cluster, leader: str, queue_id: str) -> dict[str, int]:
    r = await cluster.call(leader, {"operation": "LIST_QUEUES"})
    assert r["status"] == "success", r
    (queue,) = [q for q in r["queues"] if q["queue_id"] == queue_id]
    return {c["client_id"]: c["next_sequence_num"] - 1 for c in queue["clients"]}


async def _forget(cluster, leader: str, queue_id: str, client: str) -> dict:
    forget = {"operation": "FORGET_POSITION", "queue_name": queue_id, "client_id": client}
    r = await cluster.call(leader, forget)
    assert r["status"] == "success", r
    return r


async def _polling(cluster, leader: str, queue_id: str, client: str) -> RawConnection:
    """``client`` has read the queue's one message; its next READ long-polls on a connection
    of its own (its answer is still pending when this returns)."""
    await append(cluster, leader, queue_id, "first")
    r = await cluster.call(leader, read(queue_id, client=client))
    assert r["sequence_num"] == 1, r
    assert await _positions(cluster, leader, queue_id) == {client: 1}
    conn = RawConnection(await cluster.connect(leader))
    await conn.send(read(queue_id, client=client, max_messages=10, wait_ms=WAIT_MS))
    await trio.sleep(1)
    return conn


@within_deadline
async def test_a_forget_ends_a_pending_long_poll_of_its_client_without_a_position(
    autojump_clock,
):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        other_queue = (await cluster.call(leader, {"operation": "CREATE_QUEUE"}))["queue_id"]
        conn = await _polling(cluster, leader, queue_id, "C-POLL1")
        # Forgetting another client, or this client on another queue, leaves it waiting.
        await _forget(cluster, leader, queue_id, "C-OTHER")
        await _forget(cluster, leader, other_queue, "C-POLL1")
        with trio.move_on_after(1) as waiting:
            await conn.receive()
        assert waiting.cancelled_caught
        assert (await _forget(cluster, leader, queue_id, "C-POLL1"))["existed"] is True
        with trio.fail_after(AT_ONCE):
            r = await conn.receive()
        assert r == {"status": "success", "messages": []}, r
        await trio.sleep(WAIT_MS / 1000)  # (past the wait the poll was sent with)
        assert await _positions(cluster, leader, queue_id) == {}
        # The client's next READ starts where a new client's does.
        r = await conn.call(read(queue_id, client="C-POLL1"))
        assert r["sequence_num"] == 1, r
        await conn.aclose()


@within_deadline
async def test_a_message_after_the_forget_does_not_reach_the_forgotten_poll(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        conn = await _polling(cluster, leader, queue_id, "C-POLL2")
        await _forget(cluster, leader, queue_id, "C-POLL2")
        await append(cluster, leader, queue_id, "second")
        with trio.fail_after(WAIT_MS / 1000 + 5):
            r = await conn.receive()
        assert r == {"status": "success", "messages": []}, r
        assert await _positions(cluster, leader, queue_id) == {}
        await conn.aclose()


@within_deadline
async def test_a_forget_after_its_connection_closed_ends_its_poll(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        conn = await _polling(cluster, leader, queue_id, "C-POLL4")
        await conn.aclose()
        await trio.sleep(1)
        await _forget(cluster, leader, queue_id, "C-POLL4")
        await append(cluster, leader, queue_id, "second")
        await trio.sleep(WAIT_MS / 1000)
        assert await _positions(cluster, leader, queue_id) == {}


@within_deadline
async def test_a_poll_whose_wait_runs_out_reads_no_more(autojump_clock):
    """No append came: the read it made is its answer. (It read again, which a forget that
    arrived meanwhile could not stop: that read, found moving by the read path's run once the
    forget was applied, went to the log after it and set a position again.)"""
    async with open_mock_cluster(3) as cluster:
        leader, queue_id = await started(cluster)
        conn = await _polling(cluster, leader, queue_id, "C-POLL5")
        driver = cluster.brokers[leader].driver
        before = (driver.reads.served, driver.reads.sent_to_log, last_index(cluster, leader))
        r = await conn.receive()
        assert r == {"status": "success", "messages": []}, r
        after = (driver.reads.served, driver.reads.sent_to_log, last_index(cluster, leader))
        assert after == before
        assert await _positions(cluster, leader, queue_id) == {"C-POLL5": 1}
        await conn.aclose()
