"""The rules of work queues that need no state: validation, refusals, what a dead-lettered
message carries, how many messages fit in an answer. Shared by the reference
(:mod:`._work`) and its SQL twin (``_storage/_work_sql.py``), so that both refuse alike."""

from __future__ import annotations

import re

from ._commands import (
    BatchAppended,
    CommandRejected,
    ProducerState,
    bad_request,
    check_producer,
    take_within,
)
from ._work_commands import (
    DEAD_LETTER_HEADERS,
    MAX_ACK_RANGES,
    MAX_DELIVERIES,
    MAX_ERROR_LENGTH,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_IDLE_MS,
    MAX_IN_FLIGHT,
    MAX_LEASE_SEQUENCES,
    MAX_NAME_LENGTH,
    MAX_VISIBILITY_MS,
    DeleteGroup,
    ForgetIdlePositions,
    GroupAck,
    GroupExtend,
    GroupNack,
    GroupRead,
    GroupSettings,
    Headers,
    JoinGroup,
    Publish,
    Published,
    ReadRecords,
    WorkCommand,
)

LEASE_EXPIRED = "lease expired"
"""The last error of a message whose lease ran out."""

_NAME = re.compile(r"[A-Za-z0-9._:-]+")

# -- validation, shared with the SQL twin ---------------------------------------------------------


def name_problem(name: str, what: str) -> str | None:
    """Why ``name`` cannot name a queue or a group, or None. Queue names may not start with
    ``Q-``, so that a request's ``queue_name`` is a queue id exactly when it does."""
    if not 1 <= len(name) <= MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        return (
            f"invalid {what} {name[:MAX_NAME_LENGTH]!r}: 1 to {MAX_NAME_LENGTH} characters "
            "among A-Z a-z 0-9 . _ : -"
        )
    if what == "queue name" and name.startswith("Q-"):
        return f"invalid queue name {name!r}: names starting with 'Q-' are queue ids"
    return None


def member_problem(member: str) -> str | None:
    if not 1 <= len(member) <= MAX_NAME_LENGTH:
        return f"a member id has 1 to {MAX_NAME_LENGTH} characters"
    return None


def headers_problem(headers: Headers) -> str | None:
    if len(headers) > MAX_HEADERS:
        return f"a message has at most {MAX_HEADERS} headers, not {len(headers)}"
    names = [k for k, _ in headers]
    if names != sorted(set(names)):
        return "header names must be unique (and given in order)"
    for key, value in headers:
        if not 1 <= len(key) <= MAX_NAME_LENGTH:
            return f"a header name has 1 to {MAX_NAME_LENGTH} characters"
        if len(value) > MAX_HEADER_VALUE:
            return f"header {key!r} is longer than {MAX_HEADER_VALUE} characters"
    return None


def publish_problem(command: Publish) -> str | None:
    if not command.records:
        return "nothing to append"
    for record in command.records:
        if (problem := headers_problem(record.headers)) is not None:
            return problem
    producer = (command.producer_id, command.producer_epoch, command.producer_seq)
    if any(p is None for p in producer) and any(p is not None for p in producer):
        return "producer_id, producer_epoch and producer_seq go together"
    if command.producer_epoch is not None and command.producer_epoch < 0:
        return "producer_epoch must not be negative"
    return None


def settings_problem(settings: GroupSettings, queue_id: str) -> str | None:
    for name, value, limit in (
        ("visibility_ms", settings.visibility_ms, MAX_VISIBILITY_MS),
        ("max_in_flight", settings.max_in_flight, MAX_IN_FLIGHT),
        ("max_deliveries", settings.max_deliveries, MAX_DELIVERIES),
    ):
        if value is not None and not 1 <= value <= limit:
            return f"{name} must be between 1 and {limit}, not {value}"
    if (settings.max_deliveries is None) != (settings.dead_letter_queue is None):
        return "max_deliveries and dead_letter_queue go together"
    if settings.dead_letter_queue == queue_id:
        return "a queue cannot be its own dead-letter queue"
    return None


def lease_problem(command: GroupNack | GroupExtend) -> str | None:
    if (problem := member_problem(command.member)) is not None:
        return problem
    if not 1 <= len(command.sequence_nums) <= MAX_LEASE_SEQUENCES:
        return f"name 1 to {MAX_LEASE_SEQUENCES} messages"
    if min(command.sequence_nums) < 1:
        return f"invalid sequence number {min(command.sequence_nums)}: they start at 1"
    if isinstance(command, GroupNack):
        if not 0 <= command.delay_ms <= MAX_VISIBILITY_MS:
            return f"delay_ms must be between 0 and {MAX_VISIBILITY_MS}"
        if command.error is not None and len(command.error) > MAX_ERROR_LENGTH:
            return f"error is longer than {MAX_ERROR_LENGTH} characters"
    elif command.visibility_ms is not None and not 1 <= command.visibility_ms <= MAX_VISIBILITY_MS:
        return f"visibility_ms must be between 1 and {MAX_VISIBILITY_MS}"
    return None


def ack_problem(command: GroupAck) -> str | None:
    if (problem := member_problem(command.member)) is not None:
        return problem
    if not 1 <= len(command.ranges) <= MAX_ACK_RANGES:
        return f"name 1 to {MAX_ACK_RANGES} ranges"
    for first, last in command.ranges:
        if not 1 <= first <= last:
            return f"invalid range {first}..{last}"
    return None


def read_problem(command: GroupRead | ReadRecords) -> str | None:
    """What makes a work read bad (a READ_RECORDS' is checked once its queue is found)."""
    if command.max_messages < 1:
        return "max_messages must be at least 1"
    return None


