"""The driver's :class:`Capacity`: waiters served in turn, each with its whole charge.

A unit freed while a proposal waits is the waiter's: a newcomer's ``take`` must not get it
first, and a group's charge (several units) must not be overtaken by lone proposals that
arrived after it."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from trio_broker._runtime._pending import Capacity


async def _settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.trio
async def test_a_woken_waiter_keeps_the_unit_a_newcomer_asks_for():
    capacity = Capacity(1)
    assert capacity.take(1)
    got = []

    async def waiter() -> None:
        await capacity.acquire(1)
        got.append("waiter")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await _settle()
        capacity.release(1)
        # The waiter has not run yet: the unit is already its own.
        assert not capacity.take(1)
        await _settle()
    assert got == ["waiter"]
    assert capacity.value == 0


@pytest.mark.trio
async def test_a_group_charge_is_not_overtaken_by_later_lone_proposals():
    capacity = Capacity(4)
    assert capacity.take(4)
    order = []

    async def proposer(name: str, count: int) -> None:
        await capacity.acquire(count)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(proposer, "group", 3)
        await _settle()
        nursery.start_soon(proposer, "lone", 1)
        await _settle()
        capacity.release(1)
        await _settle()
        assert order == [] and capacity.value == 1  # the group's 3 are not free yet
        assert not capacity.take(1)  # nor for a newcomer: others wait
        capacity.release(2)
        await _settle()
        assert order == ["group"] and capacity.value == 0
        capacity.release(1)
        await _settle()
    assert order == ["group", "lone"]
    assert capacity.value == 0


@pytest.mark.trio
async def test_a_cancelled_waiter_takes_nothing_and_lets_the_next_go():
    capacity = Capacity(4)
    assert capacity.take(4)
    order = []

    async def proposer(name: str, count: int, scope: trio.CancelScope) -> None:
        with scope:
            await capacity.acquire(count)
            order.append(name)

    head, behind = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(proposer, "group", 3, head)
        await _settle()
        nursery.start_soon(proposer, "lone", 1, behind)
        await _settle()
        capacity.release(1)
        await _settle()
        assert order == []
        head.cancel()  # the head leaves: the unit free covers the next one's charge
        await _settle()
        assert order == ["lone"] and capacity.value == 0
    capacity.release(1)
    capacity.release(3)
    assert capacity.value == 4 and capacity.take(4)


@pytest.mark.trio
async def test_a_waiter_handed_its_units_keeps_them_when_cancelled_after():
    capacity = Capacity(2)
    assert capacity.take(2)
    got = []
    scope = trio.CancelScope()

    async def waiter() -> None:
        with scope:
            await capacity.acquire(2)
            got.append("units")
            await trio.sleep_forever()
        capacity.release(2)  # (gives back what it was handed)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await _settle()
        capacity.release(2)
        scope.cancel()  # handed its units before the cancel: it returns with them
    assert got == ["units"]
    assert capacity.value == 2


@pytest.mark.trio
@pytest.mark.parametrize("seed", range(5))
async def test_units_are_never_overdrawn_and_all_come_back(seed):
    """Seeded: 30 proposers of 1 to 4 units, some cancelled while they wait, holding their
    units for a few turns. Units held never exceed the total, every waiter not cancelled is
    served, and at the end every unit is back. (The order of grants is the deterministic
    tests' above: trio runs the tasks woken together in either order.)"""
    rng = random.Random(seed)
    capacity = Capacity(6)
    held = [0]
    granted: list[int] = []
    waited: list[int] = []

    async def proposer(n: int, count: int, scope: trio.CancelScope) -> None:
        with scope:
            if not capacity.take(count):
                waited.append(n)
                await capacity.acquire(count)
                granted.append(n)
            held[0] += count
            assert held[0] <= capacity.total
            for _ in range(rng.randrange(1, 4)):
                await trio.lowlevel.cancel_shielded_checkpoint()
            held[0] -= count
            capacity.release(count)

    async with trio.open_nursery() as nursery:
        scopes = []
        for n in range(30):
            scope = trio.CancelScope()
            scopes.append(scope)
            nursery.start_soon(proposer, n, rng.randrange(1, 5), scope)
            if rng.random() < 0.4:
                await trio.lowlevel.checkpoint()
            if rng.random() < 0.15:
                rng.choice(scopes).cancel()
    assert capacity.value == capacity.total and held[0] == 0
    cancelled = {n for n, scope in enumerate(scopes) if scope.cancel_called}
    assert set(waited) - cancelled <= set(granted) <= set(waited)
