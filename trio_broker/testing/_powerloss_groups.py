"""Three brokers hosting 2 to 4 groups each on one shared log per broker, under power cuts
and injected I/O errors.

The shape of :mod:`._powerloss_cluster` (one plain loop, no trio, no threads: a seed replays
exactly), with a :class:`~trio_broker._core._raft.RaftNode` per group per broker, built as the
runtime builds it (``_runtime._recovery.make_node``: with the replicas' apply lag, so the cuts
land while a replica's lone appends wait unapplied, ``Stats.applies_waiting``). Each broker's
groups keep their stores in ``groups/<group>/`` beside one
:class:`~trio_broker._storage._shared_log.SharedLog`, all on one
:class:`~trio_broker.testing._powerloss.PowerLossVFS` disk, and their saves go through the
production code exactly as the runtime runs them: a turn's Readies of one broker are cut, by
the seed, into batches run by :meth:`TurnCommitter._commit` (several groups' saves in one
shared-log transaction; a batch of one is a save alone in its fsync, ``own_save``), or a
lone save runs as an in-step path runs it (``Store.save`` without a stage); trims run as the
storage thread runs them (:meth:`SharedLog.trim`, errors kept for the next), compactions and
snapshot installs through the stores.

Faults, all from the seed:

- **power cuts** at random sync points counted across the three disks (mid-transaction:
  the shared log's commit, a group's, a trim's, a checkpoint's);
- **I/O errors** that lose no write (``SQLITE_IOERR_LOCK``): a failed commit (rolled back,
  or, rarely, leaving the transaction open as SQLite may after ``SQLITE_BUSY``), a failed
  delete of shared-log rows (an abandoned save's drop, a trim, a close), a failed ``PRAGMA
  synchronous``. A save that fails so restarts its group's core from its file, as the driver
  does (``RaftDriver._restarting``); sometimes the group's store is closed and opened
  again (a group stopped and started on the broker).
- **a failed fsync** (``SQLITE_IOERR_FSYNC``) in the "fsyncgate" model
  (:class:`~._powerloss.PowerLossVFS` with ``drops``): the writes it should have made
  durable are dropped from the disk while reads still see them. The broker fail-stops, as
  the runtime does (docs/reliability.md, "A failed fsync stops the broker"): nothing more runs
  on its storage (no save, no trim, no acknowledgement), and it stays down for the rest of the
  seed (its disk is not trusted again). One broker of the three at most: a minority. With
  ``fail_stop=False`` (the behaviour before, a mutant: :mod:`._powerloss_groups_mutants`)
  its groups restart from their files and its trims keep their errors for the next, as
  before; that loses acknowledged appends under this model.

After each restart (faults off): a leader per group emerges among the running brokers, every
acknowledged append of every group is readable with its exact value from its leader's store, no
value appears twice, and every running broker's stores and shared log pass ``integrity_check``.
Before it, the disks' files must be as the cut left them (``_powerloss.disk_image``): what the
statement the cut met went on asking, and what the closes did, reached no disk.

A seed replays exactly, in any process: the shared log's random ids are drawn from the seed
(:class:`SeededIds`).

Usage::

    python -m trio_broker.testing._powerloss_groups --seed 3
    python -m trio_broker.testing._powerloss_groups --seeds 50
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import random
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import attrs
import outcome

from .._core._commands import AppendMessage, CreateQueue, MessageAppended
from .._core._raft import RaftNode, Ready, Role
from .._core._raft_messages import Config, Message, SnapshotMeta
from .._runtime._applied import APPLY_LAG, applies_later
from .._storage import _shared_log
from .._storage._failed import FAILED_FILE, lost_writes, marker_dir
from .._storage._shared_log import SHARED_LOG_FILE, SharedLog, TurnCommitter, _Job, _weight
from .._storage._store import Store
from ._powerloss import PowerCut, PowerLossVFS, changed_since, close_after_cut, disk_image
from ._powerloss_cluster import (
    ELECTION_TICKS,
    HEARTBEAT_TICKS,
    IDS,
    MAX_IN_FLIGHT,
    STEPS_PER_TICK,
    PowerLossFailure,
    check_held,
    run_seeds,
    value,
)

FAULT_KINDS = ("commit", "open", "delete", "pragma", "fsync")
"""The injected I/O errors: a failed commit (rolled back), a failed commit that leaves its
transaction open, a failed DELETE of shared-log rows, a failed PRAGMA synchronous, an fsync
error."""


class InjectedError(apsw.IOError):
    """An I/O error the runner injected (not a power cut, not an fsync's): one that lost no
    write, as a lock's (a failed fsync stops the broker instead: ``_failed.lost_writes``)."""

    extendedresult = apsw.SQLITE_IOERR_LOCK


@attrs.define
class Stats:
    groups: int = 0
    cuts: int = 0
    acked: int = 0
    syncs: int = 0
    batches: int = 0
    shared_saves: int = 0
    alone: int = 0
    trims: int = 0
    reopens: int = 0
    snapshots_sent: int = 0
    stopped: int = 0
    """Brokers that fail-stopped after a failed fsync (and stayed down)."""
    dropped: int = 0
    """Bytes the failed fsyncs dropped from the disks."""
    applies_waiting: int = 0
    """Readies of a replica that left committed entries unapplied (the runtime's apply lag,
    ``_runtime._applied.APPLY_LAG``): its saves then lack their commit index's row, as the
    runtime's do, when the power goes."""
    most_waiting: int = 0
    """The most committed entries one of them left unapplied (below ``APPLY_LAG``)."""
    asked_by_closes: int = 0
    """Writes, truncations, syncs and deletes the closes after the cuts asked of the dead
    disks (``PowerLossVFS.ignored``; about 250 per cut when they were ``Store.close``'s
    checkpoints): none since they close as a dead process leaves its files."""
    cut_in_close: int = 0
    """Cuts that landed in a group's close (a reopen's ``Store.close``)."""
    faults: dict[str, int] = attrs.field(factory=dict)


@attrs.define
class Faults:
    """The seed's I/O errors, armed only in the safety phase (between two checks)."""

    rng: random.Random
    rate: float
    kinds: tuple[str, ...]
    on: bool = False
    counts: dict[str, int] = attrs.field(factory=dict)

    def hit(self, kind: str) -> bool:
        if not self.on or kind not in self.kinds or self.rng.random() >= self.rate:
            return False
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return True


class FaultyConnection:
    """An apsw connection whose statements and outermost commits fail when the seed says
    (the proxy stands where the store or shared log keeps its connection, like
    :func:`~._powerloss.synchronous_off_mutant`)."""

    def __init__(self, db: apsw.Connection, faults: Faults) -> None:
        self._db = db
        self._faults = faults
        self._depth = 0

    def execute(self, sql: str, *args: Any) -> Any:
        head = sql.lstrip()[:40].upper()
        if head.startswith("PRAGMA SYNCHRONOUS") and self._faults.hit("pragma"):
            raise InjectedError(f"injected: {sql}")
        if head.startswith("DELETE FROM SHARED_") and self._faults.hit("delete"):
            raise InjectedError(f"injected: {sql}")
        return self._db.execute(sql, *args)

    def __enter__(self) -> Any:
        self._depth += 1
        return self._db.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        self._depth -= 1
        if self._depth == 0 and exc[0] is None:
            if self._faults.hit("open"):
                # The commit failed and SQLite kept the transaction open (SQLITE_BUSY).
                raise InjectedError("injected: COMMIT failed, transaction left open")
            if self._faults.hit("commit"):
                error = InjectedError("injected: COMMIT failed")
                self._db.__exit__(type(error), error, None)  # (rolled back)
                raise error
        return self._db.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class SeededIds:
    """Where the shared log draws its random ids (a log's ``log_id``, a group file's
    incarnation: ``secrets.token_hex`` in ``_storage._shared_log``) while a cluster runs:
    from the seed. A trim syncs the open group files in the order of their incarnations
    (``SharedLog.trim``), so a cut counted in sync points lands in another group's file when
    they are drawn afresh: a seed did not replay (seeds 10, 13, 21, 28 and 29 of 1-30 ran
    other schedules from one process to the next, and one seed run after another in the same
    process looked like state left by the first). The runner puts this in the module's
    ``secrets`` for its lifetime (:meth:`install`, and back at ``GroupsCluster.close``)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"ids-{seed}")
        self.drawn = 0

    def token_hex(self, nbytes: int = 32) -> str:
        self.drawn += 1
        return self.rng.randbytes(nbytes).hex()

    def install(self) -> Callable[[], None]:
        """Put this in the shared log's ``secrets``; returns what puts the previous back."""
        previous = _shared_log.secrets
        _shared_log.secrets = self  # type: ignore[assignment]

        def restore() -> None:
            _shared_log.secrets = previous

        return restore


class Broker:
    """One broker: its disk, its shared log, its committer and one store per group."""

    def __init__(self, root: Path, vfs: PowerLossVFS, groups: list[str]) -> None:
        self.root = root
        self.vfs = vfs
        self.groups = groups
        self.log: SharedLog | None = None
        self.committer: TurnCommitter | None = None
        self.stores: dict[str, Store] = {}

    def path(self, group: str) -> Path:
        return self.root / "groups" / group


class GroupsCluster:
    """Three brokers, 2 to 4 groups each, one shared log per broker; see the module
    docstring."""

    def __init__(
        self,
        root: Path,
        seed: int,
        *,
        faults: tuple[str, ...] = FAULT_KINDS,
        on_open: Callable[[Store], None] | None = None,
        fail_stop: bool = True,
    ) -> None:
        self.root = root
        self.fail_stop = fail_stop
        """A failed fsync stops its broker for the rest of the seed (False: the behaviour
        before, its groups rebuilt from their files: a mutant)."""
        self.down: set[str] = set()
        """Brokers stopped after a failed fsync."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.on_open = on_open
        """Called with each group store opened (a mutant, say)."""
        self.group_ids = [f"g{k}" for k in range(2 + seed % 3)]
        drawn = [k for k in FAULT_KINDS if self.rng.random() < 0.7]
        kinds = tuple(k for k in drawn if k in faults)
        self.faults = Faults(random.Random(f"faults-{seed}"), self.rng.choice([0.01, 0.03]), kinds)
        self.config = Config(frozenset(IDS))
        self.syncs = 0
        self.cut_at: int | None = None
        self.at_cut: dict[str, tuple[int, int]] = {}
        """The disks' files as the last cut left them (``_powerloss.disk_image``)."""
        self.brokers: dict[str, Broker] = {}
        self.nodes: dict[tuple[str, str], RaftNode] = {}
        self.in_flight: deque[tuple[str, Message]] = deque()
        self.pending: dict[tuple[str, str, int], tuple[int, int]] = {}
        """(broker, group, index) -> (term, value number) of appends awaiting their answer."""
        self.acked: dict[str, set[int]] = {g: set() for g in self.group_ids}
        self.next_value = 1
        self.steps = 0
        self.snapshots = 0
        self.isolated: tuple[str, int] | None = None
        self.stats = Stats(groups=len(self.group_ids))
        self.ids = SeededIds(seed)
        self._restore_ids = self.ids.install()
        try:
            for i in IDS:
                vfs = PowerLossVFS(
                    f"plgroups-{seed}-{i}-{id(self)}",
                    torn=seed % 2 == 1,
                    rng=random.Random(f"{seed}{i}"),
                    drops=True,
                )
                vfs.on_sync = self._on_sync
                vfs.sync_fails = self._sync_fails
                broker = self.brokers[i] = Broker(root / i, vfs, self.group_ids)
                for g in self.group_ids:
                    store = Store(broker.path(g), vfs=vfs.name)
                    store.bootstrap(self.config)
                    store.close()
            self.start()
        except BaseException:
            self._restore_ids()
            raise

    # -- power -----------------------------------------------------------------------------------

    def _on_sync(self) -> None:
        self.syncs += 1
        if self.cut_at is not None and self.syncs >= self.cut_at:
            self.cut_at = None
            for broker in self.brokers.values():
                broker.vfs.cut()
            self.at_cut = disk_image(self.root)

    def _sync_fails(self, path: str) -> bool:
        if self.fail_stop and self.down:
            return False  # (a minority at most: one broker of three stopped)
        return self.faults.hit("fsync")

    def _fail_stop(self, i: str) -> None:
        """Broker ``i`` met a failed fsync: it stops, as the runtime's (its storage refuses
        everything, its driver raises StorageFailed), and stays down: its stores are left
        open, written no more, and closed with the power cut that ends the segment."""
        self.down.add(i)
        self.stats.stopped += 1
        for key in [k for k in self.pending if k[0] == i]:
            del self.pending[key]  # (never answered)

    def _stops(self, i: str, exc: BaseException) -> bool:
        """Whether ``exc`` stops broker ``i`` (a failed fsync, with fail-stop): then it did."""
        if not self.fail_stop or not lost_writes(exc):
            return False
        self._fail_stop(i)
        return True

    def running(self) -> list[str]:
        return [i for i in IDS if i not in self.down]

    def powered_off(self) -> bool:
        return any(b.vfs.dead for b in self.brokers.values())

    def _open_store(self, i: str, g: str) -> Store:
        broker = self.brokers[i]
        on, self.faults.on = self.faults.on, False  # (an open that fails: not modelled)
        try:
            store = Store(broker.path(g), vfs=broker.vfs.name, shared=broker.log)
        finally:
            self.faults.on = on
        store._db = FaultyConnection(store._db, self.faults)  # type: ignore[assignment]
        if self.on_open is not None:
            self.on_open(store)
        broker.stores[g] = store
        return store

    def _make_node(self, i: str, g: str) -> None:
        """The group's core from what its store holds (a start, a driver's restart)."""
        state = self.brokers[i].stores[g].raft_state()
        assert state.snapshot_config is not None
        self.nodes[(i, g)] = RaftNode(
            i,
            hard_state=state.hard_state,
            snapshot=SnapshotMeta(state.snapshot_index, state.snapshot_term, state.snapshot_config),
            entries=state.entries,
            applied=state.applied,
            rng=random.Random(self.rng.random()),
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=HEARTBEAT_TICKS,
            apply_lag=APPLY_LAG,  # (as ``_runtime._recovery.make_node`` builds the core)
            apply_later=applies_later,
        )
        for key in [k for k in self.pending if k[:2] == (i, g)]:
            del self.pending[key]

    def start(self) -> None:
        """Start every running broker from what its disk holds: its shared log, then its
        groups (a stopped one stays down: its disk failed an fsync)."""
        for i, broker in self.brokers.items():
            if i in self.down:
                continue
            (broker.root / "groups").mkdir(parents=True, exist_ok=True)
            log = broker.log = SharedLog(
                broker.root / "groups" / SHARED_LOG_FILE, vfs=broker.vfs.name
            )
            log._db = FaultyConnection(log._db, self.faults)  # type: ignore[assignment]
            broker.committer = TurnCommitter(None, log)  # type: ignore[arg-type]
            for g in self.group_ids:
                self._open_store(i, g)
                self._make_node(i, g)

    def _close_all(self) -> None:
        """Every broker's stores and shared log closed: as its process's death leaves them
        when its disk's power is off (after a cut) or its broker stopped on a failed fsync
        (:func:`~._powerloss.close_after_cut`, ``SharedLog.abandon``: no closing checkpoint,
        nothing asked of the disk, the files as the cut left them, no ``STORAGE-FAILED``
        mark), with ``Store.close`` and ``SharedLog.close`` (their closing checkpoints) when
        it is on. Closing a cut disk's stores with ``Store.close`` ran their checkpoints into
        the dead disk (about 250 writes and syncs ignored per power cycle) and deleted their
        ``-shm`` for real, which no machine that lost its power does."""
        for i, broker in self.brokers.items():
            gone = broker.vfs.dead or i in self.down
            for store in broker.stores.values():
                if gone:
                    close_after_cut(store)
                else:
                    with contextlib.suppress(apsw.Error):
                        store.close()
            broker.stores.clear()
            if broker.log is not None:
                if gone:
                    broker.log.abandon()
                else:
                    with contextlib.suppress(apsw.Error):
                        broker.log.close()
                broker.log = None

    def _close_group(self, i: str, g: str) -> None:
        """Group ``g`` stopped on broker ``i`` (the driver's reopen): its store closed as the
        runtime's stop closes it, ``Store.close``, whose checkpoint and shared-log sync may
        meet the power cut. Then the process died at the cut, and the rest of the close is
        not what a dead process does: nothing more reaches the disk (the close's failure path
        closes without a checkpoint; the disk would ignore it anyway), but its failure's
        ``STORAGE-FAILED`` mark is written with plain file calls the power-loss disk cannot
        take back, and its ``storage.failed`` CRITICAL line logged: the runner takes the mark
        back and never lets the line out (what is logged while the power is off), and the
        folder's lock goes with the process (:func:`~._powerloss.close_after_cut`'s)."""
        store = self.brokers[i].stores.pop(g)
        mark = marker_dir(store.data_dir) / FAILED_FILE
        marked = mark.exists()
        logger = logging.getLogger("trio_broker")
        logger.addFilter(self._after_the_cut)
        try:
            store.close()
        finally:
            logger.removeFilter(self._after_the_cut)
            if self.powered_off():
                self.stats.cut_in_close += 1
                if not marked:
                    mark.unlink(missing_ok=True)
                store._lock.release()  # (the dead process's; releasing twice does nothing)

    def _after_the_cut(self, record: logging.LogRecord) -> bool:
        """A logging filter: nothing a process logs once its power went gets out."""
        return not self.powered_off()

    def power_cycle(self) -> None:
        """After a cut: every process dies, the disks come back, every broker restarts. The
        files must be as the cut left them: whatever the statement the cut met went on
        asking (SQLite's own cleanup: a sync tried again, a journal deleted) and whatever the
        runner's closes did, nothing of it reached a disk whose power was off."""
        self.faults.on = False
        cut = self.powered_off()
        asked = sum(b.vfs.ignored for b in self.brokers.values())
        self._close_all()
        self.stats.asked_by_closes += sum(b.vfs.ignored for b in self.brokers.values()) - asked
        changed = changed_since(self.at_cut, disk_image(self.root)) if cut else []
        if changed:
            raise PowerLossFailure(f"files changed after the power went: {changed}")
        self.nodes.clear()
        self.in_flight.clear()
        self.pending.clear()
        self.isolated = None
        for broker in self.brokers.values():
            broker.vfs.power_on()
            for stale in broker.root.rglob("snapshot-*.sqlite3"):
                stale.unlink()
        self.start()
        self.stats.cuts += 1

    def close(self) -> None:
        self.faults.on = False
        try:
            self._close_all()
            for broker in self.brokers.values():
                broker.vfs.on_sync = None
                broker.vfs.sync_fails = None
                broker.vfs.unregister()
        finally:
            self._restore_ids()

    # -- one step --------------------------------------------------------------------------------

    def leader(self, g: str) -> str | None:
        leaders = [i for i in self.running() if self.nodes[(i, g)].role is Role.LEADER]
        return max(leaders, key=lambda i: self.nodes[(i, g)].term) if leaders else None

    def step(self, *, propose: float = 0.5) -> None:
        """Tick, maybe propose on each group, run every broker's turn (its Readies in seeded
        batches), deliver a few messages. A cut in the middle raises :class:`PowerCut`."""
        self.steps += 1
        if self.steps % STEPS_PER_TICK == 0:
            for (i, _), node in self.nodes.items():
                if i not in self.down:
                    node.tick()
        for g in self.group_ids:
            leader = self.leader(g)
            if leader is not None and self.rng.random() < propose:
                self._propose(leader, g)
        for i in self.running():
            self._turn(i)
        if self.isolated is None and self.rng.random() < 0.002:
            self.isolated = (self.rng.choice(IDS), self.steps + self.rng.randrange(100, 400))
        elif self.isolated is not None and self.steps >= self.isolated[1]:
            self.isolated = None
        while len(self.in_flight) > MAX_IN_FLIGHT:
            self.in_flight.popleft()
        for _ in range(min(len(self.in_flight), self.rng.randrange(1, 12))):
            g, m = self.in_flight.popleft()
            if m.dst in self.down:
                continue
            if self.isolated is None or self.isolated[0] not in (m.src, m.dst):
                self.nodes[(m.dst, g)].step(m)

    def _propose(self, i: str, g: str) -> None:
        node, store = self.nodes[(i, g)], self.brokers[i].stores[g]
        queue = f"Q-{g}"
        if not store.queue_lengths():
            if not any(k[:2] == (i, g) for k in self.pending):
                term, index = node.propose(CreateQueue(queue))
                self.pending[(i, g, index)] = (term, 0)
            return
        for _ in range(self.rng.randrange(1, 4)):
            n, self.next_value = self.next_value, self.next_value + 1
            term, index = node.propose(AppendMessage(queue, value(n), appended_ms=n))
            self.pending[(i, g, index)] = (term, n)

    def _turn(self, i: str) -> None:
        """One loop turn of broker ``i``: every group's Ready taken, saved in seeded batches
        through the production committer, then handled as its driver would."""
        broker = self.brokers[i]
        committer = broker.committer
        assert committer is not None
        readies: list[tuple[str, Ready, Any]] = []
        for g in self.group_ids:
            node = self.nodes[(i, g)]
            if not node.has_ready():
                continue
            rd = node.ready()
            if not rd.committed_entries and rd.snapshot is None and node.commit > node.applied:
                # (a replica's committed lone appends left to wait: the apply lag)
                self.stats.applies_waiting += 1
                self.stats.most_waiting = max(self.stats.most_waiting, node.commit - node.applied)
            self.in_flight.extend((g, m) for m in rd.messages)
            save = None
            if rd.must_sync or rd.committed_entries:
                snapshot = None
                if rd.snapshot is not None:
                    snapshot = (rd.snapshot.snapshot, str(rd.snapshot.data))
                save = functools.partial(
                    broker.stores[g].save,
                    hard_state=rd.hard_state,
                    truncate_from=rd.truncate_from,
                    entries=rd.entries,
                    snapshot=snapshot,
                    committed=rd.committed_entries,
                )
            readies.append((g, rd, save))
        self.rng.shuffle(readies)
        saving = [r for r in readies if r[2] is not None]
        results: dict[str, outcome.Outcome] = {}
        stopping = False
        while saving and not stopping:
            size = self.rng.choice([1, 1, 2, len(saving)])
            batch, saving = saving[:size], saving[size:]
            if len(batch) == 1 and self.rng.random() < 0.5:
                # An in-step path: Store.save without a stage (own_save), on the loop.
                g, _, save = batch[0]
                results[g] = outcome.capture(save)
                self.stats.alone += 1
            else:
                jobs = [_Job(save, False, None, _weight(save)) for _, _, save in batch]
                try:
                    done = committer._commit(jobs)
                except apsw.Error as exc:  # (a trim in the job that failed an fsync)
                    if self.powered_off() or not self.fail_stop or not lost_writes(exc):
                        raise
                    done = [outcome.Error(exc) for _ in jobs]
                for (g, _, _), result in zip(batch, done, strict=True):
                    results[g] = result
                self.stats.batches += 1
                self.stats.shared_saves += len(batch) if len(batch) > 1 else 0
            if self.powered_off():
                raise PowerCut("the power went during this turn")
            # The storage thread refuses the turn's later jobs once one may have lost writes.
            stopping = self.fail_stop and any(
                isinstance(r, outcome.Error) and lost_writes(r.error) for r in results.values()
            )
        for g, rd, save in readies:
            if i in self.down:
                return
            result = results.get(g)
            if save is not None and result is None:
                continue  # (refused: its broker stops below)
            if isinstance(result, outcome.Error):
                if not isinstance(result.error, apsw.Error):
                    result.unwrap()
                if not self._stops(i, result.error):  # (the others' results stand: below)
                    self._driver_failed(i, g)
                continue
            self._handled(i, g, rd, [] if result is None else result.unwrap())
        if stopping and i not in self.down:
            self._fail_stop(i)
        if i in self.down:
            return
        if self.rng.random() < 0.02:
            # A trim on the storage thread (TurnCommitter._trim: an error keeps the rows,
            # unless it may have lost writes: then the broker stops).
            assert broker.log is not None
            try:
                broker.log.trim()
            except apsw.Error as exc:
                if not self.powered_off():
                    self._stops(i, exc)
            self.stats.trims += 1
            if self.powered_off():
                raise PowerCut("the power went during a trim")

    def _driver_failed(self, i: str, g: str, exc: BaseException | None = None) -> None:
        """A group's save failed: its driver restarts from its file, sometimes with the store
        closed and opened again (the group stopped and started on this broker); after a failed
        fsync (``exc``), with fail-stop, the broker stops instead."""
        if exc is not None and self._stops(i, exc):
            return
        if self.rng.random() < 0.3:
            self.stats.reopens += 1
            try:
                self._close_group(i, g)
            except apsw.Error as error:
                if not self.powered_off() and self._stops(i, error):
                    return
            if self.powered_off():
                raise PowerCut("the power went while a group closed")
            self._open_store(i, g)
        self._make_node(i, g)

    def _handled(self, i: str, g: str, rd: Ready, results: list[Any]) -> None:
        node, store = self.nodes[(i, g)], self.brokers[i].stores[g]
        if rd.snapshot is not None:
            Path(str(rd.snapshot.data)).unlink()
        self.in_flight.extend((g, m) for m in rd.persisted_messages)
        for entry, result in zip(rd.committed_entries, results, strict=True):
            waiting = self.pending.pop((i, g, entry.index), None)
            if waiting is not None and waiting[0] == entry.term and waiting[1]:
                assert isinstance(result, MessageAppended), result
                self.acked[g].add(waiting[1])
        node.advance()
        for peer in rd.snapshots_to_send:
            self._send_snapshot(i, g, peer)
        if i in self.down:
            return
        if node.applied - node.log.snapshot_index > 40 and self.rng.random() < 0.2:
            index = node.applied - self.rng.randrange(0, 10)
            try:
                store.compact(node.compact(index))
            except apsw.Error as exc:
                if self.powered_off():
                    raise
                self._driver_failed(i, g, exc)

    def _send_snapshot(self, src: str, g: str, peer: str) -> None:
        self.snapshots += 1
        path = self.brokers[src].path(g) / f"snapshot-{self.snapshots}.sqlite3"
        try:
            index = self.brokers[src].stores[g].write_snapshot(str(path))
        except apsw.Error as exc:
            if self.powered_off():
                raise
            path.unlink(missing_ok=True)
            self._driver_failed(src, g, exc)  # (the snapshot is offered again)
            return
        incoming = self.brokers[peer].path(g) / f"snapshot-{self.snapshots}-in.sqlite3"
        shutil.copyfile(path, incoming)
        path.unlink()
        self.in_flight.append((g, self.nodes[(src, g)].make_data_sync(peer, index, str(incoming))))
        self.stats.snapshots_sent += 1

    # -- checks ----------------------------------------------------------------------------------

    def settle(self, max_steps: int = 6000) -> dict[str, str]:
        """Run without proposals until each group has a leader that applied its whole log."""
        for _ in range(max_steps):
            self.step(propose=0.0)
            done: dict[str, str] = {}
            for g in self.group_ids:
                leader = self.leader(g)
                if leader is None:
                    break
                node = self.nodes[(leader, g)]
                if node.applied != node.log.last_index or node.log.term(node.applied) != node.term:
                    break
                done[g] = leader
            else:
                return done
        raise PowerLossFailure(f"no leader with its log applied in every group after {max_steps}")

    def check(self) -> None:
        """Every store and shared log is sound; each group's leader holds its acknowledged
        appends, each once, with its exact value."""
        self.faults.on = False
        for i, broker in self.brokers.items():
            if i in self.down:
                continue
            dbs = [(g, s._db) for g, s in broker.stores.items()]
            assert broker.log is not None
            for name, db in [("shared log", broker.log._db), *dbs]:
                ((integrity,),) = db.execute("PRAGMA integrity_check").fetchall()
                if integrity != "ok":
                    raise PowerLossFailure(f"broker {i} {name}: integrity_check: {integrity[:300]}")
        for g, leader in self.settle().items():
            store = self.brokers[leader].stores[g]
            held = store.messages(f"Q-{g}") if self.acked[g] else []
            check_held(f"group {g} leader {leader}", held, self.acked[g])

    # -- a run -----------------------------------------------------------------------------------

    def run(self, cuts: int, steps_between: int) -> Stats:
        """``cuts`` power cuts of every disk at random sync points, I/O errors injected in
        between, each followed by a restart and the checks."""
        self.check()
        for _ in range(cuts):
            self.cut_at = self.syncs + self.rng.randrange(1, 6 * steps_between)
            self.faults.on = True
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
        self.stats.acked = sum(len(a) for a in self.acked.values())
        self.stats.syncs = self.syncs
        self.stats.faults = dict(sorted(self.faults.counts.items()))
        self.stats.dropped = sum(b.vfs.dropped_bytes for b in self.brokers.values())
        return self.stats


def run_seed(
    seed: int,
    *,
    cuts: int = 3,
    steps_between: int = 200,
    faults: tuple[str, ...] = FAULT_KINDS,
    on_open: Callable[[Store], None] | None = None,
    fail_stop: bool = True,
) -> Stats:
    """One seed in a fresh temporary directory (odd seeds tear the last unsynced write of each
    file at a cut). Failures say how to replay."""
    with tempfile.TemporaryDirectory(prefix="plgroups-") as root:
        cluster = GroupsCluster(
            Path(root), seed, faults=faults, on_open=on_open, fail_stop=fail_stop
        )
        try:
            return cluster.run(cuts, steps_between)
        except BaseException as exc:
            exc.add_note(
                f"replay: python -m trio_broker.testing._powerloss_groups --seed {seed}"
                f" --cuts {cuts} --steps-between {steps_between}"
                + ("" if faults == FAULT_KINDS else f" --faults '{','.join(faults)}'")
            )
            raise
        finally:
            cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="run this seed only")
    parser.add_argument("--seeds", type=int, default=10, help="run seeds 1..N")
    parser.add_argument("--cuts", type=int, default=3)
    parser.add_argument("--steps-between", type=int, default=200)
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"the I/O errors a seed may inject, of {','.join(FAULT_KINDS)} ('': cuts only)",
    )
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(1, args.seeds + 1)
    return run_seeds(
        seeds,
        lambda seed: run_seed(
            seed,
            cuts=args.cuts,
            steps_between=args.steps_between,
            faults=tuple(k for k in args.faults.split(",") if k),
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
