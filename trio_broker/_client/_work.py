"""Consumer groups in the client, and the at-least-once consumer of the log pattern.

:class:`GroupConsumer` is what ``async with client.consumer_group(...) as worker`` gives: an
async iterator of :class:`GroupMessage`, each leased to this worker until it is acknowledged,
nacked, or its visibility timeout runs out (docs/protocol.md, "Consumer groups").
:class:`Consumer` is what :meth:`Client.consume` returns.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs

from .._protocol._messages import (
    AckRequest,
    DeleteQueueRequest,
    ForgetPositionRequest,
    GroupAck,
    GroupAcked,
    GroupDelete,
    GroupExtend,
    GroupInfo,
    GroupJoin,
    GroupMessages,
    GroupNack,
    GroupRead,
    LeasesChanged,
    Message,
    MessageBatch,
    Position,
    PositionForgotten,
    QueueDeleted,
    QueueResolved,
    Read,
    ResolveQueue,
)
from ._common import check_queue_id, structure
from ._routing import Router


def _ms(seconds: float, what: str) -> int:
    if seconds < 0:
        raise ValueError(f"{what} must not be negative")
    return round(seconds * 1000)


@attrs.frozen(eq=False)
class GroupMessage:
    """One message of a consumer group, leased to the worker that received it.

    Acknowledge it with :meth:`ack` once processed; :meth:`nack` hands it back (at once or
    after a delay); :meth:`extend` keeps the lease while the work goes on. A message neither
    acknowledged nor nacked is delivered again, to any worker of the group, once its lease
    runs out (``visibility_timeout`` after it was received or last extended).
    """

    sequence_num: int
    data: Any
    headers: dict[str, str] | None
    """The message's headers (None: it has none)."""
    delivery_count: int
    """1 on the first delivery to the group, one more on each redelivery."""
    _worker: GroupConsumer = attrs.field(repr=False)

    async def ack(self) -> bool:
        """Complete the message: it is never delivered to the group again. False when it was
        already completed (say, by another worker after this one's lease ran out)."""
        return await self._worker._ack([self.sequence_num])

    async def nack(self, *, delay: float = 0.0, error: str | None = None) -> bool:
        """Hand the message back: it is delivered again after ``delay`` seconds (or moves to
        the group's dead-letter queue, past its ``max_deliveries``), with ``error`` kept as its
        last error. False when this worker no longer held its lease."""
        return await self._worker._change("nack", self.sequence_num, delay=delay, error=error)

    async def extend(self, visibility_timeout: float | None = None) -> bool:
        """Keep working: the lease now ends ``visibility_timeout`` seconds from now (None: the
        group's). False when this worker no longer held its lease."""
        return await self._worker._change(
            "extend", self.sequence_num, visibility_timeout=visibility_timeout
        )


