"""Work queues on a 3-broker cluster: names resolve on every broker, replicas refuse the
leader's operations with NOT_LEADER, and a leader failover with leases outstanding loses
neither a lease nor a message: the new leader expires the old leader's leases on its own clock
(docs/protocol.md, "Leases run on the leader's clock")."""

from __future__ import annotations

import pytest
import trio

from trio_broker.testing import open_local_cluster

from .wire import ManualClock, call

DEADLINE = 30


@pytest.fixture
def clock():
    return ManualClock(2_000_000.0)


@pytest.fixture
async def cluster(ram_path, clock):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(ram_path, 3, wall_clock=clock) as cluster:
            yield cluster


def op(operation: str, /, **fields):
    return {"operation": operation, **fields}


async def ok(port: int, obj) -> dict:
    response = await call(port, obj)
    assert response["status"] == "success", response
    return response


async def resolved_everywhere(cluster, name: str) -> str:
    """The id every broker resolves ``name`` to, once each has applied its creation."""
    ids = set()
    for broker in cluster.brokers.values():
        while True:
            answer = await call(broker.port, op("RESOLVE_QUEUE", name=name))
            if answer["status"] == "success":
                ids.add(answer["queue_id"])
                break
            assert answer["code"] == "QUEUE_NOT_FOUND", answer
            await trio.sleep(0.02)
    assert len(ids) == 1
    return ids.pop()


async def test_names_resolve_on_every_broker_and_replicas_redirect(cluster):
    leader = await cluster.wait_for_leader()
    created = await ok(leader.port, op("CREATE_QUEUE", name="orders"))
    assert await resolved_everywhere(cluster, "orders") == created["queue_id"]
    replica = next(b for b in cluster.brokers.values() if b is not leader)
    for request in (
        op("CREATE_QUEUE", name="orders"),
        op("GROUP_JOIN", queue_name="orders", group="w"),
        op("GROUP_READ", queue_name="orders", group="w", member="m"),
        op("DELETE_QUEUE", queue_name="orders"),
    ):
        answer = await call(replica.port, request)
        assert answer["code"] == "NOT_LEADER", answer
        assert answer["leader_port"] == leader.port


async def test_leases_survive_a_leader_failover(cluster, clock):
    """Raft §5.4 (the leader completeness property) applied to leases: a lease granted by the
    old leader is in the new leader's state, so a message it held is neither lost nor handed
    to a second member before its deadline; after it, the new leader redelivers it."""
    leader = await cluster.wait_for_leader()
    await ok(leader.port, op("CREATE_QUEUE", name="jobs"))
    for i in range(1, 7):
        await ok(leader.port, op("APPEND", queue_name="jobs", data=i))
    await ok(leader.port, op("GROUP_JOIN", queue_name="jobs", group="w", visibility_ms=5_000))
    held = await ok(
        leader.port, op("GROUP_READ", queue_name="jobs", group="w", member="a", max_messages=3)
    )
    assert [m["sequence_num"] for m in held["messages"]] == [1, 2, 3]
    await ok(
        leader.port, op("GROUP_ACK", queue_name="jobs", group="w", member="a", sequence_nums=[1])
    )

    await cluster.stop(cluster.name_of(leader))
    new = await cluster.wait_for_leader()
    assert new is not leader
    # Before the deadline: a's leases on 2 and 3 hold; b gets only what was never delivered.
    clock.now += 1
    b = await ok(
        new.port, op("GROUP_READ", queue_name="jobs", group="w", member="b", max_messages=10)
    )
    assert [m["sequence_num"] for m in b["messages"]] == [4, 5, 6]
    assert b["in_flight"] == 5
    # a's work on 2 goes on under the new leader.
    extended = await ok(
        new.port,
        op(
            "GROUP_EXTEND",
            queue_name="jobs",
            group="w",
            member="a",
            sequence_nums=[2],
            visibility_ms=60_000,
        ),
    )
    assert extended["changed"] == [2]
    # Past 3's deadline (not yet b's), the new leader's ExpireLeases ends it, unread...
    clock.now += 4.5
    with trio.fail_after(10):
        while await new._worker.run(new._store.next_lease_deadline) <= clock.now * 1000:
            # Until the ExpireLeases is applied. The store is read in its thread, so a change
            # may land between that read and this wait: wait for the next one a short while.
            with trio.move_on_after(0.05):
                await new.driver.wait_changed()
    # ... and it goes to the next member, delivered a second time; 1 (acknowledged) never.
    c = await ok(
        new.port, op("GROUP_READ", queue_name="jobs", group="w", member="c", max_messages=10)
    )
    assert [(m["sequence_num"], m["delivery_count"]) for m in c["messages"]] == [(3, 2)]
    done = await ok(
        new.port, op("GROUP_ACK", queue_name="jobs", group="w", member="c", ranges=[[2, 6]])
    )
    assert done["acknowledged"] == 5
    # Every broker agrees: nothing left in flight.
    for broker in cluster.brokers.values():
        while broker.applied_index < new.applied_index:
            await broker.driver.wait_changed()
        assert await broker._worker.run(broker._store.next_lease_deadline) is None
