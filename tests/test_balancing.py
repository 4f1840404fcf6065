"""The balancer's rounds executed (``_runtime/_balancing.py``; docs/replication.md, "Balancer"),
against stand-ins for the metadata group and the groups (``tests/balancing_world.py``), under
the mock clock: the runtime loop, its bounds and its retries, independently of how a map is
replicated and how a group's leader changes its membership.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import trio

from trio_broker._core._metadata import (
    SetBrokerAlive,
    SetBrokerDraining,
    StartReplicaMove,
    UnregisterBroker,
)
from trio_broker._core._placement import AddLearner, TransferLeader
from trio_broker._core._spread import leader_share
from trio_broker._errors import BrokerError, ErrorCode
from trio_broker._protocol._messages import DrainBroker, Rebalance, Rebalanced
from trio_broker._runtime import _balancing

from .balancing_world import World, broker_ids, group_ids

pytestmark = pytest.mark.trio

ROUND = 5.0
"""The default round interval at the stand-ins' timing (50 ticks of 0.1 s)."""


@contextlib.asynccontextmanager
async def running(world: World, **balancer: int):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.run)
        balancing = world.balancing(**balancer)
        scope = trio.CancelScope()

        async def serve() -> None:
            with scope:
                await balancing.run()

        nursery.start_soon(serve)
        yield balancing, scope
        nursery.cancel_scope.cancel()


async def wait_until(predicate, *, poll: float = 1.0, limit: float = 3600.0) -> None:
    """Wait until ``predicate()`` holds, looking every ``poll`` virtual seconds."""
    with trio.fail_after(limit):
        while True:
            if predicate():
                return
            await trio.sleep(poll)


async def converge(world: World, r: int, *, limit: float = 3600.0) -> None:
    """Wait until the map and the groups agree, every group on R voters."""
    await wait_until(lambda: world.consistent(r), limit=limit)


async def balanced(world: World, r: int, *, limit: float = 3600.0) -> None:
    """Converged, and replicas spread evenly: floor or ceil of G*R/N on each staying broker."""
    cmap = world.metadata.map
    with trio.fail_after(limit):
        while True:
            await converge(world, r, limit=limit)
            stays = [b for b, rec in cmap.brokers.items() if not rec.draining]
            counts = world.replica_counts()
            spread = [counts[b] for b in stays]
            if max(spread) - min(spread) <= 1:
                return
            await trio.sleep(1)


async def quiet(world: World, rounds: int = 10) -> None:
    """Further rounds neither act nor propose anything (the balancer does not flap)."""
    actions, proposed = len(world.actions), len(world.metadata.proposed)
    await trio.sleep(ROUND * rounds)
    assert world.actions[actions:] == []
    assert world.metadata.proposed[proposed:] == []


async def test_three_brokers_founded_one_at_a_time_grow_every_group_to_three_voters(
    autojump_clock,
):
    """A cluster founded on one broker: each group grows to R as brokers join (moves with no
    source), and leadership spreads over the three."""
    world = World()
    b1, b2, b3 = broker_ids(3)
    world.found([b1], group_ids(6), 3)
    async with running(world):
        await world.join(b2)
        await trio.sleep(ROUND * 3)
        await world.join(b3)
        await converge(world, 3)
        for grp in world.groups.values():
            assert grp.voters == {b1, b2, b3}
        leads = world.leader_counts()
        assert max(leads.values()) <= leader_share(6, 3) + 1 and min(leads.values()) >= 1
        starts = [c for c in world.metadata.proposed if isinstance(c, StartReplicaMove)]
        assert len(starts) == 12 and all(c.source is None for c in starts)
        assert min(world.min_voters.values()) == 1  # (never below what it was founded with)
        await quiet(world)


async def test_a_fourth_then_sixth_broker_receive_replicas_and_leaders(autojump_clock):
    world = World()
    brokers = broker_ids(6)
    world.found(brokers[:3], group_ids(6), 3)
    async with running(world):
        await world.join(brokers[3])
        await balanced(world, 3)
        counts = world.replica_counts()
        assert sorted(counts.values()) == [4, 4, 5, 5]
        leads = world.leader_counts()
        assert leads[brokers[3]] >= 1 and max(leads.values()) <= leader_share(6, 4) + 1
        await quiet(world, 4)
        await world.join(brokers[4])
        await world.join(brokers[5])
        await balanced(world, 3)
        assert set(world.replica_counts().values()) == {3}
        await quiet(world)
        # Leadership went to the preferred leaders, an optimal assignment: one group each.
        assert set(world.leader_counts().values()) == {1}
        # One change at a time, a learner first: no group ever had fewer than R voters.
        assert min(world.min_voters.values()) == 3