class GroupConsumer:
    """One worker of a consumer group (see :meth:`Client.consumer_group`): iterate over it
    for the group's messages, as they arrive.

    Leaving the loop acknowledges nothing: a message received and not acknowledged is
    delivered again, to a worker of the group, once its lease runs out. So is every message
    fetched ahead (``prefetch`` greater than 1) and not yet handed to the loop.
    """

    def __init__(
        self,
        client: WorkQueues,
        queue_id: str,
        group: str,
        member: str,
        prefetch: int,
        wait_ms: int,
    ) -> None:
        self.client = client
        self.queue_id = queue_id
        """The queue's id."""
        self.group = group
        self.member = member
        """This worker's member id: the holder of its leases."""
        self.prefetch = prefetch
        """How many messages one poll of the loop leases at most."""
        self._wait_ms = wait_ms
        self._buffer: list[GroupMessage] = []

    def __aiter__(self) -> GroupConsumer:
        return self

    async def __anext__(self) -> GroupMessage:
        while not self._buffer:
            self._buffer = list(reversed(await self.receive(self.prefetch)))
        return self._buffer.pop()

    async def receive(self, max_messages: int = 1) -> list[GroupMessage]:
        """Lease up to ``max_messages`` messages to this worker, waiting (one poll) for one
        when none is available; [] when none came."""
        request = GroupRead(
            queue_name=self.queue_id,
            group=self.group,
            member=self.member,
            max_messages=max_messages,
            wait_ms=self._wait_ms,
            client_id=self.client.client_id,
        )
        response = await self.client._queue_call(self.queue_id, request)
        return [
            GroupMessage(m.sequence_num, m.data, m.headers, m.delivery_count or 1, self)
            for m in structure(response, GroupMessages).messages
        ]

    async def _ack(self, sequence_nums: list[int]) -> bool:
        request = GroupAck(
            queue_name=self.queue_id,
            group=self.group,
            member=self.member,
            sequence_nums=sequence_nums,
            client_id=self.client.client_id,
        )
        response = await self.client._queue_call(self.queue_id, request)
        return structure(response, GroupAcked).acknowledged > 0

    async def _change(
        self,
        how: str,
        sequence_num: int,
        *,
        delay: float = 0.0,
        error: str | None = None,
        visibility_timeout: float | None = None,
    ) -> bool:
        request: GroupNack | GroupExtend
        if how == "nack":
            request = GroupNack(
                queue_name=self.queue_id,
                group=self.group,
                member=self.member,
                sequence_nums=[sequence_num],
                delay_ms=_ms(delay, "delay"),
                error=error,
                client_id=self.client.client_id,
            )
        else:
            request = GroupExtend(
                queue_name=self.queue_id,
                group=self.group,
                member=self.member,
                sequence_nums=[sequence_num],
                visibility_ms=None
                if visibility_timeout is None
                else _ms(visibility_timeout, "visibility_timeout"),
                client_id=self.client.client_id,
            )
        response = await self.client._queue_call(self.queue_id, request)
        changed = structure(response, LeasesChanged)
        return sequence_num in changed.changed or sequence_num in changed.dead_lettered


def new_member_id(client_id: str) -> str:
    """A worker's member id: the client's id and a random suffix (one per worker)."""
    return f"{client_id}-{secrets.token_hex(4)}"


class Consumer:
    """Every message of a queue from this client's position on (see :meth:`Client.consume`).

    Iterate over it directly, or in ``async with`` (which acknowledges, with ``ack=True``,
    every message the loop received when the block ends without an exception, ``break``
    included).
    """

    def __init__(
        self, client: WorkQueues, queue_id: str, max_messages: int, wait_ms: int, ack: bool
    ) -> None:
        self.client = client
        self.queue_id = queue_id
        self._max = max_messages
        self._wait_ms = wait_ms
        self._ack = ack
        self._batch: list[Message] = []
        self._delivered: int | None = None
        """The last sequence number handed to the loop (with ``ack``: not yet acknowledged)."""

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        while not self._batch:
            # The loop asks for the message after the last batch: that batch is done.
            await self.acknowledge()
            request = Read(
                queue_name=self.queue_id,
                client_id=self.client.client_id,
                max_messages=self._max,
                mode="peek" if self._ack else "move",
                wait_ms=self._wait_ms,
            )
            response = await self.client._queue_call(self.queue_id, request)
            self._batch = list(reversed(structure(response, MessageBatch).messages))
        message = self._batch.pop()
        self._delivered = message.sequence_num
        return message

    async def acknowledge(self) -> None:
        """With ``ack=True``: acknowledge every message handed to the loop so far."""
        if self._ack and self._delivered is not None:
            request = AckRequest(
                queue_name=self.queue_id,
                client_id=self.client.client_id,
                sequence_num=self._delivered,
            )
            structure(await self.client._queue_call(self.queue_id, request), Position)
            self._delivered = None

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            await self.acknowledge()
        elif self._ack:
            # The message being processed when the error came is delivered again; so is
            # the rest of its batch, as the position never moved past it.
            self._delivered = None


