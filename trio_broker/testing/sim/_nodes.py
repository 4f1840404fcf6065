"""The brokers and their disks: start, crash and restart from durable state; a Ready durable only
when its write completes; applying committed entries; the leader's proposal grouping and its
answers to clients (through the driver's own proposals ledger, :mod:`trio_broker._core._proposals`).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import attrs

from ..._core._append_columns import AppendColumns
from ..._core._appended_run import AppendedRun
from ..._core._commands import AppendBatch, AppendMessage, CommandGroup, GroupApplied, ReadBatch
from ..._core._proposals import NotApplied, Proposals
from ..._core._raft import NotLeader, RaftError, RaftNode
from ..._core._raft_messages import Entry
from ..._core._spread import SpreadPacer
from ..._core._work_commands import (
    WORK_COMMANDS,
    DeleteGroup,
    DeleteQueue,
    ExpireLeases,
    GroupExtend,
    GroupNack,
    GroupRead,
)
from ..._runtime._applied import APPLY_LAG, applies_later
from ..._runtime._reads import trial_read
from .._sim_cluster import COMMANDS as APPLIED
from ._clients import ClientRequest, ClientResponse, Receive
from ._disk import damaged_in
from ._entries import store_result, stored
from ._params import SimulationFailure

TIMED = (GroupRead, GroupNack, GroupExtend, ExpireLeases, DeleteQueue, DeleteGroup)
"""Group commands stamped with the proposing leader's clock (``now_ms``)."""


def apply_entry(app: Any, entry: Entry) -> Any:
    """Apply a committed entry; the core's own entries (no-op, config) change no queue. A
    group's result comes in the form the store gives it (``_entries.store_result``: a run of
    appends answers with an ``AppendedRun``)."""
    payload = entry.payload
    if type(payload) is CommandGroup:
        return store_result(payload.commands, app.apply(payload))
    if isinstance(payload, (*APPLIED, *WORK_COMMANDS)):
        return app.apply(payload)
    return None


