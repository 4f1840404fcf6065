"""A broker whose driver's :class:`~trio_broker._runtime._pending.Capacity` is far smaller
than the proposals sent at once still answers every one of them, through the real connection
path: pipelined runs of APPENDs (``propose_many``'s charges of up to ``max_pending`` units,
waiting in turn), lone requests (one unit each), READs (a unit each while their ReadIndex
check waits), and a connection closed while its receive's charge waits (the cancelled waiter
leaves its place to those behind). At the end every unit is back."""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest
import trio
import trio.testing

from trio_broker._runtime import open_broker
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._pending import Capacity

from .wire import RawConnection, create_queue

DEADLINE = 30


def _append(queue_id: str, i: int) -> dict[str, Any]:
    return {"operation": "APPEND", "queue_name": queue_id, "data": i}


@pytest.mark.parametrize("max_pending", [1, 3])
async def test_a_burst_far_beyond_max_pending_is_answered_in_full(ram_path, max_pending):
    config = BrokerConfig(data_dir=ram_path / "b", port=0, max_pending=max_pending)
    async with open_broker(config) as broker:
        queue_id = await create_queue(broker.port)
        capacity = broker.driver._capacity
        sequence_nums: list[int] = []
        pipelined, per = 6, 25

        async def burst(c: int) -> None:
            conn = await RawConnection.open(broker.port)
            try:
                requests = [_append(queue_id, c * 1000 + i) for i in range(per)]
                read = {"operation": "READ", "queue_name": queue_id, "client_id": f"C{c}"}
                requests.insert(per // 2, read)
                await conn.send(*requests)  # (one write: received together, one run)
                for request in requests:
                    answer = await conn.receive()
                    assert answer is not None and answer["status"] == "success", answer
                    if request["operation"] == "APPEND":
                        sequence_nums.append(answer["sequence_num"])
            finally:
                await conn.aclose()

        async def lone(c: int) -> None:
            conn = await RawConnection.open(broker.port)
            try:
                for i in range(10):
                    answer = await conn.call(_append(queue_id, -(c * 1000 + i)))
                    assert answer["status"] == "success", answer
                    sequence_nums.append(answer["sequence_num"])
            finally:
                await conn.aclose()

        async def abandoned() -> None:
            # A burst sent and the connection closed at once: whatever waited for capacity
            # on its behalf is cancelled (or answered into a closed connection).
            conn = await RawConnection.open(broker.port)
            await conn.send(*[_append(queue_id, 10**6 + i) for i in range(per)])
            await conn.aclose()

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for c in range(pipelined):
                    nursery.start_soon(burst, c)
                    nursery.start_soon(abandoned)
                for c in range(3):
                    nursery.start_soon(lone, c)
            # Every append answered got its own number; those of the closed connections
            # (some applied, some never proposed) take numbers too, but no two are equal.
            assert len(sequence_nums) == pipelined * per + 3 * 10
            assert len(set(sequence_nums)) == len(sequence_nums)
            # Every unit comes back once the abandoned connections' proposals are settled.
            while capacity.value != capacity.total or capacity._waiters:
                await trio.lowlevel.checkpoint()
        assert capacity.value == capacity.total == max_pending
        conn = await RawConnection.open(broker.port)
        try:
            with trio.fail_after(DEADLINE):
                answer = await conn.call(_append(queue_id, "after"))
            assert answer["status"] == "success", answer
        finally:
            await conn.aclose()


async def test_a_broker_closed_while_proposals_wait_for_capacity_closes(ram_path):
    """Proposals queued for the driver's capacity when the broker closes: each waiter is
    cancelled (``Capacity.acquire``'s abort, handing what is free to those behind) and the
    broker's close completes; nothing is left waiting."""
    config = BrokerConfig(data_dir=ram_path / "b", port=0, max_pending=1, shutdown_grace=0.05)
    conns: list[RawConnection] = []
    with trio.fail_after(DEADLINE):
        async with open_broker(config) as broker:
            queue_id = await create_queue(broker.port)
            capacity = broker.driver._capacity
            for c in range(8):
                conn = await RawConnection.open(broker.port)
                conns.append(conn)
                await conn.send(*[_append(queue_id, c * 100 + i) for i in range(20)])
            while len(capacity._waiters) < 4:
                await trio.lowlevel.checkpoint()
        assert not capacity._waiters
    for conn in conns:
        await conn.aclose()


async def test_a_charge_beyond_the_total_is_refused_and_queues_nothing():
    """``acquire`` of more than ``total`` raises before queueing (it could never be served,
    and would hold every waiter behind it forever); the units and the queue are untouched."""
    capacity = Capacity(2)
    assert capacity.take(1)
    with pytest.raises(ValueError, match="3 units asked of a capacity of 2"):
        await capacity.acquire(3)
    assert capacity.value == 1 and not capacity._waiters
    assert capacity.take(1) and capacity.value == 0


@pytest.mark.parametrize("seed", range(6))
async def test_every_unit_is_accounted_for_and_grants_follow_the_queue(seed):
    """Seeded histories of proposers of 1 to ``total`` units, some cancelled while queued
    (alone, or several with no checkpoint between, so that one's abort hands units to
    another about to be cancelled), holders releasing in any order. At every quiet point: the
    free units and those held add up to the total exactly (none lost, none counted twice),
    the queue's head is never coverable by what is free, and the grants come in the order
    of the queue, less the waiters cancelled before theirs."""
    rng = random.Random(seed)
    capacity = Capacity(5)
    held: dict[int, int] = {}
    queued: list[int] = []
    granted: list[int] = []
    cancelled_waiting: set[int] = set()
    releases: dict[int, trio.Event] = {}
    names: dict[trio.lowlevel.Task, int] = {}

    class _Handed(collections.deque):  # type: ignore[type-arg]
        """The queue, noting whom each hand-out serves (in the order served: trio may run
        the tasks woken by one release in either order)."""

        def popleft(self) -> Any:
            waiter = super().popleft()
            granted.append(names[waiter[1]])
            return waiter

    capacity._waiters = _Handed()

    async def proposer(n: int, count: int, scope: trio.CancelScope) -> None:
        with scope:
            if not capacity.take(count):
                queued.append(n)
                names[trio.lowlevel.current_task()] = n
                try:
                    await capacity.acquire(count)
                except trio.Cancelled:
                    cancelled_waiting.add(n)
                    raise
            held[n] = count
            releases[n] = trio.Event()
        if n not in held:  # (cancelled while queued: took nothing)
            return
        try:
            await releases[n].wait()
        finally:
            del held[n]
            capacity.release(count)

    def check() -> None:
        assert capacity.value >= 0
        assert capacity.value + sum(held.values()) == capacity.total
        if capacity._waiters:
            assert capacity._waiters[0][0] > capacity.value

    scopes: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery:
        for n in range(40):
            r = rng.random()
            if r < 0.5:
                scope = trio.CancelScope()
                scopes.append(scope)
                nursery.start_soon(proposer, n, rng.randrange(1, 6), scope)
            elif r < 0.8 and releases:
                ready = [k for k in releases if k in held and not releases[k].is_set()]
                if ready:
                    releases[rng.choice(ready)].set()
            elif scopes:
                for scope in rng.sample(scopes, min(len(scopes), rng.choice([1, 1, 2, 3]))):
                    scope.cancel()  # (several in one go: one's abort may hand units on)
            await trio.testing.wait_all_tasks_blocked()
            check()
        while any(not e.is_set() for e in releases.values()) or capacity._waiters:
            for e in list(releases.values()):
                e.set()
            await trio.testing.wait_all_tasks_blocked()
            check()
    assert capacity.value == capacity.total and not held
    assert granted == [n for n in queued if n not in cancelled_waiting]
