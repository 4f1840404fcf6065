"""Three brokers' consensus cores on real SQLite stores, under whole-cluster power cuts.

Each :class:`~trio_broker._core._raft.RaftNode` persists and applies its Readies through its own
:class:`~trio_broker._storage._store.Store`, exactly as the driver does (one ``save`` per
Ready, snapshots written with ``write_snapshot`` and installed from a file), each store over
its own :class:`~trio_broker.testing._powerloss.PowerLossVFS`. One plain loop drives the
nodes, a lossless in-memory network and a client, deterministically from a seed: no trio and
no threads (apsw under trio's mock clock is a trap, see STYLE.md), so a seed replays exactly.

At seeded random sync points (counted across the three disks) the power of the whole cluster
goes at once, in the middle of whatever transaction was syncing; every broker then restarts
from what its disk kept (``Store.raft_state()``). After each restart a leader must emerge and
every acknowledged append (the leader applied it in the term it proposed it) must be readable,
with its exact value, from the leader's store; the stores must pass ``integrity_check``.

Usage::

    python -m trio_broker.testing._powerloss_cluster --seed 3
    python -m trio_broker.testing._powerloss_cluster --seeds 20
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import apsw
import attrs
import orjson

from .._core._commands import AppendMessage, CreateQueue, MessageAppended
from .._core._raft import RaftNode, Role
from .._core._raft_messages import Config, Message, SnapshotMeta
from .._runtime._applied import APPLY_LAG, applies_later
from .._storage._checkpoint import checkpoint_on_commit
from .._storage._store import Store
from ._powerloss import PowerCut, PowerLossVFS, close_after_cut

QUEUE = "Q-POWER"
IDS = ("a", "b", "c")
ELECTION_TICKS = 10
HEARTBEAT_TICKS = 2
STEPS_PER_TICK = 4
MAX_IN_FLIGHT = 2000
"""Messages the network holds; beyond that the oldest are lost (Raft retries)."""


class PowerLossFailure(Exception):
    """An acknowledged write was lost, a store is damaged, or no leader emerged."""


def value(n: int) -> bytes:
    """The n-th append's value: ~1 KB of JSON text naming n."""
    return orjson.dumps(f"{n}:{hashlib.sha256(str(n).encode()).hexdigest() * 15}")


def number(data: bytes) -> int:
    return int(orjson.loads(data).split(":", 1)[0])


@attrs.define
class Stats:
    cuts: int = 0
    acked: int = 0
    syncs: int = 0
    snapshots_sent: int = 0
    compactions: int = 0
    elections: int = 0


