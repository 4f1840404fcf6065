"""Commands of the replicated state machine: what a log entry asks the queues to do.

A command is pure data. Applying the same commands in the same order gives the same queues and
the same results on every broker, whichever storage holds them (SQLite through ``_storage``, or
:class:`~trio_broker._core.QueueState` in memory for the simulator and the mock-clock harness).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import attrs

from .._ids import CLUSTER_ID_RE
from ._work_commands import Publish, WorkCommand, WorkResult

MAX_RETAINED_MESSAGES = 10**12
"""The largest ``max_messages`` of a retention policy."""
MAX_RETENTION_AGE_MS = 100 * 365 * 24 * 3600 * 1000
"""The largest ``max_age_ms`` of a retention policy: a hundred years."""
RETENTION_DELETES_PER_APPLY = 10_000
"""Messages one :class:`ApplyRetention` deletes at most, over all queues, so that its
transaction stays small; what is left goes at the next one."""


@attrs.frozen
class RetentionPolicy:
    """Which old messages of a queue may be deleted (docs/protocol.md, "Retention").

    A message is deleted once any rule allows it: ``max_messages`` keeps at most that many of
    the newest; ``max_age_ms`` deletes messages appended more than that long before the
    enforcement's ``now_ms``; ``delete_acknowledged`` deletes messages every client with a
    position on the queue has moved past (none, while the queue has no such client). Deletion
    only ever removes a prefix: sequence numbers never change and are never reused.
    """

    max_messages: int | None = None
    max_age_ms: int | None = None
    delete_acknowledged: bool = False

    @property
    def keeps_everything(self) -> bool:
        return (
            self.max_messages is None and self.max_age_ms is None and not self.delete_acknowledged
        )

    def problem(self) -> str | None:
        """Why this policy is not acceptable, or None."""
        for name, value, limit in (
            ("max_messages", self.max_messages, MAX_RETAINED_MESSAGES),
            ("max_age_ms", self.max_age_ms, MAX_RETENTION_AGE_MS),
        ):
            if value is not None and not 1 <= value <= limit:
                return f"{name} must be between 1 and {limit}, not {value}"
        return None


@attrs.frozen
class CreateQueue:
    """Create an empty queue. Replicated as ``REPLICATE`` type ``CREATE_QUEUE``."""

    queue_id: str
    retention: RetentionPolicy | None = None
    """Addition: the queue's retention policy from the start (None keeps everything)."""


@attrs.frozen(init=False)
class AppendMessage:
    """Append one message. Replicated as ``REPLICATE`` type ``APPEND_MESSAGE``.

    ``data`` is the value's JSON text, exactly as it will be handed back to readers. With a
    ``producer_id``, ``producer_seq`` makes the append idempotent (see :class:`ProducerState`).

    Its ``__init__`` is attrs' own but for one thing: each field is set through its slot's
    descriptor, not ``object.__setattr__`` (0.31 against 0.41 µs; one is built per APPEND
    and lives in the log, so it keeps its slots). Like attrs', it checks nothing: its callers
    pass values the codec or the request's checks produced.
    """

    queue_id: str
    data: bytes
    producer_id: str | None = None
    producer_seq: int | None = None
    appended_ms: int | None = None
    """The proposing leader's wall clock (ms since the epoch); None in entries written before
    retention existed. Applied as ``max(appended_ms, the queue's last stamp)``, so a queue's
    stamps never go backward, whatever the leaders' clocks did."""

    def __init__(
        self,
        queue_id: str,
        data: bytes,
        producer_id: str | None = None,
        producer_seq: int | None = None,
        appended_ms: int | None = None,
    ) -> None:
        _set_queue_id(self, queue_id)
        _set_data(self, data)
        _set_producer_id(self, producer_id)
        _set_producer_seq(self, producer_seq)
        _set_appended_ms(self, appended_ms)


_set_queue_id, _set_data, _set_producer_id, _set_producer_seq, _set_appended_ms = (
    AppendMessage.__dict__[field.name].__set__ for field in attrs.fields(AppendMessage)
)


@attrs.frozen
class AppendBatch:
    """Append several messages atomically, at consecutive sequence numbers.

    Replicated as ``REPLICATE`` type ``APPEND_BATCH``.
    """

    queue_id: str
    data: tuple[bytes, ...]
    producer_id: str | None = None
    producer_seq: int | None = None
    appended_ms: int | None = None
    """As :attr:`AppendMessage.appended_ms`; one stamp for the whole batch."""


