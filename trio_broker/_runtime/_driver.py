"""The elector and replicator: one task that drives the consensus core.

The core decides; this task executes its Ready effects in the order the core prescribes:
send the leader's appends at once, persist (and apply what is committed) in one durable SQLite
transaction on the storage thread, and only then send the messages that promise what was
persisted (votes, acknowledgements). Proposals and peer messages are stepped into the core by
the tasks that receive them, while a transaction runs; their effects form the next Ready, so
everything that arrived during one fsync shares the next one (group commit).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from .. import _core
from .._core import _raft as raft
from .._core._commands import Command, CommandGroup, GroupApplied, data_size
from .._core._raft_messages import (
    ChangeAction,
    Config,
    ConfigChange,
    DataSync,
    Message,
    SnapshotMeta,
    TimeoutNow,
)
from .._errors import BrokerError, ErrorCode
from .._protocol._entries import payload_bytes
from .._storage import StorageWorker, Store
from ._config import BrokerConfig
from ._log import log_event, logger
from ._network import Network
from ._peers import PeerFleet

SNAPSHOT_CHUNK = 256 * 1024
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
SNAPSHOTS_KEPT = 2
MAX_GROUP = 1024
"""Commands in one proposal group (one log entry)."""
SHORT_ENTRIES = 8
SHORT_COMMANDS = 256
"""At most this many entries and commands in an apply-only transaction run on the event loop's
thread (a few hundred µs at most); a larger one goes to the storage thread."""
COMMAND_OVERHEAD = 256
"""More than the JSON a log payload adds to its data and its ids (field names, numbers)."""


def _encoded_bound(command: Any) -> int:
    """An upper bound of a command's size in a log entry. A group stays under ``max_frame`` by
    this bound, so that a REPLICATE of the core's 64 entries stays within a peer frame."""
    ids = sum(
        len(value)
        for value in (
            getattr(command, "queue_id", None),
            getattr(command, "client_id", None),
            getattr(command, "producer_id", None),
        )
        if isinstance(value, str)
    )
    return COMMAND_OVERHEAD + ids + data_size(command)


class Pending:
    """A proposal's outcome, filled in once its entry is applied (or known not to be)."""

    __slots__ = ("_event", "result")

    def __init__(self) -> None:
        self._event = trio.Event()
        self.result: Any = None

    def set(self, result: Any) -> None:
        if not self._event.is_set():
            self.result = result
            self._event.set()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> Any:
        await self._event.wait()
        return self.result


async def acquire(semaphore: trio.Semaphore) -> None:
    """``semaphore.acquire()``, without the two scheduler round trips when a unit is free.

    The request path takes a unit of two semaphores per request; when none is short, yielding
    there only costs time (the connection's reads and writes already yield), so this takes the
    unit at once and only waits when it must.
    """
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        await semaphore.acquire()


def _not_applied(reason: str) -> BrokerError:
    return BrokerError(ErrorCode.NOT_LEADER, f"not applied: {reason}; retry on the leader")


def _outcome_unknown(reason: str) -> BrokerError:
    return BrokerError(
        ErrorCode.UNAVAILABLE,
        f"outcome unknown: {reason}; the request may or may not have been applied",
        outcome="unknown",
    )


