"""The simulator's parameters: the constants of its clock and the fault mix each seed draws."""

from __future__ import annotations

import random
from typing import Any

import attrs

from ..._core._proposals import MAX_GROUP
from ..._protocol._framing import DEFAULT_MAX_FRAME

TICK_STEPS = 10
"""Simulation steps per tick of a clock running at rate 1.0."""

MS_PER_STEP = 10
"""Wall-clock milliseconds per simulation step (a tick at rate 1.0 is then 100 ms)."""

DEFAULT_SAFETY_STEPS = 2500
DEFAULT_LIVENESS_STEPS = 2500

LIVENESS_ROUND_TRIPS = 12
"""The liveness budget is at least this many of the seed's worst round trips: on a slow
network (delays up to 43 steps, slow disks) a client's operation takes a few hundred steps
and the budget in steps alone was short of what a busy cluster that never stops progressing
needs (seed 753: converged 2,613 steps after healing, every operation moving all along)."""


def round_trip_steps(delay_max: int, disk_delays: tuple[int, ...]) -> int:
    """The worst round trip of a seed's network and disks: a request, its replication, the
    acknowledgement and the answer, each disk write in the way, a tick or three."""
    return 4 * delay_max + 3 * max(disk_delays) + 3 * TICK_STEPS


def stream(seed: int, name: str) -> random.Random:
    """The random stream named ``name`` of seed ``seed``'s run: one per component (and one
    per fault parameter), so that a new draw in one component shifts no other's draws.

    ``random.Random`` seeds itself from a ``str`` through SHA-512: the same in every process
    and on every platform, whatever ``PYTHONHASHSEED`` says.
    """
    return random.Random(f"{seed}:{name}")


MIXES: dict[str, dict[str, Any]] = {
    # Every fault at a random intensity: the mix all seeds had before mixes existed (a seed of
    # this mix runs the schedule it ran then).
    "mixed": {},
    # No partitions, many crashes (the leader's among them), quick restarts, slow disks, and
    # crashes with writes in flight, right after syncs and right after votes.
    "crashes": {
        "node_count": [3, 5],
        "partition_rate": [0.0],
        "flap_rate": [0.0],
        "loss": [0.0, 0.01],
        "crash_rate": [0.004, 0.01, 0.02],
        "crash_leader": [0.3, 0.6],
        "crash_in_write": [0.005, 0.02, 0.05],
        "crash_after_sync": [0.002, 0.01, 0.03],
        "crash_after_vote": [0.1, 0.3, 0.6],
        "restart_steps": ((1, 5), (20, 100)),
        "disk_delays": [0, 5, 25, 25],
        "max_batch": [2, 4, 64],
    },
    # Many leader changes while entries are partly replicated: each new leader often cut off
    # at once (so it alone holds its first entries) or right after its first commit (before
    # the others hear of it), the partition it replaces healed; small batches, so a lagging
    # follower catches up over several round trips; busy clients, slow disks.
    "elections": {
        "node_count": [3, 5],
        "election_ticks": [8],
        "partition_rate": [0.0],
        "partition_steps": ((40, 120), (120, 300)),
        "loss": [0.0],
        "delay_max": [2, 8],
        "crash_rate": [0.0, 0.001],
        "crash_leader": [0.5],
        "crash_in_write": [0.0, 0.01],
        "crash_new_leader": [0.05],
        "isolate_new_leader": [0.6, 0.8],
        "isolate_after_commit": [0.6, 0.9],
        "restart_steps": ((1, 10), (20, 150)),
        "transfer_rate": [0.0, 0.003],
        "clients": (2, 4),
        "client_think": [1, 1, 10],
        "disk_delays": [0, 5, 25],
        "max_batch": [2, 4],
    },
    # Votes at risk: elections triggered by leader crashes, voters crashing right after their
    # vote becomes durable and coming back at once, long delays so requests cross.
    "votes": {
        "node_count": [3, 5],
        "partition_rate": [0.0, 0.002],
        "loss": [0.0, 0.01],
        "delay_max": [8, 20, 40],
        "crash_rate": [0.004, 0.01],
        "crash_leader": [0.5, 1.0],
        "crash_after_vote": [0.3, 0.6, 1.0],
        "restart_steps": ((1, 3), (20, 100)),
        "disk_delays": [0, 0, 5, 25],
    },
    # Messages reordered and replayed: long delay spreads, heavy duplication and loss, flapping.
    "reorder": {
        "node_count": [3, 5],
        "delay_max": [20, 40],
        "duplicate": [0.1, 0.3],
        "loss": [0.01, 0.05, 0.15],
        "flap_rate": [0.003, 0.01],
        "crash_in_write": [0.0, 0.01],
        "crash_leader": [0.0, 0.5],
        "max_batch": [2, 4, 64],
    },
}
"""Each fault mix's choices for the parameters it leans on (TigerBeetle's swarm testing: a
seed enables some faults at high intensity rather than every fault at a low one); a parameter
a mix does not name keeps the ``"mixed"`` choices."""

