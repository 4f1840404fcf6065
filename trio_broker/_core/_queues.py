"""The queues as a pure in-memory state machine.

This is the reference semantics of every command. ``_storage`` implements the same semantics in
SQLite; a property test checks that both agree on any sequence of commands.
"""

from __future__ import annotations

import attrs

from ._commands import (
    AppendMessage,
    BrokerAddressSet,
    Command,
    CommandRejected,
    CreateQueue,
    MessageAppended,
    MessageRead,
    QueueCreated,
    ReadNext,
    Result,
    SetBrokerAddress,
    queue_exists,
    queue_not_found,
)


@attrs.define
class QueueState:
    """Queues, their messages, and each client's read position per queue.

    A queue's messages have sequence numbers 1, 2, 3, ...; a position is the sequence number of
    the last message the client read (0 before the first).
    """

    messages: dict[str, list[bytes]] = attrs.field(factory=dict)
    positions: dict[tuple[str, str], int] = attrs.field(factory=dict)
    brokers: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    """The address book: broker id -> (host, port)."""

    def apply(self, command: Command) -> Result:
        if isinstance(command, CreateQueue):
            if command.queue_id in self.messages:
                return queue_exists(command.queue_id)
            self.messages[command.queue_id] = []
            return QueueCreated(command.queue_id)
        if isinstance(command, AppendMessage):
            queue = self.messages.get(command.queue_id)
            if queue is None:
                return queue_not_found(command.queue_id)
            queue.append(command.data)
            return MessageAppended(len(queue))
        if isinstance(command, ReadNext):
            queue = self.messages.get(command.queue_id)
            if queue is None:
                return queue_not_found(command.queue_id)
            key = (command.client_id, command.queue_id)
            position = self.positions.get(key, 0)
            if position >= len(queue):
                return MessageRead(None, None)
            self.positions[key] = position + 1
            return MessageRead(position + 1, queue[position])
        if isinstance(command, SetBrokerAddress):
            self.brokers[command.broker_id] = (command.host, command.port)
            return BrokerAddressSet(command.broker_id)
        raise TypeError(f"not a command: {command!r}")

    def apply_all(self, commands: list[Command]) -> list[Result]:
        return [self.apply(c) for c in commands]

    def queue_length(self, queue_id: str) -> int | None:
        queue = self.messages.get(queue_id)
        return None if queue is None else len(queue)

    def position(self, client_id: str, queue_id: str) -> int:
        return self.positions.get((client_id, queue_id), 0)


__all__ = ["CommandRejected", "QueueState"]
