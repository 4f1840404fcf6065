"""Work queues in the runtime: requests to commands, names to ids, and the leader's sweeps.

The semantics are the core's (``_core/_work.py``) and storage's twin; this room decides what
the broker proposes for each request of docs/protocol.md's "Work queues": it resolves queue
names to ids (on any broker, from the applied state), stamps the leader's wall clock on every
command whose outcome depends on time, and long-polls group reads. On the leader it proposes
``ExpireLeases`` while some lease is past its deadline (one at a time, as retention is
enforced) and, when the operator set an idle time, ``ForgetIdlePositions`` periodically.

It is handed what it uses (a ``propose`` callable, the storage worker and store, the config),
so it imports nothing of the broker.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .._core import _commands as cmd
from .._core import _work_commands as work
from .._core._work_rules import name_problem
from .._errors import BrokerError, ErrorCode, ProtocolError
from .._protocol import _messages as m
from .._protocol import stored_value
from .._protocol._codec import client_value
from ._answer import Answer
from ._config import BrokerConfig
from ._log import log_event, logger
from ._operations import MAX_BATCH_VALUES, MAX_READ_MESSAGES, MAX_WAIT_MS

_PER_MESSAGE_OVERHEAD = 96
"""Bytes a message adds to a group read's answer besides its data and headers."""
MAX_ACK_SEQUENCES = 1000
"""The most ``sequence_nums`` one GROUP_ACK names (they are merged into ranges)."""
LEASE_CHECK_INTERVAL = 0.05
"""The leader looks up the earliest lease deadline at most this often (seconds): each group
read wakes the sweep, and each look-up is a storage job."""
REDELIVERY_RECHECK = 1.0
"""A long-polling GROUP_READ reads again at least this often (seconds): a NACK's delay ends
without any command, so no wake-up says a redelivery became available. These re-reads fall
on the whole multiples of it on the broker's clock (:func:`next_recheck`), so that every
poll waiting on the broker re-reads at the same moment and their reads share one ReadIndex
round."""


def next_recheck(now: float) -> float:
    """The first multiple of :data:`REDELIVERY_RECHECK` after ``now`` (at most that far)."""
    return (math.floor(now / REDELIVERY_RECHECK) + 1) * REDELIVERY_RECHECK


def _bad(message: str) -> BrokerError:
    return BrokerError(ErrorCode.BAD_REQUEST, message)


def _headers(headers: dict[str, str] | None) -> work.Headers:
    return () if not headers else tuple(sorted(headers.items()))


def _wire_headers(headers: work.Headers) -> dict[str, str] | None:
    return dict(headers) if headers else None


def publish_command(
    request: m.Append | m.AppendBatch, config: BrokerConfig, *, appended_ms: int | None = None
) -> work.Publish | BrokerError | None:
    """APPEND or APPEND_BATCH with headers or a producer epoch, as a ``Publish`` stamped with
    ``appended_ms`` (the leader's clock; built once, not evolved afterwards); None for an
    append of the original contract (its own, unchanged command)."""
    if request.headers is None and request.producer_epoch is None:
        return None
    if isinstance(request, m.Append):
        values = [request.data]
        headers = [request.headers]
    else:
        values = request.values
        if not 1 <= len(values) <= MAX_BATCH_VALUES:
            return _bad(f"values must hold 1 to {MAX_BATCH_VALUES} values, not {len(values)}")
        if request.headers is not None and len(request.headers) != len(values):
            return _bad("headers must hold one object per value")
        headers = request.headers or [None] * len(values)
    try:
        records = tuple(
            work.Record(client_value(v), _headers(h)) for v, h in zip(values, headers, strict=True)
        )
    except ProtocolError as exc:  # a value nested deeper than the broker stores
        return exc
    total = sum(len(r.data) + sum(len(k) + len(v) + 6 for k, v in r.headers) for r in records)
    if total > config.max_data_bytes:
        return BrokerError(
            ErrorCode.TOO_LARGE,
            f"the data and headers of {total} bytes are larger than the maximum of "
            f"{config.max_data_bytes} bytes",
        )
    if request.producer_epoch is not None and (
        request.producer_id is None or request.producer_seq is None
    ):
        return _bad("producer_epoch goes with producer_id and producer_seq")
    if request.producer_seq is not None and request.producer_seq < 0:
        return _bad("producer_seq must be at least 0")
    if request.producer_id == "":
        return _bad("producer_id must not be empty")
    if request.producer_epoch is None and request.producer_id is not None:
        # Headers on an idempotent producer of the original kind: epoch-less dedup is the
        # original commands'; a fenced producer is what carries headers.
        return _bad("an idempotent producer appending headers needs a producer_epoch")
    return work.Publish(
        request.queue_name,
        records,
        request.producer_id,
        request.producer_epoch,
        request.producer_seq,
        appended_ms,
    )


