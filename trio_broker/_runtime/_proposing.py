"""Proposals and reads as the driver takes them: one command or a receive's run, charged to
the driver's capacity, refused when this broker does not lead, is handing over leadership or
has no room on its disk; reads that qualify wait for a ReadIndex check (:mod:`._reads`), the
rest join the ledger (:class:`~.._core._proposals.Proposals`) until the next Ready turns them
into log entries; each proposal settled once with the outcome the ledger gives it. A part of
:class:`~._driver.RaftDriver`, kept apart from its loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from .._core import _raft as raft
from .._core._append_columns import AppendColumns
from .._core._appended_run import AppendedRun
from .._core._commands import CommandGroup
from .._core._proposals import NotApplied
from .._errors import BrokerError, ErrorCode
from ._answer import Answer
from ._disk_space import DiskState
from ._pending import Pending, PendingGroup, acquire
from ._reads import READ_CANDIDATES

if TYPE_CHECKING:
    from ._driver import RaftDriver


def not_applied(reason: str) -> BrokerError:
    return BrokerError(ErrorCode.NOT_LEADER, f"not applied: {reason}; retry on the leader")


class Proposing:
    """Mixed into :class:`~._driver.RaftDriver` (its state: ``node``, ``_ledger``,
    ``_capacity``, ``reads``, ``disk``, ``peers``)."""

    async def propose(self: RaftDriver, payload: Any) -> Pending | BrokerError:
        """Propose on the leader; the Pending resolves with the applied result.

        Queue commands wait in a short list until the driver takes its next Ready: all that
        arrived meanwhile (while the previous transaction ran) become one log entry, a
        :class:`~trio_broker._core._commands.CommandGroup` (proposal batching).
        """
        if isinstance(payload, CommandGroup):
            return BrokerError(
                ErrorCode.BAD_REQUEST, "groups are made by the driver; propose commands"
            )
        # (as propose_many: the unit taken at once when free, no coroutine to take it; the
        # leader read once, and the disk asked only when it is not OK, as DiskSpace.refusal
        # refuses nothing then: one lone request each, docs/performance-history.md, "The leader's
        # request path (seventh round)")
        capacity = self._capacity
        if not capacity.take(1):
            await capacity.acquire(1)
        return self._propose_taken(payload)

    def propose_now(self: RaftDriver, payload: Any) -> Pending | BrokerError | None:
        """:meth:`propose` without a coroutine when its unit of capacity is free now (a lone
        request's APPEND: ``Runs.lone_append``); None, and nothing taken, when it is not
        (:meth:`propose` then waits for it)."""
        if isinstance(payload, CommandGroup):
            return BrokerError(
                ErrorCode.BAD_REQUEST, "groups are made by the driver; propose commands"
            )
        if not self._capacity.take(1):
            return None
        return self._propose_taken(payload)

    def _propose_taken(self: RaftDriver, payload: Any) -> Pending | BrokerError:
        """:meth:`propose` once its unit is taken: refused (the unit given back) or queued."""
        capacity = self._capacity
        node = self.node
        if not node.is_leader:
            capacity.release()
            return self.not_leader_error()
        if node.transfer_target is not None:
            capacity.release()
            return self.transferring_error(node.transfer_target)
        disk = self.disk
        if disk.state is not DiskState.OK:
            refusal = disk.refusal(payload)
            if refusal is not None:
                capacity.release()
                return refusal
        pending = Pending()
        if type(payload) in READ_CANDIDATES and self.reads.qualifies(payload):
            self.reads.submit(payload, pending)
        else:
            self._ledger.add(payload, pending)
            if self._lone and self._may_propose_here(1):
                self._proposed()
                return pending
        self.wake()
        return pending

    async def propose_many(self: RaftDriver, commands: list[Any]) -> PendingGroup | BrokerError:
        """Propose a run of commands together (the requests of one receive, in their order),
        as :meth:`propose` would one at a time: one capacity charge and one result list for
        all, each outcome at its index. A refusal of them all (not the leader, a leadership
        transfer) is returned instead; a command the disk refuses gets its refusal at its
        index, and the others are proposed."""
        count = len(commands)
        kinds = set(map(type, commands))  # (one pass over the run for both checks below)
        if any(issubclass(kind, CommandGroup) for kind in kinds):
            return BrokerError(
                ErrorCode.BAD_REQUEST, "groups are made by the driver; propose commands"
            )
        refused = await _charge(self, count)
        if refused is not None:
            return refused
        group = PendingGroup(count)
        disk = self.disk
        if disk.state is DiskState.OK:  # (no command is refused then: DiskSpace.refusal)
            if not kinds.isdisjoint(READ_CANDIDATES):
                self._propose_with_reads(commands, group)
            else:
                self._ledger.add_many(commands, list(zip(repeat(group), range(count))))
                if self._lone and self._may_propose_here(count):
                    self._proposed()
                    return group
            self.wake()
            return group
        self._propose_refusing(commands, group)
        return group

    async def propose_columns(self: RaftDriver, run: AppendColumns) -> PendingGroup | BrokerError:
        """:meth:`propose_many` of a receive's plain appends held as columns (one queue, one
        stamp: ``Runs.handle_many``), without an ``AppendMessage`` per append: the same
        charge, refusals and group, queued as the columns
        (:meth:`~.._core._proposals.Proposals.add_columns`). When the disk is not OK, each
        append is asked about, as :meth:`propose_many` asks (its appends made then)."""
        count = len(run)
        refused = await _charge(self, count)
        if refused is not None:
            return refused
        group = PendingGroup(count)
        if self.disk.state is not DiskState.OK:
            self._propose_refusing(list(run), group)
            return group
        self._ledger.add_columns(run, list(zip(repeat(group), range(count))))
        if self._lone and self._may_propose_here(count):
            self._proposed()
            return group
        self.wake()
        return group

    def _propose_refusing(self: RaftDriver, commands: list[Any], group: PendingGroup) -> None:
        """The commands of a charged run queued while the disk is not OK: each one it
        refuses gets its refusal at its index (its unit given back), the others queued."""
        disk = self.disk
        add = self._ledger.add
        refused = 0
        for index, command in enumerate(commands):
            refusal = disk.refusal(command)
            if refusal is not None:
                group.set(index, refusal)
                refused += 1
                continue
            add(command, (group, index))
        if refused:
            self._capacity.release(refused)
        self.wake()

    def _propose_with_reads(self: RaftDriver, commands: list[Any], group: PendingGroup) -> None:
        """:meth:`propose_many`'s run that holds reads: those that qualify wait for a
        ReadIndex check (:mod:`._reads`), the others go to the log, in their order.

        A run of one reader's READs is one command object, repeated (``Runs.handle_many``),
        and :meth:`~._reads.ReadPath.qualifies` answers from the command and the applied
        hints, which nothing here changes: it is asked once per run (``asked``), not per READ
        (``tests/test_readrest_proposing.py``)."""
        reads = self.reads
        add = self._ledger.add
        asked = None  # the read last asked about; ``qualifies``, its answer
        qualifies = False
        for index, command in enumerate(commands):
            if command is not asked:
                if type(command) not in READ_CANDIDATES:
                    add(command, (group, index))
                    continue
                asked, qualifies = command, reads.qualifies(command)
            if qualifies:
                reads.submit(command, (group, index))
            else:
                add(command, (group, index))

    def _to_log(self: RaftDriver, command: Any, token: Any) -> None:
        """A read that tried the ReadIndex path goes to the log after all, as before."""
        self._ledger.add(command, token)
        self.wake()

    def _read_error(self: RaftDriver, exc: Exception) -> Any:
        """The answer to a read the core refused or failed; None: it goes to the log."""
        if isinstance(exc, raft.LeadershipTransferring):
            return self.transferring_error(exc.leader_id)
        if isinstance(exc, raft.NotLeader):
            return self.not_leader_error()
        return None  # (too many reads waiting, or voters that do not echo rounds)

    async def confirm_leading(self: RaftDriver) -> BrokerError | None:
        """Wait until a majority confirmed that this broker leads after now and its applied
        state holds everything committed before (ReadIndex): then a read of the applied
        state is linearizable. The refusal (not the leader, a transfer) otherwise."""
        await acquire(self._capacity)
        if not self.node.is_leader:
            self._capacity.release()
            return self.not_leader_error()
        pending = Pending()
        self.reads.confirm_now(self.node, pending, self._read_error)
        if self.peers is not None:
            self._send_loose()  # (the round it waits for, if any: now)
        outcome = await pending.wait()
        return outcome if isinstance(outcome, BrokerError) else None

    def leading_checked(self: RaftDriver, handler: Callable[..., Awaitable[Any]]) -> Any:
        """``handler`` (a request handler that reads the applied state) run after
        :meth:`confirm_leading` on the leader; a replica's handler decides its refusal."""

        async def checked(request: Any, session: Any) -> Any:
            if self.node.is_leader:
                refusal = await self.confirm_leading()
                if refusal is not None:
                    return Answer(now=refusal)
            return await handler(request, session)

        return checked

    def _flush_proposals(self: RaftDriver) -> None:
        """Turn the proposals waiting since the last Ready into log entries: as many groups as
        the bounds allow (MAX_GROUP commands, about a frame of data each)."""
        for pending, outcome in self._ledger.propose_queued(self.node.propose):
            self._settle(pending, outcome)

    def _settle(self: RaftDriver, pending: Any, outcome: Any) -> None:
        """Answer one proposal with the outcome the ledger gave it, and free its unit."""
        if isinstance(outcome, NotApplied):
            outcome = not_applied(outcome.reason)
        elif isinstance(outcome, raft.LeadershipTransferring):
            outcome = self.transferring_error(outcome.leader_id)
        elif isinstance(outcome, raft.NotLeader):
            outcome = self.not_leader_error()
        if type(pending) is tuple:
            pending[0].set(pending[1], outcome)
        else:
            pending.set(outcome)
        self._capacity.release()

    def _settle_applied(self: RaftDriver, tokens: list[Any], outcomes: Sequence[Any]) -> None:
        """:meth:`_settle` for the proposals of one applied entry, with the ledger's
        :meth:`~.._core._proposals.Proposals.applied_columns`: the results of an apply need no
        translation (one check for all: only a ledger's :class:`NotApplied` does), and the
        capacity is given back once for all of them."""
        if not tokens:
            return
        if type(outcomes) is AppendedRun:
            _settle_run(tokens, outcomes)
            self._capacity.release(len(tokens))
            return
        if isinstance(outcomes[0], NotApplied):
            for pending, outcome in zip(tokens, outcomes, strict=True):
                self._settle(pending, outcome)
            return
        for pending, outcome in zip(tokens, outcomes, strict=True):
            if type(pending) is tuple:
                pending[0].set(pending[1], outcome)
            else:
                pending.set(outcome)
        self._capacity.release(len(tokens))

    def _wait_for(self: RaftDriver, index: int, term: int, pendings: list[Pending]) -> None:
        """Register the proposals of the entry this leader just appended at ``index``; those
        of an earlier term's entry it replaced are answered as not applied."""
        for pending, outcome in self._ledger.wait_for(index, term, pendings):
            self._settle(pending, outcome)


