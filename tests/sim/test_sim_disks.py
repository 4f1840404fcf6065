"""The simulator's disk faults (``testing/sim/_disk.py``) and the cores and brokers they catch.

Storage faults after TigerBeetle's storage fault model: bit flips found by checksum, synced
writes lost, torn writes. Placed where the cluster can recover (a minority damaged at a time;
synced entries lost only where quorum - 1 of the others hold them intact), the swarm's usual
invariants must hold (``test_sim.py``'s swarm runs with them); a core or a broker that trusts
a damaged log must not survive the default seeds.
"""

import attrs
import pytest

from trio_broker._core._commands import AppendMessage, CreateQueue
from trio_broker._core._raft_messages import Entry
from trio_broker.testing.sim import Simulation, SimulationFailure, _disk, run_seed, run_swarm

DEFAULT_SEEDS = 200
"""As in test_sim.py: the swarm's default seed count."""


def test_simulator_catches_a_core_that_trusts_a_damaged_log():
    """Votes (and campaigns) while recovering: a candidate without a committed entry wins."""
    # One process: the first failing seed ends the run (a pool would finish its chunks).
    results = run_swarm(
        range(DEFAULT_SEEDS), mutant="trust_damaged_log", jobs=1, stop_on_failure=True
    )
    failures = [r for r in results if not r.ok]
    assert failures, f"trust_damaged_log survived {DEFAULT_SEEDS} seeds"
    assert "leader completeness" in failures[0].error, failures[0].error


def test_simulator_catches_a_leader_that_trusts_a_regressed_follower():
    """A leader that never repairs a follower whose log went backwards: the group cannot
    converge. Seed 15 is the first of the default seeds to show it (test_sim.py's mutant scan
    finds it there too; this replay checks what it fails)."""
    r = run_seed(15, mutant="trust_regressed_follower")
    assert not r.ok and "liveness" in r.error
    assert run_seed(15).ok


def test_simulator_catches_a_broker_that_reads_past_a_checksum_mismatch(monkeypatch):
    """A start-up read that ignores the damage (serves the log as stored): damaged entries
    are applied, and the checker says so."""

    def trusting(self, i):
        return list(self.sim.storage[i].entries), None

    monkeypatch.setattr(_disk.Disks, "recovery_read", trusting)
    results = run_swarm(range(DEFAULT_SEEDS), jobs=1, stop_on_failure=True)
    failures = [r for r in results if not r.ok]
    assert failures and "Damaged" in failures[0].error, failures and failures[0].error


def quiet_sim(seed: int = 0) -> Simulation:
    """A simulation at its start, its brokers' logs filled by hand: 1..6 on every disk."""
    sim = Simulation(seed, safety_steps=0, liveness_steps=0)
    # No faults but those the test makes, and instant disks.
    sim.p = attrs.evolve(
        sim.p,
        disk_corruption=0.0,
        disk_lost_writes=0.0,
        disk_torn_writes=0.0,
        disk_delays=(0,) * len(sim.p.disk_delays),
    )
    log = [Entry(1, 1, CreateQueue("Q"))] + [
        Entry(1, k, AppendMessage("Q", str(k).encode())) for k in range(2, 7)
    ]
    for i in sim.ids:
        sim.storage[i].entries = list(log)
        sim.crash(i)
    return sim


def test_a_damaged_entry_is_cut_with_its_tail_and_the_broker_recovers_until_the_old_end():
    sim = quiet_sim()
    disks = sim.disks
    disks._damage(1, 4)
    entries, damage = disks.recovery_read(1)
    assert damage == (4, 6) and [e.index for e in entries] == [1, 2, 3]
    assert isinstance(sim.storage[1].entries[3].payload, _disk.DamagedPayload)
    assert sim.storage[1].entries[3].payload != sim.storage[2].entries[3].payload
    sim._start(1)
    node = sim.nodes[1]
    assert node.recovering_until == 6 and node.log.last_index == 3
    # Its first Ready deletes the damaged rows and persists the recovering state, atomically:
    # from then on that state is the only record of the loss, and survives a restart.
    sim._drive(1)
    assert [e.index for e in sim.storage[1].entries] == [1, 2, 3]
    assert sim.storage[1].hard_state.recovering_until == 6
    sim.crash(1)
    sim._start(1)
    assert sim.nodes[1].recovering_until == 6
    with pytest.raises(SimulationFailure, match="damaged entry 4"):
        disks.check_applied(1, Entry(1, 4, _disk.DamagedPayload("AppendMessage(...)")))


def test_synced_writes_are_lost_only_where_the_rest_of_a_quorum_holds_them():
    sim = quiet_sim()
    for i in sim.ids:
        sim._start(i)
    config = sim.nodes[1].config
    others = sorted(config.voters - {1})
    # Entry 6 is on node 1 alone: losing it could lose an acknowledged write.
    for o in others:
        sim.storage[o].entries = sim.storage[o].entries[:5]
    assert not disks_may_lose(sim, 1, 6)
    # ... once quorum - 1 others hold it (what a commit counting node 1 leaves), yes.
    needed = max(1, config.quorum() - 1)
    for o in others[:needed]:
        sim.storage[o].entries = list(sim.storage[1].entries)
    if needed > 1:
        sim.storage[others[0]].entries = sim.storage[others[0]].entries[:5]
        assert not disks_may_lose(sim, 1, 6)  # one copy short
        sim.storage[others[0]].entries = list(sim.storage[1].entries)
    assert disks_may_lose(sim, 1, 6)
    # A damaged copy before it does not count: that broker's next start cuts its log there.
    sim.disks._damage(others[0], 2)
    assert not disks_may_lose(sim, 1, 6)
    for o in others[needed:]:
        sim.storage[o].entries = list(sim.storage[1].entries)
    assert disks_may_lose(sim, 1, 6)  # (enough intact copies again)


def disks_may_lose(sim: Simulation, i: int, index: int) -> bool:
    st = sim.storage[i]
    return sim.disks._held_by_the_rest_of_a_quorum(i, [e for e in st.entries if e.index >= index])
