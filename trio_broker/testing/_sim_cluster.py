"""A small in-memory cluster of RaftNodes for scenario tests, with instant, perfect disks.

Scenarios read like the Raft paper: ``cluster.isolate(2)``, ``cluster.heal()``,
``cluster.crash(1)``, ``cluster.restart(1)``, ``cluster.stabilize()``. Messages move only when
the test says so (``stabilize`` delivers until the cluster is quiet); nothing is random except
the nodes' election timeouts, drawn from one seeded ``random.Random``.

The fault-injecting simulator is :mod:`trio_broker.testing.sim`; this helper is its calm
sibling, for tests that must control every message.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from .._core._commands import (
    Ack,
    AppendBatch,
    AppendMessage,
    ApplyRetention,
    CommandGroup,
    CreateQueue,
    ReadBatch,
    ReadNext,
    Seek,
    SetRetention,
)
from .._core._queues import QueueState
from .._core._raft import RaftNode, Ready, Role
from .._core._raft_messages import Config, Entry, HardState, Message, SnapshotMeta

COMMANDS = (
    CreateQueue,
    AppendMessage,
    AppendBatch,
    ReadNext,
    ReadBatch,
    Ack,
    Seek,
    SetRetention,
    ApplyRetention,
    CommandGroup,
)


@attrs.define
class MemoryStorage:
    """What survives a crash: hard state, snapshot (meta and data) and the log after it."""

    hard_state: HardState = attrs.field(factory=HardState)
    snapshot: SnapshotMeta = attrs.field(factory=lambda: SnapshotMeta(0, 0, Config(())))
    snapshot_data: Any = attrs.field(factory=QueueState)
    entries: list[Entry] = attrs.field(factory=list)

    def persist(self, rd: Ready) -> None:
        """Write one Ready's step 2, atomically."""
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot.snapshot
            self.snapshot_data = copy.deepcopy(rd.snapshot.data)
            self.entries = []
        if rd.truncate_from is not None:
            keep = rd.truncate_from - self.snapshot.index - 1
            del self.entries[max(keep, 0) :]
        for e in rd.entries:
            pos = e.index - self.snapshot.index - 1
            if pos < 0:
                continue
            del self.entries[pos:]
            self.entries.append(e)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def compact(self, meta: SnapshotMeta, data: Any) -> None:
        self.entries = [e for e in self.entries if e.index > meta.index]
        self.snapshot = meta
        self.snapshot_data = copy.deepcopy(data)


def apply_entry(app: QueueState, entry: Entry) -> Any:
    """Apply a committed entry; the core's own entries (no-op, config) change no queue."""
    if isinstance(entry.payload, COMMANDS):
        return app.apply(entry.payload)
    return None