async def test_draining_a_broker_empties_it_and_then_it_can_be_unregistered(autojump_clock):
    world = World()
    brokers = broker_ids(4)
    world.found(brokers, group_ids(6), 3)
    leaving = brokers[3]
    async with running(world) as (balancing, _):
        await balanced(world, 3)
        assert world.replica_counts()[leaving] > 0
        state = await balancing.drain(leaving, True)
        assert state.draining and state.replicas == world.replica_counts()[leaving]
        await wait_until(lambda: not world.replica_counts()[leaving] and world.consistent(3))
        assert world.leader_counts()[leaving] == 0
        assert balancing.drain_state(leaving).replicas == 0
        assert min(world.min_voters.values()) == 3
        await quiet(world, 4)
        assert leaving in world.metadata.map.brokers  # (still a member: the map keeps it)
        world.known.discard(leaving)  # the operator removes it from the metadata group
        await wait_until(lambda: leaving not in world.metadata.map.brokers)
        assert UnregisterBroker(leaving) in world.metadata.proposed
        # Once it left the metadata group, the balancer recorded it dead (once), then forgot it.
        assert alive_reports(world) == [SetBrokerAlive(leaving, False)]
        await quiet(world, 3)


async def test_a_drain_taken_back_stops_moving_replicas_away(autojump_clock):
    world = World()
    brokers = broker_ids(4)
    world.found(brokers, group_ids(6), 3)
    async with running(world) as (balancing, _):
        await balanced(world, 3)
        await balancing.drain(brokers[3], True)
        await trio.sleep(ROUND * 2)
        state = await balancing.drain(brokers[3], False)
        assert not state.draining
        await balanced(world, 3)
        assert world.replica_counts()[brokers[3]] >= 4
        refused = await balancing.drain("B-99999", True)
        assert isinstance(refused, BrokerError) and refused.code == ErrorCode.BAD_REQUEST


async def moving_group(world: World, *, target: str, voting: bool) -> str:
    """A group whose move to ``target`` has gone as far as a learner (or a voter)."""
    with trio.fail_after(3600):
        while True:
            for g, rec in sorted(world.metadata.map.groups.items()):
                grp = world.groups[g]
                here = grp.voters if voting else grp.learners
                if rec.move is not None and rec.move.target == target and target in here:
                    return g
            await trio.sleep(0.05)


def alive_reports(world: World) -> list[SetBrokerAlive]:
    return [c for c in world.metadata.proposed if isinstance(c, SetBrokerAlive)]


async def test_a_move_whose_target_crashes_waits_then_completes_once_it_is_back(
    autojump_clock,
):
    world = World()
    brokers = broker_ids(4)
    world.found(brokers[:3], group_ids(6), 3)
    async with running(world):
        await world.join(brokers[3])
        g = await moving_group(world, target=brokers[3], voting=False)
        world.crash(brokers[3])
        await trio.sleep(ROUND * 6)
        assert not world.metadata.map.brokers[brokers[3]].alive
        # The move waits: its source stays, every group keeps R voters.
        source = world.metadata.map.groups[g].move.source
        assert source in world.groups[g].voters
        assert all(len(grp.voters) >= 3 for grp in world.groups.values())
        world.heal(brokers[3])
        await balanced(world, 3)
        await quiet(world, 3)
    # The failure detector recorded the crash and the return; the balancer recorded nothing
    # about a member's liveness.
    assert world.detected == [(brokers[3], False), (brokers[3], True)]
    assert alive_reports(world) == []


async def test_a_move_whose_source_crashes_completes_and_evens_out_after_healing(
    autojump_clock,
):
    world = World()
    brokers = broker_ids(4)
    world.found(brokers[:3], group_ids(6), 3)
    async with running(world):
        await world.join(brokers[3])
        g = await moving_group(world, target=brokers[3], voting=False)
        source = world.metadata.map.groups[g].move.source
        world.crash(source)
        await wait_until(lambda: world.metadata.map.groups[g].move is None)
        assert source not in world.groups[g].voters | world.groups[g].learners
        assert brokers[3] in world.groups[g].voters
        world.heal(source)
        await balanced(world, 3)
        await quiet(world, 3)


async def test_the_metadata_leader_failing_mid_move_ends_in_a_consistent_map(autojump_clock):
    world = World()
    brokers = broker_ids(4)
    world.found(brokers[:3], group_ids(6), 3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.run)
        first = world.balancing()
        scope = trio.CancelScope()
        nursery.start_soon(_until, scope, first.run)
        await world.join(brokers[3])
        await wait_until(lambda: any(g.changing for g in world.groups.values()), poll=0.01)
        scope.cancel()  # the metadata leader fails with a group action in flight
        world.metadata.leading = False
        await trio.sleep(ROUND * 2)  # (group leaders' reports fail meanwhile; retried)
        world.metadata.leading = True
        second = world.balancing()
        nursery.start_soon(second.run)
        await balanced(world, 3)
        await quiet(world, 3)
        nursery.cancel_scope.cancel()