def _settle_run(tokens: list[Any], run: AppendedRun) -> None:
    """Settle ``tokens`` (an applied entry's, in its commands' order) with ``run``'s results:
    ``MessageAppended(run.first + i)`` for the ``i``-th. Each stretch of tokens that is one
    :class:`PendingGroup`'s, indexes ``start`` to ``start + count - 1``, is set at once as
    numbers (:meth:`PendingGroup.set_appended`): no result object and no call per append.

    A stretch is known from its two ends: a group's tokens enter the ledger in increasing
    index order (``propose_many``: its indexes in order; a read sent on to the log later never
    joins a run of plain appends), so ``count`` tokens whose first is ``(group, start)`` and
    last ``(group, start + count - 1)`` hold every index between, each once. Any other token
    (a lone :class:`Pending`, a stretch cut short) is set with its result as before."""
    size = len(tokens)
    if size != run.size:
        raise ValueError(f"{run.size} results for {size} requests")
    first = run.first
    at = 0
    while at < size:
        token = tokens[at]
        if type(token) is tuple:
            group, start = token
            count = min(size - at, len(group._results) - start)
            end = tokens[at + count - 1]
            if (
                type(end) is tuple
                and end[0] is group
                and end[1] == start + count - 1
                and group.set_appended(start, count, first + at)
            ):
                at += count
                continue
            group.set(start, run[at])
        else:
            token.set(run[at])
        at += 1


async def _charge(driver: RaftDriver, count: int) -> BrokerError | None:
    """One capacity charge for a run of ``count`` requests (``Proposing.propose_many``,
    ``Proposing.propose_columns``), waiting for room; given back with the refusal of them all
    when this broker does not lead or transfers its leadership."""
    capacity = driver._capacity
    if not capacity.take(count):
        await capacity.acquire(count)
    node = driver.node
    if node.is_leader and node.transfer_target is not None:
        capacity.release(count)
        return driver.transferring_error(node.transfer_target)
    if not node.is_leader:
        capacity.release(count)
        return driver.not_leader_error()
    return None