@attrs.frozen
class ReadNext:
    """Move a client's position to the next message and return that message.

    Replicated as ``REPLICATE`` type ``UPDATE_POSITION``: the position moves when the entry is
    applied, so a read is decided at the same point in the log on every broker.
    """

    client_id: str
    queue_id: str


@attrs.frozen
class ReadBatch:
    """Return up to ``max_messages`` messages after a client's position; unless ``peek``,
    move the position past them (``peek`` is the first half of at-least-once consumption,
    :class:`Ack` the second). Replicated as ``REPLICATE`` type ``READ_BATCH``."""

    client_id: str
    queue_id: str
    max_messages: int
    peek: bool = False
    max_bytes: int = 1 << 62
    """Stop before the data would exceed this (but return at least one message), so that the
    answer fits in a frame; decided here, so every broker moves the position alike."""


@attrs.frozen
class Ack:
    """Move a client's position forward to ``sequence_num`` (never backward).

    Replicated as ``REPLICATE`` type ``ACK``.
    """

    client_id: str
    queue_id: str
    sequence_num: int


@attrs.frozen
class Seek:
    """Set a client's position so that its next read returns ``next_sequence_num`` (1 for
    the start, the queue's length + 1 or None for its end). Replicated as type ``SEEK``."""

    client_id: str
    queue_id: str
    next_sequence_num: int | None


@attrs.frozen
class SetBrokerAddress:
    """Record where a member listens, so that every broker can answer CLUSTER_QUERY.

    Membership (who votes) is the consensus core's configuration; the address book is ordinary
    replicated state, written through the log before a broker is added.
    """

    broker_id: str
    host: str
    port: int


@attrs.frozen
class SetRetention:
    """Set (or, with a policy that keeps everything, remove) a queue's retention policy.

    Replicated as ``REPLICATE`` type ``SET_RETENTION``. Deletes nothing by itself: the next
    :class:`ApplyRetention` does.
    """

    queue_id: str
    policy: RetentionPolicy


@attrs.frozen
class ApplyRetention:
    """Delete what the queues' retention policies allow, as of ``now_ms``.

    Proposed by the leader about once a second (while some queue has a policy), with its wall
    clock, so that every replica deletes exactly the same messages: the decision depends only
    on the replicated state and this command. Replicated as ``REPLICATE`` type
    ``APPLY_RETENTION``. Deletes at most :data:`RETENTION_DELETES_PER_APPLY` messages, queues
    taken in id order.
    """

    now_ms: int


@attrs.frozen
class SetGroups:
    """The replication groups of a cluster founded with several (docs/replication.md, "Several
    leaders"), in id order, the cluster's own group among them: committed once, in the cluster
    group's log, when it is founded, so that every broker (a restarted one, a joiner, one
    installing a snapshot) learns the same list. Idempotent: the same list again is accepted;
    another list, or a malformed one, is refused and changes nothing (stage 1 fixes the groups
    at founding). Replicated as ``REPLICATE`` type ``SET_GROUPS``."""

    group_ids: tuple[str, ...]


MAX_GROUPS = 1024
"""The most replication groups a cluster may have."""


class MapCommand:
    """Base of the metadata group's commands (:mod:`._metadata`: ``FoundCluster``,
    ``RegisterBroker``, ``SetGroupReplicas``, ...). They travel in the cluster group's log like
    the queue commands (``_protocol/_entries.py``, ``METADATA_PAYLOADS``) and are applied to
    the :class:`~._metadata.ClusterMap` its state holds (docs/replication.md, "The metadata
    group"). A marker only: it lets the log's ``Command`` union include them without this
    module importing ``_metadata`` (which imports this one)."""

    __slots__ = ()


GROUPS_FIXED_BY_MAP = "the cluster's groups are placed by its cluster map (FOUND_CLUSTER)"
GROUPS_FIXED_BY_LIST = (
    "the cluster's groups were set by SET_GROUPS (every broker hosts every group)"
)
"""Why SET_GROUPS is refused once a map is founded, and FOUND_CLUSTER once a list is set:
one cluster is placed one way, from its founding on."""


