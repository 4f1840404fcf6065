"""The trio client library.

::

    async with trio_broker.client.connect(["127.0.0.1:9001"]) as client:
        queue_id = await client.create_queue()
        await client.append(queue_id, {"any": ["json", 1.5, True, None]})
        message = await client.read(queue_id)

One :class:`Client` keeps one persistent connection per broker, opened when first needed, and
pipelines on it: any number of tasks may call the client at once; each connection has one writer
task (which writes requests in order, several per ``send_all`` when they queue up) and one reader
task (which matches responses to requests in the same order). A call that is cancelled leaves its
place in that order; its response is read and discarded, so the other calls on the connection are
unaffected.

Routing follows the wire contract: a queue id names its cluster, and requests for a queue go to
the leader of that cluster. When the leader moves (``NOT_LEADER``, or a connection that cannot be
opened), the client refreshes its view of the cluster and retries with a bounded backoff until the
caller's own deadline; the library has no timeouts of its own (wrap calls in
:func:`trio.fail_after` or :func:`trio.move_on_after`). A request that may have reached a broker is
never sent again, except ``CLUSTER_QUERY``, which changes nothing: an ``APPEND``, ``READ`` or
``CREATE_QUEUE`` whose connection is lost after it was written raises
:class:`~trio_broker._errors.OutcomeUnknownError`, and so does a broker's ``UNAVAILABLE`` error
marked ``"outcome": "unknown"``. Errors that say the request was not applied (``NOT_LEADER``, other
``UNAVAILABLE`` errors) are retried; every other error is raised as the exception
:func:`~trio_broker._errors.error_from_wire` builds.
"""

from __future__ import annotations

import contextlib
import math
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ._auth import authenticate
from ._errors import (
    BrokerError,
    ErrorCode,
    NotLeaderError,
    OutcomeUnknownError,
    ProtocolError,
    QueueNotFoundError,
    error_from_wire,
)
from ._ids import cluster_of_queue, new_client_id
from ._protocol import (
    DEFAULT_MAX_FRAME,
    AckRequest,
    AddMember,
    Append,
    AppendBatch,
    Appended,
    BrokerInfo,
    ClusterQuery,
    ClusterTopology,
    CreateQueue,
    FrameDecoder,
    FrameTooLarge,
    LeadershipTransferred,
    ListQueues,
    MemberAdded,
    Message,
    QueueCreated,
    Read,
    RemoveMember,
    Retention,
    RetentionChanged,
    SeekRequest,
    SetRetentionRequest,
    SnapshotTaken,
    TakeSnapshot,
    TransferLeadership,
    converter,
    encode_frame,
    encode_request,
    loads_object,
)
from ._protocol._codec import OPERATION_NAMES
from ._protocol._messages import BatchAppended, MessageBatch, Position, QueueList

__all__ = [
    "BrokerInfo",
    "BrokerUnreachableError",
    "Client",
    "ClientStatistics",
    "Message",
    "Retention",
    "Topology",
    "connect",
    "parse_address",
]

DEFAULT_MAX_IN_FLIGHT = 256
"""Requests one connection may have written (or queued to write) and not yet answered."""

_ATTEMPT_TIMEOUT = 5.0
"""Bound on opening one connection, and on one discovery attempt (connect + CLUSTER_QUERY), so
that one unreachable or silent broker does not stop the client from trying the others. Nothing
has been sent when either gives up. Operations themselves have no timeout but the caller's."""
_BACKOFF_BASE = 0.02
_BACKOFF_MAX = 1.0
_RECEIVE_SIZE = 65536
_MAX_BATCH_FRAMES = 64
_MAX_BATCH_BYTES = 1024 * 1024

Address = tuple[str, int]


# -- public data ---------------------------------------------------------------------------------


@attrs.frozen
class Topology:
    """One cluster as a broker described it in its answer to ``CLUSTER_QUERY``."""

    cluster_id: str
    cluster_version: int
    brokers: tuple[BrokerInfo, ...]
    leader: BrokerInfo | None
    """The member the answering broker takes for the leader; None during an election."""
    self_role: str | None = None
    """Role of the broker that answered (``"leader"`` or ``"replica"``)."""
    self_id: str | None = None
    """Id of the broker that answered, when it said so."""


@attrs.frozen
class ClientStatistics:
    """A snapshot of a client's counters; see :meth:`Client.statistics`."""

    open_connections: int
    requests_in_flight: int
    """Requests queued or written and not yet answered, over all connections."""
    requests_sent: int
    responses_received: int
    responses_discarded: int
    """Responses that arrived for calls that had been cancelled."""
    retries: int
    topology_refreshes: int
    known_clusters: int


class BrokerUnreachableError(BrokerError):
    """None of the seed brokers answered ``CLUSTER_QUERY`` when the client connected.

    ``errors`` lists ``(address, reason)`` for every seed tried. The code is ``UNAVAILABLE``.
    """

    def __init__(self, errors: Sequence[tuple[Address, str]]) -> None:
        detail = "; ".join(f"{_fmt(address)}: {reason}" for address, reason in errors)
        super().__init__(ErrorCode.UNAVAILABLE, f"cannot reach any seed broker ({detail})")
        self.errors = list(errors)


