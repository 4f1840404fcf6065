"""The trio shell of one broker: one nursery of supervised tasks around the storage worker.

Lifetimes shape the nurseries: the storage worker outlives the services (the committer), which
outlive the connections. Shutdown stops accepting, stops reading new requests, gives in-flight
requests ``shutdown_grace`` seconds to be answered, then cancels what is left.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from .. import _core
from .._errors import BrokerError, ErrorCode, ProtocolError
from .._ids import new_broker_id, new_cluster_id, new_queue_id
from .._protocol import (
    Append,
    Appended,
    BrokerInfo,
    ClusterQuery,
    ClusterTopology,
    CreateQueue,
    FrameDecoder,
    FrameTooLarge,
    Message,
    NoMessages,
    QueueCreated,
    Read,
    Request,
    Response,
    decode_request,
    dumps_value,
    encode_frame,
    encode_response,
    stored_value,
)
from .._storage import Identity, StorageWorker, Store, open_storage_worker
from ._config import BrokerConfig
from ._log import log_event, logger

_RECEIVE_SIZE = 64 * 1024
_LINGER_SECONDS = 1.0


class _Pending:
    """A command's result, filled in by the committer once it is durable."""

    __slots__ = ("_event", "result")

    def __init__(self) -> None:
        self._event = trio.Event()
        self.result: _core.Result | BrokerError | None = None

    def set(self, result: _core.Result | BrokerError) -> None:
        self.result = result
        self._event.set()

    async def wait(self) -> _core.Result | BrokerError:
        await self._event.wait()
        assert self.result is not None
        return self.result


@attrs.frozen
class BrokerStatistics:
    connections: int
    commands_committed: int
    batches_committed: int
    pending_commands: int


class _Committer:
    """Group commit: whatever commands queued up while one transaction ran go in the next one."""

    def __init__(self, worker: StorageWorker, store: Store, config: BrokerConfig) -> None:
        self._worker = worker
        self._store = store
        self._max_batch = config.max_batch
        self._send, self._receive = trio.open_memory_channel[tuple[_core.Command, _Pending]](
            config.max_pending
        )
        self.commands = 0
        self.batches = 0

    @property
    def pending(self) -> int:
        return self._send.statistics().current_buffer_used

    async def submit(self, command: _core.Command) -> _Pending:
        """Queue a command; waits (back-pressure) while ``max_pending`` commands are queued."""
        pending = _Pending()
        await self._send.send((command, pending))
        return pending

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for first in self._receive:
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            commands = [command for command, _ in batch]
            try:
                results: list[Any] = await self._worker.run(self._store.apply, commands)
            except Exception as exc:
                log_event(logging.ERROR, "storage.commit_failed", error=repr(exc), size=len(batch))
                failure = BrokerError(ErrorCode.INTERNAL, f"storage failure: {exc}")
                results = [failure] * len(batch)
            else:
                self.commands += len(batch)
                self.batches += 1
            for (_, pending), result in zip(batch, results, strict=True):
                pending.set(result)