async def _until(scope: trio.CancelScope, run) -> None:
    with scope:
        await run()


async def test_a_failure_and_heal_move_leadership_only_a_bounded_number_of_times(
    autojump_clock,
):
    world = World()
    brokers = broker_ids(6)
    world.found(brokers, group_ids(12), 3)
    async with running(world):
        await balanced(world, 3)
        await quiet(world, 2)
        before = len(world.actions)
        world.crash(brokers[0])
        await trio.sleep(ROUND * 6)
        world.heal(brokers[0])
        await trio.sleep(ROUND * 6)
        await quiet(world)
        moved = world.actions[before:]
        # No replica moved: failures only move leadership, at most twice per group (away
        # from the failed broker, then back to the preferred leader).
        assert all(isinstance(a, TransferLeader) for a in moved)
        assert len(moved) <= 2 * 12
        assert max(world.leader_counts().values()) <= leader_share(12, 6) + 1


async def test_a_failing_move_is_logged_once_and_retried_each_round(autojump_clock, caplog):
    world = World()
    brokers = broker_ids(4)
    world.found(brokers[:3], group_ids(3), 3)
    act = world.act
    refusing = True

    async def refuse_learners(cmap, action, leader):
        if refusing and isinstance(action, AddLearner):
            world.actions.append(action)
            return BrokerError(ErrorCode.UNAVAILABLE, "no room")
        return await act(cmap, action, leader)

    world.act = refuse_learners
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with running(world, max_moving_groups=1):
        await world.join(brokers[3])
        await trio.sleep(ROUND * 6)
        tries = [a for a in world.actions if isinstance(a, AddLearner)]
        assert len(tries) >= 4 and len({(a.group_id, a.broker_id) for a in tries}) == 1
        failed = [r for r in caplog.records if getattr(r, "event", None) == "balancer.move_failed"]
        assert len(failed) == 1 and failed[0].levelno == logging.WARNING
        refusing = False
        await balanced(world, 3)
    done = [r for r in caplog.records if getattr(r, "event", None) == "balancer.move"]
    assert any("ADD_LEARNER" in r.getMessage() for r in done)


async def test_rounds_are_bounded_in_frequency_and_rebalance_runs_one_now(autojump_clock):
    world = World()
    brokers = broker_ids(4)
    world.found(brokers[:3], group_ids(6), 3)
    async with running(world) as (balancing, _):
        start = trio.current_time()
        await trio.sleep(ROUND * 10 + 0.5)
        assert balancing.rounds == 10  # the first one interval after leading
        await world.join(brokers[3])
        rounds = balancing.rounds
        report = await _balancing.on_metadata_leader(balancing, Rebalance(), _never)
        assert isinstance(report, Rebalanced) and balancing.rounds == rounds + 1
        started = [m for m in report.moves if m.move == "START_REPLICA_MOVE"]
        assert started and {m.broker_id for m in started} == {brokers[3]}
        assert all(m.outcome == "done" and m.source is not None for m in started)
        assert report.moving_groups == len(started)
        # The regular round comes one interval after the forced one, not sooner.
        await trio.sleep(ROUND - 0.5)
        assert balancing.rounds == rounds + 1
        await trio.sleep(1)
        assert balancing.rounds == rounds + 2
        assert trio.current_time() - start < ROUND * 13


async def _never(request):
    raise AssertionError(f"forwarded {request}")


async def test_operator_requests_are_forwarded_off_the_metadata_leader_refused_without_a_map(
    autojump_clock,
):
    world = World()
    world.found(broker_ids(3), group_ids(3), 3)
    balancing = world.balancing()
    forwarded = []

    async def forward(request):
        forwarded.append(request)
        return BrokerError(ErrorCode.UNAVAILABLE, "stand-in")

    world.metadata.leading = False
    await _balancing.on_metadata_leader(balancing, Rebalance(), forward)
    await _balancing.on_metadata_leader(balancing, DrainBroker("B-00001"), forward)
    assert forwarded == [Rebalance(), DrainBroker("B-00001")]
    for call in (
        _balancing.on_metadata_leader(None, Rebalance(), forward),
        _balancing.on_metadata_leader(None, DrainBroker("B-00001"), forward),
    ):
        refused = await call
        assert refused.code == ErrorCode.UNAVAILABLE and "no balancer" in refused.message
    assert len(forwarded) == 2
    world.metadata.leading = True
    state = await _balancing.on_metadata_leader(balancing, DrainBroker("B-00002"), _never)
    assert state.draining and state.broker_id == "B-00002"
    assert world.metadata.proposed == [SetBrokerDraining("B-00002", True)]
