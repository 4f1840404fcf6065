"""A connection's socket calls without a trip through trio's scheduler when they need not wait:
a client's connection, and the peer links (outbound writes, inbound reads).
docs/performance-history.md, "The leader's request path" and "The peer links' socket calls, and two
constructors".

trio's ``SocketStream.send_all`` and ``receive_some`` yield to the scheduler after every call
that completed (a cancel-shielded checkpoint), and a receive that finds nothing tries, waits
for the socket, and tries again, yielding after that too: measured here, a 600-byte
``send_all`` costs about 10 µs of CPU against 1.4 µs for the system call alone. A connection's
writer and reader are woken once per write and per receive already, so the checkpoint after
the call is only a second trip through the scheduler. :class:`DirectSocket` makes the system
call on the socket's descriptor at once, waits (``trio.lowlevel.wait_readable``) only when it
must, and hands anything it does not complete (a partial write, a closed socket) to the
stream's own method, which finishes it or raises as it always does.

Fairness: a reader whose every receive finds data would never yield; every
``MAX_DIRECT``-th receive in a row goes through the stream's own method, which checkpoints.
A writer completes only answers already queued, so it waits (and yields) once they are
written.
"""

from __future__ import annotations

import errno
import os
from typing import NoReturn

import trio

MAX_DIRECT = 16
"""Receives in a row completed without yielding, at most, before one that checkpoints."""
AVAILABLE = os.name == "posix"
"""A socket is a file descriptor that ``os.read`` and ``os.write`` take (not on Windows)."""


def direct_io(stream: trio.abc.Stream) -> trio.abc.Stream | DirectSocket:
    """A :class:`DirectSocket` for a plain TCP stream on POSIX; any other stream (TLS, in
    memory) as it is: its own calls."""
    if AVAILABLE and type(stream) is trio.SocketStream:
        return DirectSocket(stream)
    return stream


class DirectSocket:
    """The send and receive calls of one ``trio.SocketStream`` (see the module's docstring)."""

    __slots__ = ("_drained", "_sending", "_socket", "_streak", "_stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._socket = stream.socket
        self._streak = 0
        self._drained = False
        """The last read took less than it asked for: the socket had nothing more then."""
        self._sending = False
        """A send waits in the stream's own ``send_all``: another may not write meanwhile."""

    async def receive_some(self, max_bytes: int) -> bytes:
        """As ``SocketStream.receive_some``: at least one byte, or b"" at end of stream."""
        socket = self._socket
        if self._streak < MAX_DIRECT:
            if self._drained and socket.fileno() != -1:
                # The last read emptied the socket: wait for more before trying (a read
                # now would most often find nothing: one system call saved per receive).
                self._drained = False
                self._streak = 0
                await trio.lowlevel.wait_readable(socket)  # (raises if closed meanwhile)
            while (fd := socket.fileno()) != -1:
                try:
                    data = os.read(fd, max_bytes)
                except BlockingIOError:
                    self._streak = 0
                    await trio.lowlevel.wait_readable(socket)
                    continue
                except OSError as exc:
                    _raise_stream_error(exc)
                self._streak += 1
                self._drained = len(data) < max_bytes
                return data
        self._streak = 0
        return await self._stream.receive_some(max_bytes)  # (a closed socket: it raises)

    def send_now(self, data: bytes | memoryview) -> int:
        """Write what the socket takes at once, without waiting or yielding: how many bytes
        it took (0: none, the socket is full, closed or broken; :meth:`send_all` of the rest
        then waits, or raises what the stream raises). Refused while a send waits."""
        if self._sending:
            raise trio.BusyResourceError("another task is writing to this connection")
        fd = self._socket.fileno()
        if fd == -1:
            return 0
        try:
            return os.write(fd, data)
        except OSError:  # (full: BlockingIOError; broken: send_all raises it as the stream does)
            return 0

    async def send_all(self, data: bytes) -> None:
        """As ``SocketStream.send_all``."""
        if self._sending:
            raise trio.BusyResourceError("another task is writing to this connection")
        fd = self._socket.fileno()
        if fd != -1 and data:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                _raise_stream_error(exc)
            if sent == len(data):
                return
            if sent:
                data = memoryview(data)[sent:]  # type: ignore[assignment]
        self._sending = True
        try:
            await self._stream.send_all(data)
        finally:
            self._sending = False


def _raise_stream_error(exc: OSError) -> NoReturn:
    """The error ``SocketStream`` raises for a failed system call."""
    if exc.errno == errno.EBADF:
        raise trio.ClosedResourceError("this socket was already closed") from None
    raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
