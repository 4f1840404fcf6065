"""One run (:class:`Simulation`, from a seed: the safety phase, then the liveness phase) and
a swarm of runs across processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import traceback
from typing import Any

import attrs

from ..._core._raft import RaftNode
from ..._core._raft_messages import Config, SnapshotMeta
from ..._core._spread import SpreadPacer
from .._sim_cluster import MemoryStorage
from .._sim_mutants import MUTANTS, TARGETED_MUTANTS
from ._balancer import (
    SPREAD_INTERVAL_TICKS,
    SPREAD_MUTANTS,
    STABLE_STEPS,
    BalancerMixin,
    SpreadChecker,
    preferred,
)
from ._checker import Checker, settle_views
from ._clients import ClientsMixin, SimClient
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
from ._replication import GroupsMixin, ReplicationGroup, queues_of
from ._wire import WireMixin
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

    wire: bool | None = None
    """The wire's choice given to the run (None: the seed's own, ``params.wire``)."""

    def replay_command(self) -> str:
        cmd = f"python -m trio_broker.testing.sim --seed {self.seed}"
        if self.mutant:
            cmd += f" --mutant {self.mutant}"
        if self.wire is not None:
            cmd += f" --wire {'on' if self.wire else 'off'}"
        if self.params.safety_steps != DEFAULT_SAFETY_STEPS:
            cmd += f" --safety-steps {self.params.safety_steps}"
        if self.params.liveness_steps != DEFAULT_LIVENESS_STEPS:
            cmd += f" --liveness-steps {self.params.liveness_steps}"
        return cmd


class Simulation(
    GroupsMixin,
    NodesMixin,
    NetworkMixin,
    ClientsMixin,
    OperatorMixin,
    WorkersMixin,
    BalancerMixin,
    WireMixin,
):
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
        wire: bool | None = None,
        links: bool | None = None,
    ) -> None:
        self.seed = seed
        self.mutant = mutant
        cores = {**MUTANTS, **TARGETED_MUTANTS}
        if mutant is not None and mutant not in cores and mutant not in SPREAD_MUTANTS:
            raise ValueError(f"unknown mutant {mutant!r}")
        self.node_cls: type[RaftNode] = cores.get(mutant, RaftNode) if mutant else RaftNode
        # The balancer's wish and pacing (a broken one with a spread mutant).
        self.spread_target, self.spread_interval = SPREAD_MUTANTS.get(
            mutant, (preferred, SPREAD_INTERVAL_TICKS)
        )
        self.p = FaultParams.derive(seed, safety_steps, liveness_steps)
        self.wire = wire
        if wire is not None:  # (the seed's own choice, else)
            self.p = attrs.evolve(self.p, wire=wire)
        self.links = self.p.wire if links is None else links
        """The brokers' links are the runtime's connections (``_wire``): a message on a link
        that is not connected is dropped, and one in flight when its link goes down is lost.
        On with the wire (``links``: on or off whatever the wire, for a test)."""
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
        self.restart_rng = stream(seed, "restarts")
        """How long a crashed broker stays down."""
        self.reboot_rng = stream(seed, "reboots")
        """Which crashes are machine reboots (power loss), not process crashes."""
        self.disk_rng = stream(seed, "disks")
        """How long a slow disk takes to complete each write."""
        self.churn_rng = stream(seed, "operator:membership")
        self.retention_rng = stream(seed, "operator:retention")
        self.transfer_rng = stream(seed, "operator:transfers")
        self.version_rng = stream(seed, "versions")
        """Which broker of the version before restarts upgraded (``_wire``)."""
        self.rollback_rng = stream(seed, "faults:versions")
        """Which leaders' first entries in runs make a follower go back (``_roll_back``)."""
        self.log = log
        voters = list(range(1, self.p.node_count + 1))
        self.ids = voters
        if self.p.churn_rate:
            # A spare broker that knows no configuration: the operator adds it as a learner
            # (of group 0), promotes it, removes another voter, and so on (single-server
            # changes). It hosts the other groups too, outside their configurations.
            self.ids = [*voters, self.p.node_count + 1]
        # Each group's state (see _replication): the per-group attributes (``nodes``,
        # ``storage``, ``apps``, ``checker``, ...) are the current group's, ``self.g``.
        self.groups = []
        self.queue_group: dict[str, int] = {}
        for k in range(self.p.replication_groups):
            config = Config(voters)
            storage = {i: MemoryStorage(snapshot=SnapshotMeta(0, 0, config)) for i in voters}
            if self.p.churn_rate:
                storage[self.p.node_count + 1] = MemoryStorage()
            suffix = f":g{k}" if k else ""  # group 0 draws as the single group did
            group = ReplicationGroup(
                index=k,
                queues=queues_of(k),
                storage=storage,
                node_rng={i: stream(seed, f"node:{i}{suffix}") for i in self.ids},
                disk=dict.fromkeys(self.ids),
            )
            self.groups.append(group)
            self.queue_group.update(dict.fromkeys(group.queues, k))
        # The wire (``_wire``): each broker's version, and what each link learned of its peer's.
        self.reads_runs = {i: i not in self.p.old_brokers for i in self.ids}
        self.said: dict[tuple[int, int], bool] = {}
        self.stored_runs: set[int] = set()
        self.starts = dict.fromkeys(self.ids, 0)
        self.relink_at = dict.fromkeys(self.ids, 0)
        self.rolled_back: set[tuple[int, int, int]] = set()
        """(group, leader, term) whose first entries in runs were considered (``_wire``)."""
        self.upgrading: set[int] = set()
        """Brokers down that come back upgraded (``_rolling_upgrade``)."""
        self.upgrade_rng = stream(seed, "operator:upgrade")
        self.upgrade_at = 200 + self.upgrade_rng.randint(0, 200)
        self.rolling_back: set[int] = set()
        """Brokers down that come back as the version before (``_roll_back``)."""
        self.down_at: dict[tuple[int, int], int] = {}
        """The last step each link was down (``_wire``'s ``_links_down``)."""
        self.links_up: set[tuple[int, int]] = set()
        """The links connected at the last look (``_wire``'s ``_note_links_up``)."""
        self.snapshot_ids = 0
        self.clock_acc = {i: stream(seed, f"clock:{i}").uniform(0, TICK_STEPS) for i in self.ids}
        self.broker_ticks = dict.fromkeys(self.ids, 0)
        """Each broker's clock, in ticks (its balancer's pacer reads it)."""
        self.pacers: dict[int, SpreadPacer] = {}
        """Each running broker's balancer pacer (volatile: a restart makes a new one)."""
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
        # Per group (see ReplicationGroup): ``ledgers``, each running broker's proposals ledger
        # (the driver's): the (client, request) of each command, from the moment the leader
        # takes it until it is answered; ``proposals``, the step the first request waiting in
        # a leader's ledger arrived: they are proposed together once ``linger`` steps passed,
        # as the runtime's driver does (proposal batching); ``leader_terms``, each broker's
        # last term seen leading, and its commit index when it won (None once that index has
        # moved): new leaders, and their first commits, are the targets; ``doomed``, new
        # leaders due to crash: broker -> (step, the term it leads).
        self.trace = hashlib.blake2b(digest_size=12)
        self.stats = dict.fromkeys(
            (
                "delivered",
                "dropped",
                "crashes",
                "reboots",
                "starts_unverified",
                "crashes_in_write",
                "leaders_crashed_new",
                "partitions",
                "leaders_cut_off",
                "snapshots_installed",
                "applies_waiting",
                "groups",
                "client_ok",
                "client_unknown",
                "client_redirects",
                "reads",
                "read_index",
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
                "spread_transfers",
                "spread_transfers_futile",
                "spread_moves_healed",
                "wire_frames",
                "wire_bytes",
                "wire_runs_frames",
                "wire_runs_rewritten",
                "wire_upgrades",
                "wire_downgrades",
                "wire_rollbacks",
                "wire_rolling_restarts",
                "link_lost",
                "link_unconnected",
                "links_established",
                "log_read_back",
                "replica_columns",
                "results_as_runs",
                "columns_receives",
                "columns_appends",
                "columns_groups",
                "columns_groups_refused",
                "columns_committed",
                "columns_requeued",
                "columns_refused_at_receive",
                "columns_acked",
                "columns_refused",
            ),
            0,
        )
        for group in self.groups:
            group.checker = Checker(self, queues=group.queues)
        self.spread = SpreadChecker(self)
        # Client c creates the queues of the groups k with k mod clients = c (with one group,
        # C-0 creates both), so that no group waits for every other group's queues.
        self.clients = [
            SimClient(
                f"C-{c}",
                to_create=[
                    q
                    for group in self.groups
                    if group.index % self.p.clients == c
                    for q in group.queues
                ],
            )
            for c in range(self.p.clients)
        ]
        # Plain appenders on some seeds (their own streams: the other clients draw as before).
        self.clients += [
            SimClient(f"A-{k}", to_create=[], appender=True) for k in range(self.p.appenders)
        ]
        # Pipeliners on some seeds (``_nodes._receive_columns``: the leader's columns path).
        self.clients += [
            SimClient(f"P-{k}", to_create=[], pipeliner=True) for k in range(self.p.pipeliners)
        ]
        self.columns_rng = stream(seed, "columns")
        """The interruptions of a leader's proposing (``_nodes._columns_propose``)."""
        self.columns_proposed: set[tuple[int, int, int, int]] = set()
        """(group, leader, term, index) of each group of columns proposed, until applied."""
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
        for group in self.groups:
            # Each broker's disk faults, per group's log (their own ``disk-faults`` stream).
            group.disks = Disks(self)
            if group.index:
                group.disks.rng = stream(seed, f"disk-faults:g{group.index}")
            group.make_view()
        self.__dict__.update(self.groups[0].view)  # group 0 is the current one
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
        if self.g.index:
            event = f"{event} {self.g.id}"  # (group 0's events read as a single group's did)
        self.trace.update(f"{self.now} {event}\n".encode())
        if self.log is not None:
            self.log(f"{self.now:6d} {event}")

    def step(self) -> None:
        """One unit of simulated time: faults, clocks, deliveries, disks, clients, Readys."""
        self.now += 1
        several = len(self.groups) > 1
        if self.faults_on:
            self._inject_faults()
            self._operate()  # membership changes: group 0's
            if self.p.rolling_upgrade and self.links:
                self._rolling_upgrade()
            if self.p.transfer_rate:
                for _ in self.each_group():
                    self._transfer()
            for i, at in list(self.restart_at.items()):
                if at <= self.now and self.nodes[i] is None:
                    del self.restart_at[i]
                    self._start(i)
        if self.now % self.p.retention_every == 0 or (self.faults_on and self.p.retention_rate):
            for _ in self.each_group():
                self._retention()
        if self.workers:
            self._expire_leases()
        ticks = {}
        for i in self.ids:
            if self.nodes[i] is None:
                continue  # (a broker's groups are up or down together)
            self.clock_acc[i] += self.p.clock_rates[i - 1]
            while self.clock_acc[i] >= TICK_STEPS:
                self.clock_acc[i] -= TICK_STEPS
                self.broker_ticks[i] += 1
                ticks[i] = ticks.get(i, 0) + 1
        if ticks:
            # Each group in turn (with one group: each broker in turn, tick by tick, as ever).
            for _ in self.each_group():
                for i, n in ticks.items():
                    node = self.nodes[i]
                    for _ in range(n):
                        node.tick()
                        self.dirty.add(i)
                        self.checker.after_step(i)
                        if several:
                            self._balance(i, node)
        self._deliver_due()
        for group in self.groups:
            if any(group.disk.values()):  # (a write in flight: a tuple, never empty)
                with self.in_group(group.index):
                    self._complete_disks()
        for group in self.groups:
            if group.disks.damaged_values:
                with self.in_group(group.index):
                    for i in list(self.disks.damaged_values):
                        self.disks.repair(i)  # (a broker keeps asking its peers)
        self._clients_step()
        for group in self.groups:
            if group.dirty or group.proposals:
                with self.in_group(group.index):
                    self.dirty.update(self.proposals)
                    for i in sorted(self.dirty):
                        self._drive(i)
                    self.dirty.clear()
        if several and not self.faults_on:
            self.spread.observe()

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
        if not all(self._group_converged() for _ in self.each_group()):
            return False
        # Several groups: and every group's balancer has nothing left to move.
        return len(self.groups) == 1 or self.balancer_quiet()

    def _group_converged(self) -> bool:
        """The current group has one leader, which committed its whole log, and every member
        applied it."""
        leaders = [self.nodes[i] for i in self.live() if self.nodes[i].is_leader]
        if len(leaders) != 1:
            return False
        leader = leaders[0]
        if leader.commit != leader.log.last_index:
            return False
        members = leader.config.members
        if not self.disks.values_intact(members):
            return False  # every damaged value repaired from a peer (_disk)
        return all(self.app_index[i] == leader.commit for i in self.live() if i in members)

    def run(self) -> SimResult:
        """The safety phase, then the liveness phase; never raises, reports in the result."""
        error = None
        try:
            for _ in range(self.p.safety_steps):
                self.step()
            self._heal_all()
            # A step is one event of the whole simulation: with several groups each group gets
            # about its share of them, so the budget to converge grows with the groups (seeds
            # 6572 and 7868, two groups each, converged after 2,500 steps, within 5,000).
            for _ in range(self.p.liveness_budget * len(self.groups)):
                self.step()
                if self.converged():
                    break
            else:
                raise SimulationFailure(self._liveness_report())
            if len(self.groups) > 1:
                # The spread's outcome, then leadership must stay where it is.
                self.spread.at_convergence()
                for _ in range(STABLE_STEPS):
                    self.step()
                    self.spread.stable()
            settle_views(self)
            for _ in self.each_group():
                self.checker.final_check()
        except SimulationFailure as exc:
            error = f"step {self.now}: {exc}"
        except Exception:
            error = f"step {self.now}: core raised\n{traceback.format_exc()}"
        self.stats["steps"] = self.now
        self.stats["replication_groups"] = len(self.groups)
        checkers = [group.checker for group in self.groups]
        self.stats["max_term"] = max(max(c.leader_of_term, default=0) for c in checkers)
        self.stats["elections"] = sum(len(c.leader_of_term) for c in checkers)
        self.stats["committed"] = sum(max(c.committed, default=0) for c in checkers)
        # Transfers whose target led the very next term: handed over, not merely attempted.
        self.stats["transfers_taken_over"] = sum(
            1
            for group in self.groups
            for term, target in set(group.transfers_requested)
            if group.checker.leader_of_term.get(term + 1) == target
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
            wire=self.wire,
        )

    def _liveness_report(self) -> str:
        lines = [f"liveness: no convergence {self.p.liveness_budget} steps after healing"]
        for group in self.each_group():
            for i in self.ids:
                name = f"{group.id} " if len(self.groups) > 1 else ""
                lines.append(f"  {name}{self.nodes[i]!r} applied={self.app_index[i]}")
        if len(self.groups) > 1:
            lines.extend(self.spread.report())
        for group in self.each_group():
            for i, places in sorted(self.disks.damaged_values.items()):
                lines.append(f"  {group.id} node {i}: damaged values not repaired {sorted(places)}")
        for c in self.clients:
            lines.append(f"  {c.id} op={c.op} ok_after_heal={c.ok_after_heal}")
        return "\n".join(lines)


def run_seed(
    seed: int,
    mutant: str | None = None,
    safety_steps: int = DEFAULT_SAFETY_STEPS,
    liveness_steps: int = DEFAULT_LIVENESS_STEPS,
    wire: bool | None = None,
) -> SimResult:
    """Run one seed; the same arguments always give the same result and trace hash."""
    return Simulation(
        seed, mutant=mutant, safety_steps=safety_steps, liveness_steps=liveness_steps, wire=wire
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
    wire: bool | None = None,
) -> list[SimResult]:
    """Run many seeds, across ``jobs`` processes (``wire``: on or off for every seed; None:
    each seed's own choice)."""
    work = [(s, mutant, safety_steps, liveness_steps, wire) for s in seeds]
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
