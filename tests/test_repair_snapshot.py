"""A value nobody holds any more (docs/reliability.md, "A value nobody holds any more"): a
broker that was behind applies a byte-bounded read over a value that is damaged on its disk,
while every other member has deleted that value by retention since. No member can give it;
the broker asks the leader for its snapshot, whose state holds the read's effect, completes
the held transaction without applying its entries and installs the snapshot: it recovers by
itself (before, it held that transaction until an operator reset its data). The core's side
is in tests/core/test_raft_snapshot_install.py."""

from __future__ import annotations

import logging

import trio

from trio_broker._runtime._repair import Repair
from trio_broker.testing import open_local_cluster

from .test_repair import _alter, _append, _caught_up, _no_scrub
from .wire import call, create_queue, transfer_leadership


async def _first_retained(broker, queue_id: str) -> int:
    return (await broker.driver._worker.run(broker.driver._store.first_retained)).get(queue_id, 1)


async def test_a_broker_behind_whose_value_nobody_holds_any_more_installs_the_leaders_snapshot(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(Repair, "scrub", _no_scrub)  # (first met by the read it applies)
    caplog.set_level(logging.INFO, logger="trio_broker")
    with trio.fail_after(60):
        async with open_local_cluster(tmp_path, retention_interval=0.1) as cluster:
            leader = await cluster.wait_for_leader()
            queue_id = await create_queue(leader.port)
            acked = await _append(leader.port, queue_id, 30)
            name = next(n for n, b in cluster.brokers.items() if b is not leader)
            await _caught_up(cluster, name)
            await cluster.stop(name)
            _alter(tmp_path / name, queue_id, 3)
            # While it is down: a batch read over seq 3 (how many messages it takes depends on
            # their sizes: it needs the bytes), then retention deletes seq 1..20 everywhere.
            answer = await call(
                leader.port,
                {
                    "operation": "READ",
                    "queue_name": queue_id,
                    "client_id": "C-BATCH",
                    "max_messages": 5,
                },
            )
            assert answer["status"] == "success", answer
            answer = await call(
                leader.port,
                {
                    "operation": "SET_RETENTION",
                    "queue_name": queue_id,
                    "retention": {"max_messages": 10},
                },
            )
            assert answer["status"] == "success", answer
            for broker in cluster.brokers.values():
                while True:  # (retention runs every 0.1 s here)
                    if await _first_retained(broker, queue_id) > 20:
                        break
                    await trio.sleep(0.05)

            behind = await cluster.start(name)
            await _caught_up(cluster, name)
            assert await _first_retained(behind, queue_id) == 21
            ours = await behind.driver._worker.run(behind.driver._store.positions)
            theirs = await leader.driver._worker.run(leader.driver._store.positions)
            assert ours == theirs and ours[("C-BATCH", queue_id)] == 5
            messages = await behind.driver._worker.run(behind.driver._store.messages, queue_id)
            assert messages == await leader.driver._worker.run(
                leader.driver._store.messages, queue_id
            )
            assert len(messages) == 10 and len(acked) == 30
            assert behind.driver.repair.statistics().waiting == 0
            # It serves as the others do once it leads.
            await transfer_leadership(cluster, behind)
            answer = await call(
                behind.port,
                {"operation": "READ", "queue_name": queue_id, "client_id": "C-BATCH"},
            )
            assert answer["status"] == "success" and answer["sequence_num"] == 21, answer

    events = [getattr(r, "event", None) for r in caplog.records]
    for event in ("storage.damaged", "storage.snapshot_asked", "snapshot.asked"):
        assert event in events, event
    assert "storage.snapshot_stands_in" in events and "snapshot.installed" in events
    assert "driver.crashed" not in events