class Broker:
    """A running broker. Built by :func:`open_broker`; serve it with the context manager."""

    def __init__(
        self, config: BrokerConfig, identity: Identity, store: Store, worker: StorageWorker
    ) -> None:
        self.config = config
        self.broker_id = identity.broker_id
        self.cluster_id = identity.cluster_id
        self.host = config.host
        self.port = config.port
        self.cluster_version = 1
        self._store = store
        self._worker = worker
        self._committer = _Committer(worker, store, config)
        self._rng = random.SystemRandom()
        self._queue_ids: set[str] = set()
        self._connections = 0
        self._readers: set[trio.CancelScope] = set()
        self._closing = False
        self._listening = trio.CancelScope()
        self._idle = trio.Event()
        self._idle.set()

    # -- requests -------------------------------------------------------------------------------

    def topology(self) -> ClusterTopology:
        me = BrokerInfo(
            broker_id=self.broker_id,
            host=self.config.announced_host,
            port=self.port,
            role="leader",
            status="active",
        )
        return ClusterTopology(
            cluster_id=self.cluster_id,
            cluster_version=self.cluster_version,
            self_role="leader",
            brokers=[me],
            self_id=self.broker_id,
            leader_id=self.broker_id,
        )

    def _new_queue_id(self) -> str:
        while True:
            queue_id = new_queue_id(self.cluster_id, self._rng)
            if queue_id not in self._queue_ids:
                self._queue_ids.add(queue_id)
                return queue_id

    async def handle(self, request: Request) -> Response | BrokerError | _Pending:
        """Decide a request: an answer now, or a pending commit whose result is the answer."""
        if isinstance(request, ClusterQuery):
            if request.cluster_id is not None and request.cluster_id != self.cluster_id:
                return BrokerError(
                    ErrorCode.WRONG_CLUSTER,
                    f"this broker belongs to cluster {self.cluster_id}, not {request.cluster_id}",
                    cluster_id=self.cluster_id,
                )
            return self.topology()
        if self._closing:
            return BrokerError(ErrorCode.UNAVAILABLE, "broker is shutting down")
        if isinstance(request, Append):
            data = dumps_value(request.data)
            if len(data) > self.config.max_data_bytes:
                return BrokerError(
                    ErrorCode.TOO_LARGE,
                    f"data of {len(data)} bytes is larger than the maximum of "
                    f"{self.config.max_data_bytes} bytes",
                )
            return await self._committer.submit(_core.AppendMessage(request.queue_name, data))
        if isinstance(request, Read):
            if not request.client_id:
                return ProtocolError("client_id must not be empty")
            return await self._committer.submit(
                _core.ReadNext(request.client_id, request.queue_name)
            )
        if isinstance(request, CreateQueue):
            return await self._committer.submit(_core.CreateQueue(self._new_queue_id()))
        raise AssertionError(f"unhandled request {request!r}")  # pragma: no cover

    async def submit(self, command: _core.Command) -> _core.Result | BrokerError:
        """Commit one command and wait until it is durable; for embedding and tests."""
        pending = await self._committer.submit(command)
        return await pending.wait()

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            connections=self._connections,
            commands_committed=self._committer.commands,
            batches_committed=self._committer.batches,
            pending_commands=self._committer.pending,
        )

    # -- connections ----------------------------------------------------------------------------

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        peer = _peer_name(stream)
        if self._closing or self._connections >= self.config.max_connections:
            reason = "shutting down" if self._closing else "too many connections"
            log_event(logging.WARNING, "connection.refused", peer=peer, reason=reason)
            with trio.move_on_after(1):
                error = BrokerError(ErrorCode.UNAVAILABLE, f"broker refused connection: {reason}")
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(encode_frame(encode_response(error)))
            await trio.aclose_forcefully(stream)
            return
        self._connections += 1
        self._idle = trio.Event() if self._connections == 1 else self._idle
        try:
            async with stream:
                await self._serve_connection(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away; nothing of ours is lost
        except Exception:
            # A bug in serving one connection must not take the broker down with it.
            logger.exception("connection.crashed peer=%s", peer)
        finally:
            self._connections -= 1
            if self._connections == 0:
                self._idle.set()

    async def _serve_connection(self, stream: trio.SocketStream, peer: str) -> None:
        # Answers leave in request order. A request is read only once it has a slot among
        # max_in_flight, so a command is never submitted without a place for its answer.
        slots = trio.Semaphore(self.config.max_in_flight)
        send, receive = trio.open_memory_channel[Any](self.config.max_in_flight)
        peer_closed = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_responses, stream, receive, slots)
            async with send:
                with trio.CancelScope() as reading:
                    self._readers.add(reading)
                    try:
                        peer_closed = await self._read_requests(stream, peer, send, slots)
                    finally:
                        self._readers.discard(reading)
        if not peer_closed:
            await _linger(stream)

    async def _read_requests(
        self,
        stream: trio.SocketStream,
        peer: str,
        send: trio.MemorySendChannel[Any],
        slots: trio.Semaphore,
    ) -> bool:
        """Read and dispatch requests; True when the peer closed, False when we stopped."""
        decoder = FrameDecoder(self.config.max_frame)
        while True:
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:
                if decoder.buffered:
                    log_event(
                        logging.INFO,
                        "connection.truncated_frame",
                        peer=peer,
                        buffered=decoder.buffered,
                    )
                return True
            decoder.feed(data)
            while True:
                try:
                    payload = decoder.next_frame()
                except FrameTooLarge as exc:
                    # The stream cannot be resynchronised: answer, then close this connection.
                    log_event(
                        logging.WARNING,
                        "request.rejected",
                        peer=peer,
                        code=exc.code,
                        reason=exc.message,
                    )
                    await slots.acquire()
                    send.send_nowait(exc)
                    return False
                if payload is None:
                    break
                await slots.acquire()
                try:
                    request = decode_request(payload)
                except ProtocolError as exc:
                    log_event(
                        logging.WARNING,
                        "request.rejected",
                        peer=peer,
                        code=exc.code,
                        reason=exc.message,
                    )
                    send.send_nowait(exc)
                    continue
                try:
                    answer = await self.handle(request)
                except BaseException:
                    slots.release()
                    raise
                send.send_nowait(answer)

    async def _write_responses(
        self,
        stream: trio.SocketStream,
        receive: trio.MemoryReceiveChannel[Any],
        slots: trio.Semaphore,
    ) -> None:
        async with receive:
            async for item in receive:
                out = [await self._answer(item)]
                # Whatever else is already answered goes out in the same write.
                while len(out) < 64:
                    try:
                        nxt = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    out.append(await self._answer(nxt))
                await stream.send_all(b"".join(out))
                for _ in out:
                    slots.release()

    async def _answer(self, item: Any) -> bytes:
        if isinstance(item, _Pending):
            item = _response_for(await item.wait())
        return encode_frame(encode_response(item))

    # -- lifetime -------------------------------------------------------------------------------

    async def _serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        connections: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with self._listening:
            await trio.serve_listeners(
                self._handle_stream,
                listeners,
                handler_nursery=connections,
                task_status=task_status,
            )

    async def _shutdown(self, connections: trio.Nursery) -> None:
        self._closing = True
        self._listening.cancel()
        for scope in list(self._readers):
            scope.cancel()
        with trio.move_on_after(self.config.shutdown_grace):
            await self._idle.wait()
        connections.cancel_scope.cancel()


