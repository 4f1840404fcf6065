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


def stream(seed: int, name: str) -> random.Random:
    """The random stream named ``name`` of seed ``seed``'s run: one per component (and one
    per fault parameter), so that a new draw in one component shifts no other's draws.

    ``random.Random`` seeds itself from a ``str`` through SHA-512: the same in every process
    and on every platform, whatever ``PYTHONHASHSEED`` says.
    """
    return random.Random(f"{seed}:{name}")


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
    """Per step, the chance that the operator asks the leader to hand over its leadership."""
    groups: int = 0
    """Members of a consumer group sharing a work queue (0: no group workload)."""
    group_death: float = 0.0
    """Per decision of a member holding leases, the chance that it dies holding them."""
    disk_corruption: float = 0.0
    """Per crash, the chance that one stored entry reads back damaged (see ``_disk``)."""
    disk_lost_writes: float = 0.0
    """Per crash, the chance that the disk loses the tail of what it had synced."""
    disk_torn_writes: float = 0.0
    """Per crash during a write, the chance that the write is torn rather than lost whole."""

    @classmethod
    def derive(cls, seed: int, safety_steps: int, liveness_steps: int) -> FaultParams:
        """Each parameter from a stream of its own (``params:<name>``): adding, removing or
        redrawing one parameter changes no other parameter of any seed."""

        from ._disk import derive_disk_faults  # (it imports this module)

        def draw(name: str) -> random.Random:
            return stream(seed, f"params:{name}")

        n = draw("node_count").choice([3, 3, 5])
        delay_min = draw("delay_min").randint(1, 3)
        delay_max = delay_min + draw("delay_max").choice([2, 8, 20, 40])
        rng = draw("disk_delays")
        disk_delays = tuple(rng.choice([0, 0, 0, 5, 25]) for _ in range(n + 1))
        # A client deadline shorter than the worst round trip would make every operation's
        # outcome unknown: real clients size deadlines to their network, so do these.
        round_trip = 4 * delay_max + 3 * max(disk_delays) + 3 * TICK_STEPS
        rates, skews = draw("clock_rates"), draw("clock_skews")
        partition_steps, restart_steps = draw("partition_steps"), draw("restart_steps")
        return cls(
            node_count=n,
            election_ticks=draw("election_ticks").choice([8, 10, 12]),
            heartbeat_ticks=draw("heartbeat_ticks").choice([1, 2, 3]),
            clock_rates=tuple(round(rates.uniform(0.75, 1.25), 3) for _ in range(n + 1)),
            loss=draw("loss").choice([0.0, 0.01, 0.05, 0.15]),
            duplicate=draw("duplicate").choice([0.0, 0.0, 0.02, 0.1]),
            delay_min=delay_min,
            delay_max=delay_max,
            partition_rate=draw("partition_rate").choice([0.0, 0.002, 0.01, 0.03]),
            partition_steps=(partition_steps.randint(20, 100), partition_steps.randint(150, 600)),
            one_way=draw("one_way").choice([0.0, 0.3]),
            flap_rate=draw("flap_rate").choice([0.0, 0.0, 0.003]),
            crash_rate=draw("crash_rate").choice([0.0, 0.001, 0.004, 0.01]),
            crash_after_sync=draw("crash_after_sync").choice([0.0, 0.0, 0.002, 0.01]),
            crash_after_vote=draw("crash_after_vote").choice([0.0, 0.1, 0.3]),
            restart_steps=(restart_steps.randint(1, 20), restart_steps.randint(30, 400)),
            disk_delays=disk_delays,
            compact_every=draw("compact_every").choice([8, 30, 100]),
            churn_rate=draw("churn_rate").choice([0.0, 0.0, 0.005, 0.02]),
            clients=draw("clients").randint(1, 4),
            client_timeout=max(draw("client_timeout").choice([100, 300, 600]), round_trip),
            client_think=draw("client_think").choice([1, 10, 40]),
            safety_steps=safety_steps,
            liveness_steps=liveness_steps,
            linger=draw("linger").choice([0, 0, 5, 20]),
            retention_rate=draw("retention_rate").choice([0.0, 0.002, 0.01]),
            retention_every=draw("retention_every").choice([20, 50, 150]),
            clock_skews=tuple(skews.choice([0, 0, -300, 300, -3000]) for _ in range(n + 1)),
            transfer_rate=draw("transfer_rate").choice([0.0, 0.0, 0.003, 0.01]),
            groups=draw("groups").choice([0, 0, 2, 3]),
            group_death=draw("group_death").choice([0.0, 0.05, 0.2]),
            **derive_disk_faults(draw),
        )

    def describe(self) -> str:
        return "\n".join(f"  {k} = {v}" for k, v in attrs.asdict(self).items())


# -- client traffic --------------------------------------------------------------------------