class PowerLossCluster:
    """The cluster, its disks and one client; see the module docstring."""

    def __init__(
        self,
        root: Path,
        seed: int,
        *,
        autocheckpoint: int | None = None,
        torn: bool = False,
        on_open: Callable[[Store], None] | None = None,
    ) -> None:
        self.root = root
        self.seed = seed
        self.rng = random.Random(seed)
        self.autocheckpoint = autocheckpoint
        self.on_open = on_open
        """Called with each store opened (a mutant, say)."""
        self.config = Config(frozenset(IDS))
        self.vfs = {
            i: PowerLossVFS(
                f"powerloss-{seed}-{i}-{id(self)}", torn=torn, rng=random.Random(f"{seed}{i}")
            )
            for i in IDS
        }
        self.stores: dict[str, Store] = {}
        self.nodes: dict[str, RaftNode] = {}
        self.in_flight: deque[Message] = deque()
        self.pending: dict[tuple[str, int], tuple[int, int]] = {}
        """(proposer, index) -> (term, value number) of appends awaiting their answer."""
        self.acked: set[int] = set()
        self.next_value = 1
        self.steps = 0
        self.syncs = 0
        self.cut_at: int | None = None
        self.stats = Stats()
        self.snapshots = 0
        self.isolated: tuple[str, int] | None = None
        """A follower whose messages are dropped, and the step it comes back at."""
        self.leaders: set[tuple[int, str]] = set()
        for i, vfs in self.vfs.items():
            vfs.on_sync = self._on_sync
            store = Store(self.root / i, vfs=vfs.name)
            store.bootstrap(self.config)
            store.close()
        self.start()

    # -- power -----------------------------------------------------------------------------------

    def _on_sync(self) -> None:
        self.syncs += 1
        if self.cut_at is not None and self.syncs >= self.cut_at:
            self.cut_at = None
            for vfs in self.vfs.values():
                vfs.cut()

    def powered_off(self) -> bool:
        return any(vfs.dead for vfs in self.vfs.values())

    def start(self) -> None:
        """Start every broker from what its disk holds."""
        for i in IDS:
            store = self.stores[i] = Store(self.root / i, vfs=self.vfs[i].name)
            if self.autocheckpoint is not None:
                checkpoint_on_commit(store._db, self.autocheckpoint)
            if self.on_open is not None:
                self.on_open(store)
            state = store.raft_state()
            assert state.snapshot_config is not None
            self.nodes[i] = RaftNode(
                i,
                hard_state=state.hard_state,
                snapshot=SnapshotMeta(
                    state.snapshot_index, state.snapshot_term, state.snapshot_config
                ),
                entries=state.entries,
                applied=state.applied,
                rng=random.Random(self.rng.random()),
                election_ticks=ELECTION_TICKS,
                heartbeat_ticks=HEARTBEAT_TICKS,
                apply_lag=APPLY_LAG,  # (as ``_runtime._recovery.make_node`` builds the core)
                apply_later=applies_later,
            )

    def power_cycle(self) -> None:
        """After a cut: every process dies (its stores closed as the runtime closes a failed
        one, writing nothing: :func:`close_after_cut`), the disks come back, every broker
        restarts."""
        self._close_stores()
        self.nodes.clear()
        self.in_flight.clear()
        self.pending.clear()
        self.isolated = None
        for vfs in self.vfs.values():
            vfs.power_on()
        for d in self.root.iterdir():
            for stale in d.glob("snapshot-*.sqlite3"):
                stale.unlink()
        self.start()
        self.stats.cuts += 1

    def _close_stores(self) -> None:
        """Each store closed: as its process's death leaves it when its disk's power is off,
        with ``Store.close`` (its closing checkpoint) when it is on."""
        for i, store in self.stores.items():
            if self.vfs[i].dead:
                close_after_cut(store)
            else:
                with contextlib.suppress(apsw.Error):
                    store.close()
        self.stores.clear()

    def close(self) -> None:
        self._close_stores()
        for vfs in self.vfs.values():
            vfs.on_sync = None
            vfs.unregister()

    # -- one step --------------------------------------------------------------------------------

    def leader(self) -> str | None:
        leaders = [i for i, n in self.nodes.items() if n.role is Role.LEADER]
        return max(leaders, key=lambda i: self.nodes[i].term) if leaders else None

    def step(self, *, propose: float = 0.5) -> None:
        """Tick, maybe propose, process every Ready, deliver a few messages. A cut in the
        middle raises :class:`PowerCut` (from the store that was syncing)."""
        self.steps += 1
        if self.steps % STEPS_PER_TICK == 0:
            for node in self.nodes.values():
                node.tick()
        leader = self.leader()
        if leader is not None and self.rng.random() < propose:
            node = self.nodes[leader]
            if not self.stores[leader].queue_lengths():
                if not any(k[0] == leader for k in self.pending):
                    term, index = node.propose(CreateQueue(QUEUE))
                    self.pending[(leader, index)] = (term, 0)
            else:
                for _ in range(self.rng.randrange(1, 4)):
                    n, self.next_value = self.next_value, self.next_value + 1
                    term, index = node.propose(AppendMessage(QUEUE, value(n), appended_ms=n))
                    self.pending[(leader, index)] = (term, n)
        for i in IDS:
            if self.nodes[i].has_ready():
                self._process(i)
        if self.isolated is None and self.rng.random() < 0.002:
            # A follower falls behind for a while: the leader compacts past it and must send
            # it a snapshot (written, copied and installed through the stores) when it is back.
            followers = [i for i in IDS if i != leader]
            self.isolated = (self.rng.choice(followers), self.steps + self.rng.randrange(100, 400))
        elif self.isolated is not None and self.steps >= self.isolated[1]:
            self.isolated = None
        while len(self.in_flight) > MAX_IN_FLIGHT:
            self.in_flight.popleft()
        for _ in range(min(len(self.in_flight), self.rng.randrange(1, 8))):
            m = self.in_flight.popleft()
            if self.isolated is None or self.isolated[0] not in (m.src, m.dst):
                self.nodes[m.dst].step(m)
        for i, node in self.nodes.items():
            if node.role is Role.LEADER:
                self.leaders.add((node.term, i))

    def _process(self, i: str) -> None:
        """One Ready, as the driver handles it."""
        node, store = self.nodes[i], self.stores[i]
        rd = node.ready()
        self.in_flight.extend(rd.messages)
        results: list[Any] = []
        if rd.must_sync or rd.committed_entries:
            snapshot = None
            if rd.snapshot is not None:
                snapshot = (rd.snapshot.snapshot, str(rd.snapshot.data))
            results = store.save(
                hard_state=rd.hard_state,
                truncate_from=rd.truncate_from,
                entries=rd.entries,
                snapshot=snapshot,
                committed=rd.committed_entries,
            )
            if self.powered_off():
                # A cut inside an automatic checkpoint does not fail the commit that ran it;
                # either way the process is gone now and answers nobody.
                raise PowerCut("the power went during this save")
            if snapshot is not None:
                Path(snapshot[1]).unlink()
        self.in_flight.extend(rd.persisted_messages)
        for entry, result in zip(rd.committed_entries, results, strict=True):
            waiting = self.pending.pop((i, entry.index), None)
            if waiting is not None and waiting[0] == entry.term and waiting[1]:
                assert isinstance(result, MessageAppended), result
                self.acked.add(waiting[1])
        node.advance()  # (the core's applied index moves here: a snapshot is offered after)
        for peer in rd.snapshots_to_send:
            self._send_snapshot(i, peer)
        if node.applied - node.log.snapshot_index > 40 and self.rng.random() < 0.2:
            index = node.applied - self.rng.randrange(0, 10)
            store.compact(node.compact(index))
            self.stats.compactions += 1

    def _send_snapshot(self, src: str, peer: str) -> None:
        """Write the state machine to a file and hand a copy to ``peer`` (the fetch)."""
        self.snapshots += 1
        path = self.root / src / f"snapshot-{self.snapshots}.sqlite3"
        index = self.stores[src].write_snapshot(str(path))
        incoming = self.root / peer / f"snapshot-{self.snapshots}-in.sqlite3"
        shutil.copyfile(path, incoming)
        path.unlink()
        message = self.nodes[src].make_data_sync(peer, index, str(incoming))
        self.in_flight.append(message)
        self.stats.snapshots_sent += 1

    # -- checks ----------------------------------------------------------------------------------

    def settle(self, max_steps: int = 4000) -> str:
        """Run without proposals until a leader has applied its whole log; return it."""
        for _ in range(max_steps):
            self.step(propose=0.0)
            leader = self.leader()
            if leader is not None:
                node = self.nodes[leader]
                if node.applied == node.log.last_index and node.log.term(node.applied) == (
                    node.term
                ):
                    return leader
        raise PowerLossFailure(f"no leader with its log applied after {max_steps} steps")

    def check(self) -> None:
        """Every store is sound and the leader holds every acknowledged append."""
        for i, store in self.stores.items():
            ((integrity,),) = store._db.execute("PRAGMA integrity_check").fetchall()
            if integrity != "ok":
                raise PowerLossFailure(f"broker {i}: integrity_check says {integrity[:300]}")
        leader = self.settle()
        held = self.stores[leader].messages(QUEUE) if self.acked else []
        check_held(f"leader {leader}", held, self.acked)

    # -- a run -----------------------------------------------------------------------------------

    def run(self, cuts: int, steps_between: int) -> Stats:
        """``cuts`` whole-cluster power cuts at random sync points, each followed by a
        restart and the checks; the client keeps appending in between."""
        self.check()
        for _ in range(cuts):
            self.cut_at = self.syncs + self.rng.randrange(1, 4 * steps_between)
            try:
                for _ in range(100 * steps_between):
                    self.step()
            except apsw.Error:
                if not self.powered_off():
                    raise
            else:
                raise PowerLossFailure("the power cut never came")
            self.power_cycle()
            self.check()
        self.stats.acked = len(self.acked)
        self.stats.syncs = self.syncs
        self.stats.elections = len(self.leaders)
        return self.stats


