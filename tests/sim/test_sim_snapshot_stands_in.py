"""The simulator's model of a value nobody holds any more (docs/reliability.md, "A value
nobody holds any more"): a broker behind applies a byte-bounded read over a value its disk
holds damaged, while every other broker has deleted that value since. Held, it asks the
leader for its snapshot; the core installs it although its commit index is past it, and the
held Ready is completed without applying. Without that way out, it stays held for ever."""

import attrs

from trio_broker._core._commands import AppendMessage, CreateQueue, ReadBatch
from trio_broker._core._queues import QueueState
from trio_broker._core._raft_messages import Entry, HardState, SnapshotMeta
from trio_broker._core._work_commands import DeleteQueue
from trio_broker.testing.sim import Simulation, _disk


def quiet_sim(seed: int = 0) -> Simulation:
    """A simulation at its start (as ``test_sim_disks.quiet_sim``): no faults but the test's,
    instant disks, every broker crashed with 1..6 (queue Q, values 1..5) on its disk."""
    sim = Simulation(seed, safety_steps=0, liveness_steps=0)
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


def behind_sim() -> Simulation:
    """Every disk holds 1..6 (queue Q, values 1..5), then a byte-bounded read of Q's first
    five values (7) and Q's deletion (8), all committed. Broker 1 was behind: its state is at
    6 (a snapshot there), with value 3 damaged; the others apply 7 and 8 from their logs."""
    sim = quiet_sim()
    later = [
        Entry(1, 7, ReadBatch("C-1", "Q", 5, max_bytes=1000)),
        Entry(1, 8, DeleteQueue("Q", force=True)),
    ]
    for i in sim.ids:
        st = sim.storage[i]
        st.entries = [*st.entries, *later]
        st.hard_state = HardState(term=1, commit=8)
    st = sim.storage[1]
    app = QueueState()
    for e in st.entries[:6]:
        app.apply(e.payload)
    _disk._set_value(app, "Q", 3, _disk.DamagedValue(b"3"))
    st.snapshot = SnapshotMeta(6, 1, st.snapshot.config)
    st.snapshot_data = app
    st.entries = list(later)
    sim.disks.value_corruption = 0.3  # (its scrub looks for damaged values at start)
    for i in sim.ids:
        sim._start(i)
    sim.disks.scrub_at[1] = sim.now  # (its scrub found it at once)
    sim.faults_on = False
    return sim


def test_a_broker_behind_installs_the_leaders_snapshot_for_a_value_nobody_holds():
    sim = behind_sim()
    assert sim.disks.damaged_values[1] == {("Q", 3)}
    for _ in range(3000):
        sim.step()
        if sim.stats["snapshots_stood_in"] and sim.app_index[1] >= 8:
            break
    assert sim.stats["snapshots_asked"] >= 1 and sim.stats["snapshots_stood_in"] == 1
    assert sim.app_index[1] >= 8 and sim.disks.values_intact()  # (what liveness asks)
    leader = next(i for i in sim.live() if sim.nodes[i].is_leader)
    assert sim.nodes[1].commit >= 8  # never back
    assert sim.apps[1].messages == sim.apps[leader].messages  # (Q deleted there too)
    assert "Q" not in sim.apps[1].messages and sim.nodes[1].applied == sim.app_index[1]


def test_without_the_snapshot_it_stays_held(monkeypatch):
    """The same history without the way out (a broker that never asks): held for ever, what
    the runtime's broker did before, until an operator reset its data."""
    monkeypatch.setattr(_disk.Disks, "_without_a_copy", lambda self, i: None)
    sim = behind_sim()
    for _ in range(1500):
        sim.step()
    assert not sim.stats["snapshots_asked"] and not sim.stats["snapshots_stood_in"]
    assert sim.app_index[1] == 6 and not sim.disks.values_intact()
    assert all(sim.app_index[i] >= 8 for i in sim.ids if i != 1)
