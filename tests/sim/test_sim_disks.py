"""The simulator's disk faults (``testing/sim/_disk.py``) and the cores and brokers they catch.

Storage faults after TigerBeetle's storage fault model: bit flips found by checksum (in stored
entries and in stored values), synced writes lost, torn writes. Placed where the cluster can
recover (a minority damaged at a time; synced entries lost only where quorum - 1 of the others
hold them intact; a value damaged only where another broker holds it intact), the swarm's usual
invariants must hold (``test_sim.py``'s swarm runs with them); a core or a broker that trusts a
damaged log, serves a damaged value or never repairs one must not survive the default seeds.
"""

import types

import attrs
import pytest

from trio_broker._core._commands import AppendMessage, CreateQueue, ReadBatch
from trio_broker._core._queues import QueueState
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
    converge. Searched from seed 15, the first of the default seeds to show it (test_sim.py's
    mutant scan finds it there too; this replay checks what it fails), on to the next seeds
    if a change of the simulator's draws takes it from there: a bounded search."""
    for seed in range(15, 15 + 30):
        r = run_seed(seed, mutant="trust_regressed_follower")
        if not r.ok:
            break
    assert not r.ok, "trust_regressed_follower survived seeds 15..44"
    assert "liveness" in r.error, r.error
    assert run_seed(r.seed).ok


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


# -- damaged values ---------------------------------------------------------------------------


def test_simulator_catches_a_broker_that_serves_a_damaged_value(monkeypatch):
    """A broker that applies without checking its values' checksums delivers the damaged one."""
    monkeypatch.setattr(_disk.Disks, "trust_values", True)
    results = run_swarm(range(DEFAULT_SEEDS), jobs=1, stop_on_failure=True)
    failures = [r for r in results if not r.ok]
    assert failures, f"trust_values survived {DEFAULT_SEEDS} seeds"
    assert "delivered a damaged value" in failures[0].error, failures[0].error


def test_simulator_catches_a_broker_that_never_repairs_a_damaged_value(monkeypatch):
    """A broker that finds the damage and never repairs it: held for ever, it cannot converge."""
    monkeypatch.setattr(_disk.Disks, "never_repair", True)
    results = run_swarm(range(DEFAULT_SEEDS), jobs=1, stop_on_failure=True)
    failures = [r for r in results if not r.ok]
    assert failures, f"never_repair survived {DEFAULT_SEEDS} seeds"
    assert "liveness" in failures[0].error, failures[0].error
    assert "damaged values not repaired" in failures[0].error, failures[0].error


def values_sim() -> Simulation:
    """Every broker up, each holding queue Q's values 1..5 (by hand)."""
    sim = quiet_sim()
    for i in sim.ids:
        sim._start(i)
        app = QueueState()
        app.apply(CreateQueue("Q"))
        for k in range(1, 6):
            app.apply(AppendMessage("Q", f"v{k}".encode()))
        sim.apps[i] = app
    return sim


