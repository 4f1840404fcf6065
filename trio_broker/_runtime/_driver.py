"""The elector and replicator: one task that drives the consensus core.

The core decides; this task executes its Ready effects in the order the core prescribes:
send the leader's appends at once, persist (and apply what is committed) in one durable SQLite
transaction on the storage thread, and only then send the messages that promise what was
persisted (votes, acknowledgements); a replica whose Ready would also apply many messages
acknowledges first and applies in a second transaction (``_save_place.APPLY_AHEAD``).
Proposals and peer messages are stepped into the core by the tasks that receive them, while
a transaction runs; their effects form the next Ready, so everything that arrived during one
fsync shares the next one (group commit). A short
transaction runs on the loop's own thread while the storage thread is idle (:mod:`._save_place`):
the hand-offs would cost more than it does; a leader's only when its Ready is small (under
load its loop serves connections during the fsync), and only once its REPLICATEs have left
(written by this task itself when their links are idle: ``GroupLinks.send_at_once``). The
acknowledgement that commits a leader's entries applies them, and answers, in the step of
the task that received it while this task waits for work (:mod:`._in_step`).

A little longer than the house's ~600 lines: the loop and the ledger's hand-over of outcomes
read the same Ready in one order, and splitting them would pass that order between modules.
How proposals and reads are taken and settled (:mod:`._proposing`), Readies handled in a
stepping task's step (:mod:`._in_step`), where each transaction runs (:mod:`._save_place`),
the group's members and address book (:mod:`._group_members`), roles and transfers
(:mod:`._leadership`) and snapshots (:mod:`._snapshots`) are rooms of their own.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from .._core import _raft as raft
from .._core._commands import Command, CommandGroup
from .._core._proposals import Proposals
from .._core._raft_messages import (
    DataSync,
    Message,
    Replicate,
    ReplicateResponse,
    TimeoutNow,
)
from .._errors import BrokerError, ErrorCode
from .._protocol._entries import payload_bytes
from .._storage import StorageWorker, Store
from .._storage._failed import StorageFailed, lost_writes
from ._applied import applied_group
from ._config import BrokerConfig
from ._disk_space import DiskSpace
from ._failed_storage import report_failed_storage
from ._group_members import GroupMembers
from ._in_step import InStep
from ._leadership import Leadership
from ._log import log_event, logger
from ._network import Network
from ._peer_mux import GroupLinks, PeerMux
from ._peers import AFTER_FRAMES, PeerFleet
from ._pending import Capacity, Pending, settling
from ._proposing import Proposing, not_applied
from ._reads import ReadPath
from ._recovery import make_node
from ._repair import STOOD_IN, Repair, StoodIn, serve_fetch_values
from ._save_place import (
    APPLY_AHEAD,
    SLOW_FSYNC,
    apply_weight,
    let_links_send,
    light,
    runs_in_place,
    saving_durably,
)
from ._snapshots import Snapshots

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


def _outcome_unknown(reason: str) -> BrokerError:
    return BrokerError(
        ErrorCode.UNAVAILABLE,
        f"outcome unknown: {reason}; the request may or may not have been applied",
        outcome="unknown",
    )


class RaftDriver(Proposing, InStep, GroupMembers):
    def __init__(
        self,
        broker_id: str,
        cluster_id: str,
        self_address: tuple[str, int],
        config: BrokerConfig,
        network: Network,
        store: Store,
        worker: StorageWorker,
        node: raft.RaftNode,
        addresses: dict[str, tuple[str, int]],
        on_applied: Callable[[Any, Any], None],
        on_snapshot: Callable[[set[str], set[str]], None],
    ) -> None:
        self.broker_id = broker_id
        self.cluster_id = cluster_id
        self.self_address = self_address
        self.config = config
        self.network = network
        self.node = node
        self.addresses = addresses
        self.peers: GroupLinks | None = None
        self.peer_mux: PeerMux | None = None
        """The broker's links shared by every group it hosts (:mod:`._peer_mux`); None: this
        driver's own (:class:`PeerFleet`)."""
        self.secret: bytes | None = None
        """The cluster secret this broker proves when it dials a peer (docs/security.md)."""
        self.plaintext_port: int | None = None
        """Announced to peers in PEER_HELLO (for the plaintext listeners' topology)."""
        self.hinted_addresses: dict[str, tuple[str, int]] = {}
        self._address_updates: set[str] = set()
        self._store = store
        self._worker = worker
        self.reads = ReadPath(self._settle, self._to_log, store)
        """Reads that change nothing, answered after a ReadIndex check (:mod:`._reads`)."""
        self._on_applied = self.reads.watching(on_applied)
        self._on_applied_group = applied_group(self._on_applied)
        self._on_snapshot = on_snapshot
        self._ledger: Proposals[Any] = Proposals(max_bytes=config.max_frame)
        """Tokens: a :class:`Pending`, or ``(PendingGroup, index)`` of :meth:`propose_many`."""
        self._capacity = Capacity(config.max_pending)
        self.max_group = config.max_pending
        """The most commands :meth:`propose_many` takes at once."""
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.snapshots = Snapshots(self, config, store, worker)
        self.repair = Repair(self, store, worker)
        """Damaged stored values, repaired from the other members (:mod:`._repair`)."""
        self.leadership = Leadership(self)
        self._changed = trio.Event()
        self._changed_waiters = 0
        """Tasks in :meth:`wait_changed` (nearly always none: see :meth:`signal_changed`)."""
        self._changing_membership = False
        self.may_promote: Callable[[str], bool] = lambda _learner: True
        """Whether a caught-up learner may become a voter (the metadata group caps its voters)."""
        self._linked_version = -1
        self._snapshot_requests: list[Pending] = []
        self.on_transaction: Any = None
        """A histogram (with a ``durable`` label) of transaction durations, if any."""
        self._transaction_series: tuple[Any, Any, Any] | None = None
        """``on_transaction`` and its series for ``durable`` false and true (``_saved``)."""
        self.transactions = 0
        self.entries_applied = 0
        self._saved_term_vote = (node.term, node.voted_for)
        self._fsync_fast = True
        """Whether the last durable transaction took less than SLOW_FSYNC."""
        self._unsent = False
        """Messages were handed to the peer links since this task last yielded: they leave
        only when the links' tasks run, so no fsync may hold the loop before then."""
        self.commands_applied = 0
        self.applied_in_step = 0
        """Readies applied by a stepping task (:meth:`_apply_here`)."""
        self.persisted_in_step = 0
        """A replica's Readies persisted by the task that read them
        (:meth:`_persist_after_frames`)."""
        self.applied_ahead = 0
        """Replica Readies acknowledged before their long apply (``APPLY_AHEAD``), by either
        path."""
        self.ahead_in_step = 0
        """Of those, the ones persisted and acknowledged by the task that read them (the apply
        then runs there, or in this task when heavy or the acknowledgement waits for a link:
        :meth:`_persist_after_frames`)."""
        self._deferred = False
        """A stepping task will persist this replica's Ready after its receive's frames."""
        self._parked = False
        """This task waits for work in its loop (no Ready outstanding): a stepping task may
        then apply what a message committed itself (:meth:`_apply_here`)."""
        self._taken: raft.Ready | None = None
        """A Ready a stepping task took and left to this task (its loop handles it first)."""
        self._failed: Exception | None = None
        """What failed after a stepping task applied a Ready: raised in this task's loop (a
        crash of the driver, recovered as any other)."""
        self._lone = False
        """The last apply that answered proposals answered one alone, and no proposal came
        while another was in flight since: one request at a time, whose next proposal the
        proposing task turns into its entry and REPLICATE itself (:meth:`_proposed`)."""
        self.proposed_in_step = 0
        """Readies of new entries taken by the proposing task (:meth:`_proposed`)."""
        self.disk = DiskSpace(
            broker_id, config.data_dir, config.min_free_mb, measure=config.disk_space
        )
        """Free space, and the writes refused without it (docs/reliability.md, "Full disks")."""

    # -- inputs (called from other tasks; never block) ------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def read_snapshot_chunk(self, snapshot_id: str, offset: int) -> tuple[bytes, int, str] | None:
        """One chunk of a snapshot this broker offered (what DATA_SYNC_REQUEST serves)."""
        return self.snapshots.read_snapshot_chunk(snapshot_id, offset)

    async def fetch_values(self, request: Any) -> Any:
        """The intact stored values a peer asks for to repair its copy (FETCH_VALUES), or,
        when no member holds them any more, this leader's snapshot (``snapshot_for``)."""
        if request.snapshot_for is not None:
            return self.snapshots.offer_asked(request)
        return await serve_fetch_values(self._store, self._worker, request)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the driver's nursery (for the tasks of its rooms)."""
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    def step(self, message: Message) -> None:
        if self.disk.stuck and isinstance(message, Replicate | DataSync):
            # A replica whose last transaction failed for lack of space cannot persist these:
            # not stepped, so neither held in memory nor acknowledged; the leader resends.
            return
        if isinstance(message, DataSync) and isinstance(message.data, dict):
            self.snapshots.start_fetch(message)
            return
        self.node.step(message)
        if self.reads.waiting:
            self.reads.collect(self.node, self._read_error)  # (an echo may confirm some)
        if self.peers is not None:
            self._send_loose()  # (heartbeat answers, the leader's next appends: at once)
        if isinstance(message, TimeoutNow):
            self.leadership.note_timeout_now(message)
        self.leadership.note_role()
        if self._deferred:
            return  # (the persist after this receive's frames decides: _persist_after_frames)
        if not self._parked or self._taken is not None or self._failed is not None:
            self.wake()
        elif type(message) is ReplicateResponse:
            # (the core asked once: an acknowledgement that commits nothing new, a leader's
            # second of each entry with three voters, has no Ready and no reads waiting)
            if self.node.has_ready():
                if self._may_apply():
                    self._apply_here()
                else:
                    self.wake()
            elif self.reads.waiting:
                self.wake()
        elif (
            type(message) is Replicate
            and (after := AFTER_FRAMES.get()) is not None
            and after.open
            and self._may_persist()
        ):
            self._deferred = True
            after.append(self._persist_after_frames)
        elif self.node.has_ready() or self.reads.waiting:
            self.wake()
        # (else nothing for this task: an acknowledgement that commits nothing new)

    @property
    def applied_index(self) -> int:
        """The last log index whose effects are visible here, in storage and in the broker's
        in-memory views: the core's ``applied``, which moves when a Ready is advanced."""
        return self.node.applied

    @property
    def pending(self) -> int:
        """Proposals not yet answered."""
        return len(self._ledger)

    async def wait_changed(self) -> None:
        """Wait until the core has handled one more Ready (its state may have changed)."""
        self._changed_waiters += 1
        try:
            await self._changed.wait()
        finally:
            self._changed_waiters -= 1

    async def wait_leading(self) -> None:
        while not self.node.is_leader:
            await self.wait_changed()

    def not_leader_error(self) -> BrokerError:
        return self.leadership.not_leader_error()

    def transferring_error(self, target: str) -> BrokerError:
        return self.leadership.transferring_error(target)

    async def transfer_leadership(self, target: str | None) -> str | BrokerError:
        """Hand this leader's leadership to ``target`` and wait until it leads (see
        :meth:`Leadership.transfer <trio_broker._runtime._leadership.Leadership.transfer>`)."""
        return await self.leadership.transfer(target)

    async def snapshot_now(self) -> tuple[int, int]:
        """Compact the log up to the applied index now (the operator's SNAPSHOT), on this
        broker whatever its role; returns the snapshot's (index, term) once storage holds it.
        With nothing applied since the last compaction, returns that one."""
        pending = Pending()
        self._snapshot_requests.append(pending)
        self.wake()
        return await pending.wait()

    # -- the loop -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the core; on a crash, rebuild it from disk (bounded restarts), as after a
        process crash, so a bug costs in-flight requests, not the broker. Not after a write
        that may have lost acknowledged writes (a failed fsync): then the broker stops and
        this raises :class:`~trio_broker._storage.StorageFailed` (docs/reliability.md, "A
        failed fsync stops the broker")."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.peer_mux is not None:
                self.peers = self.peer_mux.register(self.cluster_id, self.address_of)
            else:
                self.peers = PeerFleet(
                    self.broker_id,
                    self.cluster_id,
                    nursery,
                    self.address_of,
                    self.self_address,
                    self.network.connect,
                    dead_after=max(1.0, 2 * self.config.failure_timeout),
                    secret=self.secret,
                    plaintext_port=self.plaintext_port,
                )
            try:
                await nursery.start(self.disk.run)
                nursery.start_soon(self.repair.scrub)
                task_status.started()
                await self._run_restarting()
            finally:
                if self.peer_mux is not None:
                    self.peer_mux.unregister(self.cluster_id, self.peers)

    async def _run_restarting(self) -> None:
        watch = getattr(self._worker, "watch_failure", None)
        if watch is None:
            return await self._restarting()
        watch(self._storage_failing)
        try:
            return await self._restarting()
        finally:
            self._worker.unwatch_failure(self._storage_failing)

    async def _restarting(self) -> None:
        crashes: list[float] = []
        while True:
            try:
                await self._drive()
            except Exception as exc:
                if lost_writes(exc) or getattr(self._worker, "failed", None) is not None:
                    # Not a crash to rebuild from: the disk may have dropped writes already
                    # acknowledged, and a rebuild reads the same page cache (fsyncgate).
                    raise self._stop_on_failed_storage(exc) from exc
                now = trio.current_time()
                crashes = [t for t in crashes if now - t < RESTART_WINDOW] + [now]
                logger.exception(
                    "driver.crashed broker_id=%s restarts_in_window=%d",
                    self.broker_id,
                    len(crashes),
                )
                if len(crashes) > MAX_RESTARTS:
                    raise
                await self._recover(exc)

    async def _recover(self, exc: Exception) -> None:
        # Rebuild first, answer after: a client told "outcome unknown" must not find the stale
        # core still claiming to lead.
        state, (addresses, queues, retained) = await self._worker.run(self._read_recovery)
        self.node = make_node(self.broker_id, state, self.config)
        self._taken = self._failed = None  # (the old core's: storage holds what they did)
        self._deferred = False
        self._saved_term_vote = (self.node.term, self.node.voted_for)
        # Entries may have been applied without their callbacks: rebuild the views from disk.
        self.addresses.clear()
        self.addresses.update(addresses)
        self._on_snapshot(queues, retained)
        self.snapshots.applied_bytes = 0
        for pending in self._ledger.take_all():
            self._settle(pending, _outcome_unknown(f"internal failure: {exc!r}"))
        self.reads.fail_all(not_applied("the consensus state was rebuilt"))
        log_event(
            logging.WARNING, "driver.restarted", term=self.node.term, applied=self.node.applied
        )

    def _storage_failing(self) -> None:
        """The storage thread refuses its jobs from now on (this group's save, another's, a
        trim; called on the trio thread as it fails): report it once, and end this run at
        its next turn, as after a failure of its own."""
        failure = getattr(self._worker, "failed", None)
        if failure is None:
            return
        report_failed_storage(failure, self.broker_id, self.cluster_id, self._store, self.config)
        if self._failed is None:
            self._failed = failure.again()
            self.wake()

    def _stop_on_failed_storage(self, exc: Exception) -> StorageFailed:
        """Fail-stop (docs/reliability.md, "A failed fsync stops the broker"): the storage
        refuses every later job, so nothing more is saved, acknowledged, voted or trimmed
        through it; the requests waiting here are answered "outcome unknown"."""
        worker: Any = self._worker
        failure = getattr(worker, "failed", None)
        if failure is None:
            failure = StorageFailed.from_error(exc)  # (the report names this group's file)
            if hasattr(worker, "fail"):
                worker.fail(failure)  # (its watchers report it: _storage_failing)
        report_failed_storage(failure, self.broker_id, self.cluster_id, self._store, self.config)
        for pending in self._ledger.take_all():
            self._settle(pending, _outcome_unknown("this broker's storage failed"))
        self.reads.fail_all(not_applied("this broker's storage failed"))
        return failure.again()

    def _read_recovery(self) -> tuple[Any, Any]:
        return self._store.raft_state(), self._read_views()

    async def _drive(self) -> None:
        if self.node.config.voters == {self.broker_id}:
            # The only voter needs nobody's vote: campaign now rather than after an
            # election timeout (the core still runs a full, persisted election).
            for _ in range(2 * self.config.election_ticks + 2):
                if self.node.role is not raft.Role.FOLLOWER:
                    break
                self.node.tick()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._clock)
            while True:
                self._wake = trio.Event()
                if self._failed is not None:
                    failed, self._failed = self._failed, None
                    raise failed
                if self._taken is not None:  # (a stepping task's: before anything else)
                    rd, self._taken = self._taken, None
                    await self._handle_ready(rd)
                    self._after_advance()
                    continue
                if self._snapshot_requests:
                    # Here no Ready is outstanding: storage has applied exactly node.applied.
                    requests, self._snapshot_requests = self._snapshot_requests, []
                    self.snapshots.compact_now(requests)
                if self._ledger.queued:
                    self._flush_proposals()
                if self.reads.arrived:
                    self.reads.register(self.node, self._read_error)
                    self._send_loose()  # (the heartbeat round they wait for: now)
                if self.reads.waiting and await self.reads.serve(
                    self.node, self._run_query, self._read_error
                ):
                    continue  # (some go to the log after all)
                if self.node.has_ready():
                    await self._handle_ready(self.node.ready())
                    self._after_advance()
                    continue
                self._parked = True
                try:
                    await self._wake.wait()
                finally:
                    self._parked = False
                if self._unsent:  # (a stepping task's acknowledgement, before its apply)
                    await let_links_send()
                    self._unsent = False

    async def _clock(self) -> None:
        """The heartbeat sender, failure detector and elector: the core's clock, on its own
        timer. Heartbeats (and whatever else a tick sends that promises nothing durable)
        leave at once, never behind a storage transaction; what must be persisted first (a
        campaign's term and vote) goes to the next Ready.

        In a broker, one timer (:meth:`~._peer_mux.PeerMux.ticking`) ticks every group it
        hosts, one after the other at the same instant: one wake-up per tick for all of them,
        and their heartbeats to a peer leave in one write on the shared link
        (docs/replication.md, "Peer links"). A failure in this group's tick ends this task,
        and so this run of the driver, as it would with a timer of its own."""
        if self.peer_mux is not None:
            failed: list[Exception] = []
            done = trio.Event()

            def on_ticks(ticks: int) -> None:
                if done.is_set():
                    return
                try:
                    self._on_ticks(ticks)
                except Exception as exc:
                    failed.append(exc)
                    done.set()

            with self.peer_mux.ticking(self.config.tick_seconds, on_ticks):
                await done.wait()
            raise failed[0]
        tick = self.config.tick_seconds
        next_tick = trio.current_time() + tick
        while True:
            await trio.sleep_until(next_tick)
            behind = int((trio.current_time() - next_tick) // tick) + 1
            next_tick += behind * tick
            self._on_ticks(behind)

    def _on_ticks(self, behind: int) -> None:
        """``behind`` ticks are due (more than one after a stall)."""
        # After a long stall, do not replay every missed tick at once.
        for _ in range(min(behind, 3)):
            self.node.tick()
        if self.reads.waiting:
            self.reads.collect(self.node, self._read_error)  # (a step-down fails them)
        self._send_loose()
        self.leadership.note_role()
        if self.node.is_leader:
            self._leader_housekeeping()
        if self.node.has_ready():
            self.wake()

    async def _run_query(self, fn: Callable[..., Any], *args: Any) -> Any:
        run = getattr(self._worker, "run_short", self._worker.run)
        return await run(fn, *args)

    def _send_loose(self) -> None:
        """Send the core's messages that need no Ready (see RaftNode.take_messages)."""
        assert self.peers is not None
        for m in self.node.take_messages():
            self.peers.send(m)

    def _send_at_once(self, messages: Sequence[Message]) -> bool:
        """Send a Ready's messages, written from this task where a link is idle (no wake-up
        of the link's task: :meth:`~._peer_mux.GroupLinks.send_at_once`). True when all
        left."""
        peers = self.peers
        assert peers is not None
        send_at_once = getattr(peers, "send_at_once", None)
        if send_at_once is not None:
            return send_at_once(messages)
        for m in messages:
            peers.send(m)
        return False

    def _append_runs(self) -> bool:
        """Every other member of the group said it reads ``APPEND_RUNS``
        (:meth:`~._peer_mux.GroupLinks.reads_append_runs`; False without such links)."""
        reads = getattr(self.peers, "reads_append_runs", None)
        return reads is not None and reads(self.node.config.members - {self.broker_id})

    def _encode_entries(self, rd: raft.Ready) -> None:
        """Each new entry encoded once, here: its log write and the REPLICATE to every replica
        reuse these bytes (a replica's entries already carry the bytes they arrived as)."""
        runs = None
        for entry in rd.entries:
            if entry.encoded is None:
                if runs is None:  # (a group of appends in runs only if every member reads it)
                    runs = self._append_runs()
                payload_bytes(entry, runs)

    async def _handle_ready(self, rd: raft.Ready) -> None:
        assert self.peers is not None
        self._encode_entries(rd)
        if rd.messages and not self._send_at_once(rd.messages):
            self._unsent = True
        snapshot = None
        if rd.snapshot is not None:
            snapshot = (rd.snapshot.snapshot, str(rd.snapshot.data))
        results: Any = []
        committed = rd.committed_entries
        acknowledged = False  # (rd.persisted_messages handed to the links)
        # A replica acknowledges its new entries before a long apply (APPLY_AHEAD, as
        # InStep._persist_after_frames): two transactions, each of a kind a Ready may be.
        ahead = (
            bool(rd.entries and rd.persisted_messages)
            and snapshot is None
            and apply_weight(committed) > APPLY_AHEAD
        )
        if rd.must_sync or committed:
            started = time.perf_counter()
            first = () if ahead else committed
            save = functools.partial(
                self._store.save,
                hard_state=rd.hard_state,
                truncate_from=rd.truncate_from,
                entries=rd.entries,
                snapshot=snapshot,
                committed=first,
            )
            durable = saving_durably(rd, self._saved_term_vote)
            in_place = runs_in_place(rd, durable, fsync_fast=self._fsync_fast, committed=first)
            if in_place and durable and self._unsent:
                await let_links_send()
                self._unsent = False
                started = time.perf_counter()
            results = await self._save(save, short=in_place, committed=first)
            if results is STOOD_IN:  # (the leader's snapshot, installed next, holds their effect)
                committed, results = (), []
            if not in_place:
                self._unsent = False  # (this task waited for the storage thread)
            took = time.perf_counter() - started
            # The acknowledgement first (it promises only what this transaction made durable,
            # and the leader's commit waits for it), the bookkeeping after: as InStep's.
            sent = not rd.persisted_messages or self._send_at_once(rd.persisted_messages)
            acknowledged = True
            self._saved(rd, first, durable=durable, took=took)
            if ahead:
                self.applied_ahead += 1
                if not sent:
                    await let_links_send()  # (a busy link, TLS: the acknowledgement first)
                started = time.perf_counter()
                apply = functools.partial(self._store.save, committed=committed)
                results = await self._save(apply, short=light(committed), committed=committed)
                if results is STOOD_IN:
                    committed, results = (), []
                self._saved(rd, committed, durable=False, took=time.perf_counter() - started)
            if not sent and not ahead:
                self._unsent = True
        if (
            rd.persisted_messages
            and not acknowledged
            and not self._send_at_once(rd.persisted_messages)
        ):
            self._unsent = True
        # A proposal whose entry was truncated here is NOT known to have failed: another
        # broker may still hold it and commit it as a later leader (Raft's Figure 8). Its fate
        # is known only once this broker applies that index: the same term means applied,
        # another term means not applied.
        if snapshot is not None:
            meta = snapshot[0]
            for pending in self._ledger.take_through(meta.index):
                self._settle(pending, _outcome_unknown("replaced by a snapshot from the leader"))
            # The installed state replaces everything the in-memory views were built from.
            addresses, queues, retained = await self._worker.run(self._read_views)
            self.addresses.clear()
            self.addresses.update(addresses)
            self._on_snapshot(queues, retained)
            await trio.Path(snapshot[1]).unlink(missing_ok=True)
            self.snapshots.applied_bytes = 0
            log_event(logging.INFO, "snapshot.installed", index=meta.index, term=meta.term)
        self._applied(committed, results)
        for peer in rd.snapshots_to_send:
            self.start_soon(self.snapshots.offer, peer)
        self.node.advance()

    def _saved(
        self, rd: raft.Ready, committed: Sequence[Any], *, durable: bool, took: float
    ) -> None:
        """A Ready's transaction committed (it took ``took`` seconds): the counts."""
        if rd.hard_state is not None:
            self._saved_term_vote = (rd.hard_state.term, rd.hard_state.voted_for)
        self.transactions += 1
        if durable:
            self._fsync_fast = took < SLOW_FSYNC
        histogram = self.on_transaction
        if histogram is not None:
            # Its two series looked up once, not at each transaction (``labels`` takes a lock
            # and checks its arguments: about 1.2 µs of each save's 2.2 for the count).
            series = self._transaction_series
            if series is None or series[0] is not histogram:
                series = (histogram, histogram.labels("false"), histogram.labels("true"))
                self._transaction_series = series
            series[2 if durable else 1].observe(took)
        if not committed:
            return  # (a replica's Ready whose apply waits: three of four at 100 x 1)
        self.entries_applied += len(committed)
        self.snapshots.note_applied(committed)
        for entry in committed:
            # Stored and sent: the in-memory log need not hold the payload twice.
            entry.remember_encoded(None)

    def _applied(self, committed: Sequence[Any], results: Sequence[Any]) -> None:
        """Tell the views what each committed entry did, and answer its proposals (each
        connection's answers known now leave in one write: ``settling``). Nothing to do for
        a Ready that applies nothing (a replica's while its apply waits, ``APPLY_LAG``: three
        Readies of four at 100 connections x 1), not even the ``settling`` block."""
        if not committed:
            return
        answered = 0
        with settling():
            for entry, result in zip(committed, results, strict=True):
                if isinstance(entry.payload, CommandGroup):
                    self._on_applied_group(entry.payload.commands, result.results)
                    self.commands_applied += len(entry.payload.commands)
                else:
                    self._on_applied(entry.payload, result)
                    self.commands_applied += isinstance(entry.payload, Command)
                tokens, outcomes = self._ledger.applied_columns(entry.index, entry.term, result)
                answered += len(tokens)
                self._settle_applied(tokens, outcomes)
        if answered:
            self._lone = answered == 1

    async def _save(
        self, save: Callable[[], list[Any]], *, short: bool, committed: Sequence[Any] = ()
    ) -> list[Any] | StoodIn:
        """Run the Ready's transaction; while it fails for lack of space, retry it.

        A failed transaction rolled back whole (entries, term and vote, applied commands and
        the applied index), and the core still waits for this Ready's ``advance()``: retrying
        the same transaction keeps storage and the core in step, as a very slow disk would.
        Meanwhile no proposal is taken, the proposals already in the log are answered "outcome
        unknown", nothing this Ready promises is sent, and reads of applied state go on.
        """
        # A short transaction runs on this thread when the storage thread is idle (see
        # _save_place), so its answers and acknowledgements leave in this loop turn.
        run = getattr(self._worker, "run_short", self._worker.run) if short else self._worker.run
        turn = getattr(self._worker, "save_in_turn", None)
        if turn is not None:  # one shared-log transaction for every group of this loop turn
            run = functools.partial(turn, short=short)
        attempt = functools.partial(
            self.disk.retrying, functools.partial(run, save), self._answer_disk_full
        )
        # A damaged value the transaction reads fails it too: repaired from a peer, then the
        # same transaction again (_repair). While no peer gives it, a leader hands over and
        # the requests waiting on these entries are answered "outcome unknown": once nobody
        # waits, a read whose effect does not need the value's bytes goes past it.

        def on_hold() -> None:
            self._hand_over()
            if committed:
                for pending in self._ledger.take_through(committed[-1].index):
                    self._settle(
                        pending, _outcome_unknown("a value it reads is damaged on this broker")
                    )

        def unwaited() -> bool:
            return not any(self._ledger.waiting(e.index) for e in committed)

        # The same transaction without its committed entries: run instead when the leader's
        # snapshot stands in for them (no member holds a value they read any more; _repair).
        without_apply = functools.partial(
            self.disk.retrying,
            functools.partial(run, functools.partial(save, committed=())),
            self._answer_disk_full,
        )
        return await self.repair.saving(
            attempt,
            on_hold,
            unwaited=unwaited,
            without_apply=without_apply if committed else None,
            through=committed[-1].index if committed else 0,
        )

    def _answer_disk_full(self) -> None:
        for pending in self._ledger.take_queued():  # never proposed: refused, nothing written
            self._settle(pending, self.disk.write_refusal())
        for pending in self._ledger.take_all():  # in the log: applied if a retry succeeds
            self._settle(pending, self.disk.in_flight_error())
        # A leader that cannot write hands over to a voter that may, so that the cluster goes
        # on taking writes (asked again after each failed retry: a transfer not taken up within
        # an election timeout is abandoned). Its TIMEOUT_NOW leaves with the next tick.
        self._hand_over()

    def _hand_over(self) -> None:
        node = self.node
        if not node.is_leader:
            return
        target = node.best_transfer_target()
        if target is not None and node.transfer_target is None:
            node.transfer_leadership(target)

    def _read_views(self) -> tuple[dict[str, tuple[str, int]], set[str], set[str]]:
        store = self._store
        return (
            store.broker_addresses(),
            set(store.queue_lengths()),
            set(store.retention_policies()),
        )

    def signal_changed(self) -> None:
        """Wake the tasks in :meth:`wait_changed`. With none waiting (a broker at work: this
        runs after every Ready and every change of role), nothing to do: a waiter that comes
        later waits for the next change whichever event it finds, so the event is set and
        replaced only for tasks already waiting."""
        if self._changed_waiters:
            self._changed.set()
            self._changed = trio.Event()

    def _after_advance(self) -> None:
        self.signal_changed()
        if self.node.cluster_version != self._linked_version:
            assert self.peers is not None
            self.peers.ensure(self.node.config.members - {self.broker_id})
            self._linked_version = self.node.cluster_version
        self.leadership.note_role()
        if self.node.is_leader:
            self._leader_housekeeping()
        self.snapshots.maybe_compact()


__all__ = ["RaftDriver"]