def groups_problem(group_ids: tuple[str, ...], current: tuple[str, ...]) -> str | None:
    """Why :class:`SetGroups` with ``group_ids`` is refused over ``current``; None: accepted."""
    if not isinstance(group_ids, tuple) or not all(isinstance(g, str) for g in group_ids):
        return "group_ids must be a list of group ids"
    if not 1 <= len(group_ids) <= MAX_GROUPS:
        return f"a cluster has 1 to {MAX_GROUPS} groups, not {len(group_ids)}"
    if list(group_ids) != sorted(set(group_ids)):
        return "group ids must be distinct and in order"
    bad = [g for g in group_ids if not CLUSTER_ID_RE.fullmatch(g)]
    if bad:
        return f"not a group id: {bad[0]!r}"
    if current and current != group_ids:
        return f"the cluster's groups are already {', '.join(current)}"
    return None


@attrs.frozen
class GroupsSet:
    group_ids: tuple[str, ...]


SingleCommand = (
    CreateQueue
    | AppendMessage
    | AppendBatch
    | ReadNext
    | ReadBatch
    | Ack
    | Seek
    | SetBrokerAddress
    | SetRetention
    | ApplyRetention
    | SetGroups
    | MapCommand
    | WorkCommand
)


@attrs.frozen
class CommandGroup:
    """Commands proposed together in one log entry: applied in order, each with its own
    result, exactly as if each had an entry of its own (none is atomic with another).

    The leader groups the client requests that arrive while its previous transaction runs
    (proposal batching): replication, the log and fsync then cost once per group instead of
    once per request. Replicated as ``REPLICATE`` type ``COMMAND_GROUP``. Groups do not nest.
    """

    commands: tuple[SingleCommand, ...]

    def __attrs_post_init__(self) -> None:
        # Tested on the commands' distinct types (one or two in a group of thousands): when
        # each is exactly a known single command's, none is a group, at a third of the cost
        # of ``isinstance`` of each command on a replica, which builds a group for every
        # REPLICATE it decodes. Any other type (a subclass, an object that fakes its
        # ``__class__``) takes the ``isinstance`` test of each command.
        commands = self.commands
        if not commands or not (
            set(map(type, commands)) <= _SINGLE_TYPES
            or not any(isinstance(c, CommandGroup) for c in commands)
        ):
            raise ValueError("a command group holds one or more commands, none of them a group")


_SINGLE_TYPES = frozenset(get_args(SingleCommand))
"""The single commands' exact types, from :data:`SingleCommand` (:class:`CommandGroup`'s quick
test; the metadata group's, subclasses of :class:`MapCommand`, are not among them and take the
``isinstance`` test)."""


Command = SingleCommand | CommandGroup


@attrs.frozen
class QueueCreated:
    queue_id: str


@attrs.frozen
class MessageAppended:
    sequence_num: int
    duplicate: bool = False
    """An idempotent producer's retry: this is the first attempt's result, nothing was added."""


@attrs.frozen
class BatchAppended:
    first_sequence_num: int
    count: int
    duplicate: bool = False


@attrs.frozen
class MessageRead:
    """The message a ReadNext moved to; ``None`` fields mean the client had read everything."""

    sequence_num: int | None
    data: bytes | None


@attrs.frozen
class MessagesRead:
    messages: tuple[tuple[int, bytes], ...]
    """(sequence_num, data) pairs, in order; empty when the client has read everything."""


@attrs.frozen
class PositionSet:
    next_sequence_num: int
    """The message the client's next read returns."""


@attrs.frozen
class RetentionSet:
    queue_id: str
    policy: RetentionPolicy


@attrs.frozen
class RetentionApplied:
    trimmed: tuple[tuple[str, int], ...]
    """(queue id, first retained sequence number) of each queue that lost messages, in id
    order."""


@attrs.frozen
class CommandRejected:
    """A command that changed nothing, with the wire error code that explains why."""

    code: str
    message: str


@attrs.frozen
class BrokerAddressSet:
    broker_id: str


@attrs.frozen
class GroupApplied:
    """The results of a :class:`CommandGroup`, one per command, in order: a tuple, or for a
    group applied as one run of appends an ``_appended_run.AppendedRun`` (a sequence equal to
    the tuple of its results, made when first read)."""

    results: Sequence[SingleResult]


SingleResult = (
    QueueCreated
    | MessageAppended
    | BatchAppended
    | MessageRead
    | MessagesRead
    | PositionSet
    | BrokerAddressSet
    | RetentionSet
    | RetentionApplied
    | CommandRejected
    | WorkResult
)
Result = SingleResult | GroupApplied