class WorkQueues(Router):
    """The client's work-queue and queue-lifecycle operations (part of :class:`Client`)."""

    async def resolve_queue(self, name: str, cluster_id: str | None = None) -> str:
        """The id of the queue called ``name`` (:class:`QueueNotFoundError` if none)."""
        cid = await self._known_cluster(cluster_id)
        request = ResolveQueue(name=name, client_id=self.client_id)
        return structure(await self._leader_call(cid, request), QueueResolved).queue_id

    async def delete_queue(self, queue_id: str, *, force: bool = False) -> None:
        """Delete the queue with its messages, positions and groups, on every broker.

        Refused (:class:`QueueInUseError`) while it is some group's dead-letter queue, and,
        unless ``force``, while one of its groups holds a lease that has not expired."""
        check_queue_id(queue_id)
        request = DeleteQueueRequest(queue_name=queue_id, force=force, client_id=self.client_id)
        structure(await self._queue_call(queue_id, request), QueueDeleted)

    async def forget_position(self, queue_id: str) -> bool:
        """Forget this client's position on the queue (its next read starts where a new
        client's does); False when it had none."""
        check_queue_id(queue_id)
        request = ForgetPositionRequest(queue_name=queue_id, client_id=self.client_id)
        return structure(await self._queue_call(queue_id, request), PositionForgotten).existed

    @asynccontextmanager
    async def consumer_group(
        self,
        queue_id: str,
        group: str,
        *,
        visibility_timeout: float | None = None,
        max_deliveries: int | None = None,
        dead_letter_queue: str | None = None,
        max_in_flight: int | None = None,
        prefetch: int = 1,
        wait: float = 1.0,
    ) -> AsyncIterator[GroupConsumer]:
        """Join consumer group ``group`` of the queue as one worker; iterate over the worker
        for the messages the group hands it.

        The group's members share the queue: each message goes to one worker at a time,
        leased for ``visibility_timeout`` seconds, until a worker acknowledges it
        (``await message.ack()``). A message whose lease runs out (its worker died or was too
        slow) goes to another worker; with ``max_deliveries`` and ``dead_letter_queue`` (an id
        or a name), a message delivered that many times without an acknowledgement moves to
        the dead-letter queue. With no setting, the group is joined as it is (created with the
        defaults: 30 s visibility); with any, the settings must match an existing group's.

        Leaving the loop, or the ``async with``, acknowledges nothing and loses nothing: what
        this worker received and did not acknowledge is delivered again once its lease runs
        out. ``prefetch`` is how many messages one poll leases at most (fetched ahead of the
        loop: keep it small against a short visibility timeout); each poll waits up to
        ``wait`` seconds on the broker.
        """
        yield await self._join_group(
            queue_id,
            group,
            visibility_timeout=visibility_timeout,
            max_deliveries=max_deliveries,
            dead_letter_queue=dead_letter_queue,
            max_in_flight=max_in_flight,
            prefetch=prefetch,
            wait=wait,
        )

    async def _join_group(
        self,
        queue_id: str,
        group: str,
        *,
        visibility_timeout: float | None,
        max_deliveries: int | None,
        dead_letter_queue: str | None,
        max_in_flight: int | None,
        prefetch: int,
        wait: float,
    ) -> GroupConsumer:
        check_queue_id(queue_id)
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        request = GroupJoin(
            queue_name=queue_id,
            group=group,
            visibility_ms=None if visibility_timeout is None else round(visibility_timeout * 1000),
            max_deliveries=max_deliveries,
            dead_letter_queue=dead_letter_queue,
            max_in_flight=max_in_flight,
            client_id=self.client_id,
        )
        structure(await self._queue_call(queue_id, request), GroupInfo)
        return GroupConsumer(
            self, queue_id, group, new_member_id(self.client_id), prefetch, round(wait * 1000)
        )

    async def delete_group(self, queue_id: str, group: str, *, force: bool = False) -> None:
        """Delete a consumer group with its progress; refused (:class:`GroupInUseError`)
        while it holds unexpired leases, unless ``force``."""
        check_queue_id(queue_id)
        request = GroupDelete(
            queue_name=queue_id, group=group, force=force, client_id=self.client_id
        )
        await self._queue_call(queue_id, request)

    async def _queue_call(self, queue_id: str, request: Any) -> dict[str, Any]:
        return await self._leader_call(await self._cluster_of(queue_id), request)