def _ack_ranges(request: m.GroupAck) -> tuple[tuple[int, int], ...] | BrokerError:
    seqs = request.sequence_nums or []
    if len(seqs) > MAX_ACK_SEQUENCES:
        return _bad(f"sequence_nums names at most {MAX_ACK_SEQUENCES} messages")
    if not seqs and not request.ranges:
        return _bad("name the messages to acknowledge: sequence_nums or ranges")
    runs: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if runs and runs[-1][1] + 1 == seq:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return tuple(runs) + tuple((first, last) for first, last in request.ranges or [])


@attrs.define
class Mapped:
    """A pending command result, answered as ``convert`` says (a :class:`Waitable`)."""

    pending: Any
    convert: Callable[[Any], Any]

    @property
    def done(self) -> bool:
        return bool(self.pending.done)

    @property
    def result(self) -> Any:
        return self._convert(self.pending.result)

    def when_done(self, callback: Callable[[], None]) -> bool:
        """The wrapped object's ``when_done`` (:meth:`.Pending.when_done`): its outcome known
        is this one known (``done`` mirrors it), so the task that settles it writes the
        answer. False, and nothing registered, when it cannot call back (a long poll: the
        writer task awaits it)."""
        when_done = getattr(self.pending, "when_done", None)
        return when_done is not None and bool(when_done(callback))

    async def wait(self) -> Any:
        return self._convert(await self.pending.wait())

    def _convert(self, result: Any) -> Any:
        if isinstance(result, BrokerError | cmd.CommandRejected):
            return result
        return self.convert(result)


def appended_answer(request: m.Append | m.AppendBatch) -> Callable[[Any], Any]:
    def convert(result: work.Published) -> m.Response:
        if isinstance(request, m.Append):
            return m.Appended(result.first_sequence_num, result.duplicate)
        first = result.first_sequence_num
        return m.BatchAppended(list(range(first, first + result.count)), result.duplicate)

    return convert


def _messages(delivered: work.Delivered, group: bool) -> list[m.HeadedMessage]:
    return [
        m.HeadedMessage(
            d.sequence_num,
            stored_value(d.data),
            _wire_headers(d.headers),
            d.delivery_count if group else None,
        )
        for d in delivered.messages
    ]


def read_answer(result: Any) -> Any:
    """A READ's ``messages`` answer: the original shape, with headers only when some message
    has any."""
    if not isinstance(result, work.Delivered):
        return result
    if any(d.headers for d in result.messages):
        return m.HeadedMessageBatch(_messages(result, group=False))
    return m.MessageBatch(
        [m.Message(d.sequence_num, stored_value(d.data)) for d in result.messages]
    )


def work_answer(result: Any) -> Any:
    """A work command's result as the client's answer."""
    if isinstance(result, work.NamedQueue):
        return m.NamedQueueCreated(result.queue_id, result.name, result.created)
    if isinstance(result, work.QueueDeleted):
        return m.QueueDeleted(result.queue_id)
    if isinstance(result, work.GroupJoined):
        s = result.settings
        return m.GroupInfo(
            result.queue_id,
            result.group,
            s.visibility_ms,
            s.max_deliveries,
            s.dead_letter_queue,
            s.max_in_flight,
            result.created,
        )
    if isinstance(result, work.Delivered):
        return m.GroupMessages(_messages(result, group=True), result.in_flight)
    if isinstance(result, work.Acknowledged):
        return m.GroupAcked(result.acknowledged)
    if isinstance(result, work.LeasesChanged):
        return m.LeasesChanged(
            list(result.changed), list(result.not_held), list(result.dead_lettered)
        )
    if isinstance(result, work.GroupDeleted):
        return m.GroupRemoved(result.queue_id, result.group)
    if isinstance(result, work.PositionForgotten):
        return m.PositionForgotten(result.existed)
    raise AssertionError(f"unhandled work result {result!r}")  # pragma: no cover


