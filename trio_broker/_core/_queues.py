"""The queues as a pure in-memory state machine.

This is the reference semantics of every command. ``_storage`` implements the same semantics in
SQLite; a property test checks that both agree on any sequence of commands.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

from ._commands import (
    MAX_PRODUCERS,
    Ack,
    AppendBatch,
    AppendMessage,
    BatchAppended,
    BrokerAddressSet,
    Command,
    CommandGroup,
    CommandRejected,
    CreateQueue,
    GroupApplied,
    MessageAppended,
    MessageRead,
    MessagesRead,
    PositionSet,
    ProducerState,
    QueueCreated,
    ReadBatch,
    ReadNext,
    Result,
    Seek,
    SetBrokerAddress,
    bad_request,
    check_producer,
    next_producer_state,
    queue_exists,
    queue_not_found,
    take_within,
)


@attrs.define
class QueueState:
    """Queues, their messages, each client's read position per queue, and producer dedup.

    A queue's messages have sequence numbers 1, 2, 3, ...; a position is the sequence number of
    the last message the client read (0 before the first).
    """

    messages: dict[str, list[bytes]] = attrs.field(factory=dict)
    positions: dict[tuple[str, str], int] = attrs.field(factory=dict)
    brokers: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    """The address book: broker id -> (host, port)."""
    producers: OrderedDict[tuple[str, str], ProducerState] = attrs.field(factory=OrderedDict)
    """(producer id, queue id) -> dedup state, least recently used first."""
    producer_clock: int = 0

    def apply(self, command: Command) -> Result:
        if isinstance(command, CommandGroup):
            return GroupApplied(tuple(self.apply(c) for c in command.commands))
        if isinstance(command, CreateQueue):
            if command.queue_id in self.messages:
                return queue_exists(command.queue_id)
            self.messages[command.queue_id] = []
            return QueueCreated(command.queue_id)
        if isinstance(command, SetBrokerAddress):
            self.brokers[command.broker_id] = (command.host, command.port)
            return BrokerAddressSet(command.broker_id)
        if not isinstance(command, Command):
            raise TypeError(f"not a command: {command!r}")
        queue = self.messages.get(command.queue_id)
        if queue is None:
            return queue_not_found(command.queue_id)
        if isinstance(command, AppendMessage | AppendBatch):
            return self._append(command, queue)
        key = (command.client_id, command.queue_id)
        position = self.positions.get(key, 0)
        if isinstance(command, ReadNext):
            if position >= len(queue):
                return MessageRead(None, None)
            self.positions[key] = position + 1
            return MessageRead(position + 1, queue[position])
        if isinstance(command, ReadBatch):
            end = min(len(queue), position + command.max_messages)
            read = tuple((seq, queue[seq - 1]) for seq in range(position + 1, end + 1))
            read = read[: take_within([len(d) for _, d in read], command.max_bytes)]
            if read and not command.peek:
                self.positions[key] = read[-1][0]
            return MessagesRead(read)
        if isinstance(command, Ack):
            if not 0 <= command.sequence_num <= len(queue):
                return bad_request(
                    f"cannot acknowledge message {command.sequence_num}: the queue has {len(queue)}"
                )
            if command.sequence_num > position:
                self.positions[key] = command.sequence_num
            return PositionSet(max(position, command.sequence_num) + 1)
        if isinstance(command, Seek):
            target = command.next_sequence_num
            if target is None:
                target = len(queue) + 1
            if not 1 <= target <= len(queue) + 1:
                return bad_request(
                    f"cannot seek to message {target}: the queue has {len(queue)} "
                    f"(seek to 1 for the start, {len(queue) + 1} for the end)"
                )
            self.positions[key] = target - 1
            return PositionSet(target)
        raise TypeError(f"not a command: {command!r}")  # pragma: no cover

    def _append(self, command: AppendMessage | AppendBatch, queue: list[bytes]) -> Result:
        batch = isinstance(command, AppendBatch)
        data = command.data if batch else (command.data,)
        if command.producer_id is None or command.producer_seq is None:
            queue.extend(data)
        else:
            key = (command.producer_id, command.queue_id)
            state = self.producers.get(key)
            decided = check_producer(state, command.producer_seq, batch)
            if decided is not None:
                return decided
            queue.extend(data)
            self.producer_clock += 1
            self.producers[key] = next_producer_state(
                state,
                command.producer_seq,
                len(queue) - len(data) + 1,
                len(data),
                self.producer_clock,
            )
            self.producers.move_to_end(key)
            while len(self.producers) > MAX_PRODUCERS:
                self.producers.popitem(last=False)
        first = len(queue) - len(data) + 1
        return BatchAppended(first, len(data)) if batch else MessageAppended(first)

    def apply_all(self, commands: list[Command]) -> list[Result]:
        return [self.apply(c) for c in commands]

    def queue_length(self, queue_id: str) -> int | None:
        queue = self.messages.get(queue_id)
        return None if queue is None else len(queue)

    def position(self, client_id: str, queue_id: str) -> int:
        return self.positions.get((client_id, queue_id), 0)


__all__ = ["CommandRejected", "QueueState"]
