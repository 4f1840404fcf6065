"""One pipelined connection to one broker, on anyio (so on trio and on asyncio alike).

Each connection has one writer task (which writes requests in order, several per ``send``
when they queue up) and one reader task (which matches responses to requests in the same
order). A call that is cancelled leaves its place in that order; its response is read and
discarded, so the other calls on the connection are unaffected.
"""

from __future__ import annotations

import ssl
from collections import deque
from typing import Any

import anyio
import anyio.abc
import attrs
from anyio.streams.tls import TLSStream

from .._auth import authenticate
from .._errors import ProtocolError, error_from_wire
from .._protocol import FrameDecoder, FrameTooLarge
from ._common import Address, fmt_address

_RECEIVE_SIZE = 65536
_MAX_BATCH_FRAMES = 64
_MAX_BATCH_BYTES = 1024 * 1024

_STREAM_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,
)


class NotSent(Exception):
    """The request never reached the wire: sending it elsewhere is safe."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Lost(Exception):
    """The request was written (at least partly) and no response came back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.define(eq=False)
class Counters:
    requests_sent: int = 0
    responses_received: int = 0
    responses_discarded: int = 0
    retries: int = 0
    topology_refreshes: int = 0


@attrs.define(eq=False)
class _Call:
    frame: bytes
    done: anyio.Event = attrs.field(factory=anyio.Event)
    payload: bytes | None = None
    failure: str | None = None
    sent: bool = False
    abandoned: bool = False
    """The caller was cancelled: the response (if any) is read and dropped."""


class Connection:
    """One TCP connection to one broker, shared by every task of the client.

    Every call holds one of ``max_in_flight`` slots from the moment it is queued until its
    response is read (or the connection fails), whether or not its caller is still waiting.
    """

    def __init__(
        self,
        address: Address,
        stream: anyio.abc.ByteStream,
        *,
        max_in_flight: int,
        max_frame: int,
        counters: Counters,
    ) -> None:
        self.address = address
        self._stream = stream
        self._max_frame = max_frame
        self._counters = counters
        self._slots = anyio.Semaphore(max_in_flight)
        # Never blocks: a call holds a slot while it sits here, and there are max_in_flight slots.
        self._outbox_send, self._outbox_receive = anyio.create_memory_object_stream[_Call](
            max_in_flight
        )
        self._pending: deque[_Call] = deque()
        self._scope: anyio.CancelScope | None = None
        self.closed = False
        self.failure: str | None = None
        self.in_flight = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                self._scope = tasks.cancel_scope
                if self.closed:
                    tasks.cancel_scope.cancel()
                tasks.start_soon(self._read_loop)
                tasks.start_soon(self._write_loop)
                task_status.started()
        finally:
            self.fail("connection closed")
            await anyio.aclose_forcefully(self._stream)

    async def call(self, frame: bytes) -> bytes:
        """Send one request frame and return the payload of its response."""
        if self.closed:
            raise NotSent(self.failure or "connection closed")
        await self._slots.acquire()
        if self.closed:
            self._slots.release()
            raise NotSent(self.failure or "connection closed")
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
            raise Lost(reason) if call.sent else NotSent(reason)
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
            except (anyio.WouldBlock, anyio.EndOfStream):
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
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return
                size = len(batch[0].frame)
                while len(batch) < _MAX_BATCH_FRAMES and size < _MAX_BATCH_BYTES:
                    try:
                        call = self._outbox_receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
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
                    await self._stream.send(b"".join(call.frame for call in live))
                    self._counters.requests_sent += len(live)
        except _STREAM_ERRORS as exc:
            self.fail(f"sending to {fmt_address(self.address)} failed: {_reason(exc)}")

    async def _read_loop(self) -> None:
        decoder = FrameDecoder(self._max_frame)
        try:
            while True:
                try:
                    data = await self._stream.receive(_RECEIVE_SIZE)
                except anyio.EndOfStream:
                    self.fail(f"{fmt_address(self.address)} closed the connection")
                    return
                decoder.feed(data)
                while (payload := decoder.next_frame()) is not None:
                    if not self._pending:
                        self.fail(f"{fmt_address(self.address)} sent a response to no request")
                        return
                    self._finish(self._pending.popleft(), payload)
        except FrameTooLarge as exc:
            self.fail(f"{fmt_address(self.address)} sent a {exc.message}")
        except _STREAM_ERRORS as exc:
            self.fail(f"receiving from {fmt_address(self.address)} failed: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    return str(exc) or str(exc.__cause__ or "") or type(exc).__name__


class _AuthStream:
    """The two stream methods :func:`trio_broker._auth.authenticate` uses, over an anyio
    stream (it was written for trio's; only the names differ)."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream

    async def send_all(self, data: bytes) -> None:
        await self._stream.send(data)

    async def receive_some(self, max_bytes: int) -> bytes:
        try:
            return await self._stream.receive(max_bytes)
        except anyio.EndOfStream:
            return b""


async def open_stream(
    address: Address,
    *,
    ssl_context: ssl.SSLContext | None,
    token: str | None,
    cluster_secret: bytes | None,
    max_frame: int,
) -> anyio.abc.ByteStream:
    """A new connection: TCP, TLS if configured, then authentication if configured.

    Raises :class:`NotSent` when it cannot be had, or the broker's refusal of the token or
    proof (:class:`~trio_broker.UnauthorizedError`).
    """
    try:
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(*address)
    except OSError as exc:
        raise NotSent(os_reason(exc)) from None
    try:
        if ssl_context is not None:
            try:
                stream = await TLSStream.wrap(stream, hostname=address[0], ssl_context=ssl_context)
            except (ssl.SSLError, *_STREAM_ERRORS) as exc:
                raise NotSent(f"TLS handshake failed: {exc.__cause__ or exc}") from None
        if token is not None or cluster_secret is not None:
            try:
                refused: dict[str, Any] = await authenticate(
                    _AuthStream(stream),  # type: ignore[arg-type]
                    FrameDecoder(max_frame),
                    secret=cluster_secret,
                    token=token,
                )
            except (*_STREAM_ERRORS, ProtocolError) as exc:
                raise NotSent(f"authentication failed: {_reason(exc)}") from None
            if refused:
                raise error_from_wire(refused)
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise
    return stream


def os_reason(exc: OSError) -> str:
    """A short reason for a failed connect; anyio (like trio) gives the per-address errors as
    the cause."""
    errors: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        errors = list(exc.__cause__.exceptions)
    elif isinstance(exc.__cause__, OSError):
        errors = [exc.__cause__]
    if all(isinstance(e, ConnectionRefusedError) for e in errors):
        return "connection refused"
    reasons = [getattr(e, "strerror", None) or str(e) or type(e).__name__ for e in errors]
    return "; ".join(dict.fromkeys(reasons))
