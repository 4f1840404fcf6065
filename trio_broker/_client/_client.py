"""The client's operations (:class:`Client`) and :func:`connect`; idempotent producers are in
:mod:`._producer`."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio

from .._errors import (
    WrongClusterError,
)
from .._ids import new_client_id
from .._protocol import (
    DEFAULT_MAX_FRAME,
    AckRequest,
    Append,
    AppendBatch,
    Appended,
    CreateQueue,
    ListQueues,
    Message,
    QueueCreated,
    Read,
    Retention,
    RetentionChanged,
    SeekRequest,
    SetRetentionRequest,
)
from .._protocol._messages import (
    BatchAppended,
    CreateNamedQueue,
    MessageBatch,
    NamedQueueCreated,
    Position,
    QueueList,
)
from ._admin import ClusterAdmin
from ._common import (
    ClientStatistics,
    check_json_value,
    check_queue_id,
    parse_address,
    retention_of,
    structure,
    wait_in_ms,
)
from ._producer import Producer as Producer  # (re-exported: sync.py wraps it as _async.Producer)
from ._work import Consumer, WorkQueues

DEFAULT_MAX_IN_FLIGHT = 256
"""Requests one connection may have written (or queued to write) and not yet answered."""

PLACEMENT_RETRIES = 8
"""Times a new queue is asked again of a group this client chose, while the broker asked
does not know that group yet (about 2.5 s with the backoff)."""

T = TypeVar("T")


def _headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    """Headers checked before sending: string names and values, at most 16."""
    if headers is None:
        return None
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise TypeError("headers must be a dict of strings to strings")
    if len(headers) > 16:
        raise ValueError(f"a message has at most 16 headers, not {len(headers)}")
    return headers


class Client(ClusterAdmin, WorkQueues):
    """A connection to one or more trio_broker clusters. Create it with :func:`connect`.

    Any number of tasks may call one client at once: calls to the same broker are pipelined on
    one connection. The client works the same under trio and under asyncio.
    """

    def __repr__(self) -> str:
        return f"<trio_broker Client {self.client_id} clusters={list(self._clusters)}>"

    def statistics(self) -> ClientStatistics:
        """A snapshot of this client's counters."""
        c = self._counters
        live = [conn for conn in self._connections.values() if not conn.closed]
        return ClientStatistics(
            open_connections=len(live),
            requests_in_flight=sum(conn.in_flight for conn in live),
            requests_sent=c.requests_sent,
            responses_received=c.responses_received,
            responses_discarded=c.responses_discarded,
            retries=c.retries,
            topology_refreshes=c.topology_refreshes,
            known_clusters=len(self._clusters),
        )

    async def create_queue(
        self,
        cluster_id: str | None = None,
        *,
        name: str | None = None,
        max_messages: int | None = None,
        max_age: float | None = None,
        delete_acknowledged: bool = False,
    ) -> str:
        """Create a queue in ``cluster_id`` (a group of the cluster, or a cluster), with a
        retention policy if any of the keywords is given (see :meth:`set_retention`); returns
        the new queue's id. By default it lands on the groups the brokers list in turn (from
        a random start), so queues spread over the cluster's groups and their leaders
        (docs/replication.md, "Where a new queue lands"); with one group, on it. A group the cluster
        does not have is refused (:class:`~trio_broker.WrongClusterError`).

        With ``name`` (1 to 128 characters among ``A-Z a-z 0-9 . _ : -``, not starting with
        ``Q-``), idempotent: when a queue of that name exists, nothing changes (its retention
        policy neither) and its id is returned, so every worker may create its queue at start.
        """
        retention = retention_of(max_messages, max_age, delete_acknowledged)
        cid = await self._known_cluster(cluster_id)
        policy = None if retention == Retention() else retention
        if name is not None:
            named = CreateNamedQueue(name=name, client_id=self.client_id, retention=policy)
            return structure(await self._leader_call(cid, named), NamedQueueCreated).queue_id
        group = cluster_id if cluster_id is not None else self._group_for_new_queue()
        if group is not None:
            cid = await self._known_cluster(group)
        request = CreateQueue(client_id=self.client_id, retention=policy, cluster_id=group)
        attempt = 0
        while True:
            try:
                response = await self._leader_call(cid, request)
            except WrongClusterError:
                # A group this client chose from the brokers' list, refused by a broker that
                # has not applied the cluster map yet (just after founding: it will host the
                # group): ask again, a bounded number of times. A group the caller named is
                # refused at once.
                if cluster_id is not None or attempt >= PLACEMENT_RETRIES:
                    raise
                self._leader_failed(cid, self._clusters[cid].generation, None)
                attempt = await self._backoff(attempt)
                continue
            return structure(response, QueueCreated).queue_id

    async def set_retention(
        self,
        queue_id: str,
        *,
        max_messages: int | None = None,
        max_age: float | None = None,
        delete_acknowledged: bool = False,
    ) -> Retention:
        """Set the queue's retention policy; returns it as the broker recorded it.

        Old messages are deleted (from the front; sequence numbers never change) once any rule
        allows it: ``max_messages`` keeps at most that many of the newest, ``max_age`` (in
        seconds, like every duration here; sent in whole milliseconds) deletes messages
        appended longer ago, and ``delete_acknowledged`` deletes messages that every client with
        a position on the queue has read past. With no rule at all, the queue keeps everything
        again. The leader enforces policies about once a second.
        """
        check_queue_id(queue_id)
        retention = retention_of(max_messages, max_age, delete_acknowledged)
        cid = await self._cluster_of(queue_id)
        request = SetRetentionRequest(
            queue_name=queue_id, retention=retention, client_id=self.client_id
        )
        return structure(await self._leader_call(cid, request), RetentionChanged).retention

    async def append(
        self, queue_id: str, data: Any, *, headers: dict[str, str] | None = None
    ) -> int:
        """Append one JSON value to a queue and return its sequence number.

        ``data`` is any JSON value (dicts with string keys, lists, str, int within 64 bits,
        finite float, bool, None); it comes back from :meth:`read` unchanged. Anything else raises
        :exc:`TypeError` or :exc:`ValueError` before anything is sent. ``headers`` (at most 16
        string pairs) are stored with the message and come back with it.
        """
        appended = await self._append_as(queue_id, data, None, None, headers=headers)
        return appended.sequence_num

    async def read(self, queue_id: str) -> Message | None:
        """The next message of the queue for this client id, or None if it has read them all."""
        check_queue_id(queue_id)
        cid = await self._cluster_of(queue_id)
        response = await self._leader_call(cid, Read(queue_name=queue_id, client_id=self.client_id))
        if response.get("message") == "no_messages" and "sequence_num" not in response:
            return None
        return structure(response, Message)

    # -- additions to the original contract (docs/protocol.md) -----------------------------------

    async def append_batch(
        self,
        queue_id: str,
        values: Sequence[Any],
        *,
        headers: Sequence[dict[str, str] | None] | None = None,
    ) -> list[int]:
        """Append several values atomically; returns their (consecutive) sequence numbers.
        ``headers``, when given, holds one headers dict (or None) per value."""
        appended = await self._append_batch(queue_id, values, None, None, headers=headers)
        return appended.sequence_nums

    async def _append_batch(
        self,
        queue_id: str,
        values: Sequence[Any],
        producer_id: str | None,
        seq: int | None,
        *,
        headers: Sequence[dict[str, str] | None] | None = None,
        epoch: int | None = None,
    ) -> BatchAppended:
        check_queue_id(queue_id)
        for value in values:
            check_json_value(value)
        if headers is not None and len(headers) != len(values):
            raise ValueError("headers must hold one entry per value")
        cid = await self._cluster_of(queue_id)
        request = AppendBatch(
            queue_name=queue_id,
            values=list(values),
            client_id=self.client_id,
            producer_id=producer_id,
            producer_seq=seq,
            headers=None if headers is None else [_headers(h) or {} for h in headers],
            producer_epoch=epoch,
        )
        response = await self._leader_call(cid, request)
        return structure(response, BatchAppended)

    async def _append_as(
        self,
        queue_id: str,
        data: Any,
        producer_id: str | None,
        seq: int | None,
        *,
        headers: dict[str, str] | None = None,
        epoch: int | None = None,
    ) -> Appended:
        check_queue_id(queue_id)
        check_json_value(data)
        cid = await self._cluster_of(queue_id)
        request = Append(
            queue_name=queue_id,
            data=data,
            client_id=self.client_id,
            producer_id=producer_id,
            producer_seq=seq,
            headers=_headers(headers),
            producer_epoch=epoch,
        )
        return structure(await self._leader_call(cid, request), Appended)

    def producer(
        self, producer_id: str | None = None, *, next_seq: int = 1, epoch: int | None = None
    ) -> Producer:
        """An idempotent producer: its appends are never stored twice, even when it retries
        after a lost answer or a leader failover. ``producer_id`` defaults to a new random
        one.

        A producer that keeps its id across restarts passes an ``epoch`` that grows with
        each start (a counter it keeps, or ``time.time_ns() // 1_000_000``): the cluster then
        takes its appends as a new numbering (``next_seq`` can stay 1) and refuses the older
        instance's (:class:`ProducerFencedError`), so a restart can never have its new
        messages taken for retries of old ones. Without an epoch, reusing an id needs
        ``next_seq`` to continue its numbering."""
        return Producer(
            self,
            producer_id or "P-" + new_client_id()[2:] + new_client_id()[2:],
            next_seq,
            epoch,
        )

    async def read_batch(
        self,
        queue_id: str,
        max_messages: int = 100,
        *,
        peek: bool = False,
        wait: float | None = None,
        wait_ms: int | None = None,
    ) -> list[Message]:
        """Up to ``max_messages`` messages after this client's position (fewer if they would
        not fit in one frame). Moves the position past them, unless ``peek``. With ``wait``
        (seconds), waits that long for a message when there is none yet. (``wait_ms`` is the
        deprecated name of ``wait``, in milliseconds.)"""
        wire_wait = wait_in_ms(wait, wait_ms, caller="read_batch", default=None)
        return await self._read_batch(queue_id, max_messages, peek, wire_wait)

    async def _read_batch(
        self, queue_id: str, max_messages: int, peek: bool, wire_wait: int | None
    ) -> list[Message]:
        check_queue_id(queue_id)
        request = Read(
            queue_name=queue_id,
            client_id=self.client_id,
            max_messages=max_messages,
            mode="peek" if peek else "move",
            wait_ms=wire_wait,
        )
        return (await self._ask_queue_leader(queue_id, request, MessageBatch)).messages

    async def ack(self, queue_id: str, sequence_num: int) -> int:
        """Acknowledge every message up to ``sequence_num``; returns the next one to read."""
        check_queue_id(queue_id)
        request = AckRequest(
            queue_name=queue_id, client_id=self.client_id, sequence_num=sequence_num
        )
        return (await self._ask_queue_leader(queue_id, request, Position)).next_sequence_num

    async def seek(
        self, queue_id: str, next_sequence_num: int | None = None, *, to: str | None = None
    ) -> int:
        """Make the next read return ``next_sequence_num``, or start from ``to="start"`` or
        ``to="end"``; returns the next sequence number."""
        check_queue_id(queue_id)
        request = SeekRequest(
            queue_name=queue_id,
            client_id=self.client_id,
            next_sequence_num=next_sequence_num,
            to=to,
        )
        return (await self._ask_queue_leader(queue_id, request, Position)).next_sequence_num

    async def _ask_queue_leader(self, queue_id: str, request: Any, cls: type[T]) -> T:
        """Send ``request`` to the leader of the cluster that holds ``queue_id``; its answer
        as a ``cls``."""
        return structure(await self._queue_call(queue_id, request), cls)

    def consume(
        self,
        queue_id: str,
        *,
        max_messages: int = 100,
        wait: float | None = None,
        ack: bool = False,
        wait_ms: int | None = None,
    ) -> Consumer:
        """Every message of the queue from this client's position on, as they arrive; each
        poll waits up to ``wait`` seconds (default 1) for a message. (``wait_ms`` is the
        deprecated name of ``wait``, in milliseconds.)

        With ``ack=False`` (at most once), reading moves the position. With ``ack=True`` (at
        least once), a batch is acknowledged only when the loop asks for the message after
        it, so messages whose processing was interrupted are delivered again. Used as
        ``async with client.consume(q, ack=True) as messages: async for message in
        messages:``, the block's clean end (``break`` included) also acknowledges what the loop
        received; leaving a bare ``async for`` with ``break`` does not (that message and the
        rest of its batch come again).
        """
        check_queue_id(queue_id)
        wire_wait = wait_in_ms(wait, wait_ms, caller="consume", default=1.0)
        return Consumer(self, queue_id, max_messages, wire_wait or 0, ack)

    async def list_queues(
        self, cluster_id: str | None = None, *, max_queues: int = 100, after: str | None = None
    ) -> QueueList:
        """One page of the cluster's queues, with lengths and per-client lag; pass the
        page's ``next_after`` as ``after`` for the next page (None after the last)."""
        cid = await self._known_cluster(cluster_id)
        request = ListQueues(
            max_queues=max_queues,
            after=after,
            client_id=self.client_id,
            # Named when the seeds host several groups (a broker routes by it); otherwise
            # the request stays as it always was.
            cluster_id=cid if len(self._clusters) > 1 else cluster_id,
        )
        return structure(await self._leader_call(cid, request), QueueList)