class NodesMixin:
    """The brokers' and disks' steps, on the simulation's state (see :class:`Simulation`)."""

    def _start(self, i: int) -> None:
        """Broker ``i`` starts: every group it hosts, from its durable state."""
        self.pacers[i] = SpreadPacer(self.spread_interval)
        if self.links:
            self._wire_start(i)
        for _ in self.each_group():
            self._start_group(i)

    def _start_group(self, i: int) -> None:
        # The log read back (decoded from its bytes, as the store's), cut before the first
        # damaged entry: (first damaged, last index).
        entries, damage = self.disks.recovery_read(i)
        if self.p.wire:
            self.g.sent_to.pop(i, None)
        st = self.storage[i]
        self.nodes[i] = self.node_cls(
            i,
            hard_state=st.hard_state,
            snapshot=st.snapshot,
            entries=entries,
            rng=random.Random(self.g.node_rng[i].getrandbits(64)),
            election_ticks=self.p.election_ticks,
            heartbeat_ticks=self.p.heartbeat_ticks,
            acknowledged=damage[1] if damage else None,
            max_batch=self.p.max_batch,
            apply_lag=APPLY_LAG,  # (as ``_runtime._recovery.make_node`` builds the core)
            apply_later=applies_later,
        )
        self.apps[i] = copy.deepcopy(st.snapshot_data)
        self.app_index[i] = st.snapshot.index
        self.disks.on_start(i)  # its scrub: damaged values found, repaired from a peer
        self.ledgers[i] = Proposals(max_group=self.p.max_group, max_bytes=self.p.max_bytes)
        if self.nodes[i].unverified:
            self.stats["starts_unverified"] += 1
        self.checker.on_start(i)
        self.dirty.add(i)
        self._trace(f"start {i}")

    def crash(self, i: int, quick: bool = False, reboot: bool | None = None) -> None:
        """A crash: volatile state and the disk write in progress are gone, in every group
        the broker hosts. A machine reboot (power loss; ``reboot``, else drawn from the
        seed's share of reboots) may also lose synced writes (``_disk``), and the broker's
        next start finds another boot id: its hard state is marked ``unverified`` in every
        group, as ``Store.note_boot`` marks it. A process crash loses nothing it synced."""
        if self.nodes.get(i) is None:
            return
        if reboot is None:
            reboot = self.reboot_rng.random() < self.p.reboots
        for _ in self.each_group():
            self.disks.on_crash(i, self.disk[i], reboot)  # the disk's own faults (_disk)
            if reboot:
                st = self.storage[i]
                st.hard_state = attrs.evolve(st.hard_state, unverified=True)
            self.nodes[i] = None
            self.disk[i] = None  # the write in progress is lost
            self.ledgers.pop(i, None)  # its requests are never answered: outcome unknown
            self.proposals.pop(i, None)
        self.pacers.pop(i, None)
        if reboot and self.links:
            self._reboot_links(i)
        lo, hi = self.p.restart_steps
        self.restart_at[i] = self.now + self.restart_rng.randint(1, lo if quick else hi)
        self.stats["crashes"] += 1
        self.stats["reboots"] += reboot
        self._trace(f"{'reboot' if reboot else 'crash'} {i}")

    def live(self) -> list[int]:
        """Brokers that are up (not crashed)."""
        return [i for i in self.ids if self.nodes[i] is not None]

    # -- disks ---------------------------------------------------------------------------------

    def _drive(self, i: int) -> None:
        self._answer_reads(i)
        if self.disk[i] is None:
            # Requests that arrived while the disk was busy share one entry, as in the runtime.
            self._propose_group(i)
        for _ in range(64):
            node = self.nodes[i]
            if node is None or self.disk[i] is not None or not node.has_ready():
                return
            rd = node.ready()
            if not rd.committed_entries and rd.snapshot is None and node.commit > node.applied:
                self.stats["applies_waiting"] += 1  # (a replica's lone appends wait: APPLY_LAG)
            self._encode_entries(i, rd)  # (before its messages leave, as the driver)
            for m in rd.messages:
                self.post(m)
            delay = self.disk_rng.randint(0, slow) if (slow := self.p.disk_delays[i - 1]) else 0
            if delay:
                self.disk[i] = (self.now + delay, rd)
                return
            self._complete(i, rd)

    def _complete(self, i: int, rd: Any) -> None:
        node = self.nodes[i]
        assert node is not None
        committed = rd.committed_entries
        if not self.disks.before_apply(i, rd):  # it reads a damaged value: held, repaired
            if not (committed and node.snapshot_stands_in(committed[-1].index)):
                self.disk[i] = (self.now + 1, rd)
                return
            # The leader's snapshot, installed by the next Ready, holds their effect: the
            # Ready is completed without applying them (_runtime/_repair.py).
            committed = ()
            self.stats["snapshots_stood_in"] += 1
            self._trace(f"node {i}: a snapshot stands in for {rd.committed_entries[-1].index}")
        if committed or rd.committed_entries:
            # The held transaction is done: its wish ends with it (_runtime/_repair.py).
            node.drop_snapshot_wish()
        self._persist(i, rd)
        if self.p.wire:
            self._stored(i, rd)
        for m in rd.persisted_messages:
            self.post(m)
        if rd.snapshot is not None:
            self.apps[i] = copy.deepcopy(rd.snapshot.data)
            self.app_index[i] = rd.snapshot.snapshot.index
            self.checker.on_snapshot(i, rd.snapshot.snapshot.index, self.apps[i])
            self.stats["snapshots_installed"] += 1
            # Requests waiting on the entries the snapshot replaced: their outcome is unknown
            # (the runtime says so; the simulated client waits until it gives up).
            self.ledgers[i].take_through(rd.snapshot.snapshot.index)
        for e in committed:
            self._apply(i, e)
            e.remember_encoded(None)  # stored and sent: forgotten, as the driver does
        node.advance()  # (the core's applied index moves here: a snapshot is offered after)
        if node.is_leader:
            for peer in rd.snapshots_to_send:
                data = copy.deepcopy(self.apps[i])
                if self.disks.damaged_values.get(i):
                    continue  # (refused by the receiver's check; offered again after a timeout)
                self.post(node.make_data_sync(peer, self.app_index[i], data))
        self.disks.after_write(i, node)
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
            if voted and self.crash_point_rng.random() < self.p.crash_after_vote:
                self.crash(i, quick=True)
            elif self.crash_point_rng.random() < self.p.crash_after_sync:
                self.crash(i)

    def _persist(self, i: int, rd: Any) -> None:
        """Write ``rd``'s step 2: the log holds each new entry as its bytes and checksum
        (``_entries.stored``), which a start decodes (``Disks.recovery_read``)."""
        st = self.storage[i]
        st.persist(rd)
        if rd.entries:
            entries, base = st.entries, st.snapshot.index + 1
            for e in rd.entries:
                pos = e.index - base
                if 0 <= pos < len(entries) and entries[pos] is e:
                    entries[pos] = stored(e)

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
        self.disks.check_applied(i, e)
        workers = self.hosts_workers  # (the group workloads' queues are group 0's)
        before = self.checker.group.view(self.apps[i]) if workers else None
        result = apply_entry(self.apps[i], e)
        if type(result) is GroupApplied:
            if type(result.results) is AppendedRun:
                self.stats["results_as_runs"] += 1
            if type(e.payload.commands) is AppendColumns:
                self.stats["replica_columns"] += 1
                proposed = (self.g.index, i, e.term, e.index)
                if proposed in self.columns_proposed:  # (its leader's own: it answers them)
                    self.columns_proposed.discard(proposed)
                    self.stats["columns_committed"] += 1
        self.disks.check_result(i, e, result)
        self.app_index[i] = e.index
        self.checker.on_apply(i, e, result)
        if workers:
            self.checker.group.on_entry(i, e, result, before)
        self._trace(f"apply {i} {e.index} t{e.term}")
        for (client, req_id), outcome in self.ledgers[i].applied(e.index, e.term, result):
            if isinstance(outcome, NotApplied):  # another leader's entry took this index
                self._answer(i, client, req_id, "dropped")
            else:
                self._answer(i, client, req_id, "ok", outcome)

    def _answer(self, i: int, client: str | None, req_id: int, status: str, result=None) -> None:
        if client is None and req_id < 0 and req_id == -self.sweep_id:
            self.sweep_pending = None  # the idle sweep's outcome (see _sweep_idle)
        if client is not None:  # the operator's commands are not answered
            response = ClientResponse(i, client, req_id, status, result, group=self.g.index)
            self.post(response, client=True)

    # -- the broker side of client traffic -----------------------------------------------------

    def _serve(self, i: int, node: RaftNode, m: ClientRequest) -> None:
        if not node.is_leader:
            if m.src is not None:
                response = ClientResponse(
                    i, m.src, m.req_id, "not_leader", None, node.leader_id, self.g.index
                )
                self.post(response, True)
            return
        if m.src is not None and type(m.command) is ReadBatch and m.command.peek:
            # A client's peek: ReadIndex, as the runtime's (_runtime/_reads.py).
            try:
                node.read_index((m.src, m.req_id, m.command), node.log.last_index)
                self.stats["read_index"] = self.stats.get("read_index", 0) + 1
                # The round it waits for leaves now, as the runtime sends it (_send_loose):
                # with what else needs no Ready (heartbeats, their answers, appends).
                for message in node.take_messages():
                    self.post(message)
                self.dirty.add(i)
                return
            except NotLeader as exc:
                self.post(self._not_leader(i, m.src, m.req_id, exc), True)
                return
            except RaftError:
                pass  # (too many waiting: the log)
        if type(m.command) is Receive:
            self._receive_columns(i, node, m)
            return
        self._queue(i, m.command, (m.src, m.req_id))

    def _queue(self, i: int, command: Any, token: Any) -> None:
        """Queue a request in the leader's ledger until its next proposing. On the seeds with
        pipeliners the leader stamps it now, as the runtime stamps a request when it receives
        it (then the ledger proposes the queue without ``prepare``, the only way it proposes
        a group of columns as columns); on the others when it proposes it."""
        if self.p.pipeliners:
            command = self._stamped(i, command)
        self.ledgers[i].add(command, token)
        self.proposals.setdefault(i, self.now)

    def _receive_columns(self, i: int, node: RaftNode, m: ClientRequest) -> None:
        """A pipeliner's receive of plain APPENDs to one queue, queued as the runtime's
        ``Proposing.propose_columns`` queues it: refused whole while the leader transfers its
        leadership, else one run of columns (the queue, the receive's stamp, the values'
        bytes) and a token per append (``Proposals.add_columns``)."""
        receive = m.command
        count = len(receive.datas)
        if node.transfer_target is not None:
            for k in range(count):
                response = ClientResponse(
                    i, m.src, (m.req_id, k), "not_leader", None, None, self.g.index
                )
                self.post(response, True)
            self.stats["columns_refused_at_receive"] += 1
            return
        run = AppendColumns([receive.queue], [self.wall_ms(i)], [count], receive.datas)
        self.ledgers[i].add_columns(run, [(m.src, (m.req_id, k)) for k in range(count)])
        self.proposals.setdefault(i, self.now)
        self.stats["columns_receives"] += 1
        self.stats["columns_appends"] += count

    def _stamped(self, i: int, command: Any) -> Any:
        """The leader stamps appends with its wall clock (retention), and the group commands
        whose outcome depends on time (leases expire on its clock)."""
        if isinstance(command, AppendMessage | AppendBatch):
            return attrs.evolve(command, appended_ms=self.wall_ms(i))
        if isinstance(command, TIMED):
            return attrs.evolve(command, now_ms=self.wall_ms(i))
        return command

    def _not_leader(self, i: int, src: Any, req_id: int, exc: NotLeader) -> ClientResponse:
        return ClientResponse(i, src, req_id, "not_leader", None, exc.leader_id, self.g.index)

    def _answer_reads(self, i: int) -> None:
        """The peeks the core confirmed (answered from the applied state when they change
        nothing, else proposed as before) or failed (not the leader)."""
        node = self.nodes.get(i)
        if node is None:
            return
        ready, failed = node.take_reads()
        for (src, req_id, command), exc in failed:
            if isinstance(exc, NotLeader):
                self.post(self._not_leader(i, src, req_id, exc), True)
            else:
                self._queue(i, command, (src, req_id))
        for (src, req_id, command), _index in ready:
            result, changed = trial_read(self.apps[i], command)
            if changed or damaged_in(result):
                # (a read that meets a damaged value goes to the log, whose apply repairs it
                # first, as the runtime's ``_reads.query`` counts it changed: seed 1699)
                self._queue(i, command, (src, req_id))
            else:
                self._answer(i, src, req_id, "ok", result)

    def _propose_group(self, i: int) -> None:
        since = self.proposals.get(i)
        node = self.nodes.get(i)
        if since is None or node is None or self.now < since + self.p.linger:
            return
        del self.proposals[i]
        ledger = self.ledgers[i]
        grouped = ledger.grouped
        if self.p.pipeliners:
            # Stamped when received (``_queue``): proposed as the runtime proposes its queue.
            propose = self._columns_propose(i, node)
            try:
                settled = ledger.propose_queued(propose)
            except _Interrupted:
                # What the ledger did not propose stays queued, in order: proposed next step.
                self.stats["columns_requeued"] += 1
                self.proposals[i] = self.now - self.p.linger
                settled = []
        else:
            settled = ledger.propose_queued(node.propose, lambda c: self._stamped(i, c))
        self.stats["groups"] += ledger.grouped - grouped
        for (client, req_id), outcome in settled:
            if isinstance(outcome, NotLeader):
                if client is not None:
                    response = ClientResponse(
                        i, client, req_id, "not_leader", None, outcome.leader_id, self.g.index
                    )
                    self.post(response, True)
            else:
                # An earlier term's entry at this index was replaced in this leader's log: it
                # was never committed (leader completeness), as the runtime's driver answers.
                self._answer(i, client, req_id, "dropped")

    def _columns_propose(self, i: int, node: RaftNode) -> Any:
        """The core's ``propose``, counting the groups of columns proposed (and refused), and
        interrupted now and then before a group (``interrupt_rate``: an exception out of the
        ledger's ``propose``, after which it keeps the groups not proposed)."""
        rate = self.p.interrupt_rate
        rng = self.columns_rng

        def propose(payload: Any) -> tuple[int, int]:
            if rate and self.faults_on and rng.random() < rate:
                raise _Interrupted
            columns = type(payload) is CommandGroup and type(payload.commands) is AppendColumns
            try:
                term, index = node.propose(payload)
            except NotLeader:
                self.stats["columns_groups_refused"] += columns
                raise
            if columns:
                self.stats["columns_groups"] += 1
                self.columns_proposed.add((self.g.index, i, term, index))
            return term, index

        return propose


class _Interrupted(Exception):
    """A leader's proposing stopped before a group (``FaultParams.interrupt_rate``)."""
