"""The simulator checks that, once the faults healed and the cluster converged, every live
member comes to show the leader's view of the members (``sim._checker.settle_views``);
a leader that sends CLUSTER_UPDATE only when its view changes fails it.

Seed 523 (its own choice of the wire, so the links are connections: a CLUSTER_UPDATE sent
on a link not yet connected again is dropped) loses an update that a replica's view needed
for good. (Seed 208 did until it gained pipeliners, which changed its schedule; 523, found
by a scan of seeds 200-599 with the leader before, has none.)"""

from __future__ import annotations

import pytest

from trio_broker._core._raft import RaftNode
from trio_broker._core._raft_messages import ClusterUpdate
from trio_broker.testing.sim import Simulation, _run, run_seed

SEED = 523


class AnnouncesOnlyChanges(RaftNode):
    """The leader before: CLUSTER_UPDATE to every member when its view changes, never
    again (a lost one is lost for good)."""

    def _maybe_announce(self) -> None:
        view = tuple(self.member_statuses().values())
        if view == self._announced:
            return
        self._announced = view
        for m in sorted(self.config.members):
            if m != self.id:
                self._send(
                    ClusterUpdate(
                        src=self.id,
                        dst=m,
                        term=self.term,
                        cluster_version=self.cluster_version,
                        members=view,
                    )
                )


def test_every_member_comes_to_hold_the_leaders_view() -> None:
    sim = Simulation(SEED)
    r = sim.run()
    assert r.ok, r.error
    assert r.params.wire  # (the links as connections)
    for _ in sim.each_group():
        (leader,) = [sim.nodes[i] for i in sim.live() if sim.nodes[i].is_leader]
        for i in sim.live():
            if i in leader.config.members:
                assert sim.nodes[i].member_statuses() == leader.member_statuses(), i


def test_the_simulator_catches_a_view_lost_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_run, "RaftNode", AnnouncesOnlyChanges)
    r = run_seed(SEED)
    assert not r.ok
    assert r.error is not None and "steps after convergence" in r.error, r.error
    assert "shows" in r.error and "inactive" in r.error, r.error