@asynccontextmanager
async def connect(
    seeds: Iterable[str | tuple[str, int]] | str,
    *,
    client_id: str | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
    cluster_secret: bytes | None = None,
) -> AsyncIterator[Client]:
    """Discover the clusters the seeds belong to and yield a :class:`Client`.

    Works under trio and under asyncio (through anyio), unchanged. ``seeds`` are
    ``"HOST:PORT"`` strings or ``(host, port)`` tuples (a single string is one seed). Each seed
    is asked in turn (once, a few seconds at most each) for its cluster's topology; seeds of
    several clusters give a client that routes each queue to its own cluster's leader. If no
    seed answers, :class:`BrokerUnreachableError` is raised at once: a seed list that reaches
    nothing is usually a mistake. Once connected, lost leaders are waited for (until the
    caller's deadline: :func:`anyio.fail_after`, :func:`trio.fail_after` or
    :func:`asyncio.timeout`; the library has no timeouts of its own).

    ``client_id`` names this client's read positions (a new ``C-XXXXX`` if not given: reads then
    start at the first message). ``max_frame`` bounds the frames sent and accepted;
    ``max_in_flight`` bounds the pipelined requests per connection.

    Security (docs/security.md): with ``ssl_context`` (for instance
    ``ssl.create_default_context(cafile="ca.pem")``), every connection speaks TLS and checks
    the broker's certificate against the host name or address it dials. With ``token``, every
    new connection (the client reconnects as leaders move) presents it first; with
    ``cluster_secret`` (bytes), every new connection proves it, which operator commands such
    as :meth:`Client.remove_member` need when the cluster has a secret. A refused token or
    proof raises :class:`~trio_broker.UnauthorizedError`.
    """
    async with open_client(
        seeds,
        client_id=client_id,
        max_frame=max_frame,
        max_in_flight=max_in_flight,
        ssl_context=ssl_context,
        token=token,
        cluster_secret=cluster_secret,
        discovery_timeout=None,
    ) as client:
        yield client