def text_bound(text: str) -> int:
    """An upper bound of the bytes a log entry's JSON (orjson) writes for ``text`` between its
    quotes: ``len(text)`` when every character is written as itself (printable ASCII, no ``"``
    or ``\\``), else six per character (a control character is written ``\\u00XX``, six bytes;
    ``"`` and ``\\`` two; any other character as UTF-8, four at most for one Python character).
    The one rule for ids and headers wherever a size must bound their encoded bytes."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text)
    return 6 * len(text)


def data_size(payload: object) -> int:
    """Bytes of message data a log payload carries, headers counted by :func:`text_bound` (what
    bounds peer buffers of entries not yet encoded, and the memory a log entry holds)."""
    if isinstance(payload, AppendMessage):
        return len(payload.data)
    if isinstance(payload, AppendBatch):
        # (one pass in C: 3.3 -> 1.7 us for 100 values, asked on every broker)
        return sum(map(len, payload.data)) + 8 * len(payload.data)
    if isinstance(payload, Publish):
        return sum(
            len(r.data) + 8 + sum(text_bound(k) + text_bound(v) + 6 for k, v in r.headers)
            for r in payload.records
        )
    if isinstance(payload, CommandGroup):
        commands = payload.commands
        if hasattr(commands, "data_bytes"):  # (a decoded group's columns: nothing made)
            return 64 * len(commands) + commands.data_bytes()
        # (a single READ carries no data: a group of READs, on every broker, calls nothing)
        return 64 * len(commands) + sum(data_size(c) for c in commands if type(c) is not ReadNext)
    return 0


def queue_not_found(queue_id: str) -> CommandRejected:
    return CommandRejected("QUEUE_NOT_FOUND", f"queue {queue_id!r} does not exist")


def queue_exists(queue_id: str) -> CommandRejected:
    return CommandRejected("QUEUE_EXISTS", f"queue {queue_id!r} already exists")


def bad_request(message: str) -> CommandRejected:
    return CommandRejected("BAD_REQUEST", message)


PRODUCER_WINDOW = 8
"""Results an idempotent producer can still ask about again (as Kafka's in-flight limit)."""

MAX_PRODUCERS = 100_000
"""Producer states kept; the least recently used is forgotten beyond this."""


@attrs.frozen
class ProducerState:
    """What deduplicates an idempotent producer's appends to one queue.

    A producer numbers its appends 1, 2, 3... (any start). An append numbered ``last + 1`` is
    applied; one numbered within the last ``PRODUCER_WINDOW`` is a retry and gets the original
    result back, marked duplicate; an older number is refused (``SEQUENCE_TOO_OLD``: it was
    applied long ago), a gap is refused (``OUT_OF_ORDER_SEQUENCE``) and changes nothing.
    """

    last_seq: int
    recent: tuple[tuple[int, int, int], ...]
    """(producer_seq, first_sequence_num, count) of the latest appends, oldest first."""
    last_used: int


def check_producer(state: ProducerState | None, producer_seq: int, batch: bool) -> Result | None:
    """The result of a producer's append decided by dedup alone, or None to apply it."""
    if state is None or producer_seq == state.last_seq + 1:
        return None
    if producer_seq > state.last_seq + 1:
        return CommandRejected(
            "OUT_OF_ORDER_SEQUENCE",
            f"producer sequence {producer_seq} skips ahead: expected {state.last_seq + 1}",
        )
    for seq, first, count in state.recent:
        if seq == producer_seq:
            if batch:
                return BatchAppended(first, count, duplicate=True)
            return MessageAppended(first, duplicate=True)
    return CommandRejected(
        "SEQUENCE_TOO_OLD",
        f"producer sequence {producer_seq} was applied long ago (last is {state.last_seq})",
    )


def next_producer_state(
    state: ProducerState | None, producer_seq: int, first: int, count: int, clock: int
) -> ProducerState:
    recent = (() if state is None else state.recent) + ((producer_seq, first, count),)
    return ProducerState(producer_seq, recent[-PRODUCER_WINDOW:], clock)


def take_within(sizes: list[int], max_bytes: int) -> int:
    """How many of the leading messages fit in ``max_bytes`` (at least one, if any)."""
    total = 0
    for i, size in enumerate(sizes):
        total += size
        if total > max_bytes and i > 0:
            return i
    return len(sizes)