def _response_for(result: _core.Result | BrokerError) -> Response | BrokerError:
    if isinstance(result, BrokerError):
        return result
    if isinstance(result, _core.MessageAppended):
        return Appended(result.sequence_num)
    if isinstance(result, _core.MessageRead):
        if result.sequence_num is None:
            return NoMessages()
        assert result.data is not None
        return Message(result.sequence_num, stored_value(result.data))
    if isinstance(result, _core.QueueCreated):
        return QueueCreated(result.queue_id)
    if isinstance(result, _core.CommandRejected):
        return BrokerError(result.code, result.message)
    raise AssertionError(f"unhandled result {result!r}")  # pragma: no cover


async def _linger(stream: trio.SocketStream) -> None:
    """Close our side first and drain theirs, so the kernel does not reset the connection
    (which would discard answers the peer has not read yet) because of unread requests."""
    with trio.move_on_after(_LINGER_SECONDS):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_eof()
            while await stream.receive_some(_RECEIVE_SIZE):
                pass


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return "unknown"
    return f"{host}:{port}"


class IdentityMismatch(Exception):
    """The data directory belongs to another broker or cluster than the configuration says."""


def _load_identity(store: Store, config: BrokerConfig) -> Identity:
    found = store.identity()
    if found is None:
        return store.init_identity(
            config.broker_id or new_broker_id(), config.cluster_id or new_cluster_id()
        )
    for name, wanted, stored in (
        ("broker id", config.broker_id, found.broker_id),
        ("cluster id", config.cluster_id, found.cluster_id),
    ):
        if wanted is not None and wanted != stored:
            raise IdentityMismatch(
                f"data directory {config.data_dir} holds {name} {stored}, "
                f"but {wanted} was asked for"
            )
    return found


@contextlib.asynccontextmanager
async def open_broker(config: BrokerConfig) -> AsyncIterator[Broker]:
    """Start a broker and serve it for the body of the ``async with``.

    Raises :class:`~trio_broker._storage.DataDirInUse` if another broker holds the data
    directory, and :class:`IdentityMismatch` if the directory belongs to another identity.
    """
    async with open_storage_worker() as worker:
        store = await worker.run(Store, config.data_dir)
        try:
            identity = await worker.run(_load_identity, store, config)
            broker = Broker(config, identity, store, worker)
            broker._queue_ids.update(await worker.run(store.queue_lengths))
            listeners = await trio.open_tcp_listeners(config.port, host=config.host)
            broker.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as services:
                await services.start(broker._committer.run)
                async with trio.open_nursery() as connections:
                    await connections.start(
                        functools.partial(broker._serve_listeners, listeners, connections)
                    )
                    log_event(
                        logging.INFO,
                        "broker.started",
                        broker_id=broker.broker_id,
                        cluster_id=broker.cluster_id,
                        host=config.host,
                        port=broker.port,
                        data_dir=config.data_dir,
                    )
                    try:
                        yield broker
                    finally:
                        with trio.CancelScope(shield=True):
                            log_event(logging.INFO, "broker.stopping", broker_id=broker.broker_id)
                            await broker._shutdown(connections)
                services.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await worker.run(store.close)
            log_event(logging.INFO, "broker.stopped", data_dir=config.data_dir)


async def serve_broker(
    config: BrokerConfig, *, task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a broker until cancelled; ``task_status.started`` gets the :class:`Broker`."""
    async with open_broker(config) as broker:
        task_status.started(broker)
        await trio.sleep(math.inf)