@asynccontextmanager
async def open_client(
    seeds: Iterable[str | tuple[str, int]] | str,
    *,
    client_id: str | None,
    max_frame: int,
    max_in_flight: int,
    ssl_context: ssl.SSLContext | None,
    token: str | None,
    cluster_secret: bytes | None,
    discovery_timeout: float | None,
) -> AsyncIterator[Client]:
    """:func:`connect`, with a bound on discovery (which raises :exc:`TimeoutError`)."""
    if isinstance(seeds, str):
        seeds = [seeds]
    addresses = [parse_address(seed) for seed in seeds]
    if not addresses:
        raise ValueError("connect() needs at least one seed broker")
    if max_frame <= 0 or max_in_flight <= 0:
        raise ValueError("max_frame and max_in_flight must be positive")
    try:
        async with anyio.create_task_group() as tasks:
            client = Client(
                tasks,
                addresses,
                client_id=client_id,
                max_frame=max_frame,
                max_in_flight=max_in_flight,
                ssl_context=ssl_context,
                token=token,
                cluster_secret=cluster_secret,
            )
            try:
                with anyio.fail_after(discovery_timeout):
                    await client._discover()
                yield client
            finally:
                client._close()
    except BaseExceptionGroup as group:
        # The task group only holds connection tasks, which never raise; an exception here came
        # from the body of the ``async with`` (or discovery) and is raised as itself, not wrapped.
        if len(group.exceptions) != 1:
            raise
        exc = group.exceptions[0]
        cause, context, suppress = exc.__cause__, exc.__context__, exc.__suppress_context__
        try:
            raise exc
        finally:
            exc.__cause__, exc.__context__ = cause, context
            exc.__suppress_context__ = suppress
            del exc, group
