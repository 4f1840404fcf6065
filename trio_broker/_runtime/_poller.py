"""The plain-TCP client connections' receives, watched by one task of the broker's own: a
receive that is one whole APPEND decided at once is served without waking its connection's task.

Why: at one request in flight per connection, every request cost the leader a trip through
trio's wait for its socket (``wait_readable`` registers ``EPOLLONESHOT``: an ``EPOLL_CTL_MOD``
re-arm per request, then ``process_events``, the task's reschedule and its step). Here the
sockets stay registered in one ``select.epoll`` of ours, edge-triggered, for the connection's
life; :class:`Poller`'s task waits through trio for that epoll's own descriptor, takes every
ready connection at once (``epoll.poll(0)``) and reads each: a receive its connection's
``fast`` callable takes whole (one frame holding an APPEND ``Runs.lone_append`` decides at
once) is done there; anything else is handed to the connection's task, which goes on as if its
own receive had returned it (docs/performance-history.md, "A connection poller of our own
(tenth round)").

Edge-triggered: an event comes whenever bytes arrive, not while they wait unread. A
connection's task reads by itself while it holds the socket (its last read filled the buffer,
or an event came while it was busy: ``_ready``) and parks with the poller only once a read
found nothing new to expect; every byte that arrives after a read makes an event, so none is
missed. A read that finds nothing (an event for bytes a read took already) just leaves it
parked.

Fairness: one turn takes at most ``MAX_EVENTS`` connections, then waits through trio again
(every other task runs between turns); a connection's task that reads ``MAX_DIRECT`` times in
a row without parking checkpoints, as :class:`~._direct.DirectSocket` does.

Lifetime: a socket is unregistered (:meth:`PolledSocket.detach`) before its stream closes,
by the connection that registered it. When the poller's task ends (cancelled with the
connections, or failing: then it takes the broker down through its nursery), every parked
connection is woken to wait through trio instead, and no socket is registered any more.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
from collections.abc import Callable
from typing import Any

import outcome
import trio

from ._direct import AVAILABLE as DIRECT_AVAILABLE
from ._direct import MAX_DIRECT, DirectSocket, _raise_stream_error

AVAILABLE = DIRECT_AVAILABLE and hasattr(select, "epoll")
"""Linux: an epoll of our own (elsewhere every connection waits through trio)."""
MAX_EVENTS = 64
"""Connections a turn of the poller serves at most before it yields to every other task."""
_RECEIVE_SIZE = 64 * 1024
"""What a parked task asks for, before it first parks (the connection's own receive size)."""
_EVENTS = select.EPOLLIN | select.EPOLLET if AVAILABLE else 0


class Poller:
    """One broker's epoll of plain-TCP client sockets and the task that serves it."""

    __slots__ = ("_epoll", "_polled", "running", "served")

    def __init__(self) -> None:
        self._epoll: Any = None
        self._polled: dict[int, PolledSocket] = {}
        self.served = 0
        """Receives served whole by the poller (its connection's task not woken)."""
        self.running = False
        """The task serves the epoll: a connection may register (else it waits through trio)."""

    def register(self, polled: PolledSocket) -> bool:
        """Watch ``polled``'s socket; False (not watched) when the poller is not running."""
        if not self.running:
            return False
        fd = polled.fd
        self._epoll.register(fd, _EVENTS)
        self._polled[fd] = polled
        return True

    def unregister(self, polled: PolledSocket) -> None:
        """Stop watching ``polled``'s socket (before it closes: a closed descriptor's number
        may be another socket's next)."""
        fd = polled.fd
        if self._polled.get(fd) is polled:
            del self._polled[fd]
            if self.running:
                with contextlib.suppress(OSError):  # (closed already: the kernel dropped it)
                    self._epoll.unregister(fd)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the epoll until cancelled (see the module's docstring)."""
        epoll = self._epoll = select.epoll()
        polled = self._polled
        self.running = True
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, _ in epoll.poll(0, MAX_EVENTS):
                    connection = polled.get(fd)
                    if connection is not None:
                        connection.ready()
        finally:
            self.running = False
            left, self._polled = list(polled.values()), {}
            trio.lowlevel.notify_closing(epoll)
            epoll.close()
            for connection in left:
                connection.orphan()


class PolledSocket(DirectSocket):
    """A :class:`~._direct.DirectSocket` whose waits for bytes are the :class:`Poller`'s."""

    __slots__ = ("_asked", "_poller", "_ready", "_task", "decoded", "fast", "fd", "lone_refused")

    def __init__(self, stream: trio.SocketStream, poller: Poller) -> None:
        super().__init__(stream)
        self._poller: Poller | None = poller
        self.fd = self._socket.fileno()
        self._task: trio.lowlevel.Task | None = None
        """The connection's task, parked until the poller reads for it."""
        self._asked = _RECEIVE_SIZE
        """What the parked task asked for (``max_bytes``): the poller reads no more."""
        self._ready = False
        """An event came while the task held the socket: bytes may be waiting."""
        self.fast: Callable[[bytes], bool] | None = None
        """Takes a receive whole at once (True), or leaves it untouched for the task (False);
        called only while the task is parked in :meth:`receive_some`."""
        self.lone_refused = False
        """``fast`` asked ``handle_lone`` about the receive it handed to the task, which
        answered None: the task's read loop does not ask again (once)."""
        self.decoded: tuple[bytes, Any] | None = None
        """(The receive handed to the task, its request): what ``fast`` decoded before it left
        the receive to the task, which takes the request instead of decoding it again."""
        if not poller.register(self):
            self._poller = None

    def detach(self) -> None:
        """Leave the poller (before the socket closes, or is handed to another reader):
        receives wait through trio from now on."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.unregister(self)

    async def receive_some(self, max_bytes: int) -> bytes:
        """As ``SocketStream.receive_some``: at least one byte, or b"" at end of stream."""
        if self._poller is None:
            return await DirectSocket.receive_some(self, max_bytes)
        if self._streak >= MAX_DIRECT:  # (fairness: see the module's docstring)
            self._streak = 0
            await trio.lowlevel.checkpoint()
        if self._ready or not self._drained:
            self._ready = False
            try:
                data = os.read(self.fd, max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                _raise_stream_error(exc)
            else:
                self._streak += 1
                self._drained = len(data) < max_bytes
                return data
        self._streak = 0
        self._asked = max_bytes
        self._task = trio.lowlevel.current_task()
        data = await trio.lowlevel.wait_task_rescheduled(self._abort)
        if data is None:  # (the poller stopped: wait through trio)
            return await DirectSocket.receive_some(self, max_bytes)
        return data  # type: ignore[no-any-return]

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def ready(self) -> None:
        """(The poller) bytes arrived: read them for the parked task, or tell the busy one."""
        task = self._task
        if task is None:
            self._ready = True
            return
        asked = self._asked
        try:
            data = os.read(self.fd, asked)
        except BlockingIOError:
            return  # (an event for bytes read already)
        except OSError as exc:
            self._task = None
            trio.lowlevel.reschedule(task, outcome.Error(_stream_error(exc)))
            return
        drained = self._drained = len(data) < asked
        fast = self.fast
        if data and drained and fast is not None:
            try:
                if fast(data):
                    self._poller.served += 1  # type: ignore[union-attr]  # (registered: set)
                    return
            except Exception as exc:  # (a bug: it ends this connection, as in its own task)
                self._task = None
                trio.lowlevel.reschedule(task, outcome.Error(exc))
                return
        self._task = None
        trio.lowlevel.reschedule(task, outcome.Value(data))

    def orphan(self) -> None:
        """(The poller, stopping) wait through trio from now on."""
        self._poller = None
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Value(None))


def _stream_error(exc: OSError) -> Exception:
    """The exception ``SocketStream`` raises for a failed read."""
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