MIX_WEIGHTS = ["mixed", "mixed", "mixed", "crashes", "elections", "votes", "reorder"]
"""``params:mix`` picks one of these: three seeds in seven run every fault at once."""


def mix_of(seed: int) -> str:
    """Seed ``seed``'s fault mix (its ``params:mix`` draw), without deriving the rest."""
    return stream(seed, "params:mix").choice(MIX_WEIGHTS)


WIRE_SHARE = 0.75
"""The share of seeds whose brokers' messages travel encoded (``params:wire``): 3 in 4, since
the wire costs a seed about 40% more CPU (docs/testing.md, "The wire")."""


def derive_wire(draw: Any, n: int) -> dict[str, Any]:
    """The wire's parameters (``_wire``), each from its own stream: whether messages travel
    encoded; how many clients only append, without a producer (none on half the seeds, 3 or
    6: what a leader groups into the form ``APPEND_RUNS`` is for); which brokers (the spare,
    ``n + 1``, among them) run the version before ``APPEND_RUNS``: none on 2 seeds in 5,
    one, some, or all of them on 1 in 5 each; the chance that one of them restarts upgraded
    (none, 30%, all: a rolling upgrade), and that a broker of this version whose logs never
    held that form restarts as the version before (none on half the seeds, 30%, all)."""
    ids = range(1, n + 2)
    rng = draw("old_brokers")
    how = rng.choice(["none", "none", "one", "some", "all"])
    if how == "none":
        old: tuple[int, ...] = ()
    elif how == "one":
        old = (rng.choice(ids),)
    elif how == "some":
        old = tuple(sorted(rng.sample(ids, rng.randint(1, len(ids) // 2))))
    else:
        old = tuple(ids)
    wire = draw("wire").random() < WIRE_SHARE
    # A rolling upgrade's seeds with the wire always have plain appenders: once every broker
    # is upgraded, their groups of appends are what the leaders write in runs, and what a
    # rollback (``rollback_at_runs``) meets.
    appenders = draw("appenders").choice([3, 6] if wire and old else [0, 0, 3, 6])
    return {
        "wire": wire,
        "old_brokers": old,
        "upgrade_at_restart": draw("upgrade_at_restart").choice([0.0, 0.3, 1.0]) if old else 0.0,
        "downgrade_at_restart": draw("downgrade_at_restart").choice([0.0, 0.0, 0.3, 1.0]),
        "appenders": appenders,
        "rollback_at_runs": draw("rollback_at_runs").choice([0.5, 1.0, 1.0]) if old else 0.0,
        "rolling_upgrade": wire and bool(old) and draw("rolling_upgrade").random() < 0.75,
    }


def derive_columns(draw: Any, wire: dict[str, Any]) -> dict[str, Any]:
    """The wire's parameters (:func:`derive_wire`) and the columns', each from its own stream
    (the seeds without pipeliners keep the bounds and the schedule they had): how many
    pipeliners (none on half the seeds, 2 or 3), standing in for as many plain appenders
    where the seed has them (one appender kept: the load a seed's cluster carries stays
    what it was, its liveness goal within reach); the ledgers' bounds, small on most of
    their seeds (a receive fills a group exactly, or is cut); how often a leader's proposing
    is interrupted."""
    pipeliners = draw("pipeliners").choice([0, 0, 2, 3])
    if not pipeliners:
        return wire
    appenders = wire["appenders"]
    if appenders:
        wire["appenders"] = appenders - min(pipeliners, appenders - 1)
    return {
        **wire,
        "pipeliners": pipeliners,
        "max_group": draw("max_group").choice([MAX_GROUP, 3, 5, 8]),
        "max_bytes": draw("max_bytes").choice([DEFAULT_MAX_FRAME, 1200, 2500]),
        "interrupt_rate": draw("interrupt_rate").choice([0.0, 0.05, 0.2]),
    }


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
    reboots: float = 1.0
    """The share of crashes that are machine reboots (power loss: the disk may lose synced
    writes, and the broker starts unverified), the rest being process crashes."""
    mix: str = "mixed"
    """The seed's fault mix (``MIXES``): which faults it leans on (swarm testing)."""
    crash_leader: float = 0.0
    """The share of the schedule's crashes that hit the leader, not a random broker."""
    crash_in_write: float = 0.0
    """Per step, for each broker with a disk write in flight, the chance that it crashes
    before the write completes (the write is lost)."""
    crash_new_leader: float = 0.0
    """The chance that a broker that has just won an election crashes within its first few
    steps as leader: entries of earlier terms are then partly replicated."""
    isolate_new_leader: float = 0.0
    """The chance that a broker that has just won an election is cut off at once, before its
    first entries reach the others."""
    isolate_after_commit: float = 0.0
    """The chance that a leader is cut off right after its commit index first moves in its
    term, before its next messages (and the news of that commit) reach anyone."""
    max_batch: int = 64
    """At most this many entries per ``Replicate`` (the core's ``max_batch``): a lagging
    follower catches up in steps, so a leader hears of partial progress."""
    replication_groups: int = 1
    """Consensus groups per broker (``_replication``): every broker hosts each of them, and
    with several the leaders spread over the brokers (``_balancer``)."""
    wire: bool = False
    """Brokers' messages travel as the bytes the runtime writes, decoded on arrival
    (``_wire``); else as the objects their cores made."""
    old_brokers: tuple[int, ...] = ()
    """With ``wire``: the brokers that start as the version before ``APPEND_RUNS`` (they
    neither read nor write it, ``_wire``)."""
    upgrade_at_restart: float = 0.0
    """With ``wire``: the chance that a broker of the version before restarts upgraded."""
    downgrade_at_restart: float = 0.0
    """With ``wire``: the chance that a broker of this version whose logs never held an
    ``APPEND_RUNS`` entry restarts as the version before."""
    appenders: int = 0
    """Clients that only append, without a producer (``A-<k>``): groups of plain appends."""
    pipeliners: int = 0
    """Clients (``P-<k>``) whose appends are receives of several plain APPENDs to one queue,
    which a leader queues as columns (``Proposals.add_columns``, as the runtime's
    ``Proposing.propose_columns``): none on half the seeds, 2 or 3 (``derive_columns``)."""
    max_group: int = MAX_GROUP
    """The leaders' ledgers' bound of commands per group (``Proposals.max_group``, the
    runtime's ``max_pending``): small on some seeds with pipeliners, so that a receive's run
    fills a group exactly and is cut into parts."""
    max_bytes: int = DEFAULT_MAX_FRAME
    """The ledgers' bound of a group's bytes (``Proposals.max_bytes``, the frame's size in the
    runtime): small on some seeds with pipeliners (a few appends per group)."""
    interrupt_rate: float = 0.0
    """With pipeliners: the chance that a leader's proposing of its queue stops before a group
    (as an exception out of ``propose``): the ledger keeps what it did not propose, in order,
    and the leader proposes it at its next step."""
    rolling_upgrade: bool = False
    """With ``wire``, on 3 in 4 of the seeds with brokers of the version before: the operator
    restarts them one at a time, each coming back upgraded (``_wire``'s
    ``_rolling_upgrade``), so the groups come to write runs within the run."""
    rollback_at_runs: float = 0.0
    """With ``wire``, on a rolling upgrade's seeds (brokers of the version before): the
    chance that a leader's first entry in runs (of its term) makes one of its followers that
    holds none go back to the version before, the leader cut off with it
    (``_wire``'s ``_roll_back``)."""

    @classmethod
    def derive(cls, seed: int, safety_steps: int, liveness_steps: int) -> FaultParams:
        """Each parameter from a stream of its own (``params:<name>``): adding, removing or
        redrawing one parameter changes no other parameter of any seed.

        The seed first draws its fault mix (``params:mix``); a mix replaces the choices of the
        parameters it leans on (``MIXES``) and leaves the others' as in ``"mixed"``, so each
        parameter still takes exactly its own stream's draws.
        """

        from ._disk import derive_disk_faults  # (it imports this module)

        def draw(name: str) -> random.Random:
            return stream(seed, f"params:{name}")

        mix = mix_of(seed)
        lean = MIXES[mix]

        def pick(name: str, default: list) -> Any:
            return draw(name).choice(lean.get(name, default))

        n = pick("node_count", [3, 3, 5])
        delay_min = draw("delay_min").randint(1, 3)
        delay_max = delay_min + pick("delay_max", [2, 8, 20, 40])
        rng = draw("disk_delays")
        slow = lean.get("disk_delays", [0, 0, 0, 5, 25])
        disk_delays = tuple(rng.choice(slow) for _ in range(n + 1))
        # A client deadline shorter than the worst round trip would make every operation's
        # outcome unknown: real clients size deadlines to their network, so do these.
        round_trip = round_trip_steps(delay_max, disk_delays)
        rates, skews = draw("clock_rates"), draw("clock_skews")
        partition_steps, restart_steps = draw("partition_steps"), draw("restart_steps")
        p_lo, p_hi = lean.get("partition_steps", ((20, 100), (150, 600)))
        r_lo, r_hi = lean.get("restart_steps", ((1, 20), (30, 400)))
        return cls(
            node_count=n,
            election_ticks=pick("election_ticks", [8, 10, 12]),
            heartbeat_ticks=pick("heartbeat_ticks", [1, 2, 3]),
            clock_rates=tuple(round(rates.uniform(0.75, 1.25), 3) for _ in range(n + 1)),
            loss=pick("loss", [0.0, 0.01, 0.05, 0.15]),
            duplicate=pick("duplicate", [0.0, 0.0, 0.02, 0.1]),
            delay_min=delay_min,
            delay_max=delay_max,
            partition_rate=pick("partition_rate", [0.0, 0.002, 0.01, 0.03]),
            partition_steps=(partition_steps.randint(*p_lo), partition_steps.randint(*p_hi)),
            one_way=pick("one_way", [0.0, 0.3]),
            flap_rate=pick("flap_rate", [0.0, 0.0, 0.003]),
            crash_rate=pick("crash_rate", [0.0, 0.001, 0.004, 0.01]),
            crash_after_sync=pick("crash_after_sync", [0.0, 0.0, 0.002, 0.01]),
            crash_after_vote=pick("crash_after_vote", [0.0, 0.1, 0.3]),
            restart_steps=(restart_steps.randint(*r_lo), restart_steps.randint(*r_hi)),
            disk_delays=disk_delays,
            compact_every=pick("compact_every", [8, 30, 100]),
            churn_rate=pick("churn_rate", [0.0, 0.0, 0.005, 0.02]),
            clients=draw("clients").randint(*lean.get("clients", (1, 4))),
            client_timeout=max(pick("client_timeout", [100, 300, 600]), round_trip),
            client_think=pick("client_think", [1, 10, 40]),
            safety_steps=safety_steps,
            liveness_steps=liveness_steps,
            linger=pick("linger", [0, 0, 5, 20]),
            retention_rate=pick("retention_rate", [0.0, 0.002, 0.01]),
            retention_every=pick("retention_every", [20, 50, 150]),
            clock_skews=tuple(skews.choice([0, 0, -300, 300, -3000]) for _ in range(n + 1)),
            transfer_rate=pick("transfer_rate", [0.0, 0.0, 0.003, 0.01]),
            groups=pick("groups", [0, 0, 2, 3]),
            group_death=pick("group_death", [0.0, 0.05, 0.2]),
            mix=mix,
            crash_leader=pick("crash_leader", [0.0]),
            crash_in_write=pick("crash_in_write", [0.0]),
            crash_new_leader=pick("crash_new_leader", [0.0]),
            isolate_new_leader=pick("isolate_new_leader", [0.0]),
            isolate_after_commit=pick("isolate_after_commit", [0.0]),
            max_batch=pick("max_batch", [64]),
            # One group on half the seeds (the schedule they ran before groups existed); two
            # on a quarter, three or four on an eighth each.
            replication_groups=pick("replication_groups", [1, 1, 1, 1, 2, 2, 3, 4]),
            reboots=pick("reboots", [0.0, 0.5, 1.0, 1.0]),
            **derive_columns(draw, derive_wire(draw, n)),
            **derive_disk_faults(draw),
        )

    @property
    def liveness_budget(self) -> int:
        """Steps (per replication group) the liveness phase may take to converge: the steps
        asked for, and at least :data:`LIVENESS_ROUND_TRIPS` worst round trips."""
        trips = LIVENESS_ROUND_TRIPS * round_trip_steps(self.delay_max, self.disk_delays)
        return max(self.liveness_steps, trips)

    def describe(self) -> str:
        return "\n".join(f"  {k} = {v}" for k, v in attrs.asdict(self).items())


# -- client traffic --------------------------------------------------------------------------
