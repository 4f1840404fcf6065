"""A deterministic simulator for the consensus core, in the style of TigerBeetle's VOPR.

One seed (``random.Random(seed)``) derives every fault parameter and every random choice. One
plain loop (no trio) drives 3 or 5 :class:`~trio_broker._core._raft.RaftNode` objects, each
applying committed entries to its own :class:`~trio_broker._core.QueueState`, through:

- a simulated network: loss, duplication, reordering (random delays), symmetric and one-way
  partitions, isolating the leader, flapping links;
- simulated disks: a Ready is durable only when its write completes (slow disks complete it
  after a delay); a crash loses the write in progress; an optional crash right after a sync;
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
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import heapq
import itertools
import multiprocessing
import random
import sys
import time
import traceback
from typing import Any

import attrs

from .._core._commands import (
    Ack,
    AppendBatch,
    AppendMessage,
    ApplyRetention,
    BatchAppended,
    CommandGroup,
    CommandRejected,
    CreateQueue,
    GroupApplied,
    MessageAppended,
    MessageRead,
    MessagesRead,
    PositionSet,
    QueueCreated,
    ReadBatch,
    ReadNext,
    RetentionApplied,
    RetentionPolicy,
    SetRetention,
)
from .._core._queues import QueueState
from .._core._raft import ConfigChangeRefused, NotLeader, RaftNode, Role, TransferRefused
from .._core._raft_messages import ChangeAction, Config, ConfigChange, Entry, SnapshotMeta
from ._sim_cluster import MemoryStorage, apply_entry
from ._sim_mutants import MUTANTS

TICK_STEPS = 10
"""Simulation steps per tick of a clock running at rate 1.0."""

MS_PER_STEP = 10
"""Wall-clock milliseconds per simulation step (a tick at rate 1.0 is then 100 ms)."""

DEFAULT_SAFETY_STEPS = 2500
DEFAULT_LIVENESS_STEPS = 2500


class SimulationFailure(Exception):
    """An invariant was violated (or the core raised): the seed replays it."""


# -- parameters ----------------------------------------------------------------------------------


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


@attrs.frozen
class ClientRequest:
    src: str | None
    """None for the operator's (and the leader's own) commands: proposed, never answered."""
    dst: Any
    req_id: int
    command: Any


@attrs.frozen
class ClientResponse:
    """``kind``: "ok" (with ``result``), "not_leader" (with ``leader_id``) or "dropped" (the
    proposal's index was committed with another entry: definitely not applied)."""

    src: Any
    dst: str
    req_id: int
    kind: str
    result: Any = None
    leader_id: Any = None


QUEUES = ("Q-SIM0A", "Q-SIM0B")


@attrs.define
class SimClient:
    """A client with one operation outstanding at a time, retried until its deadline.

    Operations are ``(kind, queue, arg)``: ``("create", q, None)``, ``("append", q, value)``,
    ``("pappend", q, (value, producer_seq))`` (idempotent producer ``id``), ``("batch", q,
    (values, producer_seq or None))``, ``("read", q, None)`` (ReadNext), ``("rbatch", q, n)``
    (ReadBatch of up to n, moving), and, as the at-least-once consumer :attr:`consumer`,
    ``("peek", q, n)`` then ``("ack", q, sequence_num)``.
    """

    id: str
    to_create: list[str]
    counter: int = 0
    req_id: int = 0
    op: tuple | None = None
    target: Any = None
    deadline: int = 0
    sent_at: int = 0
    next_at: int = 0
    resend_at: int | None = None
    leader_hint: Any = None
    last_read: dict[str, int] = attrs.field(factory=dict)
    skippable: dict[str, int] = attrs.field(factory=dict)
    read_floor: int = 0
    ok_after_heal: int = 0
    producer_seq: dict[str, int] = attrs.field(factory=dict)
    """The last producer_seq used per queue (the producer id is the client id)."""
    acked_at_least: dict[str, int] = attrs.field(factory=dict)
    """The consumer's position per queue as last answered (positions never move back)."""
    unknown_acks: dict[str, list[int]] = attrs.field(factory=dict)
    """The consumer's Acks of unknown outcome: each may still be applied, at any time."""
    to_ack: tuple[str, int] | None = None
    """The consumer's next operation: acknowledge what it peeked."""

    def ack_bounds(self, q: str) -> tuple[int, int]:
        """[lo, hi]: where the consumer's acknowledged position in ``q`` can be."""
        lo = self.acked_at_least.get(q, 0)
        return lo, max([lo, *self.unknown_acks.get(q, ())])

    def ack_known(self, q: str, position: int) -> None:
        self.acked_at_least[q] = position
        self.unknown_acks[q] = [s for s in self.unknown_acks.get(q, ()) if s > position]

    @property
    def consumer(self) -> str:
        """The client id of this client's at-least-once consumer (its own position)."""
        return f"{self.id}/a"

    @property
    def op_is_idempotent(self) -> bool:
        """An idempotent producer's append: re-issued (same seq) past its deadline."""
        return self.op is not None and (
            self.op[0] == "pappend" or (self.op[0] == "batch" and self.op[2][1] is not None)
        )


# -- the simulation ------------------------------------------------------------------------------


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


class Simulation:
    """One run: a cluster, a network, disks, clients and the invariant checker, from a seed."""

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
        self.rng = random.Random(seed)
        self.p = FaultParams.derive(self.rng, safety_steps, liveness_steps)
        # The operator's transfers draw from their own stream: seeds keep their schedules
        # when transfers are off, and the main stream is the same as before transfers existed.
        self.op_rng = random.Random(f"operator-{seed}")
        self.transfers_requested: list[tuple[int, Any]] = []
        self.p = attrs.evolve(self.p, transfer_rate=self.op_rng.choice([0.0, 0.0, 0.003, 0.01]))
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
        self.clock_acc = {i: self.rng.uniform(0, TICK_STEPS) for i in self.ids}
        self.restart_at: dict[int, int] = {}
        self.net: list[tuple[int, int, Any]] = []
        self.seq = 0
        self.blocked: set[tuple[Any, Any]] = set()
        self.partition_until = 0
        self.flap: tuple[Any, Any, int, int] | None = None
        self.now = 0
        self.faults_on = True
        self.heal_step = 0
        self.quiescing = False
        self.dirty: set[int] = set()
        self.pending: dict[tuple[int, int], tuple[int, list[tuple[str, int]]]] = {}
        """(node, log index) -> (term proposed in, the (client, request) of each command)."""
        self.proposals: dict[int, tuple[int, list[ClientRequest]]] = {}
        """Requests a leader received since its last Ready (with the step the first arrived):
        proposed as one group, as the runtime's driver does (proposal batching)."""
        self.trace = hashlib.blake2b(digest_size=12)
        self.stats = dict.fromkeys(
            (
                "delivered",
                "dropped",
                "crashes",
                "partitions",
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
            ),
            0,
        )
        self.checker = Checker(self)
        self.clients = [
            SimClient(f"C-{c}", to_create=list(QUEUES) if c == 0 else [])
            for c in range(self.p.clients)
        ]
        for i in self.ids:
            self._start(i)

    # -- nodes ---------------------------------------------------------------------------------

    def _start(self, i: int) -> None:
        st = self.storage[i]
        self.nodes[i] = self.node_cls(
            i,
            hard_state=st.hard_state,
            snapshot=st.snapshot,
            entries=list(st.entries),
            rng=random.Random(self.rng.getrandbits(64)),
            election_ticks=self.p.election_ticks,
            heartbeat_ticks=self.p.heartbeat_ticks,
        )
        self.apps[i] = copy.deepcopy(st.snapshot_data)
        self.app_index[i] = st.snapshot.index
        self.checker.on_start(i)
        self.dirty.add(i)
        self._trace(f"start {i}")

    def crash(self, i: int, quick: bool = False) -> None:
        """Power loss: volatile state and the disk write in progress are gone."""
        if self.nodes.get(i) is None:
            return
        self.nodes[i] = None
        self.disk[i] = None  # the write in progress is lost
        for key in [k for k in self.pending if k[0] == i]:
            del self.pending[key]
        self.proposals.pop(i, None)
        lo, hi = self.p.restart_steps
        self.restart_at[i] = self.now + self.rng.randint(1, lo if quick else hi)
        self.stats["crashes"] += 1
        self._trace(f"crash {i}")

    def live(self) -> list[int]:
        """Brokers that are up (not crashed)."""
        return [i for i in self.ids if self.nodes[i] is not None]

    # -- network -------------------------------------------------------------------------------

    def _is_blocked(self, src: Any, dst: Any) -> bool:
        if (src, dst) in self.blocked:
            return True
        if self.flap is not None:
            a, b, until, period = self.flap
            if self.now < until and {src, dst} == {a, b} and (self.now // period) % 2 == 0:
                return True
        return False

    def post(self, m: Any, client: bool = False) -> None:
        """Put a message on the wire: maybe lost, maybe duplicated, always randomly delayed."""
        if self.faults_on and self.rng.random() < self.p.loss:
            self.stats["dropped"] += 1
            return
        copies = 1
        if not client and self.faults_on and self.rng.random() < self.p.duplicate:
            copies = 2  # TCP never duplicates a client request; broker traffic may be replayed
        for _ in range(copies):
            delay = self.rng.randint(self.p.delay_min, self.p.delay_max)
            self.seq += 1
            heapq.heappush(self.net, (self.now + delay, self.seq, m))

    def _deliver_due(self) -> None:
        while self.net and self.net[0][0] <= self.now:
            _, _, m = heapq.heappop(self.net)
            if isinstance(m, ClientResponse):
                self._client_response(m)
                continue
            node = self.nodes.get(m.dst)
            blocked = not isinstance(m, ClientRequest) and self._is_blocked(m.src, m.dst)
            if node is None or blocked:
                self.stats["dropped"] += 1
                continue
            self.stats["delivered"] += 1
            if isinstance(m, ClientRequest):
                self.dirty.add(m.dst)
                self._serve(m.dst, node, m)
                continue
            self._trace(f"{type(m).__name__} {m.src}>{m.dst} t{m.term}")
            self.dirty.add(m.dst)
            node.step(m)
            self.checker.after_step(m.dst)

    # -- disks ---------------------------------------------------------------------------------

    def _drive(self, i: int) -> None:
        if self.disk[i] is None:
            # Requests that arrived while the disk was busy share one entry, as in the runtime.
            self._propose_group(i)
        for _ in range(64):
            node = self.nodes[i]
            if node is None or self.disk[i] is not None or not node.has_ready():
                return
            rd = node.ready()
            for m in rd.messages:
                self.post(m)
            delay = self.rng.randint(0, slow) if (slow := self.p.disk_delays[i - 1]) else 0
            if delay:
                self.disk[i] = (self.now + delay, rd)
                return
            self._complete(i, rd)

    def _complete(self, i: int, rd: Any) -> None:
        node = self.nodes[i]
        assert node is not None
        self.storage[i].persist(rd)
        for m in rd.persisted_messages:
            self.post(m)
        if rd.snapshot is not None:
            self.apps[i] = copy.deepcopy(rd.snapshot.data)
            self.app_index[i] = rd.snapshot.snapshot.index
            self.checker.on_snapshot(i, rd.snapshot.snapshot.index, self.apps[i])
            self.stats["snapshots_installed"] += 1
        for e in rd.committed_entries:
            self._apply(i, e)
        if node.is_leader:
            for peer in rd.snapshots_to_send:
                data = copy.deepcopy(self.apps[i])
                self.post(node.make_data_sync(peer, self.app_index[i], data))
        node.advance()
        self.checker.after_step(i)
        applied = self.app_index[i]
        if (
            applied - node.log.snapshot_index >= self.p.compact_every
            and applied <= node.log.persisted_index
            and applied <= node.applied
        ):
            meta = node.compact(applied)
            self.storage[i].compact(meta, self.apps[i])
            self.checker.on_snapshot(i, applied, self.apps[i])
        if self.faults_on:
            # Crash at the worst moments: right after a sync, and (VOPR/buggify style) right
            # after a vote became durable, coming back quickly while the election still runs.
            voted = rd.hard_state is not None and rd.hard_state.voted_for not in (None, i)
            if voted and self.rng.random() < self.p.crash_after_vote:
                self.crash(i, quick=True)
            elif self.rng.random() < self.p.crash_after_sync:
                self.crash(i)

    def _complete_disks(self) -> None:
        for i in self.ids:
            job = self.disk[i]
            if job is not None and job[0] <= self.now:
                self.disk[i] = None
                self.dirty.add(i)
                self._complete(i, job[1])

    def _apply(self, i: int, e: Entry) -> None:
        if e.index != self.app_index[i] + 1:
            raise SimulationFailure(f"node {i} applied {e.index} after {self.app_index[i]}")
        result = apply_entry(self.apps[i], e)
        self.app_index[i] = e.index
        self.checker.on_apply(i, e, result)
        self._trace(f"apply {i} {e.index} t{e.term}")
        waiting = self.pending.pop((i, e.index), None)
        if waiting is not None:
            term, requests = waiting
            if term != e.term:  # another leader's entry took this index
                for client, req_id in requests:
                    self._answer(i, client, req_id, "dropped")
                return
            results = result.results if isinstance(result, GroupApplied) else [result]
            for (client, req_id), one in zip(requests, results, strict=True):
                self._answer(i, client, req_id, "ok", one)

    def _answer(self, i: int, client: str | None, req_id: int, status: str, result=None) -> None:
        if client is not None:  # the operator's commands are not answered
            self.post(ClientResponse(i, client, req_id, status, result), client=True)

    # -- the broker side of client traffic -----------------------------------------------------

    def _serve(self, i: int, node: RaftNode, m: ClientRequest) -> None:
        if not node.is_leader:
            if m.src is not None:
                response = ClientResponse(i, m.src, m.req_id, "not_leader", None, node.leader_id)
                self.post(response, True)
            return
        self.proposals.setdefault(i, (self.now, []))[1].append(m)

    def _propose_group(self, i: int) -> None:
        waiting = self.proposals.get(i)
        node = self.nodes.get(i)
        if waiting is None or node is None or self.now < waiting[0] + self.p.linger:
            return
        del self.proposals[i]
        requests = waiting[1]
        # The leader stamps appends with its wall clock when it proposes them (retention).
        commands = [
            attrs.evolve(m.command, appended_ms=self.wall_ms(i))
            if isinstance(m.command, AppendMessage | AppendBatch)
            else m.command
            for m in requests
        ]
        payload = commands[0] if len(commands) == 1 else CommandGroup(tuple(commands))
        try:
            term, index = node.propose(payload)
        except NotLeader as exc:
            for m in requests:
                if m.src is not None:
                    response = ClientResponse(i, m.src, m.req_id, "not_leader", None, exc.leader_id)
                    self.post(response, True)
            return
        self.stats["groups"] += len(requests) > 1
        replaced = self.pending.pop((i, index), None)
        if replaced is not None:
            # An earlier term's entry at this index was replaced in this leader's log: it was
            # never committed (leader completeness), as the runtime's driver answers.
            for client, req_id in replaced[1]:
                self._answer(i, client, req_id, "dropped")
        self.pending[(i, index)] = (term, [(m.src, m.req_id) for m in requests])

    # -- clients -------------------------------------------------------------------------------

    def _clients_step(self) -> None:
        for c in self.clients:
            if c.op is not None:
                if self.now >= c.deadline and c.op_is_idempotent:
                    # An idempotent producer does not give up on an append of unknown outcome:
                    # it re-issues it with the same producer_seq (applied at most once).
                    self.stats["client_unknown"] += 1
                    self.stats["producer_reissued"] += 1
                    c.deadline = self.now + self.p.client_timeout
                    c.resend_at = None
                    self._send_op(c)
                elif self.now >= c.deadline:
                    self.checker.on_unknown(c)
                    self.stats["client_unknown"] += 1
                    c.op, c.resend_at = None, None
                    c.next_at = self.now + self.p.client_think
                elif c.resend_at is not None and self.now >= c.resend_at:
                    c.resend_at = None
                    self._send_op(c)
                continue
            if self.now < c.next_at or self.quiescing:
                continue
            c.counter += 1
            if c.to_create:
                c.op = ("create", c.to_create[0], None)
            elif c.to_ack is not None:
                c.op = ("ack", *c.to_ack)
                c.to_ack = None
            else:
                known = [q for q in QUEUES if q in self.checker.created]
                if not known:
                    c.next_at = self.now + 10
                    continue
                q = self.rng.choice(known)
                c.op = self._new_op(c, q)
            c.deadline = self.now + self.p.client_timeout
            c.sent_at = self.now
            self._send_op(c)

    def _new_op(self, c: SimClient, q: str) -> tuple:
        """Draw the next operation on ``q``: appends (plain, idempotent, batches) and reads
        (ReadNext, ReadBatch, at-least-once peek)."""
        rng = self.rng
        value = f"{c.id}:{c.counter}".encode()
        if rng.random() < 0.55:
            kind = rng.random()
            if kind < 0.4:
                self.checker.on_append_sent(value)
                return ("append", q, value)
            producer = kind < 0.7 or rng.random() < 0.5
            seq = None
            if producer:
                seq = c.producer_seq.get(q, 0) + 1
                c.producer_seq[q] = seq
            if kind < 0.7:
                self.checker.on_append_sent(value, producer=True, queue=q)
                return ("pappend", q, (value, seq))
            values = tuple(b"%s.%d" % (value, k) for k in range(rng.randint(2, 3)))
            for v in values:
                self.checker.on_append_sent(v, producer=producer, queue=q)
            return ("batch", q, (values, seq))
        c.read_floor = self.checker.max_acked.get(q, 0)
        kind = rng.random()
        if kind < 0.5:
            return ("read", q, None)
        if kind < 0.75:
            return ("rbatch", q, rng.randint(1, 3))
        return ("peek", q, 2)

    def _send_op(self, c: SimClient) -> None:
        kind, q, data = c.op
        if kind == "create":
            command: Any = CreateQueue(q)
        elif kind == "append":
            command = AppendMessage(q, data)
        elif kind == "pappend":
            command = AppendMessage(q, data[0], c.id, data[1])
        elif kind == "batch":
            values, seq = data
            command = AppendBatch(q, values, None if seq is None else c.id, seq)
        elif kind == "rbatch":
            command = ReadBatch(c.id, q, data)
        elif kind == "peek":
            command = ReadBatch(c.consumer, q, data, peek=True)
        elif kind == "ack":
            command = Ack(c.consumer, q, data)
        else:
            command = ReadNext(c.id, q)
        c.req_id += 1
        if c.leader_hint is None or self.rng.random() < 0.1:
            c.target = self.rng.choice(self.ids)
        else:
            c.target = c.leader_hint
        self.post(ClientRequest(c.id, c.target, c.req_id, command), client=True)

    def _client_response(self, r: ClientResponse) -> None:
        c = next(c for c in self.clients if c.id == r.dst)
        if c.op is None or r.req_id != c.req_id:
            return  # a late answer to a request already given up on
        self._trace(f"client {c.id} {r.kind}")
        if r.kind == "not_leader":
            self.stats["client_redirects"] += 1
            c.leader_hint = r.leader_id
            c.resend_at = self.now + (1 if r.leader_id is not None else 20)
            return
        if r.kind == "dropped":
            c.leader_hint = None
            c.resend_at = self.now + 5
            return
        c.leader_hint = r.src
        self.checker.on_result(c, c.op, r.result, r.src)
        self.stats["client_ok"] += 1
        if self.now >= self.heal_step and not self.faults_on:
            c.ok_after_heal += 1
        c.op, c.resend_at = None, None
        c.next_at = self.now + self.p.client_think

    # -- faults --------------------------------------------------------------------------------

    def _inject_faults(self) -> None:
        rng, p = self.rng, self.p
        if rng.random() < p.crash_rate and self.live():
            self.crash(rng.choice(self.live()))
        if self.now >= self.partition_until and self.blocked:
            self.blocked.clear()
            self._trace("heal")
        if self.now >= self.partition_until and rng.random() < p.partition_rate:
            self._partition()
        if self.flap is None and rng.random() < p.flap_rate:
            a, b = rng.sample(self.ids, 2)
            self.flap = (a, b, self.now + rng.randint(50, 400), rng.randint(3, 30))
        elif self.flap is not None and self.now >= self.flap[2]:
            self.flap = None

    def _operate(self) -> None:
        """The operator: one membership change at a time, on whoever is leader."""
        if not self.p.churn_rate or self.rng.random() >= self.p.churn_rate:
            return
        leaders = [self.nodes[i] for i in self.live() if self.nodes[i].is_leader]
        if not leaders:
            return
        leader = leaders[0]
        c = leader.config
        outsiders = [i for i in self.ids if i not in c.members]
        if c.learners:
            learner = min(c.learners)
            if not leader.caught_up(learner):
                return
            change = ConfigChange(ChangeAction.PROMOTE, learner)
        elif outsiders and len(c.voters) <= self.p.node_count:
            change = ConfigChange(ChangeAction.ADD_LEARNER, outsiders[0])
        elif len(c.voters) > self.p.node_count:
            change = ConfigChange(ChangeAction.REMOVE, self.rng.choice(sorted(c.voters)))
        else:
            return
        try:
            leader.propose_config_change(change)
        except ConfigChangeRefused:
            return
        self.dirty.add(leader.id)
        self.stats["config_changes"] += 1
        self._trace(f"config change {change.action.value} {change.node_id} at {leader.id}")

    def wall_ms(self, i: int) -> int:
        """Node ``i``'s wall clock, in ms: true time plus its skew (never the same on two
        leaders, which is why the stamps an append gets are made monotonic when applied)."""
        skews = self.p.clock_skews
        return self.now * MS_PER_STEP + (skews[i - 1] if i - 1 < len(skews) else 0)

    def _retention(self) -> None:
        """The operator changes a queue's retention policy now and then, and the leader
        proposes an enforcement every ``retention_every`` steps while a policy exists."""
        leaders = [i for i in self.live() if self.nodes[i].is_leader]
        if not leaders:
            return
        i = leaders[0]
        leader = self.nodes[i]
        rng = self.rng
        if self.faults_on and self.p.retention_rate and rng.random() < self.p.retention_rate:
            known = sorted(self.checker.created)
            if known:
                kind = rng.random()
                policy = RetentionPolicy(
                    max_messages=rng.randint(2, 12) if kind < 0.5 else None,
                    max_age_ms=rng.choice([200, 1000, 5000]) if 0.3 < kind < 0.8 else None,
                    delete_acknowledged=rng.random() < 0.3,
                )
                # Through the leader's proposal queue, as the runtime's requests: it may share
                # a group with clients' commands.
                self._serve(
                    i, leader, ClientRequest(None, i, 0, SetRetention(rng.choice(known), policy))
                )
                self.dirty.add(i)
                self.stats["retention_policies"] += 1
                self._trace(f"retention {policy} at {i}")
        # Quiescing (the end of the liveness phase) waits for the log to stop growing.
        due = self.now % self.p.retention_every == 0
        if due and not self.quiescing and self.apps[i].retention:
            self._serve(i, leader, ClientRequest(None, i, 0, ApplyRetention(self.wall_ms(i))))
            self.dirty.add(i)
            self.stats["retention_runs"] += 1

    def _transfer(self) -> None:
        """The operator asks the leader to hand its leadership to a voter (or a learner or
        itself, which must be refused without any effect)."""
        if not self.p.transfer_rate or self.op_rng.random() >= self.p.transfer_rate:
            return
        leaders = [self.nodes[i] for i in self.live() if self.nodes[i].is_leader]
        if not leaders:
            return
        leader = leaders[0]
        if self.op_rng.random() < 0.5:
            target = leader.best_transfer_target()
        else:
            target = self.op_rng.choice(self.ids)
        try:
            leader.transfer_leadership(target)
        except TransferRefused:
            assert target == leader.id or target not in leader.config.voters, target
            return
        self.dirty.add(leader.id)
        self.stats["transfers"] += 1
        self.transfers_requested.append((leader.term, target))
        self._trace(f"transfer leadership {leader.id} -> {target}")

    def _partition(self) -> None:
        rng = self.rng
        self.blocked.clear()
        leaders = [i for i in self.live() if self.nodes[i].role is Role.LEADER]
        mode = rng.choice(["isolate_leader", "split", "isolate_one"])
        if mode == "isolate_leader" and leaders:
            side = {leaders[0]}
        elif mode == "isolate_one" or len(self.ids) == 3:
            side = {rng.choice(self.ids)}
        else:
            side = set(rng.sample(self.ids, rng.randint(1, len(self.ids) // 2)))
        one_way = rng.random() < self.p.one_way
        for a in side:
            for b in self.ids:
                if b not in side:
                    self.blocked.add((b, a))
                    if not one_way:
                        self.blocked.add((a, b))
        lo, hi = self.p.partition_steps
        self.partition_until = self.now + rng.randint(lo, hi)
        self.stats["partitions"] += 1
        self._trace(f"partition {sorted(side)} one_way={one_way}")

    def _heal_all(self) -> None:
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
        every operation finished and every broker applied everything the leader holds."""
        if not self.quiescing:
            self.quiescing = all(c.ok_after_heal >= 2 for c in self.clients)
            return False
        if any(c.op is not None for c in self.clients):
            return False
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


# -- invariants ----------------------------------------------------------------------------------


class Checker:
    """The invariants, checked as the run goes (a violation raises SimulationFailure)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leader_of_term: dict[int, int] = {}
        self.committed: dict[int, tuple[int, Any]] = {}
        self.checked_commit: dict[int, int] = {}
        self.leader_checked: dict[int, int] = {}
        self.applied_at: dict[int, tuple[int, Any, str]] = {}
        self.snapshot_digest: dict[int, str] = {}
        self.created: set[str] = set()
        self.appended_data: set[bytes] = set()
        self.producer_data: dict[bytes, str] = {}
        """Values of idempotent appends -> their queue."""
        self.acked: dict[tuple[str, int], bytes] = {}
        self.read_seen: dict[tuple[str, int], bytes] = {}
        self.max_acked: dict[str, int] = {}
        self.trimmed: dict[str, int] = {}
        """Queue -> the highest sequence number retention deleted on any node so far (the
        same on every node at the same applied index; the checks below make sure)."""
        self.retained_at: dict[int, str] = {}
        """Applied index of an enforcement -> digest of the retained messages after it."""

    def fail(self, message: str) -> None:
        raise SimulationFailure(message)

    # -- consensus ---------------------------------------------------------------------------

    def on_start(self, i: int) -> None:
        self.checked_commit[i] = 0

    def after_step(self, i: int) -> None:
        node = self.sim.nodes[i]
        if node is None:
            return
        if node.role is Role.LEADER:
            first = self.leader_of_term.setdefault(node.term, i)
            if first != i:
                self.fail(f"election safety: nodes {first} and {i} both lead term {node.term}")
            if self.leader_checked.get(i) != node.term:
                self.leader_checked[i] = node.term
                self._check_leader_completeness(i, node)
        start = max(self.checked_commit[i], node.log.snapshot_index)
        if node.commit > start:
            for index in range(start + 1, node.commit + 1):
                e = node.log.entry(index)
                prev = self.committed.setdefault(index, (e.term, e.payload))
                if prev != (e.term, e.payload):
                    self.fail(
                        f"committed entry {index} changed: node {i} has {e}, "
                        f"earlier committed {prev}"
                    )
            self.checked_commit[i] = node.commit

    def _check_leader_completeness(self, i: int, node: RaftNode) -> None:
        for index in range(node.log.first_index, max(self.committed, default=0) + 1):
            if index not in self.committed:
                continue
            term = self.committed[index][0]
            if node.log.term(index) != term:
                self.fail(
                    f"leader completeness: node {i} leads term {node.term} without "
                    f"committed entry {index} (term {term})"
                )

    def on_apply(self, i: int, e: Entry, result: Any) -> None:
        record = (e.term, e.payload, repr(result))
        prev = self.applied_at.setdefault(e.index, record)
        if prev != record:
            self.fail(f"state machine safety: node {i} applied {record} at {e.index}, not {prev}")
        app = self.sim.apps[i]
        if isinstance(result, GroupApplied):
            # The state is checked after the whole entry: what a read or an enforcement in a
            # group saw may have been deleted by a later enforcement in the same group.
            commands = e.payload.commands
            for k, (command, one) in enumerate(zip(commands, result.results, strict=True)):
                later = any(isinstance(c, ApplyRetention) for c in commands[k + 1 :])
                self._check_applied(i, app, e.index, command, one, final=not later)
        else:
            self._check_applied(i, app, e.index, e.payload, result)

    def _check_applied(
        self,
        i: int,
        app: QueueState,
        index: int,
        command: Any,
        result: Any,
        final: bool = True,
    ) -> None:
        """``final``: no enforcement follows in the entry, so the state after the entry is
        the state right after this command as far as retention is concerned."""
        if isinstance(result, RetentionApplied):
            for q, first in result.trimmed:
                if final and app.first_retained(q) != first:
                    self.fail(f"node {i}: enforcement says {q} starts at #{first}, it does not")
                if first - 1 > self.trimmed.get(q, 0):
                    self.sim.stats["retention_deleted"] += first - 1 - self.trimmed.get(q, 0)
                    self.trimmed[q] = first - 1
            # Every replica retains the same messages after the same enforcement.
            retained = repr(sorted((q, app.deleted[q], m) for q, m in app.messages.items()))
            digest = hashlib.blake2b(retained.encode(), digest_size=12).hexdigest()
            if self.retained_at.setdefault(index, digest) != digest:
                self.fail(f"node {i} retains other messages than another node after {index}")
        elif isinstance(result, MessageRead | MessagesRead) and final:
            # A read never returns what retention deleted on this replica before it.
            q = command.queue_id
            if isinstance(result, MessageRead):
                read = [] if result.sequence_num is None else [result.sequence_num]
            else:
                read = [seq for seq, _ in result.messages]
            for seq in read:
                if seq < app.first_retained(q):
                    self.fail(f"node {i} read {q} #{seq}, deleted by retention before the read")

    def excused(self, q: str, last: int, seq: int) -> int:
        """How many of the sequence numbers between ``last`` and ``seq`` (exclusive) a read
        may skip because retention deleted them: only a front that some node has deleted."""
        return max(0, min(seq - 1, self.trimmed.get(q, 0)) - last)

    def on_snapshot(self, i: int, index: int, app: QueueState) -> None:
        digest = hashlib.blake2b(repr(app).encode(), digest_size=12).hexdigest()
        prev = self.snapshot_digest.setdefault(index, digest)
        if prev != digest:
            self.fail(f"node {i}: state at {index} differs from another node's at {index}")

    # -- clients -----------------------------------------------------------------------------

    def on_append_sent(self, data: bytes, producer: bool = False, queue: str = "") -> None:
        self.appended_data.add(data)
        if producer:
            self.producer_data[data] = queue

    def on_unknown(self, c: SimClient) -> None:
        kind, q, arg = c.op
        if kind == "read":
            # A read applied but not answered moved this client's position.
            c.skippable[q] = c.skippable.get(q, 0) + 1
        elif kind == "rbatch":
            # ... by up to ``max_messages``.
            c.skippable[q] = c.skippable.get(q, 0) + arg
        elif kind == "ack":
            # An Ack applied but not answered (or applied later) moves the position to ``arg``.
            c.unknown_acks.setdefault(q, []).append(arg)

    def on_result(self, c: SimClient, op: tuple, result: Any, src: Any = None) -> None:
        kind, q, data = op
        if kind == "create":
            if not isinstance(result, QueueCreated) and not (
                isinstance(result, CommandRejected) and result.code == "QUEUE_EXISTS"
            ):
                self.fail(f"create {q}: unexpected {result!r}")
            self.created.add(q)
            if q in c.to_create:
                c.to_create.remove(q)
            return
        if isinstance(result, CommandRejected):
            if result.code == "QUEUE_NOT_FOUND" and q not in self.created:
                return
            if result.code in ("OUT_OF_ORDER_SEQUENCE", "SEQUENCE_TOO_OLD"):
                self.fail(f"{c.id}: idempotent {op!r} answered {result.code}: {result.message}")
            if result.code == "QUEUE_NOT_FOUND":
                self.fail(f"{c.id}: {q} not found after its creation was acknowledged")
            self.fail(f"{c.id}: {op!r} unexpectedly rejected: {result!r}")
        if kind in ("append", "pappend", "batch"):
            self._on_append_result(c, kind, q, data, result, src)
            return
        self.sim.stats["reads"] += 1
        if kind == "ack":
            self._on_ack_result(c, q, data, result)
        elif kind == "peek":
            self._on_peek_result(c, q, data, result)
        elif kind == "rbatch":
            self.sim.stats["batch_reads"] += 1
            if not isinstance(result, MessagesRead) or len(result.messages) > data:
                self.fail(f"read batch of {data}: unexpected {result!r}")
            self._check_consecutive(c.id, q, result.messages)
            if not result.messages:
                self._check_nothing_read(c, q)
            for seq, value in result.messages:
                self._check_read(c, q, seq, value)
            if result.messages and len(result.messages) < data:
                # Fewer than asked: the position reached the end of the queue, which held at
                # least every message acknowledged before the read was sent.
                last = result.messages[-1][0]
                if c.read_floor > last:
                    self.fail(
                        f"{c.id} read batch of {q} stopped at #{last} although message "
                        f"{c.read_floor} was acknowledged before the read"
                    )
        else:
            if not isinstance(result, MessageRead):
                self.fail(f"read: unexpected {result!r}")
            if result.sequence_num is None:
                self._check_nothing_read(c, q)
            else:
                self._check_read(c, q, result.sequence_num, result.data)

    def _on_append_result(
        self, c: SimClient, kind: str, q: str, data: Any, result: Any, src: Any
    ) -> None:
        stats = self.sim.stats
        stats["appends"] += 1
        if kind == "append":
            values, pseq = (data,), None
        elif kind == "pappend":
            values, pseq = (data[0],), data[1]
        else:
            values, pseq = data
        if kind == "batch":
            stats["batch_appends"] += 1
            if not isinstance(result, BatchAppended) or result.count != len(values):
                self.fail(f"append batch of {len(values)}: unexpected {result!r}")
            first = result.first_sequence_num
        else:
            if not isinstance(result, MessageAppended):
                self.fail(f"append: unexpected {result!r}")
            first = result.sequence_num
        if pseq is not None:
            stats["producer_appends"] += 1
        if result.duplicate:
            stats["duplicates"] += 1
            if pseq is None:
                self.fail(f"{c.id}: append without a producer answered duplicate: {result!r}")
        for k, value in enumerate(values):
            self._acknowledge(q, first + k, value)
        if pseq is not None and src in self.sim.apps:
            # The answering broker stores each value once, where the answer says (it may have
            # restarted from an older snapshot since: then it does not hold the append yet).
            app = self.sim.apps[src]
            queue = app.messages.get(q, [])
            for k, value in enumerate(values):
                if queue.count(value) > 1:
                    self.fail(
                        f"producer {c.id} seq {pseq}: {value!r} stored {queue.count(value)} "
                        f"times in {q} (answer {result!r})"
                    )
                stored = app.message(q, first + k)
                if stored is not None and stored != value:
                    self.fail(
                        f"producer {c.id} seq {pseq}: answered {result!r} but #{first + k} of "
                        f"{q} is {stored!r}, not {value!r}"
                    )

    def _acknowledge(self, q: str, seq: int, data: bytes) -> None:
        key = (q, seq)
        if self.acked.setdefault(key, data) != data:
            self.fail(f"two acknowledged appends at {key}: {self.acked[key]!r}, {data!r}")
        if self.read_seen.get(key, data) != data:
            self.fail(f"acknowledged {data!r} at {key} but {self.read_seen[key]!r} was read")
        self.max_acked[q] = max(self.max_acked.get(q, 0), seq)

    def _check_consecutive(self, who: str, q: str, messages: tuple) -> None:
        for (a, _), (b, _) in itertools.pairwise(messages):
            if b != a + 1:
                self.fail(f"{who} got a batch of {q} with #{b} after #{a}: {messages!r}")

    def _check_nothing_read(self, c: SimClient, q: str) -> None:
        last = c.last_read.get(q, 0)
        skippable = c.skippable.get(q, 0)
        # Nothing to read: the position was at the end, or everything after it was deleted
        # (and reads of unknown outcome may have jumped over a deleted front).
        if c.read_floor > max(last, self.trimmed.get(q, 0)) + skippable:
            self.fail(
                f"{c.id} read nothing in {q} at position <= {last + skippable} although "
                f"message {c.read_floor} was acknowledged before the read"
            )

    def _check_data(self, who: str, q: str, seq: int, data: bytes) -> None:
        """Read (or peeked) data was appended, and agrees with what #seq is known to hold."""
        if data not in self.appended_data:
            self.fail(f"{who} read {data!r} that no client ever appended")
        key = (q, seq)
        if self.acked.get(key, data) != data:
            self.fail(f"read {data!r} at {key}, acknowledged {self.acked[key]!r}")
        if self.read_seen.setdefault(key, data) != data:
            self.fail(f"two different messages read at {key}")

    def _check_read(self, c: SimClient, q: str, seq: int, data: bytes) -> None:
        """One message moved to by ``c``: after its last, skipping only what it may have read."""
        last = c.last_read.get(q, 0)
        skippable = c.skippable.get(q, 0)
        if seq <= last:
            self.fail(f"{c.id} read {q} #{seq} after #{last}: repeat or out of order")
        gap = seq - last - 1 - self.excused(q, last, seq)
        if gap > skippable:
            self.fail(
                f"{c.id} read {q} #{seq} after #{last}: gap of {gap} with only {skippable} "
                "reads of unknown outcome (and no deletion by retention there)"
            )
        c.skippable[q] = skippable - gap
        c.last_read[q] = seq
        self._check_data(c.id, q, seq, data)

    def _on_peek_result(self, c: SimClient, q: str, n: int, result: Any) -> None:
        self.sim.stats["peeks"] += 1
        if not isinstance(result, MessagesRead) or len(result.messages) > n:
            self.fail(f"peek of {n}: unexpected {result!r}")
        messages = result.messages
        lo, hi = c.ack_bounds(q)
        if not messages:
            # Nothing after the position: the queue ended there (or retention deleted all
            # that followed), and it held at least every message acknowledged before the peek.
            if c.read_floor > max(hi, self.trimmed.get(q, 0)):
                self.fail(
                    f"{c.consumer} peeked nothing in {q} at position <= {hi} although message "
                    f"{c.read_floor} was acknowledged before the peek"
                )
            return
        self._check_consecutive(c.consumer, q, messages)
        first, last = messages[0][0], messages[-1][0]
        if not lo < first <= hi + 1 + self.excused(q, hi, first):
            self.fail(
                f"{c.consumer} peeked {q} from #{first}, but its acknowledged position is "
                f"within [{lo}, {hi}]"
            )
        if first <= hi + 1 and first - 1 > self.trimmed.get(q, 0):
            c.ack_known(q, first - 1)
        # Otherwise retention deleted what followed the position, which stays as unknown: a
        # peek that starts at the first retained message says nothing about the position
        # below it (an Ack of unknown outcome may or may not have moved it there).
        for seq, value in messages:
            self._check_data(c.consumer, q, seq, value)
        if len(messages) < n and c.read_floor > last:
            self.fail(
                f"{c.consumer} peek of {q} stopped at #{last} although message "
                f"{c.read_floor} was acknowledged before the peek"
            )
        c.to_ack = (q, last)

    def _on_ack_result(self, c: SimClient, q: str, seq: int, result: Any) -> None:
        self.sim.stats["acks"] += 1
        lo, hi = c.ack_bounds(q)
        if not isinstance(result, PositionSet):
            self.fail(f"ack: unexpected {result!r}")
        position = result.next_sequence_num - 1
        if not max(lo, seq) <= position <= max(hi, seq):
            self.fail(
                f"{c.consumer} acked {q} #{seq} with its position within [{lo}, {hi}], "
                f"answered position {position}"
            )
        c.ack_known(q, position)

    def final_check(self) -> None:
        """After convergence: every node holds every acknowledged append at its number, each
        idempotent producer's value exactly once, and every client's positions where its
        answers put them."""
        sim = self.sim
        leader = next(sim.nodes[i] for i in sim.live() if sim.nodes[i].is_leader)
        members = [i for i in sim.live() if i in leader.config.members]
        states = {i: repr(sim.apps[i]) for i in members}
        if len(set(states.values())) != 1:
            self.fail("converged members disagree on the queues")
        for (q, seq), data in self.acked.items():
            for i in members:
                app = sim.apps[i]
                if q in app.messages and seq < app.first_retained(q):
                    # Deleted by retention: only ever from the front of a queue that had a
                    # policy, as every node agrees.
                    if seq > self.trimmed.get(q, 0):
                        self.fail(f"{q} #{seq} is gone from node {i}, never deleted by retention")
                    continue
                if app.message(q, seq) != data:
                    self.fail(f"acknowledged append {q} #{seq} = {data!r} missing on node {i}")
        # Every idempotent append was retried until answered, so each value is there once
        # (or, in a queue that retention trimmed, at most once).
        for i in members:
            counts: dict[bytes, int] = {}
            for queue in sim.apps[i].messages.values():
                for value in queue:
                    counts[value] = counts.get(value, 0) + 1
            for value, q in self.producer_data.items():
                allowed = (0, 1) if self.trimmed.get(q, 0) else (1,)
                if counts.get(value, 0) not in allowed:
                    self.fail(
                        f"idempotent producer's {value!r} stored {counts.get(value, 0)} times "
                        f"on node {i}"
                    )
        app = sim.apps[members[0]]
        for c in sim.clients:
            for q in QUEUES:
                last = c.last_read.get(q, 0)
                # Reads of unknown outcome may also have jumped over a deleted front.
                high = max(last, self.trimmed.get(q, 0)) + c.skippable.get(q, 0)
                if not last <= app.position(c.id, q) <= high:
                    self.fail(
                        f"{c.id}'s position in {q} is {app.position(c.id, q)}, not within "
                        f"[{last}, {high}]"
                    )
                lo, hi = c.ack_bounds(q)
                if not lo <= app.position(c.consumer, q) <= hi:
                    self.fail(
                        f"{c.consumer}'s position in {q} is {app.position(c.consumer, q)}, "
                        f"not within [{lo}, {hi}]"
                    )


# -- command line --------------------------------------------------------------------------------


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_broker.testing.sim", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--seed", type=int, help="replay one seed, printing its parameters")
    group.add_argument("--seeds", type=int, help="run this many seeds (a swarm)")
    parser.add_argument("--first", type=int, default=0, help="first seed of the swarm")
    parser.add_argument("--jobs", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--mutant", choices=sorted(MUTANTS), help="run a deliberately broken core")
    parser.add_argument("--safety-steps", type=int, default=DEFAULT_SAFETY_STEPS)
    parser.add_argument("--liveness-steps", type=int, default=DEFAULT_LIVENESS_STEPS)
    parser.add_argument("--trace", action="store_true", help="print every event of --seed")
    args = parser.parse_args(argv)

    if args.seed is not None:
        sim = Simulation(
            args.seed,
            mutant=args.mutant,
            safety_steps=args.safety_steps,
            liveness_steps=args.liveness_steps,
            log=print if args.trace else None,
        )
        print(f"seed {args.seed}" + (f" (mutant {args.mutant})" if args.mutant else ""))
        print("fault parameters:")
        print(sim.p.describe())
        r = sim.run()
        print("summary: " + ", ".join(f"{k}={v}" for k, v in r.stats.items()))
        print(f"trace hash: {r.trace_hash}")
        if r.ok:
            print("ok")
            return 0
        print(f"FAILED: {r.error}")
        print(f"replay: {r.replay_command()}")
        return 1

    start = time.perf_counter()
    results = run_swarm(
        range(args.first, args.first + args.seeds),
        mutant=args.mutant,
        jobs=args.jobs,
        safety_steps=args.safety_steps,
        liveness_steps=args.liveness_steps,
    )
    elapsed = time.perf_counter() - start
    steps = sum(r.steps for r in results)
    failures = [r for r in results if not r.ok]
    for r in failures:
        first_line = (r.error or "").splitlines()[0]
        print(f"seed {r.seed} FAILED: {first_line}")
        print(f"  replay: {r.replay_command()}")
    print(
        f"{len(results)} seeds, {len(failures)} failed, {elapsed:.1f}s, "
        f"{len(results) / elapsed:.1f} seeds/s, {steps / elapsed:,.0f} steps/s "
        f"({args.jobs} jobs)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