class Cluster:
    """A handful of RaftNodes wired through a controllable, lossless in-memory network."""

    def __init__(
        self,
        ids: Iterable[Any] = (1, 2, 3),
        *,
        seed: int = 0,
        learners: Iterable[Any] = (),
        joining: Iterable[Any] = (),
        node_factory: Callable[..., RaftNode] = RaftNode,
        **node_options: Any,
    ) -> None:
        self.rng = random.Random(seed)
        self.node_factory = node_factory
        self.node_options = node_options
        config = Config(frozenset(ids), frozenset(learners))
        self.storage: dict[Any, MemoryStorage] = {}
        self.nodes: dict[Any, RaftNode | None] = {}
        self.apps: dict[Any, QueueState] = {}
        self.applied: dict[Any, list[Entry]] = {}
        for i in [*config.voters, *config.learners, *joining]:
            meta = SnapshotMeta(0, 0, Config(()) if i in set(joining) else config)
            self.storage[i] = MemoryStorage(snapshot=meta)
            self.restart(i)
        self.in_flight: deque[Message] = deque()
        self.cut: set[tuple[Any, Any]] = set()
        self.drop_if: list[Callable[[Message], bool]] = []
        self.leaders_by_term: dict[int, set[Any]] = {}
        self.results: dict[tuple[Any, int], Any] = {}
        self.sent: list[Message] = []

    # -- membership of the simulation ---------------------------------------------------------

    def node(self, i: Any) -> RaftNode:
        n = self.nodes[i]
        assert n is not None, f"node {i} is down"
        return n

    def live(self) -> list[Any]:
        return [i for i, n in sorted(self.nodes.items()) if n is not None]

    def crash(self, i: Any) -> None:
        """Power loss: the volatile state is gone, the durable storage stays."""
        self.nodes[i] = None

    def restart(self, i: Any, *, reboot: bool = False) -> None:
        """Start ``i`` from its storage. With ``reboot``, as after its machine rebooted (the
        runtime finds another boot id): its disk may have lost synced writes, so its hard
        state is marked ``unverified`` as the store marks it; without, a process restart."""
        st = self.storage[i]
        if reboot:
            st.hard_state = attrs.evolve(st.hard_state, unverified=True)
        self.nodes[i] = self.node_factory(
            i,
            hard_state=st.hard_state,
            snapshot=st.snapshot,
            entries=list(st.entries),
            rng=random.Random(self.rng.random()),
            **self.node_options,
        )
        self.apps[i] = copy.deepcopy(st.snapshot_data)
        self.applied[i] = []

    def add_node(self, i: Any) -> None:
        """A fresh broker that knows no configuration: it waits to be added by the leader."""
        self.storage[i] = MemoryStorage()
        self.restart(i)

    # -- network -------------------------------------------------------------------------------

    def isolate(self, i: Any) -> None:
        """Cut every link to and from ``i``."""
        for j in self.nodes:
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def partition(self, *groups: Iterable[Any]) -> None:
        """Only brokers in the same group can talk."""
        groups = [set(g) for g in groups]
        for a in self.nodes:
            for b in self.nodes:
                if a != b and not any(a in g and b in g for g in groups):
                    self.cut.add((a, b))

    def heal(self) -> None:
        self.cut.clear()
        self.drop_if.clear()

    def _post(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            self.sent.append(m)
            self.in_flight.append(m)

    # -- driving -------------------------------------------------------------------------------

    def process(self, i: Any) -> bool:
        """Run one Ready of node ``i`` with an instant, perfect disk."""
        n = self.nodes[i]
        if n is None or not n.has_ready():
            return False
        rd = n.ready()
        self._post(rd.messages)
        self.storage[i].persist(rd)
        self._post(rd.persisted_messages)
        if rd.snapshot is not None:
            self.apps[i] = copy.deepcopy(rd.snapshot.data)
        for e in rd.committed_entries:
            self.results[(i, e.index)] = apply_entry(self.apps[i], e)
            self.applied[i].append(e)
        n.advance()  # (the core's applied index moves here: a snapshot is offered after)
        for peer in rd.snapshots_to_send:
            self._post([n.make_data_sync(peer, n.applied, copy.deepcopy(self.apps[i]))])
        if n.role is Role.LEADER:
            self.leaders_by_term.setdefault(n.term, set()).add(i)
        return True

    def deliver_one(self) -> bool:
        if not self.in_flight:
            return False
        m = self.in_flight.popleft()
        dst = self.nodes.get(m.dst)
        if dst is None or (m.src, m.dst) in self.cut or any(f(m) for f in self.drop_if):
            return True
        dst.step(m)
        if dst.role is Role.LEADER:
            self.leaders_by_term.setdefault(dst.term, set()).add(m.dst)
        return True

    def stabilize(self, limit: int = 100_000) -> None:
        """Persist, send and deliver until no node has anything left to do."""
        for _ in range(limit):
            busy = False
            for i in self.live():
                busy |= self.process(i)
            busy |= self.deliver_one()
            if not busy:
                return
        raise AssertionError("cluster did not stabilize")

    def tick(self, ids: Iterable[Any] | None = None, n: int = 1) -> None:
        """Advance the clocks of ``ids`` (all live nodes by default) by ``n`` ticks each,
        stabilizing after every tick."""
        for _ in range(n):
            for i in list(ids) if ids is not None else self.live():
                if self.nodes.get(i) is not None:
                    self.node(i).tick()
            self.stabilize()

    def campaign(self, i: Any) -> None:
        """Let only ``i``'s clock run until it starts an election, then settle."""
        node = self.node(i)
        for _ in range(10 * node.election_ticks):
            if node.role is not Role.FOLLOWER:
                break
            node.tick()
        self.stabilize()

    def elect(self, i: Any) -> RaftNode:
        """Make ``i`` the leader (its peers must be out of their leader lease)."""
        for j in self.live():
            self.node(j).election_elapsed = self.node(j).election_ticks
        self.campaign(i)
        assert self.node(i).role is Role.LEADER, self.node(i)
        return self.node(i)

    def leader(self) -> RaftNode | None:
        leaders = [self.node(i) for i in self.live() if self.node(i).role is Role.LEADER]
        return max(leaders, key=lambda n: n.term) if leaders else None

    def propose(self, command: Any) -> tuple[int, int]:
        leader = self.leader()
        assert leader is not None, "no leader"
        return leader.propose(command)

    def compact(self, i: Any) -> int:
        """Snapshot ``i``'s state machine at its applied index and drop the log before it."""
        n = self.node(i)
        meta = n.compact(n.applied)
        self.storage[i].compact(meta, self.apps[i])
        return meta.index