def check_held(where: str, held: list[bytes], acked: set[int]) -> None:
    """``held`` (a queue's values, in order, on ``where``) has every acknowledged append
    number, each once, in order, with its exact value."""
    numbers = [number(d) for d in held]
    if numbers != sorted(set(numbers)):
        raise PowerLossFailure(f"{where}: appends reordered or duplicated")
    if any(d != value(n) for n, d in zip(numbers, held, strict=True)):
        raise PowerLossFailure(f"{where}: a value changed")
    lost = sorted(acked - set(numbers))
    if lost:
        raise PowerLossFailure(f"{where}: {len(lost)} acknowledged appends lost, first {lost[:5]}")


def run_seeds(seeds: Iterable[int], run: Callable[[int], Any]) -> int:
    """``run(seed)`` for each seed, a line each (its stats, or its failure and the notes that
    say how to replay it); the exit status: 1 if any failed."""
    failed = 0
    for seed in seeds:
        try:
            stats = run(seed)
        except Exception as exc:
            failed += 1
            print(f"seed {seed}: FAILED: {exc!r}")
            for note in getattr(exc, "__notes__", ()):
                print(f"  {note}")
        else:
            print(f"seed {seed}: ok {attrs.asdict(stats)}")
    return 1 if failed else 0


def run_seed(
    seed: int,
    *,
    cuts: int = 3,
    steps_between: int = 300,
    autocheckpoint: int | None = None,
    on_open: Callable[[Store], None] | None = None,
) -> Stats:
    """One seed in a fresh temporary directory; odd seeds tear the last unsynced write of
    each file at a cut. Failures say how to replay."""
    with tempfile.TemporaryDirectory(prefix="powerloss-") as root:
        cluster = PowerLossCluster(
            Path(root), seed, autocheckpoint=autocheckpoint, torn=seed % 2 == 1, on_open=on_open
        )
        try:
            return cluster.run(cuts, steps_between)
        except BaseException as exc:
            exc.add_note(
                f"replay: python -m trio_broker.testing._powerloss_cluster --seed {seed}"
                f" --cuts {cuts} --steps-between {steps_between}"
                + (f" --autocheckpoint {autocheckpoint}" if autocheckpoint else "")
            )
            raise
        finally:
            cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="run this seed only")
    parser.add_argument("--seeds", type=int, default=10, help="run seeds 1..N")
    parser.add_argument("--cuts", type=int, default=3)
    parser.add_argument("--steps-between", type=int, default=300)
    parser.add_argument("--autocheckpoint", type=int, default=None)
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(1, args.seeds + 1)
    return run_seeds(
        seeds,
        lambda seed: run_seed(
            seed,
            cuts=args.cuts,
            steps_between=args.steps_between,
            autocheckpoint=args.autocheckpoint,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