def parse_address(seed: str | tuple[str, int]) -> Address:
    """``"HOST:PORT"``, ``"[IPv6]:PORT"`` or ``(host, port)`` to ``(host, port)``."""
    if isinstance(seed, tuple):
        host, port = seed
    elif isinstance(seed, str):
        host, sep, port_text = seed.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"a broker address must look like HOST:PORT, got {seed!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = int(port_text)
    else:
        raise TypeError(f"a broker address is 'HOST:PORT' or (host, port), got {seed!r}")
    if not isinstance(host, str) or not host:
        raise ValueError(f"bad host in broker address {seed!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        raise ValueError(f"bad port in broker address {seed!r}")
    return host, port


def _fmt(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- one connection ------------------------------------------------------------------------------


class _NotSent(Exception):
    """The request never reached the wire: sending it elsewhere is safe."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Lost(Exception):
    """The request was written (at least partly) and no response came back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.define(eq=False)
class _Counters:
    requests_sent: int = 0
    responses_received: int = 0
    responses_discarded: int = 0
    retries: int = 0
    topology_refreshes: int = 0


@attrs.define(eq=False)
class _Call:
    frame: bytes
    done: trio.Event = attrs.field(factory=trio.Event)
    payload: bytes | None = None
    failure: str | None = None
    sent: bool = False
    abandoned: bool = False
    """The caller was cancelled: the response (if any) is read and dropped."""


class _Connection:
    """One TCP connection to one broker, shared by every task of the client.

    Every call holds one of ``max_in_flight`` slots from the moment it is queued until its
    response is read (or the connection fails), whether or not its caller is still waiting.
    """

    def __init__(
        self,
        address: Address,
        stream: trio.abc.Stream,
        *,
        max_in_flight: int,
        max_frame: int,
        counters: _Counters,
    ) -> None:
        self.address = address
        self._stream = stream
        self._max_frame = max_frame
        self._counters = counters
        self._slots = trio.Semaphore(max_in_flight)
        # Never blocks: a call holds a slot while it sits here, and there are max_in_flight slots.
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[_Call](max_in_flight)
        self._pending: deque[_Call] = deque()
        self._scope: trio.CancelScope | None = None
        self.closed = False
        self.failure: str | None = None
        self.in_flight = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self.closed:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._read_loop)
                nursery.start_soon(self._write_loop)
                task_status.started()
        finally:
            self.fail("connection closed")
            await trio.aclose_forcefully(self._stream)

    async def call(self, frame: bytes) -> bytes:
        """Send one request frame and return the payload of its response."""
        if self.closed:
            raise _NotSent(self.failure or "connection closed")
        await self._slots.acquire()
        if self.closed:
            self._slots.release()
            raise _NotSent(self.failure or "connection closed")
        call = _Call(frame)
        self.in_flight += 1
        self._outbox_send.send_nowait(call)
        try:
            await call.done.wait()
        except BaseException:
            call.abandoned = True
            raise
        if call.payload is None:
            reason = call.failure or "connection closed"
            raise _Lost(reason) if call.sent else _NotSent(reason)
        return call.payload

    def fail(self, reason: str) -> None:
        """Close the connection: every unanswered call fails, queued ones as never sent."""
        if self.closed:
            return
        self.closed = True
        self.failure = reason
        self._outbox_send.close()
        while True:
            try:
                call = self._outbox_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self._finish(call, None, reason)
        while self._pending:
            self._finish(self._pending.popleft(), None, reason)
        if self._scope is not None:
            self._scope.cancel()

    def _finish(self, call: _Call, payload: bytes | None, failure: str | None = None) -> None:
        call.payload = payload
        call.failure = failure
        if payload is not None:
            self._counters.responses_received += 1
            if call.abandoned:
                self._counters.responses_discarded += 1
        self.in_flight -= 1
        call.done.set()
        self._slots.release()

    async def _write_loop(self) -> None:
        try:
            while True:
                try:
                    batch = [await self._outbox_receive.receive()]
                except trio.EndOfChannel:
                    return
                size = len(batch[0].frame)
                while len(batch) < _MAX_BATCH_FRAMES and size < _MAX_BATCH_BYTES:
                    try:
                        call = self._outbox_receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(call)
                    size += len(call.frame)
                live = []
                for call in batch:
                    if self.closed:
                        self._finish(call, None, self.failure)
                    elif call.abandoned:
                        # Cancelled before it was written: it never reaches the broker.
                        self._finish(call, None, "cancelled")
                    else:
                        call.sent = True
                        self._pending.append(call)
                        live.append(call)
                if live:
                    await self._stream.send_all(b"".join(call.frame for call in live))
                    self._counters.requests_sent += len(live)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.fail(f"sending to {_fmt(self.address)} failed: {exc or type(exc).__name__}")

    async def _read_loop(self) -> None:
        decoder = FrameDecoder(self._max_frame)
        try:
            while True:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    self.fail(f"{_fmt(self.address)} closed the connection")
                    return
                decoder.feed(data)
                while (payload := decoder.next_frame()) is not None:
                    if not self._pending:
                        self.fail(f"{_fmt(self.address)} sent a response to no request")
                        return
                    self._finish(self._pending.popleft(), payload)
        except FrameTooLarge as exc:
            self.fail(f"{_fmt(self.address)} sent a {exc.message}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.fail(f"receiving from {_fmt(self.address)} failed: {exc or type(exc).__name__}")


# -- the client ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Cluster:
    topology: Topology
    leader: Address | None
    generation: int = 0
    """Bumped whenever ``leader`` or ``topology`` changes; a caller that saw generation N and
    failed at the leader only clears it if nobody has updated it since."""
    lock: trio.Lock = attrs.field(factory=trio.Lock)


class Client:
    """A connection to one or more trio_broker clusters. Create it with :func:`connect`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        seeds: Sequence[Address],
        *,
        client_id: str | None,
        max_frame: int,
        max_in_flight: int,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        cluster_secret: bytes | None = None,
    ) -> None:
        self._nursery = nursery
        self._ssl_context = ssl_context
        self._token = token
        self._cluster_secret = cluster_secret
        self._seeds = list(dict.fromkeys(seeds))
        self.client_id = client_id if client_id is not None else new_client_id()
        self._max_frame = max_frame
        self._max_in_flight = max_in_flight
        self._connections: dict[Address, _Connection] = {}
        self._connect_locks: dict[Address, trio.Lock] = {}
        self._clusters: dict[str, _Cluster] = {}
        self._discovery_lock = trio.Lock()
        self._counters = _Counters()
        self._closed = False

    def __repr__(self) -> str:
        return f"<trio_broker Client {self.client_id} clusters={list(self._clusters)}>"

    # -- public API ------------------------------------------------------------------------------

    @property
    def clusters(self) -> tuple[str, ...]:
        """Ids of the clusters discovered so far, in discovery order (the first is the default)."""
        return tuple(self._clusters)

    def topology(self, cluster_id: str | None = None) -> Topology:
        """The last known topology of a cluster (the default one if not given), without asking."""
        return self._clusters[cluster_id or self._default_cluster()].topology

    def statistics(self) -> ClientStatistics:
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

    async def cluster_query(
        self,
        seed: str | tuple[str, int] | None = None,
        *,
        cluster_id: str | None = None,
        details: bool = False,
    ) -> Topology:
        """Ask for a cluster's topology, and remember the answer for routing.

        With ``seed``, ask that broker; otherwise ask the members of ``cluster_id`` (default: the
        first cluster discovered), leader first. Retries until it gets an answer. With
        ``details``, each broker also carries its ``membership`` and, when the leader answered
        (it is asked last, once known), its ``lag``.
        """
        if seed is not None:
            address = parse_address(seed)
            attempt = 0
            while True:
                try:
                    return await self._query(address, details)
                except (_NotSent, _Lost):
                    attempt = await self._backoff(attempt)
        cid = await self._known_cluster(cluster_id)
        attempt = 0
        while True:
            topology = await self._refresh(cid, seen=None)
            if topology is not None:
                if details and topology.leader is not None:
                    leader = (topology.leader.host, topology.leader.port)
                    with contextlib.suppress(_NotSent, _Lost, BrokerError):
                        return await self._query(leader, details=True)
                return topology
            attempt = await self._backoff(attempt)

    async def create_queue(
        self,
        cluster_id: str | None = None,
        *,
        max_messages: int | None = None,
        max_age: float | None = None,
        delete_acknowledged: bool = False,
    ) -> str:
        """Create a queue in ``cluster_id`` (default: the first cluster discovered), with a
        retention policy if any of the keywords is given (see :meth:`set_retention`)."""
        retention = _retention(max_messages, max_age, delete_acknowledged)
        cid = await self._known_cluster(cluster_id)
        request = CreateQueue(
            client_id=self.client_id,
            retention=None if retention == Retention() else retention,
        )
        response = await self._leader_call(cid, request)
        return _structure(response, QueueCreated).queue_id

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
        seconds, like every duration in trio; sent in whole milliseconds) deletes messages
        appended longer ago, and ``delete_acknowledged`` deletes messages that every client with
        a position on the queue has read past. With no rule at all, the queue keeps everything
        again. The leader enforces policies about once a second.
        """
        _check_queue_id(queue_id)
        retention = _retention(max_messages, max_age, delete_acknowledged)
        cid = await self._cluster_of(queue_id)
        request = SetRetentionRequest(
            queue_name=queue_id, retention=retention, client_id=self.client_id
        )
        return _structure(await self._leader_call(cid, request), RetentionChanged).retention

    async def append(self, queue_id: str, data: Any) -> int:
        """Append one JSON value to a queue and return its sequence number.

        ``data`` is any JSON value (dicts with string keys, lists, str, int within 64 bits,
        finite float, bool, None); it comes back from :meth:`read` unchanged. Anything else raises
        :exc:`TypeError` or :exc:`ValueError` before anything is sent.
        """
        _check_queue_id(queue_id)
        _check_json_value(data)
        cid = await self._cluster_of(queue_id)
        request = Append(queue_name=queue_id, data=data, client_id=self.client_id)
        response = await self._leader_call(cid, request)
        return _structure(response, Appended).sequence_num

    async def read(self, queue_id: str) -> Message | None:
        """The next message of the queue for this client id, or None if it has read them all."""
        _check_queue_id(queue_id)
        cid = await self._cluster_of(queue_id)
        response = await self._leader_call(cid, Read(queue_name=queue_id, client_id=self.client_id))
        if response.get("message") == "no_messages" and "sequence_num" not in response:
            return None
        return _structure(response, Message)

    # -- additions to the original contract (docs/protocol.md) -----------------------------------

    async def append_batch(self, queue_id: str, values: Sequence[Any]) -> list[int]:
        """Append several values atomically; returns their (consecutive) sequence numbers."""
        return await self._append_batch(queue_id, values, None, None)

    async def _append_batch(
        self, queue_id: str, values: Sequence[Any], producer_id: str | None, seq: int | None
    ) -> list[int]:
        _check_queue_id(queue_id)
        for value in values:
            _check_json_value(value)
        cid = await self._cluster_of(queue_id)
        request = AppendBatch(
            queue_name=queue_id,
            values=list(values),
            client_id=self.client_id,
            producer_id=producer_id,
            producer_seq=seq,
        )
        response = await self._leader_call(cid, request)
        return _structure(response, BatchAppended).sequence_nums

    async def _append_as(self, queue_id: str, data: Any, producer_id: str, seq: int) -> int:
        _check_queue_id(queue_id)
        _check_json_value(data)
        cid = await self._cluster_of(queue_id)
        request = Append(
            queue_name=queue_id,
            data=data,
            client_id=self.client_id,
            producer_id=producer_id,
            producer_seq=seq,
        )
        return _structure(await self._leader_call(cid, request), Appended).sequence_num

    def producer(self, producer_id: str | None = None, *, next_seq: int = 1) -> Producer:
        """An idempotent producer: its appends are never stored twice, even when it retries
        after a lost answer or a leader failover. ``producer_id`` defaults to a new random
        one; reusing an id across restarts needs ``next_seq`` to continue its numbering."""
        return Producer(
            self, producer_id or "P-" + new_client_id()[2:] + new_client_id()[2:], next_seq
        )

    async def read_batch(
        self,
        queue_id: str,
        max_messages: int = 100,
        *,
        peek: bool = False,
        wait_ms: int | None = None,
    ) -> list[Message]:
        """Up to ``max_messages`` messages after this client's position (fewer if they would
        not fit in one frame). Moves the position past them, unless ``peek``. With
        ``wait_ms``, waits that long for a message when there is none yet."""
        _check_queue_id(queue_id)
        cid = await self._cluster_of(queue_id)
        request = Read(
            queue_name=queue_id,
            client_id=self.client_id,
            max_messages=max_messages,
            mode="peek" if peek else "move",
            wait_ms=wait_ms,
        )
        return _structure(await self._leader_call(cid, request), MessageBatch).messages

    async def ack(self, queue_id: str, sequence_num: int) -> int:
        """Acknowledge every message up to ``sequence_num``; returns the next one to read."""
        _check_queue_id(queue_id)
        cid = await self._cluster_of(queue_id)
        request = AckRequest(
            queue_name=queue_id, client_id=self.client_id, sequence_num=sequence_num
        )
        return _structure(await self._leader_call(cid, request), Position).next_sequence_num

    async def seek(
        self, queue_id: str, next_sequence_num: int | None = None, *, to: str | None = None
    ) -> int:
        """Make the next read return ``next_sequence_num``, or start from ``to="start"`` or
        ``to="end"``; returns the next sequence number."""
        _check_queue_id(queue_id)
        cid = await self._cluster_of(queue_id)
        request = SeekRequest(
            queue_name=queue_id,
            client_id=self.client_id,
            next_sequence_num=next_sequence_num,
            to=to,
        )
        return _structure(await self._leader_call(cid, request), Position).next_sequence_num

    async def consume(
        self,
        queue_id: str,
        *,
        max_messages: int = 100,
        wait_ms: int = 1000,
        ack: bool = False,
    ) -> AsyncIterator[Message]:
        """Every message of the queue from this client's position on, as they arrive.

        With ``ack=False`` (at most once), reading moves the position. With ``ack=True`` (at
        least once), a batch is acknowledged only when the loop asks for the message after
        it, so messages whose processing was interrupted are delivered again.
        """
        while True:
            batch = await self.read_batch(queue_id, max_messages, peek=ack, wait_ms=wait_ms)
            for message in batch:
                yield message
            if ack and batch:
                await self.ack(queue_id, batch[-1].sequence_num)

    async def list_queues(
        self, cluster_id: str | None = None, *, max_queues: int = 100, after: str | None = None
    ) -> QueueList:
        """One page of the cluster's queues, with lengths and per-client lag; pass the
        page's ``next_after`` as ``after`` for the next page (None after the last)."""
        cid = await self._known_cluster(cluster_id)
        request = ListQueues(max_queues=max_queues, after=after, client_id=self.client_id)
        return _structure(await self._leader_call(cid, request), QueueList)

    async def remove_member(self, broker_id: str, cluster_id: str | None = None) -> None:
        """Operator command: take ``broker_id`` out of the cluster's membership (through the
        log; the leader answers once the change is committed)."""
        cid = await self._known_cluster(cluster_id)
        await self._leader_call(cid, RemoveMember(broker_id=broker_id, cluster_id=cid))

    async def transfer_leadership(
        self, broker_id: str | None = None, cluster_id: str | None = None
    ) -> LeadershipTransferred:
        """Operator command: the leader hands its leadership to the voter ``broker_id`` (None:
        the most caught-up voter); returns the new leader and its term once it leads.

        A refusal (not a voter, no other voter) or a transfer that did not complete raises
        :class:`BrokerError` at once, without retrying.
        """
        cid = await self._known_cluster(cluster_id)
        request = TransferLeadership(broker_id=broker_id, cluster_id=cid)
        response = await self._leader_call(cid, request, retry_unavailable=False)
        result = _structure(response, LeadershipTransferred)
        cluster = self._clusters[cid]
        self._leader_failed(cid, cluster.generation, None)  # ask the cluster again next time
        return result

    async def add_member(self, host: str, port: int, cluster_id: str | None = None) -> MemberAdded:
        """Operator command: the leader adds the broker listening at ``host:port`` (started
        with ``node --join-wait --cluster-id``) as a learner, promoted once caught up. Refused
        if that broker belongs to another cluster or already has a membership."""
        cid = await self._known_cluster(cluster_id)
        request = AddMember(host=host, port=port, cluster_id=cid)
        response = await self._leader_call(cid, request, retry_unavailable=False)
        return _structure(response, MemberAdded)

    async def take_snapshot(
        self, broker: str | tuple[str, int] | None = None, *, cluster_id: str | None = None
    ) -> list[SnapshotTaken]:
        """Operator command: compact the log now, on the broker at ``broker`` or (None) on
        every member of the cluster; returns each broker's snapshot index."""
        if broker is not None:
            return [await self._snapshot_at(parse_address(broker), cluster_id)]
        topology = await self.cluster_query(cluster_id=cluster_id)
        return [
            await self._snapshot_at((b.host, b.port), topology.cluster_id) for b in topology.brokers
        ]

    async def _snapshot_at(self, address: Address, cluster_id: str | None) -> SnapshotTaken:
        try:
            response = await self._exchange(address, self._frame(TakeSnapshot(cluster_id)))
        except (_NotSent, _Lost) as exc:
            raise BrokerError(
                ErrorCode.UNAVAILABLE, f"snapshot on {_fmt(address)} failed: {exc.reason}"
            ) from None
        if response.get("status") == "error":
            raise error_from_wire(response)
        return _structure(response, SnapshotTaken)

    # -- routing ---------------------------------------------------------------------------------

    def _default_cluster(self) -> str:
        self._check_open()
        return next(iter(self._clusters))

    async def _known_cluster(self, cluster_id: str | None) -> str:
        if cluster_id is None:
            return self._default_cluster()
        if cluster_id not in self._clusters:
            await self._discover_more()
            if cluster_id not in self._clusters:
                raise BrokerError(
                    ErrorCode.WRONG_CLUSTER, f"none of the seed brokers is in cluster {cluster_id}"
                )
        return cluster_id

    async def _cluster_of(self, queue_id: str) -> str:
        cid = cluster_of_queue(queue_id)
        if cid is None:
            # Not a well-formed id: let the default cluster's leader say what it makes of it.
            return self._default_cluster()
        if cid not in self._clusters:
            await self._discover_more()
            if cid not in self._clusters:
                raise QueueNotFoundError(
                    ErrorCode.QUEUE_NOT_FOUND,
                    f"queue {queue_id} belongs to cluster {cid}, "
                    "and none of the seed brokers is in that cluster",
                )
        return cid

    async def _leader_call(
        self, cid: str, request: Any, *, retry_unavailable: bool = True
    ) -> dict[str, Any]:
        frame = self._frame(request)
        attempt = 0
        while True:
            self._check_open()
            cluster = self._clusters[cid]
            seen = cluster.generation
            address = cluster.leader
            if address is None:
                await self._refresh(cid, seen=seen)
                seen = cluster.generation
                address = cluster.leader
            if address is not None:
                try:
                    response = await self._exchange(address, frame)
                except _NotSent:
                    self._leader_failed(cid, seen, None)
                except _Lost as exc:
                    self._check_open()
                    raise OutcomeUnknownError(
                        ErrorCode.UNAVAILABLE,
                        f"connection to {_fmt(address)} lost after the {_wire_name(request)} "
                        f"request was sent; it may or may not have been applied ({exc.reason})",
                        outcome="unknown",
                        operation=_wire_name(request),
                        broker=_fmt(address),
                    ) from None
                else:
                    if response.get("status") != "error":
                        return response
                    error = error_from_wire(response)
                    if isinstance(error, NotLeaderError):
                        self._leader_failed(cid, seen, self._hinted_leader(cluster, error))
                    elif (
                        error.code != ErrorCode.UNAVAILABLE
                        or isinstance(error, OutcomeUnknownError)
                        or not retry_unavailable
                    ):
                        raise error
                    else:
                        # Refused without being applied (shutting down, no quorum): the leader
                        # may be moving; ask the cluster again.
                        self._leader_failed(cid, seen, None)
            attempt = await self._backoff(attempt)

    def _leader_failed(self, cid: str, seen: int, new_leader: Address | None) -> None:
        cluster = self._clusters[cid]
        if cluster.generation == seen:
            cluster.leader = new_leader
            cluster.generation += 1

    @staticmethod
    def _hinted_leader(cluster: _Cluster, error: BrokerError) -> Address | None:
        host = error.details.get("leader_host")
        port = error.details.get("leader_port")
        if isinstance(host, str) and host and isinstance(port, int) and 0 < port <= 65535:
            return host, port
        leader_id = error.details.get("leader_id")
        for broker in cluster.topology.brokers:
            if leader_id is not None and broker.broker_id == leader_id:
                return broker.host, broker.port
        return None

    async def _backoff(self, attempt: int) -> int:
        self._counters.retries += 1
        delay = min(_BACKOFF_MAX, _BACKOFF_BASE * 2 ** min(attempt, 16))
        await trio.sleep(delay * (0.5 + random.random() / 2))
        return attempt + 1

    # -- topology --------------------------------------------------------------------------------

    async def _discover(self) -> None:
        errors = await self._discover_more()
        if not self._clusters:
            raise BrokerUnreachableError(errors)

    async def _discover_more(self) -> list[tuple[Address, str]]:
        """Ask every seed not already known as a member of a discovered cluster, once."""
        errors: list[tuple[Address, str]] = []
        async with self._discovery_lock:
            for address in self._seeds:
                if self._cluster_with(address) is not None:
                    continue
                reason = await self._try_query(address)
                if reason is not None:
                    errors.append((address, reason))
        return errors

    def _cluster_with(self, address: Address) -> str | None:
        for cid, cluster in self._clusters.items():
            if any((b.host, b.port) == address for b in cluster.topology.brokers):
                return cid
        return None

    async def _try_query(self, address: Address) -> str | None:
        """One bounded CLUSTER_QUERY attempt; the reason it failed, or None."""
        with trio.move_on_after(_ATTEMPT_TIMEOUT):
            try:
                await self._query(address)
            except (_NotSent, _Lost) as exc:
                return exc.reason
            except BrokerError as exc:
                if exc.code == ErrorCode.UNAUTHORIZED:
                    raise  # a wrong token or secret: asking elsewhere will not help
                return str(exc)
            return None
        return f"no answer within {_ATTEMPT_TIMEOUT:g} s"

    async def _refresh(self, cid: str, *, seen: int | None) -> Topology | None:
        """Ask the cluster's members (then the seeds) for its topology until one names a leader.

        With ``seen``, skip the work if the cluster changed since generation ``seen`` (so that
        many tasks failing at once cause one refresh, not one each).
        Returns the freshest topology obtained (possibly without a leader), or None.
        """
        cluster = self._clusters[cid]
        async with cluster.lock:
            if seen is not None and cluster.generation != seen:
                return cluster.topology  # someone refreshed (or learnt a leader) meanwhile
            self._counters.topology_refreshes += 1
            members = list(cluster.topology.brokers)
            members.sort(key=lambda b: b.role != "leader")
            candidates = [(b.host, b.port) for b in members]
            candidates += [a for a in self._seeds if self._cluster_with(a) in (None, cid)]
            found: Topology | None = None
            for address in dict.fromkeys(candidates):
                before = cluster.generation
                if await self._try_query(address) is not None:
                    continue
                if cluster.generation == before:
                    continue  # it answered for another cluster
                found = cluster.topology
                if cluster.leader is not None:
                    return found
            return found

    async def _query(self, address: Address, details: bool = False) -> Topology:
        frame = self._frame(ClusterQuery(client_id=self.client_id, details=details or None))
        response = await self._exchange(address, frame)
        if response.get("status") == "error":
            raise error_from_wire(response)
        wire = _structure(response, ClusterTopology)
        brokers = tuple(wire.brokers)
        leader = None
        if wire.leader_id is not None:
            leader = next((b for b in brokers if b.broker_id == wire.leader_id), None)
        if leader is None:
            leader = next((b for b in brokers if b.role == "leader"), None)
        topology = Topology(
            cluster_id=wire.cluster_id,
            cluster_version=wire.cluster_version,
            brokers=brokers,
            leader=leader,
            self_role=wire.self_role,
            self_id=wire.self_id,
        )
        self._store(topology)
        return topology

    def _store(self, topology: Topology) -> None:
        leader = (topology.leader.host, topology.leader.port) if topology.leader else None
        cluster = self._clusters.get(topology.cluster_id)
        if cluster is None:
            self._clusters[topology.cluster_id] = _Cluster(topology, leader)
        else:
            cluster.topology = topology
            cluster.leader = leader
            cluster.generation += 1

    # -- the wire --------------------------------------------------------------------------------

    def _frame(self, request: Any) -> bytes:
        try:
            payload = encode_request(request)
        except TypeError as exc:  # orjson.JSONEncodeError
            raise TypeError(f"data is not a JSON value the broker can store: {exc}") from None
        if len(payload) > self._max_frame:
            raise BrokerError(
                ErrorCode.TOO_LARGE,
                f"request of {len(payload)} bytes is larger than the maximum frame of "
                f"{self._max_frame} bytes",
            )
        return encode_frame(payload)

    async def _exchange(self, address: Address, frame: bytes) -> dict[str, Any]:
        connection = await self._connection(address)
        payload = await connection.call(frame)
        try:
            return loads_object(payload)
        except ProtocolError as exc:
            raise ProtocolError(f"malformed response from {_fmt(address)}: {exc.message}")

    async def _connection(self, address: Address) -> _Connection:
        self._check_open()
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        lock = self._connect_locks.setdefault(address, trio.Lock())
        async with lock:
            self._check_open()
            connection = self._connections.get(address)
            if connection is not None and not connection.closed:
                return connection
            stream = None
            with trio.move_on_after(_ATTEMPT_TIMEOUT):
                stream = await self._open_stream(address)
            if stream is None:
                raise _NotSent(f"no connection within {_ATTEMPT_TIMEOUT:g} s")
            try:
                connection = _Connection(
                    address,
                    stream,
                    max_in_flight=self._max_in_flight,
                    max_frame=self._max_frame,
                    counters=self._counters,
                )
                await self._nursery.start(self._run_connection, connection)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._connections[address] = connection
            return connection

    async def _open_stream(self, address: Address) -> trio.abc.Stream:
        """A new connection: TCP, TLS if configured, then authentication if configured."""
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(*address)
        except OSError as exc:
            raise _NotSent(_os_reason(exc)) from None
        try:
            if self._ssl_context is not None:
                stream = trio.SSLStream(stream, self._ssl_context, server_hostname=address[0])
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    raise _NotSent(f"TLS handshake failed: {exc.__cause__ or exc}") from None
            if self._token is not None or self._cluster_secret is not None:
                try:
                    refused = await authenticate(
                        stream,
                        FrameDecoder(self._max_frame),
                        secret=self._cluster_secret,
                        token=self._token,
                    )
                except (trio.BrokenResourceError, OSError, ProtocolError) as exc:
                    raise _NotSent(f"authentication failed: {exc}") from None
                if refused:
                    raise error_from_wire(refused)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    async def _run_connection(
        self, connection: _Connection, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            await connection.run(task_status=task_status)
        finally:
            if self._connections.get(connection.address) is connection:
                del self._connections[connection.address]

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this client is closed")

    def _close(self) -> None:
        self._closed = True
        for connection in list(self._connections.values()):
            connection.fail("client closed")
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def connect(
    seeds: Iterable[str | tuple[str, int]],
    *,
    client_id: str | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
    cluster_secret: bytes | None = None,
) -> AsyncIterator[Client]:
    """Discover the clusters the seeds belong to and yield a :class:`Client`.

    ``seeds`` are ``"HOST:PORT"`` strings or ``(host, port)`` tuples (a single string is one
    seed). Each seed is asked in turn
    (once, a few seconds at most each) for its cluster's topology; seeds of several clusters give
    a client that routes each queue to its own cluster's leader. If no seed answers,
    :class:`BrokerUnreachableError` is raised at once: a seed list that reaches nothing is
    usually a mistake. Once connected, lost leaders are waited for (until the caller's deadline).

    ``client_id`` names this client's read positions (a new ``C-XXXXX`` if not given: reads then
    start at the first message). ``max_frame`` bounds the frames sent and accepted;
    ``max_in_flight`` bounds the pipelined requests per connection.

    Security (docs/security.md): with ``ssl_context`` (for instance
    ``ssl.create_default_context(cafile="ca.pem")``), every connection speaks TLS and checks
    the broker's certificate against the host name or address it dials. With ``token``, every
    new connection (the client reconnects as leaders move) presents it first; with
    ``cluster_secret`` (bytes), every new connection proves it, which operator commands such
    as :meth:`Client.remove_member` need when the cluster has a secret. A refused token or
    proof raises :class:`~trio_broker._errors.BrokerError` with code ``UNAUTHORIZED``.
    """
    if isinstance(seeds, str):
        seeds = [seeds]
    addresses = [parse_address(seed) for seed in seeds]
    if not addresses:
        raise ValueError("connect() needs at least one seed broker")
    if max_frame <= 0 or max_in_flight <= 0:
        raise ValueError("max_frame and max_in_flight must be positive")
    try:
        async with trio.open_nursery() as nursery:
            client = Client(
                nursery,
                addresses,
                client_id=client_id,
                max_frame=max_frame,
                max_in_flight=max_in_flight,
                ssl_context=ssl_context,
                token=token,
                cluster_secret=cluster_secret,
            )
            try:
                await client._discover()
                yield client
            finally:
                client._close()
    except BaseExceptionGroup as group:
        # The nursery only holds connection tasks, which never raise; an exception here came from
        # the body of the ``async with`` (or discovery) and is raised as itself, not wrapped.
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


# -- helpers -------------------------------------------------------------------------------------


def _structure(response: dict[str, Any], cls: type) -> Any:
    try:
        return converter.structure(response, cls)
    except Exception as exc:
        raise ProtocolError(f"unexpected response {response!r:.200}: {exc}") from None


def _wire_name(request: Any) -> str:
    return OPERATION_NAMES.get(type(request), type(request).__name__)


class Producer:
    """Idempotent appends (see :meth:`Client.producer`).

    Each append carries this producer's id and its next sequence number for the queue; when
    the outcome of an append is unknown (a lost answer, a failover), it is sent again with the
    same number, and the cluster answers with the first attempt's result instead of storing it
    twice. Appends of one producer to one queue go one at a time, in order.
    """

    def __init__(self, client: Client, producer_id: str, next_seq: int) -> None:
        self.client = client
        self.producer_id = producer_id
        self._first_seq = next_seq
        self._next: dict[str, int] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def append(self, queue_id: str, data: Any) -> int:
        return await self._send(
            queue_id, lambda seq: self.client._append_as(queue_id, data, self.producer_id, seq)
        )

    async def append_batch(self, queue_id: str, values: Sequence[Any]) -> list[int]:
        return await self._send(
            queue_id, lambda seq: self.client._append_batch(queue_id, values, self.producer_id, seq)
        )

    async def _send(self, queue_id: str, attempt: Any) -> Any:
        lock = self._locks.setdefault(queue_id, trio.Lock())
        async with lock:
            seq = self._next.get(queue_id, self._first_seq)
            backoff = 0.02
            while True:
                try:
                    result = await attempt(seq)
                except OutcomeUnknownError:
                    # Safe to send again: the cluster recognises this (producer, seq).
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                self._next[queue_id] = seq + 1
                return result


def _os_reason(exc: OSError) -> str:
    """A short reason for a failed connect; trio groups the per-address errors as the cause."""
    errors: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        errors = list(exc.__cause__.exceptions)
    if all(isinstance(e, ConnectionRefusedError) for e in errors):
        return "connection refused"
    reasons = [getattr(e, "strerror", None) or str(e) or type(e).__name__ for e in errors]
    return "; ".join(dict.fromkeys(reasons))


def _retention(
    max_messages: int | None, max_age: float | None, delete_acknowledged: bool
) -> Retention:
    """A retention policy from the client's keywords; mistakes raise before anything is sent
    (the broker checks the limits too)."""
    if max_messages is not None and (
        isinstance(max_messages, bool) or not isinstance(max_messages, int)
    ):
        raise TypeError(f"max_messages must be an int, not {type(max_messages).__name__}")
    if max_messages is not None and max_messages < 1:
        raise ValueError(f"max_messages must be at least 1, not {max_messages}")
    if not isinstance(delete_acknowledged, bool):
        raise TypeError("delete_acknowledged must be a bool")
    max_age_ms = None
    if max_age is not None:
        if isinstance(max_age, bool) or not isinstance(max_age, int | float):
            raise TypeError(f"max_age must be a number of seconds, not {type(max_age).__name__}")
        if not math.isfinite(max_age) or max_age * 1000 < 1:
            raise ValueError(f"max_age must be at least 0.001 seconds, not {max_age}")
        max_age_ms = round(max_age * 1000)
    return Retention(max_messages, max_age_ms, delete_acknowledged)


def _check_queue_id(queue_id: Any) -> None:
    if not isinstance(queue_id, str):
        raise TypeError(f"a queue id is a string, got {type(queue_id).__name__}")


def _check_json_value(value: Any) -> None:
    """Refuse what has no exact JSON form, rather than let the encoder change it.

    The shared converter would turn a set into a list and an integer key into a string, and
    orjson writes NaN as null: none of these would come back from a READ as they went in.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, str | int):
            continue  # bool is an int; the encoder refuses integers beyond 64 bits
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{item!r} is not a JSON value")
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise TypeError(f"JSON object keys are strings, got {type(key).__name__}")
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            raise TypeError(f"{type(item).__name__} is not a JSON value")
