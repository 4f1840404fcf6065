"""One run (:class:`Simulation`, from a seed: the safety phase, then the liveness phase) and
a swarm of runs across processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import traceback
from typing import Any

import attrs

from ..._core._proposals import Proposals
from ..._core._queues import QueueState
from ..._core._raft import RaftNode
from ..._core._raft_messages import Config, SnapshotMeta
from .._sim_cluster import MemoryStorage
from .._sim_mutants import MUTANTS
from ._checker import Checker
from ._clients import QUEUES, ClientsMixin, SimClient
from ._disk import Disks
from ._lifecycle import lifecycle_clients
from ._network import NetworkMixin
from ._nodes import NodesMixin
from ._operator import OperatorMixin
from ._params import (
    DEFAULT_LIVENESS_STEPS,
    DEFAULT_SAFETY_STEPS,
    TICK_STEPS,
    FaultParams,
    SimulationFailure,
    stream,
)
from ._workers import DEAD_LETTERS, WORK_QUEUE, SimWorker, WorkersMixin, group_settings


@attrs.frozen
class SimResult:
    """The outcome of one seed: enough to report it and to replay it."""

    seed: int
    ok: bool
    error: str | None
    steps: int
    trace_hash: str
    stats: dict[str, int]
    params: FaultParams
    mutant: str | None

    def replay_command(self) -> str:
        cmd = f"python -m trio_broker.testing.sim --seed {self.seed}"
        if self.mutant:
            cmd += f" --mutant {self.mutant}"
        if self.params.safety_steps != DEFAULT_SAFETY_STEPS:
            cmd += f" --safety-steps {self.params.safety_steps}"
        if self.params.liveness_steps != DEFAULT_LIVENESS_STEPS:
            cmd += f" --liveness-steps {self.params.liveness_steps}"
        return cmd


class Simulation(NodesMixin, NetworkMixin, ClientsMixin, OperatorMixin, WorkersMixin):
    """One run: a cluster, a network, disks, clients and the invariant checker, from a seed.

    The state lives here, in one object, as one plain loop needs it; each component's steps
    live in its own module, as a mixin this class inherits (the mixins import nothing from
    this module, so the dependencies run one way). Each component draws from its own named
    random stream (the ``*_rng`` attributes, made by ``stream(seed, name)``).
    """

    def __init__(
        self,
        seed: int,
        *,
        mutant: str | None = None,
        safety_steps: int = DEFAULT_SAFETY_STEPS,
        liveness_steps: int = DEFAULT_LIVENESS_STEPS,
        log: Any = None,
    ) -> None:
        self.seed = seed
        self.mutant = mutant
        self.node_cls: type[RaftNode] = MUTANTS[mutant] if mutant else RaftNode
        self.p = FaultParams.derive(seed, safety_steps, liveness_steps)
        # One named random stream per component (see ``stream``): a new draw in one of them
        # shifts no other component's draws, so each seed keeps the rest of its schedule.
        self.net_rng = stream(seed, "network")
        """Loss, duplication and delays of every message on the wire."""
        self.fault_rng = stream(seed, "faults")
        """The fault schedule: crashes, partitions and flapping links."""
        self.crash_point_rng = stream(seed, "crash-points")
        """Crashes at the worst moments: right after a sync, right after a vote."""
        self.leader_fault_rng = stream(seed, "faults:leaders")
        """Faults aimed at leaders: which crash hits the leader, new leaders crashed or cut off."""
        self.write_fault_rng = stream(seed, "faults:writes")
        """Crashes with a disk write in flight."""
        self.leader_terms: dict[int, tuple[int, int | None]] = {}
        """Each broker's last term seen leading, and its commit index when it won (None once
        that index has moved): new leaders, and their first commits, are the targets."""
        self.doomed: dict[int, tuple[int, int]] = {}
        """New leaders due to crash: broker -> (step, the term it leads)."""
        self.restart_rng = stream(seed, "restarts")
        """How long a crashed broker stays down."""
        self.disk_rng = stream(seed, "disks")
        """How long a slow disk takes to complete each write."""
        self.churn_rng = stream(seed, "operator:membership")
        self.retention_rng = stream(seed, "operator:retention")
        self.transfer_rng = stream(seed, "operator:transfers")
        self.transfers_requested: list[tuple[int, Any]] = []
        self.log = log
        voters = list(range(1, self.p.node_count + 1))
        config = Config(voters)
        self.storage = {i: MemoryStorage(snapshot=SnapshotMeta(0, 0, config)) for i in voters}
        self.ids = voters
        if self.p.churn_rate:
            # A spare broker that knows no configuration: the operator adds it as a learner,
            # promotes it, removes another voter, and so on (single-server changes).
            self.ids = [*voters, self.p.node_count + 1]
            self.storage[self.p.node_count + 1] = MemoryStorage()
        self.nodes: dict[int, RaftNode | None] = {}
        self.apps: dict[int, QueueState] = {}
        self.app_index: dict[int, int] = {}
        self.disk: dict[int, tuple[int, Any] | None] = {i: None for i in self.ids}
        self.clock_acc = {i: stream(seed, f"clock:{i}").uniform(0, TICK_STEPS) for i in self.ids}
        self.node_rng = {i: stream(seed, f"node:{i}") for i in self.ids}
        """Each broker's stream: it seeds the core's own ``rng`` at every start."""
        self.restart_at: dict[int, int] = {}
        self.net: list[tuple[int, int, Any]] = []
        self.seq = 0
        self.blocked: set[tuple[Any, Any]] = set()
        self.partition_until = 0
        self.flap: tuple[Any, Any, int, int] | None = None
        self.now = 0
        self.faults_on = True
        self.heal_step = 0
        self.sweep_id = 0
        self.sweep_pending: tuple[int, int, int] | None = None
        """The last idle sweep while unanswered: (leader, its term, the step it was made)."""
        self.quiescing = False
        self.dirty: set[int] = set()
        self.ledgers: dict[int, Proposals[tuple[str | None, int]]] = {}
        """Each running broker's proposals ledger (the driver's): the (client, request) of each
        command, from the moment the leader takes it until it is answered."""
        self.proposals: dict[int, int] = {}
        """The step the first request waiting in a leader's ledger arrived: they are proposed
        together once ``linger`` steps passed, as the runtime's driver does (proposal batching)."""
        self.trace = hashlib.blake2b(digest_size=12)
        self.stats = dict.fromkeys(
            (
                "delivered",
                "dropped",
                "crashes",
                "crashes_in_write",
                "leaders_crashed_new",
                "partitions",
                "leaders_cut_off",
                "snapshots_installed",
                "groups",
                "client_ok",
                "client_unknown",
                "client_redirects",
                "reads",
                "appends",
                "producer_appends",
                "producer_reissued",
                "duplicates",
                "batch_appends",
                "batch_reads",
                "peeks",
                "acks",
                "config_changes",
                "retention_policies",
                "retention_runs",
                "retention_deleted",
                "transfers",
                "group_reads",
                "group_delivered",
                "group_redelivered",
                "group_acks",
                "group_nacks",
                "group_extends",
                "dead_lettered",
                "lease_expiries",
                "worker_deaths",
            ),
            0,
        )
        self.checker = Checker(self)
        self.clients = [
            SimClient(f"C-{c}", to_create=list(QUEUES) if c == 0 else [])
            for c in range(self.p.clients)
        ]
        self.client_rng = {c.id: stream(seed, f"client:{c.id}") for c in self.clients}
        """Each client's stream: its operations, their queues, the broker it asks first."""
        # The consumer-group workload (on some seeds): members with streams of their own.
        self.group_settings = group_settings(stream(seed, "group:settings"))
        workers = [
            SimWorker(f"W-{k}", to_create=[WORK_QUEUE, DEAD_LETTERS] if k == 0 else [])
            for k in range(self.p.groups)
        ]
        workers += lifecycle_clients(seed)  # named queues, deletion, headers, forgetting
        self.workers = {w.id: w for w in workers}
        self.clients += workers
        self.client_rng.update({w.id: stream(seed, f"group:{w.id}") for w in workers})
        self.disks = Disks(self)
        """Each broker's disk faults (their own ``disk-faults`` stream)."""
        for i in self.ids:
            self._start(i)

    def _heal_all(self) -> None:
        for w in self.workers.values():
            w.dead_until = 0  # the dead members come back (as new members)
        self.faults_on = False
        self.heal_step = self.now
        self.blocked.clear()
        self.flap = None
        for i in self.ids:
            if self.nodes[i] is None:
                self._start(i)
        self._trace("heal all")

    # -- the loop ------------------------------------------------------------------------------

    def _trace(self, event: str) -> None:
        self.trace.update(f"{self.now} {event}\n".encode())
        if self.log is not None:
            self.log(f"{self.now:6d} {event}")

    def step(self) -> None:
        """One unit of simulated time: faults, clocks, deliveries, disks, clients, Readys."""
        self.now += 1
        if self.faults_on:
            self._inject_faults()
            self._operate()
            self._transfer()
            for i, at in list(self.restart_at.items()):
                if at <= self.now and self.nodes[i] is None:
                    del self.restart_at[i]
                    self._start(i)
        self._retention()
        if self.workers:
            self._expire_leases()
        for i in self.ids:
            node = self.nodes[i]
            if node is None:
                continue
            self.clock_acc[i] += self.p.clock_rates[i - 1]
            while self.clock_acc[i] >= TICK_STEPS:
                self.clock_acc[i] -= TICK_STEPS
                node.tick()
                self.dirty.add(i)
                self.checker.after_step(i)
        self._deliver_due()
        self._complete_disks()
        self._clients_step()
        self.dirty.update(self.proposals)
        for i in sorted(self.dirty):
            self._drive(i)
        self.dirty.clear()

    def converged(self) -> bool:
        """Liveness goal: every client succeeded twice after healing, then (no new operations)
        every operation finished, the group's members finished every message, and every
        broker applied everything the leader holds."""
        if not self.quiescing:
            self.quiescing = all(c.ok_after_heal >= 2 for c in self.clients)
            return False
        if any(c.op is not None for c in self.clients):
            return False
        if self.workers and not self._group_drained():
            return False  # the members keep reading until every message is done
        leaders = [self.nodes[i] for i in self.live() if self.nodes[i].is_leader]
        if len(leaders) != 1:
            return False
        leader = leaders[0]
        if leader.commit != leader.log.last_index:
            return False
        members = leader.config.members
        return all(self.app_index[i] == leader.commit for i in self.live() if i in members)

    def run(self) -> SimResult:
        """The safety phase, then the liveness phase; never raises, reports in the result."""
        error = None
        try:
            for _ in range(self.p.safety_steps):
                self.step()
            self._heal_all()
            for _ in range(self.p.liveness_steps):
                self.step()
                if self.converged():
                    break
            else:
                raise SimulationFailure(self._liveness_report())
            self.checker.final_check()
        except SimulationFailure as exc:
            error = f"step {self.now}: {exc}"
        except Exception:
            error = f"step {self.now}: core raised\n{traceback.format_exc()}"
        self.stats["steps"] = self.now
        self.stats["max_term"] = max(self.checker.leader_of_term, default=0)
        self.stats["elections"] = len(self.checker.leader_of_term)
        self.stats["committed"] = max(self.checker.committed, default=0)
        # Transfers whose target led the very next term: handed over, not merely attempted.
        self.stats["transfers_taken_over"] = sum(
            1
            for term, target in set(self.transfers_requested)
            if self.checker.leader_of_term.get(term + 1) == target
        )
        return SimResult(
            seed=self.seed,
            ok=error is None,
            error=error,
            steps=self.now,
            trace_hash=self.trace.hexdigest(),
            stats=dict(self.stats),
            params=self.p,
            mutant=self.mutant,
        )

    def _liveness_report(self) -> str:
        lines = [f"liveness: no convergence {self.p.liveness_steps} steps after healing"]
        for i in self.ids:
            lines.append(f"  {self.nodes[i]!r} applied={self.app_index[i]}")
        for c in self.clients:
            lines.append(f"  {c.id} op={c.op} ok_after_heal={c.ok_after_heal}")
        return "\n".join(lines)


