"""A deterministic simulator for the consensus core, in the style of TigerBeetle's VOPR.

One seed derives every fault parameter and every random choice, through one named random
stream per component (see :func:`~trio_broker.testing.sim._params.stream`). One plain loop
(no trio) drives 3 or 5 brokers, each hosting 1-4 consensus groups (a
:class:`~trio_broker._core._raft.RaftNode` per group, applying committed entries to its own
:class:`~trio_broker._core.QueueState`; with several, each group's leader hands its leadership
to the group's preferred broker, so leadership spreads), through:

- a simulated network: loss, duplication, reordering (random delays), symmetric and one-way
  partitions, isolating the leader, flapping links; on most seeds it carries the frames the
  runtime writes (``_wire``), some brokers of the version before ``APPEND_RUNS``;
- simulated disks: a Ready is durable only when its write completes (slow disks complete it
  after a delay); a crash loses the write in progress; an optional crash right after a sync;
  storage faults at a crash (``_disk``): bit flips in stored entries found by checksum, lost
  synced writes, torn writes, placed where the cluster can recover;
- node crashes and restarts from their durable state; clocks that tick at different rates;
- an operator: membership changes (learner, promote, remove) and leadership transfers;
- clients: create queue, append (plain, idempotent producer, atomic batch), read (ReadNext,
  ReadBatch) and at-least-once consume (peek, then Ack), with deadlines, NOT_LEADER redirects
  and retries;
- retention: an operator sets and removes queues' retention policies on the leader, every
  leader stamps appends with its own (skewed) wall clock and periodically proposes an
  enforcement (``ApplyRetention``) with it.

Invariants are checked on every step (see :class:`Checker`). A safety phase (faults on) is
followed by a liveness phase (faults healed): a leader must emerge and every client must finish
operations within a bounded number of steps.

Usage::

    python -m trio_broker.testing.sim --seed 42            # replay one run exactly
    python -m trio_broker.testing.sim --seeds 1000 --jobs 4 # a swarm of seeds
    python -m trio_broker.testing.sim --seeds 200 --mutant forget_vote

The package, one module per component:

- ``_params``: the clock's constants and :class:`FaultParams`, the fault mix drawn from the seed;
- ``_network``: the wire (loss, duplication, delays), partitions, flapping links, crashes;
- ``_nodes``: the brokers and their disks, applying entries, grouping proposals, answering;
- ``_clients``: the clients' requests, operations and retries;
- ``_operator``: membership changes, leadership transfers and retention;
- ``_replication``: the replication groups, and the current one of each step;
- ``_balancer``: leadership spread: each group leader's balancer, its checks, broken balancers;
- ``_wire``: brokers' messages as the runtime's encoded frames, decoded on arrival, with
  brokers of the version before ``APPEND_RUNS`` among them;
- ``_entries``: entries as the brokers carry them, on every seed: a replica's decoded from
  the leader's bytes, every log's stored as bytes and decoded at a start, a run of appends
  answered by its lazy results;
- ``_checker``: the invariants (:class:`Checker`, one per group);
- ``_run``: one run (:class:`Simulation`) and a swarm of runs;
- ``_cli``: the command line (``__main__`` runs it).
"""

from .._sim_mutants import MUTANTS
from ._balancer import HEALED_MOVES_MAX, SPREAD_MUTANTS, STABLE_STEPS
from ._checker import Checker
from ._cli import main
from ._clients import QUEUES, ClientRequest, ClientResponse, SimClient
from ._params import (
    DEFAULT_LIVENESS_STEPS,
    DEFAULT_SAFETY_STEPS,
    MS_PER_STEP,
    TICK_STEPS,
    FaultParams,
    SimulationFailure,
)
from ._replication import GROUP_IDS, queues_of
from ._run import SimResult, Simulation, run_seed, run_swarm

__all__ = [
    "DEFAULT_LIVENESS_STEPS",
    "DEFAULT_SAFETY_STEPS",
    "GROUP_IDS",
    "HEALED_MOVES_MAX",
    "MS_PER_STEP",
    "MUTANTS",
    "QUEUES",
    "SPREAD_MUTANTS",
    "STABLE_STEPS",
    "TICK_STEPS",
    "Checker",
    "ClientRequest",
    "ClientResponse",
    "FaultParams",
    "SimClient",
    "SimResult",
    "Simulation",
    "SimulationFailure",
    "main",
    "queues_of",
    "run_seed",
    "run_swarm",
]
