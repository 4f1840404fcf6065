"""What the liveness phase asks of a seed, and how long it may take (seeds 753 and 1110 of the
swarm of 2,000, both failing liveness with every broker progressing or rightly idle)."""

import pytest

from trio_broker.testing.sim import Simulation, run_seed
from trio_broker.testing.sim._params import DEFAULT_LIVENESS_STEPS, LIVENESS_ROUND_TRIPS


@pytest.mark.wire  # (each seed as the swarm runs it)
def test_a_removed_broker_keeping_a_damaged_value_does_not_hold_convergence():
    """Seed 1110: broker 2 was removed, its disk damaged a value it had applied, and the
    others then deleted that message (retention), so no copy is left to repair it from and
    nobody replicates to it. It serves nothing; liveness asks the group's members only.

    The seed's schedule is the one it was found with, before the links told the cores when
    they connect (``_wire``'s ``_note_links_up``, whose extra CLUSTER_UPDATEs move every later
    draw): a scan of the seeds below 12,000 with membership churn, disk damage and retention
    on one group found no other that shows this scenario."""
    seen = []

    class Watched(Simulation):
        def _note_links_up(self) -> None:
            pass  # (the schedule the seed was found with; nothing here is about the view)

        def converged(self) -> bool:
            done = super().converged()
            if done and not seen:
                (leader,) = [n for n in self.nodes.values() if n is not None and n.is_leader]
                members = leader.config.members
                seen.append((members, set(self.disks.damaged_values)))
                seen.append((self.disks.values_intact(members), self.disks.values_intact()))
            return done

    r = Watched(1110).run()
    assert r.ok, r.error
    (members, damaged), (members_intact, all_intact) = seen
    assert 2 not in members and 2 in damaged  # (the scenario: damaged, and left out)
    assert members_intact and not all_intact


@pytest.mark.wire
def test_the_liveness_budget_is_counted_in_the_seeds_round_trips():
    """Seed 753 (delays up to 43 steps, disks of 25): the cluster converged 2,613 steps after
    healing, every client's operation moving all along; a fast seed keeps its 2,500 steps."""
    slow = Simulation(753).p
    assert slow.liveness_budget > DEFAULT_LIVENESS_STEPS
    assert slow.liveness_budget == LIVENESS_ROUND_TRIPS * (
        4 * slow.delay_max + 3 * max(slow.disk_delays) + 30
    )
    r = run_seed(753)
    assert r.ok, r.error
    assert r.steps - 2500 > DEFAULT_LIVENESS_STEPS  # (it needed more than the steps alone)
    fast = next(
        p
        for p in (Simulation(seed).p for seed in range(40))
        if 4 * p.delay_max + 3 * max(p.disk_delays) + 30 < 200
    )
    assert fast.liveness_budget == DEFAULT_LIVENESS_STEPS