class RaftDriver:
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
        self.peers: PeerFleet | None = None
        self.secret: bytes | None = None
        """The cluster secret this broker proves when it dials a peer (docs/security.md)."""
        self.plaintext_port: int | None = None
        """Announced to peers in PEER_HELLO (for the plaintext listeners' topology)."""
        self.hinted_addresses: dict[str, tuple[str, int]] = {}
        self._address_updates: set[str] = set()
        self._store = store
        self._worker = worker
        self._on_applied = on_applied
        self._on_snapshot = on_snapshot
        self._waiters: dict[int, tuple[int, list[Pending]]] = {}
        """Log index -> (term proposed in, the proposals of that entry, in group order)."""
        self._proposals: list[tuple[Any, Pending]] = []
        self._capacity = trio.Semaphore(config.max_pending)
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._snapshot_dir = Path(config.data_dir) / "snapshots"
        # Snapshots are offered and fetched by one broker run; leftovers are stale.
        if self._snapshot_dir.is_dir():
            for stale in self._snapshot_dir.glob("*.sqlite3"):
                stale.unlink(missing_ok=True)
        self._snapshots: dict[str, tuple[Path, int, str]] = {}
        self._fetching: set[str] = set()
        self._last_role: tuple[str, int, str | None] | None = None
        self._last_recovering: tuple[int | None, bool] = (None, False)
        self._losses_logged: list[int] = []
        self._changed = trio.Event()
        self._changing_membership = False
        self._linked_version = -1
        self.elections_won = 0
        self.transfers: dict[str, int] = dict.fromkeys(
            ("started", "completed", "aborted", "received"), 0
        )
        """Leadership transfers this broker started as leader, how they ended, and the elections
        it won because a leader handed over to it (``received``)."""
        self._snapshot_requests: list[Pending] = []
        self._transfer_seen: tuple[int, str] | None = None
        self._transfer_ending: tuple[int, str] | None = None
        self._timeout_now_term: int | None = None
        self.on_transaction: Any = None
        """A histogram (with a ``durable`` label) of transaction durations, if any."""
        self.transactions = 0
        self.entries_applied = 0
        self._saved_term_vote = (node.term, node.voted_for)
        self.applied_index = node.applied
        """The last log index whose effects are visible here: in storage and in the broker's
        in-memory views (the core's ``applied`` moves when a Ready is taken, before that)."""
        self.commands_applied = 0
        self._applied_bytes = 0
        """Message bytes in applied entries since the last compaction (approximate)."""

    # -- inputs (called from other tasks; never block) ------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def step(self, message: Message) -> None:
        if isinstance(message, DataSync) and isinstance(message.data, dict):
            self._start_snapshot_fetch(message)
            return
        self.node.step(message)
        if self.peers is not None:
            self._send_loose()  # (heartbeat answers, the leader's next appends: at once)
        if isinstance(message, TimeoutNow) and self.node.role is raft.Role.CANDIDATE:
            self._timeout_now_term = self.node.term
            log_event(
                logging.INFO,
                "leadership.timeout_now",
                broker_id=self.broker_id,
                leader=message.src,
                term=self.node.term,
            )
        self._note_role()
        self.wake()

    async def propose(self, payload: Any) -> Pending | BrokerError:
        """Propose on the leader; the Pending resolves with the applied result.

        Queue commands wait in a short list until the driver takes its next Ready: all that
        arrived meanwhile (while the previous transaction ran) become one log entry, a
        :class:`~trio_broker._core._commands.CommandGroup` (proposal batching).
        """
        if isinstance(payload, CommandGroup):
            return BrokerError(
                ErrorCode.BAD_REQUEST, "groups are made by the driver; propose commands"
            )
        await acquire(self._capacity)
        if self.node.is_leader and self.node.transfer_target is not None:
            self._capacity.release()
            return self.transferring_error(self.node.transfer_target)
        if not self.node.is_leader:
            self._capacity.release()
            return self.not_leader_error()
        pending = Pending()
        self._proposals.append((payload, pending))
        self.wake()
        return pending

    def _flush_proposals(self) -> None:
        """Turn the proposals waiting since the last Ready into log entries: as many groups as
        the bounds allow (MAX_GROUP commands, about a frame of data each)."""
        proposals, self._proposals = self._proposals, []
        start = 0
        while start < len(proposals):
            end, size = start, 0
            while end < len(proposals) and end - start < MAX_GROUP:
                size += _encoded_bound(proposals[end][0])
                if end > start and size > self.config.max_frame:
                    break
                end += 1
            chunk = proposals[start:end]
            start = end
            payload = chunk[0][0] if len(chunk) == 1 else CommandGroup(tuple(c for c, _ in chunk))
            try:
                term, index = self.node.propose(payload)
            except raft.LeadershipTransferring as exc:
                error = self.transferring_error(exc.leader_id)
                for _, pending in chunk:
                    pending.set(error)
                    self._capacity.release()
                continue
            except raft.NotLeader:
                error = self.not_leader_error()
                for _, pending in chunk:
                    pending.set(error)
                    self._capacity.release()
                continue
            self._wait_for(index, term, [pending for _, pending in chunk])

    async def change_membership(self, change: ConfigChange) -> Any:
        """Propose one membership change and wait until it is applied."""
        # The unit is taken before proposing: the entry must not be applied before its waiter
        # is registered (waiting for capacity after proposing could let it be).
        await acquire(self._capacity)
        try:
            term, index = self.node.propose_config_change(change)
        except raft.NotLeader:
            self._capacity.release()
            return self.not_leader_error()
        except raft.RaftError as exc:
            self._capacity.release()
            return BrokerError(ErrorCode.UNAVAILABLE, f"membership change refused: {exc}")
        pending = Pending()
        self._wait_for(index, term, [pending])
        self.wake()
        return await pending.wait()

    def address_of(self, broker_id: str) -> tuple[str, int] | None:
        """Where a broker listens: what it last told us itself, else the address book."""
        return self.hinted_addresses.get(broker_id) or self.addresses.get(broker_id)

    def note_address(self, broker_id: str, address: tuple[str, int]) -> None:
        """A broker told us where it listens (PEER_HELLO). The leader also corrects the
        replicated address book when it is stale (a broker restarted on another port)."""
        self.hinted_addresses[broker_id] = address
        if (
            self.node.is_leader
            and broker_id in self.node.config.members
            and self.addresses.get(broker_id) != address
            and broker_id not in self._address_updates
            and self._nursery is not None
        ):
            self._address_updates.add(broker_id)
            self._nursery.start_soon(self._update_address, broker_id, address)

    async def _update_address(self, broker_id: str, address: tuple[str, int]) -> None:
        try:
            pending = await self.propose(_core.SetBrokerAddress(broker_id, *address))
            if isinstance(pending, Pending):
                await pending.wait()
        finally:
            self._address_updates.discard(broker_id)

    @property
    def pending(self) -> int:
        """Proposals not yet answered."""
        return len(self._proposals) + sum(len(p) for _, p in self._waiters.values())

    async def wait_changed(self) -> None:
        """Wait until the core has handled one more Ready (its state may have changed)."""
        await self._changed.wait()

    async def wait_leading(self) -> None:
        while not self.node.is_leader:
            await self.wait_changed()

    def transferring_error(self, target: str) -> BrokerError:
        """NOT_LEADER naming the broker leadership is being handed to: nothing was applied,
        and that broker leads within a round trip or two (or this one resumes)."""
        details: dict[str, Any] = {"leader_id": target}
        address = self.address_of(target)
        if address is not None:
            details["leader_host"], details["leader_port"] = address
        return BrokerError(
            ErrorCode.NOT_LEADER,
            f"broker {self.broker_id} is handing its leadership to {target}; retry there",
            **details,
        )

    async def transfer_leadership(self, target: str | None) -> str | BrokerError:
        """Hand this leader's leadership to the voter ``target`` (None: the most caught-up
        voter) and wait until it leads; returns its id. The caller bounds the wait.

        Errors: NOT_LEADER here, BAD_REQUEST for a target that cannot lead (this broker, a
        learner, a stranger) or no other voter, UNAVAILABLE if the transfer was abandoned (the
        target did not take over within an election timeout) or another broker took over.
        """
        node = self.node
        if not node.is_leader:
            return self.not_leader_error()
        if target is None:
            target = node.best_transfer_target()
            if target is None:
                return BrokerError(
                    ErrorCode.BAD_REQUEST, "no other voter to hand the leadership to"
                )
        try:
            node.transfer_leadership(target)
        except raft.TransferRefused as exc:
            return BrokerError(ErrorCode.BAD_REQUEST, f"cannot transfer leadership: {exc}")
        term = node.term
        self._note_role()
        self.wake()
        while True:
            node = self.node
            if node.leader_id == target and node.term > term:
                return target
            if node.is_leader and node.term == term and node.transfer_target != target:
                return BrokerError(
                    ErrorCode.UNAVAILABLE,
                    f"leadership transfer to {target} abandoned: it did not take over within "
                    "an election timeout; this broker still leads",
                )
            if node.term > term and node.leader_id is not None:
                return BrokerError(
                    ErrorCode.UNAVAILABLE,
                    f"leadership transfer to {target} failed: {node.leader_id} leads instead",
                    leader_id=node.leader_id,
                )
            await self.wait_changed()

    async def snapshot_now(self) -> tuple[int, int]:
        """Compact the log up to the applied index now (the operator's SNAPSHOT), on this
        broker whatever its role; returns the snapshot's (index, term) once storage holds it.
        With nothing applied since the last compaction, returns that one."""
        pending = Pending()
        self._snapshot_requests.append(pending)
        self.wake()
        return await pending.wait()

    def not_leader_error(self) -> BrokerError:
        leader = self.node.leader_id
        details: dict[str, Any] = {}
        if leader is not None:
            details["leader_id"] = leader
            address = self.address_of(leader)
            if address is not None:
                details["leader_host"], details["leader_port"] = address
        where = f"the leader is {leader}" if leader else "no leader is known yet"
        return BrokerError(
            ErrorCode.NOT_LEADER, f"broker {self.broker_id} is not the leader; {where}", **details
        )

    # -- the loop -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the core; on a crash, rebuild it from disk (bounded restarts), as after a
        process crash, so a bug or a failed fsync costs in-flight requests, not the broker."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
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
            task_status.started()
            crashes: list[float] = []
            while True:
                try:
                    await self._drive()
                except Exception as exc:
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
        self._saved_term_vote = (self.node.term, self.node.voted_for)
        self.applied_index = self.node.applied
        # Entries may have been applied without their callbacks: rebuild the views from disk.
        self.addresses.clear()
        self.addresses.update(addresses)
        self._on_snapshot(queues, retained)
        self._applied_bytes = 0
        self._flush_unproposed(_outcome_unknown(f"internal failure: {exc!r}"))
        for index in list(self._waiters):
            self._resolve(index, _outcome_unknown(f"internal failure: {exc!r}"))
        log_event(
            logging.WARNING, "driver.restarted", term=self.node.term, applied=self.node.applied
        )

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
                if self._snapshot_requests:
                    # Here no Ready is outstanding: storage has applied exactly node.applied.
                    self._compact_now()
                if self._proposals:
                    self._flush_proposals()
                if self.node.has_ready():
                    await self._handle_ready(self.node.ready())
                    self._after_advance()
                    continue
                await self._wake.wait()

    async def _clock(self) -> None:
        """The heartbeat sender, failure detector and elector: the core's clock, on its own
        timer. Heartbeats (and whatever else a tick sends that promises nothing durable)
        leave at once, never behind a storage transaction; what must be persisted first (a
        campaign's term and vote) goes to the next Ready."""
        tick = self.config.tick_seconds
        next_tick = trio.current_time() + tick
        while True:
            await trio.sleep_until(next_tick)
            behind = int((trio.current_time() - next_tick) // tick) + 1
            # After a long stall, do not replay every missed tick at once.
            for _ in range(min(behind, 3)):
                self.node.tick()
            next_tick += behind * tick
            self._send_loose()
            self._note_role()
            if self.node.is_leader:
                self._leader_housekeeping()
            if self.node.has_ready():
                self.wake()

    def _send_loose(self) -> None:
        """Send the core's messages that need no Ready (see RaftNode.take_messages)."""
        assert self.peers is not None
        for m in self.node.take_messages():
            self.peers.send(m)

    async def _handle_ready(self, rd: raft.Ready) -> None:
        assert self.peers is not None
        # Each new entry encoded once, here: its log write and the REPLICATE to every replica
        # reuse these bytes (a replica's entries already carry the bytes they arrived as).
        for entry in rd.entries:
            payload_bytes(entry)
        for m in rd.messages:
            self.peers.send(m)
        snapshot = None
        if rd.snapshot is not None:
            snapshot = (rd.snapshot.snapshot, str(rd.snapshot.data))
        results: list[Any] = []
        if rd.must_sync or rd.committed_entries:
            started = time.perf_counter()
            save = functools.partial(
                self._store.save,
                hard_state=rd.hard_state,
                truncate_from=rd.truncate_from,
                entries=rd.entries,
                snapshot=snapshot,
                committed=rd.committed_entries,
            )
            durable = self._durable(rd)
            if durable or not self._short(rd.committed_entries):
                results = await self._worker.run(save)
            else:
                # An apply-only transaction (no fsync) of a few entries: on this thread when
                # the storage thread is idle, so the answers leave in this loop turn.
                results = await getattr(self._worker, "run_short", self._worker.run)(save)
            if rd.hard_state is not None:
                self._saved_term_vote = (rd.hard_state.term, rd.hard_state.voted_for)
            self.transactions += 1
            if self.on_transaction is not None:
                label = "true" if durable else "false"
                self.on_transaction.labels(label).observe(time.perf_counter() - started)
            self.entries_applied += len(rd.committed_entries)
            self._applied_bytes += sum(data_size(e.payload) for e in rd.committed_entries)
            for entry in rd.committed_entries:
                # Stored and sent: the in-memory log need not hold the payload twice.
                entry.remember_encoded(None)
        for m in rd.persisted_messages:
            self.peers.send(m)
        # A proposal whose entry was truncated here is NOT known to have failed: another
        # broker may still hold it and commit it as a later leader (Raft's Figure 8). Its fate
        # is known only once this broker applies that index: the same term means applied,
        # another term means not applied.
        if snapshot is not None:
            meta = snapshot[0]
            for index in [i for i in self._waiters if i <= meta.index]:
                self._resolve(index, _outcome_unknown("replaced by a snapshot from the leader"))
            # The installed state replaces everything the in-memory views were built from.
            addresses, queues, retained = await self._worker.run(self._read_views)
            self.addresses.clear()
            self.addresses.update(addresses)
            self._on_snapshot(queues, retained)
            await trio.Path(snapshot[1]).unlink(missing_ok=True)
            self._applied_bytes = 0
            log_event(logging.INFO, "snapshot.installed", index=meta.index, term=meta.term)
        for entry, result in zip(rd.committed_entries, results, strict=True):
            if isinstance(entry.payload, CommandGroup):
                for command, one in zip(entry.payload.commands, result.results, strict=True):
                    self._on_applied(command, one)
                self.commands_applied += len(entry.payload.commands)
            else:
                self._on_applied(entry.payload, result)
                self.commands_applied += isinstance(entry.payload, Command)
            waiter = self._waiters.get(entry.index)
            if waiter is not None:
                term, _ = waiter
                if term == entry.term:
                    self._resolve(entry.index, result)
                else:
                    self._resolve(entry.index, _not_applied("another leader's entry was committed"))
        for peer in rd.snapshots_to_send:
            assert self._nursery is not None
            self._nursery.start_soon(self._offer_snapshot, peer)
        if rd.committed_entries:
            self.applied_index = max(self.applied_index, rd.committed_entries[-1].index)
        if snapshot is not None:
            self.applied_index = max(self.applied_index, snapshot[0].index)
        self.node.advance()

    def _durable(self, rd: raft.Ready) -> bool:
        """Whether the Ready's transaction fsyncs (as Store.save decides): new or removed log
        entries, a snapshot, or a new term or vote."""
        hs = rd.hard_state
        return bool(
            rd.entries
            or rd.truncate_from is not None
            or rd.snapshot is not None
            or (hs is not None and (hs.term, hs.voted_for) != self._saved_term_vote)
        )

    @staticmethod
    def _short(committed: tuple[Any, ...]) -> bool:
        """A bound on the work of a transaction run on the event loop's thread."""
        if len(committed) > SHORT_ENTRIES:
            return False
        commands = 0
        for entry in committed:
            payload = entry.payload
            commands += len(payload.commands) if isinstance(payload, CommandGroup) else 1
        return commands <= SHORT_COMMANDS

    def _read_views(self) -> tuple[dict[str, tuple[str, int]], set[str], set[str]]:
        store = self._store
        return (
            store.broker_addresses(),
            set(store.queue_lengths()),
            set(store.retention_policies()),
        )

    def _resolve(self, index: int, result: Any) -> None:
        """Answer the proposals of entry ``index``: each with its own result when the entry
        was applied as a group, each with the same error when it was not applied."""
        _, pendings = self._waiters.pop(index)
        if isinstance(result, GroupApplied):
            for pending, one in zip(pendings, result.results, strict=True):
                pending.set(one)
        else:
            for pending in pendings:
                pending.set(result)
        for _ in pendings:
            self._capacity.release()

    def _wait_for(self, index: int, term: int, pendings: list[Pending]) -> None:
        """Register the proposals of the entry this leader just appended at ``index``. A
        waiter still there is from an earlier term whose entry this leader's log replaced:
        by leader completeness that entry was never committed, so it was not applied."""
        if index in self._waiters:
            self._resolve(index, _not_applied("another leader's entry took its place"))
        self._waiters[index] = (term, pendings)

    def _flush_unproposed(self, error: BrokerError) -> None:
        proposals, self._proposals = self._proposals, []
        for _, pending in proposals:
            pending.set(error)
            self._capacity.release()

    def _after_advance(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        if self.node.cluster_version != self._linked_version:
            assert self.peers is not None
            self.peers.ensure(self.node.config.members - {self.broker_id})
            self._linked_version = self.node.cluster_version
        self._note_role()
        if self.node.is_leader:
            self._leader_housekeeping()
        self._maybe_compact()

    def _note_transfer(self) -> None:
        """Log and count the start and the outcome of a leadership transfer from this broker.

        The core clears its transfer target when it stops leading; whether the transfer then
        completed is known once this broker learns who leads the next term.
        """
        node = self.node
        active = None if node.transfer_target is None else (node.term, node.transfer_target)
        if active == self._transfer_seen and self._transfer_ending is None:
            return
        changed = active != self._transfer_seen
        if self._transfer_seen is not None and changed:
            self._transfer_ending = self._transfer_seen
        self._transfer_seen = active
        if changed and active is not None:
            self.transfers["started"] += 1
            log_event(
                logging.INFO,
                "leadership.transfer_started",
                broker_id=self.broker_id,
                to=active[1],
                term=active[0],
            )
        ending = self._transfer_ending
        if ending is not None:
            term, target = ending
            if node.term > term and node.leader_id == target:
                outcome = "completed"
            elif node.is_leader or node.leader_id is not None or active is not None:
                outcome = "aborted"
            else:
                outcome = None  # between leaders: wait until one is known
            if outcome is not None:
                changed = True
                self._transfer_ending = None
                self.transfers[outcome] += 1
                log_event(
                    logging.INFO if outcome == "completed" else logging.WARNING,
                    f"leadership.transfer_{outcome}",
                    broker_id=self.broker_id,
                    to=target,
                    term=node.term,
                    leader=node.leader_id,
                )
        if changed:
            self._changed.set()
            self._changed = trio.Event()

    def _note_role(self) -> None:
        """Log a change of role, term or leader (and wake waiters) when it happens: a tick can
        depose a leader (check-quorum) without producing anything to persist."""
        self._note_transfer()
        self._note_recovering()
        node = self.node
        state = (node.role.value, node.term, node.leader_id)
        if state == self._last_role:
            return
        log_event(
            logging.INFO,
            "role.changed",
            broker_id=self.broker_id,
            role=state[0],
            term=state[1],
            leader=state[2],
        )
        if node.is_leader and (self._last_role is None or self._last_role[0] != "leader"):
            self.elections_won += 1
            if self._timeout_now_term == node.term:
                self.transfers["received"] += 1
                log_event(
                    logging.INFO, "leadership.taken_over", broker_id=self.broker_id, term=node.term
                )
        self._last_role = state
        self._changed.set()
        self._changed = trio.Event()

    def _note_recovering(self) -> None:
        """Say when this broker starts and stops recovering (its log lost entries it had
        acknowledged: it neither votes nor leads meanwhile), and when no leader has come to
        repair it for ten election timeouts: then the cluster may lack a majority of intact
        copies, and refuses to guess which copy is right; an operator must act."""
        node = self.node
        stalled = node.recovering and node.election_elapsed >= 10 * node.election_ticks
        state = (node.recovering_until, stalled)
        if state == self._last_recovering and node.losses == self._losses_logged:
            return
        was_until, was_stalled = self._last_recovering
        self._last_recovering = state
        if node.losses != self._losses_logged:
            # Each loss once, even one a leader repaired within the message that showed it.
            self._losses_logged = list(node.losses)
            log_event(
                logging.WARNING,
                "raft.recovering",
                broker_id=self.broker_id,
                until=node.losses[-1],
                log_end=node.log.last_index,
                detail="this broker lost log entries it had acknowledged; it neither votes "
                "nor leads until a leader has given them back",
            )
            was_until = was_until or node.losses[-1]
        if node.recovering_until is None and was_until is not None:
            log_event(logging.INFO, "raft.recovered", broker_id=self.broker_id, index=was_until)
        if stalled and not was_stalled:
            log_event(
                logging.WARNING,
                "raft.recovery_stalled",
                broker_id=self.broker_id,
                until=node.recovering_until,
                log_end=node.log.last_index,
                detail="no leader has repaired this broker: if a majority of the voters cannot "
                "elect one, too few intact copies of the log remain and the group stays "
                "unavailable for writes rather than guess; bring back the brokers that hold "
                "the lost entries, or restore the damaged brokers' data from a backup "
                "(docs/reliability.md, 'Damaged and shortened logs')",
            )

    # -- leader housekeeping ---------------------------------------------------------------------

    def _leader_housekeeping(self) -> None:
        """Keep our own address in the book; promote one caught-up learner at a time."""
        assert self._nursery is not None
        self.note_address(self.broker_id, self.self_address)
        if self._changing_membership or self.node.transfer_target is not None:
            return  # (no membership change during a leadership transfer)
        for learner in sorted(self.node.config.learners):
            if self.node.caught_up(learner):
                self._changing_membership = True
                self._nursery.start_soon(self._promote, learner)
                return

    async def _promote(self, learner: str) -> None:
        try:
            result = await self.change_membership(ConfigChange(ChangeAction.PROMOTE, learner))
            if isinstance(result, BrokerError):
                log_event(
                    logging.WARNING,
                    "membership.promote_failed",
                    broker=learner,
                    reason=result.message,
                )
            else:
                log_event(
                    logging.INFO,
                    "membership.promoted",
                    broker=learner,
                    cluster_version=self.node.cluster_version,
                )
        finally:
            self._changing_membership = False
            self.wake()

    # -- compaction and snapshots -----------------------------------------------------------------

    def _maybe_compact(self) -> None:
        """Compact when the applied log passes ``compact_threshold`` entries beyond those kept,
        or ``compact_bytes`` of message data (the log is held in memory)."""
        log = self.node.log
        applied = self.node.applied
        keep = self.config.compact_keep
        over_bytes = self._applied_bytes >= self.config.compact_bytes
        if not over_bytes and applied - log.snapshot_index < self.config.compact_threshold + keep:
            return
        index = applied - keep
        if over_bytes:
            # Keep fewer entries when they are large: at most a quarter of the byte budget.
            index, kept = applied, 0
            while index > log.snapshot_index and applied - index < keep:
                size = data_size(log.entry(index).payload)
                if kept + size > self.config.compact_bytes // 4:
                    break
                kept += size
                index -= 1
        term = log.term(index) if index > log.snapshot_index else None
        if term is None:
            if over_bytes:  # the count was stale: the log holds less than it said
                held = log.slice(log.snapshot_index + 1, applied + 1)
                self._applied_bytes = sum(data_size(e.payload) for e in held)
            return
        config = self.node._config_at(index)
        self.node.compact(index)
        self._applied_bytes = sum(data_size(e.payload) for e in log.slice(index + 1, applied + 1))
        assert self._nursery is not None
        self._nursery.start_soon(self._compact_storage, SnapshotMeta(index, term, config))

    def _compact_now(self) -> None:
        requests, self._snapshot_requests = self._snapshot_requests, []
        log = self.node.log
        index = self.node.applied
        term = log.term(index)
        if index <= log.snapshot_index or term is None:
            for pending in requests:
                pending.set((log.snapshot_index, log.snapshot_term))
            return
        meta = SnapshotMeta(index, term, self.node._config_at(index))
        self.node.compact(index)
        self._applied_bytes = 0  # nothing applied is left in the log
        assert self._nursery is not None
        self._nursery.start_soon(self._compact_storage, meta, requests)

    async def _compact_storage(self, meta: SnapshotMeta, requests: Any = ()) -> None:
        await self._worker.run(self._store.compact, meta)
        log_event(logging.INFO, "log.compacted", upto=meta.index, term=meta.term)
        for pending in requests:
            pending.set((meta.index, meta.term))

    async def _offer_snapshot(self, peer: str) -> None:
        """Write a snapshot of the state machine and offer it to ``peer`` in a DATA_SYNC."""
        self._snapshot_dir.mkdir(exist_ok=True)
        snapshot_id = secrets.token_hex(8)
        path = self._snapshot_dir / f"{snapshot_id}.sqlite3"
        index = await self._worker.run(self._store.write_snapshot, str(path))
        digest = await trio.to_thread.run_sync(_sha256_file, path)
        size = path.stat().st_size
        self._snapshots[snapshot_id] = (path, size, digest)
        while len(self._snapshots) > SNAPSHOTS_KEPT:
            old = next(iter(self._snapshots))
            old_path, _, _ = self._snapshots.pop(old)
            old_path.unlink(missing_ok=True)
        try:
            message = self.node.make_data_sync(
                peer, index, {"snapshot_id": snapshot_id, "size": size, "sha256": digest}
            )
        except raft.UsageError as exc:  # the log was compacted past it meanwhile
            log_event(logging.WARNING, "snapshot.not_offered", peer=peer, reason=str(exc))
            return
        assert self.peers is not None
        self.peers.send(message)
        log_event(logging.INFO, "snapshot.offered", peer=peer, index=index, size=size)

    def read_snapshot_chunk(self, snapshot_id: str, offset: int) -> tuple[bytes, int, str] | None:
        entry = self._snapshots.get(snapshot_id)
        if entry is None:
            return None
        path, size, _ = entry
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read(SNAPSHOT_CHUNK)
        return chunk, size, hashlib.sha256(chunk).hexdigest()

    def _start_snapshot_fetch(self, message: DataSync) -> None:
        """Fetch one offered snapshot at a time: offers repeated while a large transfer is
        under way (the leader retries after an election timeout) are ignored, not stacked."""
        snapshot_id = message.data.get("snapshot_id") if isinstance(message.data, dict) else None
        if not isinstance(snapshot_id, str) or self._fetching:
            return
        self._fetching.add(snapshot_id)
        assert self._nursery is not None
        self._nursery.start_soon(self._fetch_snapshot, message, snapshot_id)

    async def _fetch_snapshot(self, message: DataSync, snapshot_id: str) -> None:
        from ._snapshot_fetch import fetch_snapshot

        try:
            address = self.address_of(message.src)
            if address is None:
                log_event(logging.WARNING, "snapshot.no_address", leader=message.src)
                return
            self._snapshot_dir.mkdir(exist_ok=True)
            path = self._snapshot_dir / f"incoming-{snapshot_id}.sqlite3"
            ok = await fetch_snapshot(
                self.network, address, self.cluster_id, message.data, path, self.secret
            )
            if ok:
                log_event(
                    logging.INFO,
                    "snapshot.received",
                    leader=message.src,
                    index=message.snapshot.index,
                    size=path.stat().st_size,
                )
                self.node.step(
                    DataSync(
                        src=message.src,
                        dst=message.dst,
                        term=message.term,
                        cluster_version=message.cluster_version,
                        snapshot=message.snapshot,
                        data=str(path),
                    )
                )
                self.wake()
        finally:
            self._fetching.discard(snapshot_id)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_node(
    broker_id: str, state: Any, config: BrokerConfig, rng: random.Random | None = None
) -> raft.RaftNode:
    """The core, from the recovery read (``Store.raft_state``). A log in which the store found
    damage (``state.damage``: the first damaged index and the last index it had) is given to
    the core cut before the damage, and the core recovers until that last index: it had
    acknowledged up to there, so it must not vote before a leader gave it all back."""
    snapshot_config = state.snapshot_config or Config(voters=frozenset())
    damage = getattr(state, "damage", None)
    entries = state.entries
    if damage is not None:
        first_damaged, last_index = damage
        entries = [e for e in entries if e.index < first_damaged]
        log_event(
            logging.WARNING,
            "log.damaged",
            broker_id=broker_id,
            first_damaged=first_damaged,
            last_index=last_index,
        )
    return raft.RaftNode(
        broker_id,
        hard_state=state.hard_state,
        snapshot=SnapshotMeta(state.snapshot_index, state.snapshot_term, snapshot_config),
        entries=entries,
        applied=state.applied,
        rng=rng or random.Random(int.from_bytes(os.urandom(8))),
        election_ticks=config.election_ticks,
        heartbeat_ticks=config.heartbeat_ticks,
        failure_timeout_ticks=config.election_ticks,
        acknowledged=damage[1] if damage is not None else None,
    )


__all__ = ["Pending", "RaftDriver", "make_node"]
