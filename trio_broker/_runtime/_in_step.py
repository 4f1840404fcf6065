"""Readies handled in the step of the task that received their message, while the driver's
task waits for work (docs/performance.md, "One client, one append at a time"): the
acknowledgement that commits a leader's entries applies them and answers in its own step
(:meth:`InStep._apply_here`), and a replica's REPLICATEs of one receive are persisted, then
acknowledged, by the task that read them, after the receive's last frame
(:meth:`InStep._persist_after_frames`). Only short Readies that ``_save_place`` allows; any
other Ready, or a transaction that rolled back, goes to the driver's task, which handles it
first. A part of :class:`~._driver.RaftDriver`, kept apart from its loop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._core import _commands as cmd
from .._core import _raft as raft
from .._core import _raft_messages as rm
from .._core._append_columns import AppendColumns
from .._core._commands import Command, CommandGroup
from .._storage._integrity import StorageDamaged
from .._storage._worker import is_disk_full, note_failure
from ._disk_space import DiskState
from ._pending import settling
from ._save_place import (
    APPLY_AHEAD,
    SENDING_COMMANDS,
    applies_only,
    apply_weight,
    light,
    runs_in_place,
    saving_durably,
)

if TYPE_CHECKING:
    from ._driver import RaftDriver


class InStep:
    """Mixed into :class:`~._driver.RaftDriver` (its state: ``node``, ``_worker``, ``_store``,
    ``disk``, ``_parked``, ``_taken``, ``_failed``, ``_deferred``, ``_unsent``, ``_ledger``,
    ``reads``, ``applied_in_step``, ``persisted_in_step``, ``applied_ahead``)."""

    def _may_persist(self: RaftDriver) -> bool:
        """Whether the task reading a leader's stream may persist a replica's Ready itself,
        once every frame of its receive is stepped (:meth:`_persist_after_frames`): as
        :meth:`_may_apply`, on a broker that does not lead, with nothing this task handed
        the links still unsent."""
        node = self.node
        config = node.config
        return (
            not node.is_leader
            and not self._unsent
            and self._store_free(syncs=True)
            and self.disk.state is DiskState.OK
            and bool((config.voters | config.learners) - {self.broker_id})
        )

    def _persist_after_frames(self: RaftDriver, now: bool) -> None:
        """A replica's Ready, in the task that read the REPLICATEs of one receive, after the
        last of them was stepped (``AFTER_FRAMES``): one transaction for all, persisted, then
        the acknowledgement sent (persist before you send), the commands applied and the core
        advanced, without a wake-up and a turn of this task. Committed entries that may touch
        more than ``APPLY_AHEAD`` messages are applied after the acknowledgement, in a
        transaction of their own: here, or in this task (the persisted part done, the apply
        handed over: :meth:`_handing_apply`) when it is heavier than ``runs_in_place``
        allows or the acknowledgement did not leave at once (a busy link, TLS: this task lets
        the links send first). Reads for nobody (no committed entry waited on in the ledger:
        a replica's) do not read their values, as in this task's path (:mod:`._repair`); the
        damage they go past is noted for repair. Only a Ready that
        ``runs_in_place`` allows (short, no snapshot, no cut of the log, the last fsync
        quick) that sends nothing before it persists; nothing in it waits. Any other Ready, a
        transaction that rolled back (full disk, damaged value), or a stream that ended first
        (``now`` False) goes to this task, as in :meth:`_apply_here`."""
        self._deferred = False
        if not now or not self._parked or self._taken is not None or self._failed is not None:
            self.wake()
            return
        if not (self.node.has_ready() and self._may_persist()):
            if self.node.has_ready() or self.reads.waiting:
                self.wake()
            return
        rd = self.node.ready()
        durable = saving_durably(rd, self._saved_term_vote)
        committed = rd.committed_entries
        # A long apply (batched READs read every value on every broker) comes after the
        # acknowledgement, in a transaction of its own: the leader's commit of these entries
        # then waits for this fsync only, and the apply overlaps the leader's own.
        ahead = bool(rd.entries and rd.persisted_messages) and (
            apply_weight(committed) > APPLY_AHEAD
        )
        first = () if ahead else committed
        if (
            rd.messages
            or rd.snapshots_to_send
            or not runs_in_place(rd, durable, fsync_fast=self._fsync_fast, committed=first)
        ):
            self._handing_over(rd)
            return
        store = self._store
        started = time.perf_counter()
        try:
            self._set_reads(first)
            results = store.save(hard_state=rd.hard_state, entries=rd.entries, committed=first)
        except Exception as exc:
            if isinstance(exc, StorageDamaged) or is_disk_full(exc):
                self._handing_over(rd)
            else:
                self._fail_run(exc)
            return
        finally:
            self._saved_here(last=not ahead, synced=durable)
        took = time.perf_counter() - started
        self.persisted_in_step += 1
        try:
            # The damaged values this transaction read past, noted for repair before anything
            # can fail (the store's list is replaced by its next transaction); then the
            # acknowledgement (it promises only what this transaction made durable, and the
            # leader's commit waits for it), the bookkeeping after.
            self.repair.take_unchecked_met()
            if rd.persisted_messages and not self._send_at_once(rd.persisted_messages):
                # (a busy link, TLS: the driver's task lets the links send before anything
                # else, and this task persists no other Ready until then)
                self._unsent = True
            self._saved(rd, first, durable=durable, took=took)
            if ahead:
                self.applied_ahead += 1
                self.ahead_in_step += 1
                if self._unsent or not light(committed) or not self._store_free():
                    # (the acknowledgement first; a heavy one threaded)
                    self._saved_here(0)
                    self._handing_apply(rd)
                    return
                started = time.perf_counter()
                try:
                    self._set_reads(committed)
                    results = store.save(committed=committed)
                except Exception as exc:
                    if isinstance(exc, StorageDamaged) or is_disk_full(exc):
                        # Rolled back whole (the apply only): the driver applies as always
                        # (repairs, retries).
                        self._handing_apply(rd)
                        return
                    note_failure(self._worker, exc)  # (before _saved_here may queue a trim)
                    raise
                finally:
                    self._saved_here()
                self.repair.take_unchecked_met()
                self._saved(rd, committed, durable=False, took=time.perf_counter() - started)
            self._applied(committed, results)
            self.node.advance()
            self._after_advance()
        except Exception as exc:
            self._fail_run(exc)
            return
        if self._unsent:
            self.wake()
        else:
            self._wake_if_more()

    def _may_apply(self: RaftDriver) -> bool:
        """Whether the task that stepped an acknowledgement may apply a Ready in its own
        step: this broker leads, the core has a Ready, no proposal waits (the driver's next
        Ready would take it with this one: one transaction for both), the store is free (the
        storage thread idle and, with a shared log, no other group's save gathering or
        running: :meth:`_store_free`; the transaction runs here, and nothing else touches
        the store meanwhile), the disk has room, and the group has other members (a
        damaged value then fails the transaction whole, for this task's path to repair:
        :mod:`._repair`).

        A leader's core makes new entries only from proposals, which wait in the driver's
        ledger: a Ready taken here holds what the acknowledgement gave (committed entries,
        perhaps messages), never entries that a later message would have joined (a
        replica's REPLICATEs of one receive share a Ready: they are never taken here).
        Asked once the caller saw the core's ``has_ready`` true (``RaftDriver.step``, which
        asks it once per acknowledgement)."""
        node = self.node
        config = node.config
        return (
            node.is_leader
            and not self._ledger.queued
            and self._store_free()
            and self.disk.state is DiskState.OK
            and bool((config.voters | config.learners) - {self.broker_id})
        )

    def _apply_here(self: RaftDriver) -> None:
        """Handle a Ready that only applies committed entries (the acknowledgement that
        commits a leader's entry, a commit index that reached a replica) in the calling
        task's step, while this task waits for work: the apply and its answers in the same
        loop turn as the message, without a wake-up and a turn of this task. It sends nothing,
        fsyncs nothing and holds a short transaction (``runs_in_place``'s bound), run at once
        on this thread (the storage thread is idle); nothing in it waits, so no cancellation
        can leave it halfway. Any other Ready, or one whose transaction fails (it rolled back
        whole: out of space, a damaged value), goes to this task, which handles it first, as
        always (retries, repairs).

        The answers leave before the transaction's COMMIT (``Store.save``'s
        ``before_commit``), the views are told after it. An answer says only what the log
        already holds: every entry applied here is durable on a majority (committed), and
        its apply is deterministic, a function of the log alone. Should the COMMIT fail
        (out of space, an I/O error, a crash or power cut meanwhile), the transaction rolls
        back whole, the applied index with it, and the same entries are applied again, from
        the same state: by this task's path first (no other apply comes between; the
        ledger no longer holds the answered proposals, so nobody is answered twice and the
        disk-full path's "outcome unknown" does not reach them), by a rebuilt core after a
        failure of another kind, or from the log after a restart, on this broker and on
        whichever leads next. Each gives the results already sent (docs/performance-history.md,
        "Answers before the apply's COMMIT")."""
        rd = self.node.ready()
        if not applies_only(rd, self._saved_term_vote):
            self._handing_over(rd)
            return
        committed = rd.committed_entries
        store = self._store
        failed: list[Exception] = []
        answered: list[bool] = []

        def answer(results: list[Any]) -> None:
            # Inside the transaction, before its COMMIT (see the docstring): a failure here
            # must not decide the transaction's fate, so it is raised once it committed.
            answered.append(True)
            try:
                self._answer_applied(committed, results)
            except Exception as exc:
                failed.append(exc)

        started = time.perf_counter()
        try:
            # As _repair sets them for a group with other members, every value checked:
            # damage fails the transaction whole (see :meth:`_may_apply`).
            store.hold_damage, store.unchecked_reads = True, False
            results = store.save(
                hard_state=rd.hard_state,
                committed=committed,
                before_commit=answer if answers_early(committed) else None,
            )
        except Exception as exc:
            note_failure(self._worker, exc)  # (before _saved_here may queue a trim)
            self._saved_here()
            if isinstance(exc, StorageDamaged) or is_disk_full(exc):
                # Rolled back whole: this task's path runs it again (repairs, retries). The
                # answers given before a failed COMMIT are no longer in the ledger: that apply
                # answers nobody twice, and gives them the same results (see the docstring).
                self._handing_over(rd)
            else:
                self._fail_run(exc)  # (as if this task's own transaction had failed)
            return
        self._saved_here()
        took = time.perf_counter() - started
        self.applied_in_step += 1
        try:
            if failed:
                raise failed[0]
            if not answered:  # (a store that takes no ``before_commit``: answered after)
                self._answer_applied(committed, results)
            self._tell_applied(committed, results)  # (the views, then the bookkeeping)
        except Exception as exc:
            self._fail_run(exc)
            return
        self._advance_here(rd, committed, durable=False, took=took)

    def _store_free(self: RaftDriver, *, syncs: bool = False) -> bool:
        """Whether a transaction run in this step is alone on the store: the storage thread
        is idle (no job there, none can start before this step ends) and, on a broker whose
        groups share one storage thread and shared log (:mod:`trio_broker._storage._shared_log`),
        no other group's save waits for a batch or runs in one, and no trim is queued
        (``TurnCommitter.idle``). The store's save then runs alone in its fsync (the group's
        own transaction at ``FULL``, no shared-log row: ``_shared_log.own_save``), after every
        row written before: as a batch of one short save, which also runs on the loop.
        ``syncs``: a save that fsyncs, and none did on the loop in this turn
        (``TurnCommitter.synced_here``): the groups' durable saves of one turn (several
        groups' REPLICATEs in one receive, several groups' lone proposals) are one batch
        and one fsync off the loop, not one fsync each on it."""
        worker = self._worker
        if not getattr(worker, "idle", False):
            return False
        if getattr(worker, "save_in_turn", None) is None:
            return True
        committer = getattr(worker, "committer", None)
        return committer is not None and committer.idle and not (syncs and committer.synced_here)

    def _saved_here(
        self: RaftDriver, saves: int = 1, *, last: bool = True, synced: bool = False
    ) -> None:
        """``saves`` ran in this step (or failed): with a shared log, counted (``synced``:
        one fsynced the shared log), and, after the step's ``last`` one, a due trim queued on
        the storage thread (never before another save of the same step: the store would no
        longer be free)."""
        committer = getattr(self._worker, "committer", None)
        if committer is not None:
            committer.note_saved_here(saves, trim=last, synced=synced)

    def _fail_run(self: RaftDriver, exc: Exception) -> None:
        """What failed in a stepping task's step fails this task's run instead (raised in its
        loop: a crash of the driver, recovered as any other), never the stepping task's."""
        note_failure(self._worker, exc)  # (a failed fsync: nothing more runs on the storage)
        self._failed = exc
        self.wake()

    def _advance_here(
        self: RaftDriver, rd: raft.Ready, committed: Sequence[Any], *, durable: bool, took: float
    ) -> None:
        """A stepping task's transaction done: its bookkeeping, the core advanced, and this
        task woken if more waits; what fails there fails this task's run (:meth:`_fail_run`)."""
        try:
            self._saved(rd, committed, durable=durable, took=took)
            self.node.advance()
            self._after_advance()
        except Exception as exc:
            self._fail_run(exc)
            return
        self._wake_if_more()

    def _wake_if_more(self: RaftDriver) -> None:
        """After a stepping task's step: wake this task if the core, reads or proposals wait."""
        if self.node.has_ready() or self.reads.waiting or self._ledger.queued:
            self.wake()

    def _may_propose_here(self: RaftDriver, count: int) -> bool:
        """Whether the task that proposed ``count`` commands may take their Ready itself
        (:meth:`_proposed`): the ledger holds only them (nothing else in flight: one request
        at a time; else ``_lone`` is cleared, so that a burst of requests becomes one group
        in this task's next Ready, as always), this task waits for work and was not woken,
        nothing else waits for it (a snapshot, reads), the store is free
        (:meth:`_store_free`), the disk has room and the group has other members.

        At most ``SENDING_COMMANDS`` commands: a larger Ready that sends REPLICATEs persists
        on the storage thread (``runs_in_place``), and its hand-over, without the messages
        sent here, would read to this task's path as one that sends nothing (whose bound,
        ``SHORT_COMMANDS``, is far larger: its fsync would hold the loop)."""
        ledger = self._ledger
        if len(ledger) != count:
            self._lone = False
            return False
        if count > SENDING_COMMANDS:
            return False
        node = self.node
        config = node.config
        return (
            self._parked
            and not self._wake.is_set()
            and self._taken is None
            and self._failed is None
            and not self._unsent
            and not self._snapshot_requests
            and not self.reads.arrived
            and not self.reads.waiting
            and node.is_leader
            and self._store_free(syncs=True)
            and self.disk.state is DiskState.OK
            and bool((config.voters | config.learners) - {self.broker_id})
        )

    def _proposed(self: RaftDriver) -> None:
        """One request at a time (:meth:`_may_propose_here`): its proposal becomes its entry,
        and the REPLICATEs leave, in the proposing task's step, without a wake-up and a turn
        of this task first. The entry is then persisted here too when ``runs_in_place``
        allows (its fsync on this thread, as this task's path would run it), and the core
        advanced: the leader counts its own copy only then (``Ready``'s rule 1; the
        REPLICATEs promise nothing of it). Anything else in the Ready (an apply, a message
        that waits for the persist, a snapshot to send), a REPLICATE a busy link could not
        write at once, or a transaction that rolled back goes to this task, which handles
        the rest of the Ready first (its REPLICATEs are not sent again).

        Whatever raises here fails this task's run, as it would in this task's own path (the
        core rebuilt from storage, the proposals answered "outcome unknown"): never the
        proposing task's, which would leave a Ready taken and neither advanced nor handed
        over, and the core would give no other (every later proposal waiting forever)."""
        try:
            self._flush_proposals()
            if not self.node.has_ready():  # (refused: the ledger answered it)
                return
            rd = self.node.ready()
            self._encode_entries(rd)
            self.proposed_in_step += 1
            durable = saving_durably(rd, self._saved_term_vote)
            here = (
                durable
                and not rd.committed_entries
                and not rd.persisted_messages
                and not rd.snapshots_to_send
                and runs_in_place(rd, durable, fsync_fast=self._fsync_fast, committed=())
            )
            if rd.messages and not self._send_at_once(rd.messages):
                self._unsent = True
        except Exception as exc:
            self._fail_run(exc)
            return
        if not here or self._unsent:
            self._handing_over(attrs.evolve(rd, messages=()))  # (sent: not again)
            return
        started = time.perf_counter()
        try:
            self._store.save(hard_state=rd.hard_state, entries=rd.entries, committed=())
        except Exception as exc:
            if isinstance(exc, StorageDamaged) or is_disk_full(exc):
                # Rolled back whole: this task retries it (its REPLICATEs are not sent again).
                self._handing_over(attrs.evolve(rd, messages=()))
            else:
                self._fail_run(exc)
            return
        finally:
            self._saved_here(synced=True)
        self._advance_here(rd, (), durable=True, took=time.perf_counter() - started)

    def _answer_applied(self: RaftDriver, committed: Sequence[Any], results: Sequence[Any]) -> None:
        """The answers half of ``RaftDriver._applied``: settle the proposals of each applied
        entry (each connection's answers known now leave in one write: ``settling``)."""
        ledger = self._ledger
        answered = 0
        with settling():
            for entry, result in zip(committed, results, strict=True):
                tokens, outcomes = ledger.applied_columns(entry.index, entry.term, result)
                answered += len(tokens)
                self._settle_applied(tokens, outcomes)
        if answered:
            self._lone = answered == 1

    def _tell_applied(self: RaftDriver, committed: Sequence[Any], results: Sequence[Any]) -> None:
        """The other half of ``RaftDriver._applied``: tell the views what each committed entry
        did (after :meth:`_answer_applied`, once the transaction committed)."""
        with settling():
            for entry, result in zip(committed, results, strict=True):
                payload = entry.payload
                if isinstance(payload, CommandGroup):
                    self._on_applied_group(payload.commands, result.results)
                    self.commands_applied += len(payload.commands)
                else:
                    self._on_applied(payload, result)
                    self.commands_applied += isinstance(payload, Command)

    def _set_reads(self: RaftDriver, committed: tuple[Any, ...]) -> None:
        """As :mod:`._repair` sets them for a group with other members: damage fails the
        transaction whole, and reads that nobody waits for (no committed entry has a waiter
        in the ledger) do not read their values."""
        ledger = self._ledger
        store = self._store
        store.hold_damage = True
        store.unchecked_reads = not any(ledger.waiting(e.index) for e in committed)

    def _handing_apply(self: RaftDriver, rd: raft.Ready) -> None:
        """Hand this task the apply of a Ready whose entries, term and vote are persisted and
        acknowledged: the same Ready without them, so that only the apply runs again."""
        self._handing_over(
            attrs.evolve(rd, hard_state=None, entries=(), truncate_from=None, persisted_messages=())
        )

    def _handing_over(self: RaftDriver, rd: raft.Ready) -> None:
        self._taken = rd
        self.wake()


EARLY_ANSWERED = frozenset(
    {cmd.AppendMessage, cmd.AppendBatch, cmd.ReadNext, cmd.ReadBatch, cmd.Ack, cmd.Seek, rm.NoOp}
)
"""The commands whose answers may leave before their apply's COMMIT (``_apply_here``): what
they change is read back only through the applied index (a read waits for it; a failed COMMIT
does not move it). A command whose effect some request reads straight from the store (a queue
created or deleted, by its name or in LIST_QUEUES; a work group's member; retention; the
cluster's map; membership) is answered after its COMMIT, as before: a COMMIT that failed for
lack of space and stays failed while the disk is full would otherwise leave an answer that the
next RESOLVE_QUEUE contradicts."""


def answers_early(entries: Sequence[Any]) -> bool:
    """Whether every entry's answers may leave before the COMMIT (:data:`EARLY_ANSWERED`; a
    leader's no-op answers nobody)."""
    early = EARLY_ANSWERED
    for entry in entries:
        kind = type(entry.payload)
        if kind is CommandGroup:
            commands = entry.payload.commands
            if type(commands) is AppendColumns:  # (appends held as columns: none made)
                continue
            if not {type(c) for c in commands} <= early:
                return False
        elif kind not in early:
            return False
    return True
