"""The simulator's named random streams: one draw more in one place shifts no other draw."""

import os
import subprocess
import sys

import attrs

from trio_broker.testing.sim import FaultParams, Simulation, _params
from trio_broker.testing.sim._params import stream

SEEDS = range(40)


def derive_all() -> dict[int, FaultParams]:
    return {seed: FaultParams.derive(seed, 10, 10) for seed in SEEDS}


def test_a_parameter_drawn_differently_changes_no_other_parameter(monkeypatch):
    """As a new or redrawn parameter would: ``loss`` takes one draw more, and every other
    parameter of every seed stays what it was."""
    before = derive_all()
    real = _params.stream

    def one_draw_more_for_loss(seed, name):
        rng = real(seed, name)
        if name == "params:loss":
            rng.random()
        return rng

    monkeypatch.setattr(_params, "stream", one_draw_more_for_loss)
    after = derive_all()
    # The change has an effect (else the test proves nothing) ...
    assert any(before[s].loss != after[s].loss for s in SEEDS)
    # ... on that parameter alone.
    for s in SEEDS:
        assert attrs.evolve(after[s], loss=before[s].loss) == before[s], s


def test_streams_are_named_per_component_and_fixed_by_the_seed():
    """Different names give different streams, the same (seed, name) the same stream: the
    derivation does not depend on the process (str seeds go through SHA-512, not hash())."""
    assert stream(3, "network").random() == stream(3, "network").random()
    assert stream(3, "network").random() != stream(3, "disks").random()
    assert stream(3, "network").random() != stream(4, "network").random()
    code = (
        "from trio_broker.testing.sim._params import stream; print(stream(3, 'network').random())"
    )
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert float(out) == stream(3, "network").random()


def test_a_client_draw_leaves_the_network_stream_alone():
    """The components hold separate streams: a client drawing from its own leaves the
    network's next draw unchanged."""
    a, b = (
        Simulation(5, safety_steps=0, liveness_steps=0),
        Simulation(5, safety_steps=0, liveness_steps=0),
    )
    b.client_rng[b.clients[0].id].random()
    assert a.net_rng.random() == b.net_rng.random()
    assert a.p == b.p


def test_a_fault_mix_changes_only_the_parameters_it_leans_on(monkeypatch):
    """A seed's mix replaces the choices of the parameters it names and no other: the same seed
    run as ``"mixed"`` draws every other parameter the same (each from its own stream)."""
    derived = {seed: FaultParams.derive(seed, 10, 10) for seed in range(200)}
    assert {p.mix for p in derived.values()} == set(_params.MIXES)  # every mix is drawn
    monkeypatch.setattr(_params, "mix_of", lambda seed: "mixed")
    for seed, p in derived.items():
        as_mixed = FaultParams.derive(seed, 10, 10)
        leaned = set(_params.MIXES[p.mix])
        if leaned & {"node_count"} and p.node_count != as_mixed.node_count:
            # Per-broker draws (clock rates, disks, skews, which brokers run the version
            # before, and so whether any restarts upgraded) then cover another number of them.
            leaned |= {"clock_rates", "disk_delays", "clock_skews"}
            leaned |= {"old_brokers", "upgrade_at_restart"}
        if leaned & {"delay_max", "disk_delays", "node_count"}:
            leaned.add("client_timeout")  # at least the worst round trip
        changed = {
            k for k, v in attrs.asdict(p).items() if v != getattr(as_mixed, k) and k != "mix"
        }
        assert changed <= leaned, (seed, p.mix, changed - leaned)
        if p.mix == "mixed":
            assert p == as_mixed
