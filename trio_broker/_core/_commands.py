"""Commands of the replicated state machine: what a log entry asks the queues to do.

A command is pure data. Applying the same commands in the same order gives the same queues and
the same results on every broker, whichever storage holds them (SQLite through ``_storage``, or
:class:`~trio_broker._core.QueueState` in memory for the simulator and the mock-clock harness).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class CreateQueue:
    """Create an empty queue. Replicated as ``REPLICATE`` type ``CREATE_QUEUE``."""

    queue_id: str


@attrs.frozen
class AppendMessage:
    """Append one message. Replicated as ``REPLICATE`` type ``APPEND_MESSAGE``.

    ``data`` is the value's JSON text, exactly as it will be handed back to readers.
    """

    queue_id: str
    data: bytes


@attrs.frozen
class ReadNext:
    """Move a client's position to the next message and return that message.

    Replicated as ``REPLICATE`` type ``UPDATE_POSITION``: the position moves when the entry is
    applied, so a read is decided at the same point in the log on every broker.
    """

    client_id: str
    queue_id: str


@attrs.frozen
class SetBrokerAddress:
    """Record where a member listens, so that every broker can answer CLUSTER_QUERY.

    Membership (who votes) is the consensus core's configuration; the address book is ordinary
    replicated state, written through the log before a broker is added.
    """

    broker_id: str
    host: str
    port: int


Command = CreateQueue | AppendMessage | ReadNext | SetBrokerAddress


@attrs.frozen
class QueueCreated:
    queue_id: str


@attrs.frozen
class MessageAppended:
    sequence_num: int


@attrs.frozen
class MessageRead:
    """The message a ReadNext moved to; ``None`` fields mean the client had read everything."""

    sequence_num: int | None
    data: bytes | None


@attrs.frozen
class CommandRejected:
    """A command that changed nothing, with the wire error code that explains why."""

    code: str
    message: str


@attrs.frozen
class BrokerAddressSet:
    broker_id: str


Result = QueueCreated | MessageAppended | MessageRead | BrokerAddressSet | CommandRejected


def queue_not_found(queue_id: str) -> CommandRejected:
    return CommandRejected("QUEUE_NOT_FOUND", f"queue {queue_id!r} does not exist")


def queue_exists(queue_id: str) -> CommandRejected:
    return CommandRejected("QUEUE_EXISTS", f"queue {queue_id!r} already exists")
