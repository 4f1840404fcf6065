"""The mock-clock clusters take the runtime's in-step paths (``_runtime/_in_step.py``) as
real-socket clusters do: the proposing task takes a lone proposal's Ready, the task that
stepped an acknowledgement applies its commit, and a replica persists in the task that read
the REPLICATE. Their crash, restart and partition scenarios then exercise those paths. Needs
``InlineWorker.idle`` and the memory streams' ``write_some`` (what ``_Link.write_now``
writes with); a crashed broker's store refuses those paths' direct saves."""

from __future__ import annotations

import pytest
import trio

from trio_broker._core._raft_messages import Entry, HardState, NoOp
from trio_broker.testing import MemoryStore, open_memory_storage, open_mock_cluster
from trio_broker.testing._memory_store import StorageCrashed


async def _append(cluster, name: str, queue: str, value) -> None:
    r = await cluster.call(name, {"operation": "APPEND", "queue_name": queue, "data": value})
    assert r["status"] == "success", r


async def test_a_mock_cluster_takes_every_in_step_path(autojump_clock):
    with trio.fail_after(60):
        async with open_mock_cluster(3) as cluster:
            leader = await cluster.stabilize()
            name = cluster.name_of(leader)
            r = await cluster.call(name, {"operation": "CREATE_QUEUE"})
            assert r["status"] == "success", r
            for i in range(5):  # (one request at a time: each a lone proposal)
                await _append(cluster, name, r["queue_id"], i)
            # (the REPLICATEs and acknowledgements written at once, from the stepping task)
            assert cluster.network.written_at_once >= 10
            replicas = [b for n, b in cluster.brokers.items() if n != name]
            await cluster.wait_until(lambda: all(b.driver.persisted_in_step >= 5 for b in replicas))
            assert leader.driver.proposed_in_step >= 5
            assert leader.driver.applied_in_step >= 5
            assert leader.driver.node.is_leader


async def test_a_crashed_brokers_store_refuses_direct_saves():
    """The in-step paths call ``store.save`` on the loop's thread, past ``InlineWorker.run``:
    once its broker crashed the store itself refuses, and keeps what it had; the next
    broker to open it saves again."""
    store = MemoryStore("x")
    storage = open_memory_storage(store)
    entry = Entry(1, 1, NoOp())
    async with storage("unused") as (worker, _):
        assert worker.idle
        store.save(hard_state=HardState(1, None, 0), entries=[entry])
        store.crash()
        with pytest.raises(StorageCrashed, match="after the broker crashed"):
            store.save(hard_state=HardState(2, None, 1), entries=[Entry(2, 2, NoOp())])
    assert store.raft_state().hard_state == HardState(1, None, 0)
    assert store.raft_state().entries == [entry]
    async with storage("unused"):
        store.save(entries=[Entry(1, 2, NoOp())])
    assert len(store.raft_state().entries) == 2
