"""The order of a sequential append's steps on each broker (docs/performance.md, "One
sequential append's timeline"): what another broker or the client waits for leaves first,
the bookkeeping after, and never before what it promises is durable. Orders of calls, never
timings."""

from __future__ import annotations

from typing import Any

from trio_broker._core._raft_messages import ReplicateResponse
from trio_broker.testing import open_local_cluster

APPENDS = 30


async def _appending(tmp_path, watch) -> None:
    """Five appends (the links connected), ``watch(cluster, leader)``, then APPENDS more, one
    at a time on one connection, each answered success."""
    from tests.wire import RawConnection, create_queue

    async with open_local_cluster(tmp_path, 3) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        append = {"operation": "APPEND", "queue_name": queue_id, "data": "x" * 100}
        for _ in range(5):
            assert (await connection.call(append)).get("status") == "success"
        watch(c, leader)
        for _ in range(APPENDS):
            assert (await connection.call(append)).get("status") == "success"
        await connection.aclose()


def _watch_replica(driver: Any, events: list[tuple[str, int]]) -> None:
    """Record, on one replica: each transaction that returned (the last entry it wrote), each
    acknowledgement handed to the links (its match index), each transaction's bookkeeping."""
    store = driver._store
    save, send_at_once, saved = store.save, driver._send_at_once, driver._saved

    def recording_save(**kwargs: Any) -> Any:
        results = save(**kwargs)
        entries = kwargs.get("entries") or ()
        if entries:
            events.append(("durable", entries[-1].index))
        return results

    def recording_send(messages: Any) -> bool:
        for m in messages:
            if type(m) is ReplicateResponse and m.success:
                events.append(("ack", m.match_index))
        return send_at_once(messages)

    def recording_saved(rd: Any, committed: Any, **kwargs: Any) -> None:
        if rd.entries:
            events.append(("counted", rd.entries[-1].index))
        saved(rd, committed, **kwargs)

    store.save = recording_save
    driver._send_at_once = recording_send
    driver._saved = recording_saved


async def test_a_replica_acknowledges_before_its_bookkeeping_and_after_its_fsync(tmp_path):
    """Each acknowledgement follows the transaction that made its entries durable (persist
    before you send: Raft's rule, unchanged) and precedes that transaction's counts, histogram
    and repair notes (before: after them, on the path the leader's commit waits on)."""
    events: dict[str, list[tuple[str, int]]] = {}

    def watch(cluster: Any, leader: Any) -> None:
        for broker in cluster.brokers.values():
            if broker is not leader:
                _watch_replica(broker.driver, events.setdefault(broker.broker_id, []))

    await _appending(tmp_path, watch)
    acks = 0
    for seen in events.values():
        durable = 0
        for n, (kind, index) in enumerate(seen):
            if kind == "durable":
                durable = max(durable, index)
            elif kind == "ack":
                assert index <= durable, seen  # (never before its fsync)
                acks += 1
                counted = [i for k, i in seen[:n] if k == "counted"]
                assert index not in counted, seen  # (its transaction's counts come after)
    assert acks >= APPENDS, events


async def test_the_leaders_apply_in_a_step_answers_before_its_bookkeeping(tmp_path):
    """The acknowledgement that commits an append applies it in its step (``_apply_here``):
    the answers are settled before the transaction's counts (before: after them)."""
    order: list[str] = []

    def watch(cluster: Any, leader: Any) -> None:
        driver = leader.driver
        apply_here, settle, saved = driver._apply_here, driver._settle_applied, driver._saved
        inside = [False]

        def recording_apply_here() -> None:
            inside[0] = True
            try:
                apply_here()
            finally:
                inside[0] = False

        def recording_settle(tokens: Any, outcomes: Any) -> None:
            if inside[0] and tokens:
                order.append("answered")
            settle(tokens, outcomes)

        def recording_saved(rd: Any, committed: Any, **kwargs: Any) -> None:
            if inside[0] and committed:
                order.append("counted")
            saved(rd, committed, **kwargs)

        driver._apply_here = recording_apply_here
        driver._settle_applied = recording_settle
        driver._saved = recording_saved

    await _appending(tmp_path, watch)
    assert order.count("answered") >= APPENDS / 2, order
    pairs = list(zip(order[::2], order[1::2], strict=False))
    assert pairs and all(pair == ("answered", "counted") for pair in pairs), order
