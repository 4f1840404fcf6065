"""The simulator's parameters: the constants of its clock and the fault mix each seed draws."""

from __future__ import annotations

import random

import attrs

TICK_STEPS = 10
"""Simulation steps per tick of a clock running at rate 1.0."""

MS_PER_STEP = 10
"""Wall-clock milliseconds per simulation step (a tick at rate 1.0 is then 100 ms)."""

DEFAULT_SAFETY_STEPS = 2500
DEFAULT_LIVENESS_STEPS = 2500


class SimulationFailure(Exception):
    """An invariant was violated (or the core raised): the seed replays it."""


@attrs.frozen
class FaultParams:
    """Everything a run varies, all drawn from the seed (swarm testing: each seed enables a
    different mix of faults at different intensities)."""

    node_count: int
    election_ticks: int
    heartbeat_ticks: int
    clock_rates: tuple[float, ...]
    loss: float
    duplicate: float
    delay_min: int
    delay_max: int
    partition_rate: float
    partition_steps: tuple[int, int]
    one_way: float
    flap_rate: float
    crash_rate: float
    crash_after_sync: float
    crash_after_vote: float
    restart_steps: tuple[int, int]
    disk_delays: tuple[int, ...]
    compact_every: int
    churn_rate: float
    clients: int
    client_timeout: int
    client_think: int
    safety_steps: int
    liveness_steps: int
    linger: int
    """Steps a leader waits, after a request arrives, for more to group with it."""
    retention_rate: float = 0.0
    """Chance per step that the operator sets (or removes) a queue's retention policy."""
    retention_every: int = 50
    """Steps between the leader's retention enforcements."""
    clock_skews: tuple[int, ...] = ()
    """Each node's wall clock minus true time, in ms: leaders stamp appends with it."""
    transfer_rate: float = 0.0
    """Per step, the chance that the operator asks the leader to hand over its leadership.
    Drawn from a stream of its own (see Simulation), so that adding it changed no other
    parameter of any seed."""

    @classmethod
    def derive(cls, rng: random.Random, safety_steps: int, liveness_steps: int) -> FaultParams:
        n = rng.choice([3, 3, 5])
        election = rng.choice([8, 10, 12])
        delay_min = rng.randint(1, 3)
        delay_max = delay_min + rng.choice([2, 8, 20, 40])
        disk_delays = tuple(rng.choice([0, 0, 0, 5, 25]) for _ in range(n + 1))
        # A client deadline shorter than the worst round trip would make every operation's
        # outcome unknown: real clients size deadlines to their network, so do these.
        round_trip = 4 * delay_max + 3 * max(disk_delays) + 3 * TICK_STEPS
        return cls(
            node_count=n,
            election_ticks=election,
            heartbeat_ticks=rng.choice([1, 2, 3]),
            clock_rates=tuple(round(rng.uniform(0.75, 1.25), 3) for _ in range(n + 1)),
            loss=rng.choice([0.0, 0.01, 0.05, 0.15]),
            duplicate=rng.choice([0.0, 0.0, 0.02, 0.1]),
            delay_min=delay_min,
            delay_max=delay_max,
            partition_rate=rng.choice([0.0, 0.002, 0.01, 0.03]),
            partition_steps=(rng.randint(20, 100), rng.randint(150, 600)),
            one_way=rng.choice([0.0, 0.3]),
            flap_rate=rng.choice([0.0, 0.0, 0.003]),
            crash_rate=rng.choice([0.0, 0.001, 0.004, 0.01]),
            crash_after_sync=rng.choice([0.0, 0.0, 0.002, 0.01]),
            crash_after_vote=rng.choice([0.0, 0.1, 0.3]),
            restart_steps=(rng.randint(1, 20), rng.randint(30, 400)),
            disk_delays=disk_delays,
            compact_every=rng.choice([8, 30, 100]),
            churn_rate=rng.choice([0.0, 0.0, 0.005, 0.02]),
            clients=rng.randint(1, 4),
            client_timeout=max(rng.choice([100, 300, 600]), round_trip),
            client_think=rng.choice([1, 10, 40]),
            safety_steps=safety_steps,
            liveness_steps=liveness_steps,
            linger=rng.choice([0, 0, 5, 20]),
            # Drawn last, so that the parameters above stay what they were for each seed.
            retention_rate=rng.choice([0.0, 0.002, 0.01]),
            retention_every=rng.choice([20, 50, 150]),
            clock_skews=tuple(rng.choice([0, 0, -300, 300, -3000]) for _ in range(n + 1)),
        )

    def describe(self) -> str:
        return "\n".join(f"  {k} = {v}" for k, v in attrs.asdict(self).items())


# -- client traffic --------------------------------------------------------------------------