class WorkRoom:
    """Work-queue requests, queue names, and the leader's lease and idle-position sweeps."""

    def __init__(
        self,
        config: BrokerConfig,
        worker: Any,
        store: Any,
        propose: Callable[[cmd.Command], Awaitable[Any]],
        may_sweep: Callable[[], bool],
        wall_clock_ms: Callable[[], int],
    ) -> None:
        self.config = config
        self._worker = worker
        self._store = store
        self._propose = propose
        self._may_sweep = may_sweep
        """True on the leader, while it is not shutting down."""
        self.wall_clock_ms = wall_clock_ms
        self._names: dict[str, str] = {}
        """Queue names resolved here (a cache of the applied state's)."""
        self._names_generation = 0
        """Bumped whenever a name may have gone: a lookup begun before is not cached."""
        self._changed: weakref.WeakValueDictionary[str, trio.Event] = weakref.WeakValueDictionary()
        """Long-polling group readers wait on these, one per queue. An entry goes when no poll
        holds its event: a poll on a queue id that is not there (answered with an error) leaves
        nothing behind, and one poll never pops an event another poll still waits on."""
        self._leases_changed = trio.Event()

    # -- names ----------------------------------------------------------------------------------

    async def resolve(self, queue: str) -> str | BrokerError:
        """A request's queue (an id, or a name) as the queue's id."""
        if queue.startswith("Q-"):
            return queue
        queue_id = self._names.get(queue)
        if queue_id is not None:
            return queue_id
        generation = self._names_generation
        queue_id = await self._worker.run(self._store.queue_id_for_name, queue)
        if queue_id is None:
            return BrokerError(ErrorCode.QUEUE_NOT_FOUND, f"no queue is named {queue[:128]!r}")
        if generation == self._names_generation:
            self._names[queue] = queue_id
        return queue_id

    async def resolved(self, request: Any) -> Any:
        """``request`` with its ``queue_name`` as a queue id, or the refusal."""
        queue_id = await self.resolve(request.queue_name)
        if isinstance(queue_id, BrokerError):
            return queue_id
        if queue_id == request.queue_name:
            return request
        return attrs.evolve(request, queue_name=queue_id)

    def names_replaced(self) -> None:
        """An installed snapshot replaced the state: names may have changed."""
        self._names.clear()
        self._names_generation += 1
        self._leases_changed.set()
        self._wake_all()

    def note_applied(self, payload: Any, result: Any) -> None:
        """Keep names current and wake the waiters, as commands are applied here."""
        if isinstance(result, work.NamedQueue):
            self._names[result.name] = result.queue_id
        elif isinstance(result, work.QueueDeleted):
            for name in [n for n, q in self._names.items() if q == result.queue_id]:
                del self._names[name]
            self._names_generation += 1
            self.wake(result.queue_id)
        elif isinstance(payload, work.Publish | cmd.AppendMessage | cmd.AppendBatch):
            self.wake(payload.queue_id)
        if isinstance(payload, work.GroupRead | work.GroupExtend | work.GroupNack):
            self._leases_changed.set()
            if isinstance(result, work.LeasesChanged) and (result.changed or result.dead_lettered):
                self.wake(payload.queue_id)
        elif isinstance(result, work.LeasesExpired) and result.expired:
            self._wake_all()

    def wake(self, queue_id: str) -> None:
        """Wake the group readers long-polling ``queue_id`` (it may have messages for them).
        Called for every append applied: a queue nobody polls costs a test of the weak
        dictionary's own dict, not a pop of it (a Python call, several times dearer); a dead
        entry found there is popped as before."""
        if queue_id in self._changed.data:
            event = self._changed.pop(queue_id, None)
            if event is not None:
                event.set()

    def _wake_all(self) -> None:
        events = list(self._changed.values())
        self._changed.clear()
        for event in events:
            event.set()

    def changed_event(self, queue_id: str) -> trio.Event:
        """The event the next :meth:`wake` of ``queue_id`` sets. A long poll takes it before
        it reads: a change applied after the read looked is then never missed."""
        event = self._changed.get(queue_id)
        if event is None:
            event = self._changed[queue_id] = trio.Event()
        return event

    # -- requests -------------------------------------------------------------------------------

    async def commit(self, command: Any, convert: Callable[[Any], Any] = work_answer) -> Answer:
        if isinstance(command, BrokerError):
            return Answer(now=command)
        pending = await self._propose(command)
        if isinstance(pending, BrokerError):
            return Answer(now=pending)
        return Answer(later=Mapped(pending, convert))

    async def create_named(self, request: m.CreateNamedQueue, new_id: Callable[[], str]) -> Answer:
        from ._operations import retention_policy

        if (problem := name_problem(request.name, "queue name")) is not None:
            return Answer(now=_bad(problem))  # refused before the log, not in it
        policy = None
        if request.retention is not None:
            policy = retention_policy(request.retention)
            if isinstance(policy, BrokerError):
                return Answer(now=policy)
        return await self.commit(work.CreateNamedQueue(new_id(), request.name, policy))

    async def resolve_queue(self, request: m.ResolveQueue) -> Answer:
        if request.name.startswith("Q-"):
            return Answer(now=_bad("a queue name cannot start with Q- (that is a queue id)"))
        queue_id = await self.resolve(request.name)
        if isinstance(queue_id, BrokerError):
            return Answer(now=queue_id)
        return Answer(now=m.QueueResolved(queue_id, request.name))

    async def handle(self, request: Any) -> Answer:
        """One of the group, deletion and forgetting requests (the table's entry for each)."""
        request = await self.resolved(request)
        if isinstance(request, BrokerError):
            return Answer(now=request)
        if isinstance(request, m.DeleteQueueRequest):
            command: Any = work.DeleteQueue(request.queue_name, request.force, self.wall_clock_ms())
        elif isinstance(request, m.ForgetPositionRequest):
            if not request.client_id:
                return Answer(now=_bad("client_id must not be empty"))
            command = work.ForgetPosition(request.client_id, request.queue_name)
        elif isinstance(request, m.GroupJoin):
            command = await self._join(request)
        elif isinstance(request, m.GroupRead):
            return await self._group_read(request)
        elif isinstance(request, m.GroupAck):
            ranges = _ack_ranges(request)
            command = (
                ranges
                if isinstance(ranges, BrokerError)
                else work.GroupAck(request.queue_name, request.group, request.member, ranges)
            )
        elif isinstance(request, m.GroupNack):
            command = work.GroupNack(
                request.queue_name,
                request.group,
                request.member,
                tuple(request.sequence_nums),
                self.wall_clock_ms(),
                request.delay_ms,
                request.error,
            )
        elif isinstance(request, m.GroupExtend):
            command = work.GroupExtend(
                request.queue_name,
                request.group,
                request.member,
                tuple(request.sequence_nums),
                self.wall_clock_ms(),
                request.visibility_ms,
            )
        else:
            assert isinstance(request, m.GroupDelete)
            command = work.DeleteGroup(
                request.queue_name, request.group, request.force, self.wall_clock_ms()
            )
        return await self.commit(command)

    async def _join(self, request: m.GroupJoin) -> Any:
        given = (
            request.visibility_ms,
            request.max_deliveries,
            request.dead_letter_queue,
            request.max_in_flight,
        )
        if all(v is None for v in given):
            return work.JoinGroup(request.queue_name, request.group)
        dead_letter = None
        if request.dead_letter_queue is not None:
            dead_letter = await self.resolve(request.dead_letter_queue)
            if isinstance(dead_letter, BrokerError):
                return dead_letter
        defaults = work.GroupSettings()
        settings = work.GroupSettings(
            defaults.visibility_ms if request.visibility_ms is None else request.visibility_ms,
            request.max_deliveries,
            dead_letter,
            defaults.max_in_flight if request.max_in_flight is None else request.max_in_flight,
        )
        return work.JoinGroup(request.queue_name, request.group, settings)

    async def _group_read(self, request: m.GroupRead) -> Answer:
        count = 1 if request.max_messages is None else request.max_messages
        if not 1 <= count <= MAX_READ_MESSAGES:
            return Answer(now=_bad(f"max_messages must be between 1 and {MAX_READ_MESSAGES}"))
        if request.wait_ms is not None and not 0 <= request.wait_ms <= MAX_WAIT_MS:
            return Answer(now=_bad(f"wait_ms must be between 0 and {MAX_WAIT_MS}"))
        max_bytes = max(self.config.max_data_bytes - count * _PER_MESSAGE_OVERHEAD, 1)

        def command() -> work.GroupRead:
            return work.GroupRead(
                request.queue_name,
                request.group,
                request.member,
                count,
                self.wall_clock_ms(),
                max_bytes,
            )

        changed = self.changed_event(request.queue_name) if request.wait_ms else None
        first = await self._propose(command())
        if isinstance(first, BrokerError):
            return Answer(now=first)
        if changed is None:
            return Answer(later=Mapped(first, work_answer))
        deadline = trio.current_time() + request.wait_ms / 1000
        poll = _GroupPoll(self, command, first, deadline, changed)
        return Answer(later=Mapped(poll, work_answer))

    # -- the leader's sweeps --------------------------------------------------------------------

    async def run_leases(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """On the leader: propose ``ExpireLeases`` (this broker's wall clock) whenever the
        earliest lease deadline has passed, one at a time. Failures are logged and retried."""
        task_status.started()
        recheck = self.config.failure_timeout
        while True:
            await trio.sleep(LEASE_CHECK_INTERVAL)
            self._leases_changed = trio.Event()
            if not self._may_sweep():
                with trio.move_on_after(recheck):
                    await self._leases_changed.wait()
                continue
            deadline = await self._worker.run(self._store.next_lease_deadline)
            now = self.wall_clock_ms()
            if deadline is None or deadline > now:
                wait = recheck if deadline is None else min(recheck, (deadline - now) / 1000)
                with trio.move_on_after(wait):
                    await self._leases_changed.wait()
                continue
            result = await self._sweep(work.ExpireLeases(now), "leases")
            if isinstance(result, work.LeasesExpired) and result.expired:
                log_event(
                    logging.INFO,
                    "leases.expired",
                    expired=result.expired,
                    dead_lettered=result.dead_lettered,
                    now_ms=now,
                )
            elif not isinstance(result, work.LeasesExpired):
                await trio.sleep(recheck)  # not applied (no quorum, lost leadership): later

    async def run_forget(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """With ``forget_idle_positions`` set, on the leader: propose ``ForgetIdlePositions``
        every quarter of the idle time (at most a minute apart)."""
        task_status.started()
        idle = self.config.forget_idle_positions
        if idle is None:
            return
        interval = min(60.0, idle / 4)
        while True:
            await trio.sleep(interval)
            if not self._may_sweep():
                continue
            result = await self._sweep(
                work.ForgetIdlePositions(self.wall_clock_ms(), int(idle * 1000)), "positions"
            )
            if isinstance(result, work.PositionsForgotten) and result.forgotten:
                log_event(logging.INFO, "positions.forgotten", forgotten=result.forgotten)

    async def _sweep(self, command: Any, what: str) -> Any:
        result: Any = BrokerError(ErrorCode.UNAVAILABLE, "no answer in time")
        try:
            # Bounded: a lost leadership resolves the proposal, but never wait for ever.
            with trio.move_on_after(self.config.failure_timeout * 10):
                pending = await self._propose(command)
                result = pending if isinstance(pending, BrokerError) else await pending.wait()
        except Exception:
            logger.exception("%s.sweep_crashed", what)
            return result
        if isinstance(result, BrokerError | cmd.CommandRejected):
            log_event(logging.DEBUG, f"{what}.not_swept", reason=result.message)
        return result


class _GroupPoll:
    """A GROUP_READ with ``wait_ms``: when nothing was delivered, wait for an append, a NACK
    or an expiry on the queue (or :data:`REDELIVERY_RECHECK`) and read again, with a fresh
    clock, until the deadline. Waited on by the connection's writer, as READ's long poll.

    Each read's wake-up event is taken before the read is proposed (``changed``): an append
    applied after the read looked at the state sets it, so the next round reads at once. A
    round that finds nothing is answered without a log entry once the group is known idle
    (``_reads.py``); the wake-ups are the same either way."""

    done = False
    result = None

    def __init__(
        self,
        room: WorkRoom,
        command: Callable[[], work.GroupRead],
        first: Any,
        deadline: float,
        changed: trio.Event,
    ) -> None:
        self.room = room
        self.command = command
        self.first = first
        self.deadline = deadline
        self.changed = changed

    async def wait(self) -> Any:
        result = await self.first.wait()
        changed = self.changed
        while (
            isinstance(result, work.Delivered)
            and not result.messages
            and trio.current_time() < self.deadline
        ):
            with trio.move_on_at(min(self.deadline, next_recheck(trio.current_time()))):
                await changed.wait()
            command = self.command()
            changed = self.room.changed_event(command.queue_id)
            pending = await self.room._propose(command)
            if isinstance(pending, BrokerError):
                return pending
            result = await pending.wait()
        return result