def forget_problem(command: ForgetIdlePositions) -> str | None:
    if not 1 <= command.idle_ms <= MAX_IDLE_MS:
        return f"idle_ms must be between 1 and {MAX_IDLE_MS}"
    return None


def group_not_found(queue_id: str, group: str) -> CommandRejected:
    return CommandRejected("GROUP_NOT_FOUND", f"queue {queue_id!r} has no group {group!r}")


def not_delivered(group: str, sequence_num: int, cursor: int) -> CommandRejected:
    return bad_request(
        f"message {sequence_num} has not been delivered to group {group!r} "
        f"(delivered up to {cursor})"
    )


def in_use_by_leases(code: str, what: str, group: str, leased: int) -> CommandRejected:
    return CommandRejected(
        code,
        f"{what}: group {group!r} holds {leased} unexpired lease(s); "
        "acknowledge or nack them, wait for them to expire, or delete with force",
    )


def dead_letter_in_use(queue_id: str, source: tuple[str, str]) -> CommandRejected:
    return CommandRejected(
        "QUEUE_IN_USE",
        f"queue {queue_id!r} is the dead-letter queue of group {source[1]!r} on queue "
        f"{source[0]!r}; delete that group (or its queue) first",
    )


def fenced(producer_id: str, epoch: int, known: int) -> CommandRejected:
    return CommandRejected(
        "PRODUCER_FENCED",
        f"producer {producer_id!r} epoch {epoch} is fenced: epoch {known} has started since",
    )


def dead_letter_not_found(queue_id: str) -> CommandRejected:
    return CommandRejected("QUEUE_NOT_FOUND", f"dead-letter queue {queue_id!r} does not exist")


def other_settings(group: str, existing: GroupSettings) -> CommandRejected:
    """A join that names settings other than the existing group's."""
    return bad_request(
        f"group {group!r} exists with other settings ({existing}); delete it first to change them"
    )


def too_many_groups(queue_id: str, limit: int) -> CommandRejected:
    """A new group on a queue that has ``limit`` (``MAX_GROUPS_PER_QUEUE``, as each twin reads
    it) groups already."""
    return CommandRejected(
        "LIMIT_REACHED", f"queue {queue_id!r} has {limit} groups, the most it may have"
    )


def publish_decided(
    command: Publish, known_epoch: int | None, dedup: ProducerState | None
) -> Published | CommandRejected | None:
    """A fenced producer's PUBLISH decided before anything is appended: refused when a later
    epoch has started (``known_epoch``, None: none known), answered as the duplicate it is, or
    refused as out of order or too old; None: append it. ``dedup`` is the producer's state
    under the command's own epoch (None when that epoch is new)."""
    assert command.producer_id is not None
    assert command.producer_epoch is not None and command.producer_seq is not None
    if known_epoch is not None and command.producer_epoch < known_epoch:
        return fenced(command.producer_id, command.producer_epoch, known_epoch)
    decided = check_producer(dedup, command.producer_seq, batch=True)
    if isinstance(decided, BatchAppended):
        return Published(decided.first_sequence_num, decided.count, duplicate=True)
    assert decided is None or isinstance(decided, CommandRejected)
    return decided


def dead_letter_headers(
    headers: Headers, queue_id: str, group: str, sequence_num: int, deliveries: int, error: str
) -> Headers:
    """A dead-lettered message's headers: its own, and where it came from and why."""
    extra = dict(
        zip(
            DEAD_LETTER_HEADERS,
            (queue_id, group, str(sequence_num), str(deliveries), error[:MAX_ERROR_LENGTH]),
            strict=True,
        )
    )
    return tuple(sorted({**dict(headers), **extra}.items()))


def delivered_within(
    candidates: list[tuple[int, bytes, Headers]], max_bytes: int
) -> list[tuple[int, bytes, Headers]]:
    """The leading candidates whose data and headers fit in ``max_bytes`` (at least one), each
    counting its :func:`delivery_sizes`.

    The one rule for every byte-bounded work read, on the leader and where nobody waits
    (``_storage/_budget_reads.py``, which applies the same two steps to the values it read
    and checked)."""
    return candidates[: take_within(delivery_sizes(candidates), max_bytes)]


def delivery_sizes(candidates: list[tuple[int, bytes, Headers]]) -> list[int]:
    """What each message counts towards a work read's ``max_bytes``: its data's bytes, and for
    each header its name's and value's characters and 6. A message without headers skips the
    sum (1,000 of them: 0.35 -> 0.10 µs each, docs/performance-history.md "Byte-bounded READs on
    replicas")."""
    return [
        len(d) + sum([len(k) + len(v) + 6 for k, v in h]) if h else len(d) for _, d, h in candidates
    ]


_GROUP_COMMANDS = (JoinGroup, DeleteGroup, GroupRead, GroupAck, GroupNack, GroupExtend)


def command_problem(command: WorkCommand) -> str | None:
    """What makes a command bad whatever the state (checked before the queue exists)."""
    if isinstance(command, Publish):
        return publish_problem(command)
    if not isinstance(command, _GROUP_COMMANDS):
        return None
    if (problem := name_problem(command.group, "group name")) is not None:
        return problem
    if isinstance(command, JoinGroup) and command.settings is not None:
        return settings_problem(command.settings, command.queue_id)
    if isinstance(command, GroupRead):
        return read_problem(command) or member_problem(command.member)
    if isinstance(command, GroupAck):
        return ack_problem(command)
    if isinstance(command, GroupNack | GroupExtend):
        return lease_problem(command)
    return None