def test_a_read_that_meets_a_damaged_value_is_held_until_a_peer_repairs_it():
    sim = values_sim()
    disks = sim.disks
    app = sim.apps[1]
    _disk._set_value(app, "Q", 3, _disk.DamagedValue(b"v3"))
    disks.damaged_values[1] = {("Q", 3)}
    disks.scrub_at[1] = sim.now + 1000  # (its scrub has not reached it yet)
    # For nobody, without a byte budget: applied without reading any value, so the damage
    # is not found there (the scrub finds it): nothing asked, nothing repaired yet.
    blind = Entry(1, 6, ReadBatch("C-0", "Q", 5))
    assert disks.before_apply(1, types.SimpleNamespace(committed_entries=[blind], snapshot=None))
    disks.check_result(1, blind, app.apply(blind.payload))  # (its answer reaches nobody)
    assert sim.stats["values_repaired"] == 0 and disks.damaged_values[1] == {("Q", 3)}
    # A batch with a byte budget needs the values.
    read = Entry(1, 7, ReadBatch("C-1", "Q", 5, max_bytes=1000))
    ready = types.SimpleNamespace(committed_entries=[read], snapshot=None)
    # A read of messages 1..2 does not meet it: applied at once.
    early = Entry(1, 7, ReadBatch("C-1", "Q", 2, max_bytes=1000))
    assert disks.before_apply(1, types.SimpleNamespace(committed_entries=[early], snapshot=None))
    # Messages 1..5 do: held; the held transaction asks a peer, and the next try goes ahead.
    assert not disks.before_apply(1, ready)
    assert sim.stats["applies_held"] == 1 and sim.stats["values_repaired"] == 1
    assert not isinstance(_disk._value_at(app, "Q", 3), _disk.DamagedValue)
    assert _disk._value_at(app, "Q", 3) == b"v3" and 1 not in disks.damaged_values
    assert disks.before_apply(1, ready)
    result = app.apply(read.payload)
    disks.check_result(1, read, result)
    # What a broker that skipped the check would have answered:
    _disk._set_value(app, "Q", 4, _disk.DamagedValue(b"v4"))
    with pytest.raises(SimulationFailure, match="delivered a damaged value"):
        disks.check_result(1, read, app.apply(ReadBatch("C-2", "Q", 5)))


def test_values_are_damaged_only_where_another_broker_holds_them_and_on_a_minority():
    sim = values_sim()
    disks = sim.disks
    for i in sim.ids:
        sim.storage[i].snapshot_data = sim.apps[i]
    f = (sim.p.node_count - 1) // 2
    # Broker 1's only copy elsewhere damaged too: not held intact elsewhere for that value.
    assert disks._held_elsewhere(1, "Q", 2)
    for o in sim.ids:
        if o != 1:
            _disk._set_value(sim.apps[o], "Q", 2, _disk.DamagedValue(b"v2"))
    assert not disks._held_elsewhere(1, "Q", 2)
    # At most f brokers damaged at a time.
    for i in sim.ids[:f]:
        disks.damaged_values[i] = {("Q", 1)}
    assert not disks._may_damage(sim.ids[f])
    assert disks._may_damage(sim.ids[0])


def test_a_read_for_nobody_goes_past_a_value_no_peer_holds_and_one_waited_for_is_held():
    """A broker behind the others meets a value they have all deleted since: a ReadNext whose
    answer nobody waits for goes ahead over it (never delivered); one a client waits for is
    held, and the waiting request is given up after the round that repaired nothing."""
    sim = values_sim()
    disks = sim.disks
    for o in sim.ids:
        if o != 1:
            sim.apps[o].messages["Q"] = sim.apps[o].messages["Q"][3:]
            sim.apps[o].deleted["Q"] = 3
    app = sim.apps[1]
    _disk._set_value(app, "Q", 2, _disk.DamagedValue(b"v2"))
    disks.damaged_values[1] = {("Q", 2)}
    read = Entry(1, 7, ReadBatch("C-1", "Q", 5))
    ready = types.SimpleNamespace(committed_entries=[read], snapshot=None)
    assert disks.before_apply(1, ready)  # nobody waits: it goes ahead
    result = app.apply(read.payload)
    disks.check_result(1, read, result)  # (its answer reaches nobody)
    assert app.positions[("C-1", "Q")] == 5 and sim.stats["applies_unchecked"] == 1
    # A client waits on the next one: held, and the request given up (outcome unknown).
    again = Entry(1, 8, ReadBatch("C-2", "Q", 5))
    sim.ledgers[1].wait_for(8, 1, ["token"])
    ready = types.SimpleNamespace(committed_entries=[again], snapshot=None)
    assert not disks.before_apply(1, ready)
    assert sim.ledgers[1].waiting(8) is None
    assert disks.before_apply(1, ready)  # (then nobody waits)
    # A batch with a byte budget needs the sizes: held.
    bounded = Entry(1, 9, ReadBatch("C-3", "Q", 5, max_bytes=4))
    ready = types.SimpleNamespace(committed_entries=[bounded], snapshot=None)
    assert not disks.before_apply(1, ready)