def run_seed(
    seed: int,
    mutant: str | None = None,
    safety_steps: int = DEFAULT_SAFETY_STEPS,
    liveness_steps: int = DEFAULT_LIVENESS_STEPS,
) -> SimResult:
    """Run one seed; the same arguments always give the same result and trace hash."""
    return Simulation(
        seed, mutant=mutant, safety_steps=safety_steps, liveness_steps=liveness_steps
    ).run()


def _run_args(args: tuple) -> SimResult:
    return run_seed(*args)


def run_swarm(
    seeds: range | list[int],
    *,
    mutant: str | None = None,
    jobs: int = 1,
    safety_steps: int = DEFAULT_SAFETY_STEPS,
    liveness_steps: int = DEFAULT_LIVENESS_STEPS,
    stop_on_failure: bool = False,
) -> list[SimResult]:
    """Run many seeds, across ``jobs`` processes."""
    work = [(s, mutant, safety_steps, liveness_steps) for s in seeds]
    results = []
    if jobs <= 1:
        for w in work:
            r = _run_args(w)
            results.append(r)
            if stop_on_failure and not r.ok:
                break
        return results
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for r in pool.imap_unordered(_run_args, work, chunksize=4):
            results.append(r)
            if stop_on_failure and not r.ok:
                pool.terminate()
                break
    return sorted(results, key=lambda r: r.seed)
