"""A replica's apply of lone appends waits until several are committed, or its next tick
(``RaftNode.apply_lag``, set by ``_runtime._recovery.make_node``; docs/performance-history.md, "One
client, one append at a time (ninth round)"): one append at a time, most of a replica's
fsynced transactions write the new entry alone, and every replica still ends with every
value the leader holds."""

from __future__ import annotations

import trio

from trio_broker._runtime._applied import APPLY_LAG
from trio_broker.testing import open_local_cluster


async def test_a_replica_persists_lone_appends_alone_and_applies_them_in_fours(tmp_path):
    from tests.wire import RawConnection, create_queue

    # Ticks of 100 ms: the leader goes idle (and a replica applies what waits) only when a
    # tick passes without a REPLICATE, which a loaded machine's round trip must not reach.
    async with open_local_cluster(tmp_path, 3, heartbeat_interval=0.2, failure_timeout=2.0) as c:
        leader = await c.wait_for_leader()
        queue_id = await create_queue(leader.port)
        connection = await RawConnection.open(leader.port)
        saves: dict[str, list[tuple[int, int]]] = {}
        for name, broker in c.brokers.items():
            if broker is leader:
                continue
            store = broker.driver._store
            seen = saves.setdefault(name, [])

            def saving(save=store.save, seen=seen, **kwargs):  # type: ignore[no-untyped-def]
                seen.append((len(kwargs.get("entries", ())), len(kwargs.get("committed", ()))))
                return save(**kwargs)

            store.save = saving
        appends = 4 * APPLY_LAG
        for n in range(appends):
            answer = await connection.call(
                {"operation": "APPEND", "queue_name": queue_id, "data": n}
            )
            assert answer.get("status") == "success", answer
        await connection.aclose()
        for seen in saves.values():
            alone = sum(1 for entries, committed in seen if entries and not committed)
            # (the first apply after the queue's creation and a tick may come early)
            assert alone >= appends // 2, seen
            assert max(committed for _, committed in seen) <= APPLY_LAG, seen
        with trio.fail_after(10):  # (the rest by the next tick at the latest)
            while True:
                held = {
                    name: await b.driver._worker.run(
                        lambda store=b.driver._store: store.messages(queue_id)
                    )
                    for name, b in c.brokers.items()
                }
                if all(len(values) == appends for values in held.values()):
                    break
                await trio.sleep(0.01)
        assert len({tuple(values) for values in held.values()}) == 1
