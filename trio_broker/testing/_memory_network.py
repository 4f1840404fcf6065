"""An in-memory network, to run real brokers under a mock clock (with
:mod:`._memory_store`'s store).

:class:`MemoryNetwork` and :func:`~._memory_store.open_memory_storage` plug into the seams of
:func:`~trio_broker._runtime.open_broker` (``network=`` and ``storage=``): the broker's own
tasks (listener, heartbeats, failure detector, elector, replicators) run unchanged, but bytes
move through memory and the disk is a dict, so nothing ever leaves the trio thread. That is what
makes pytest-trio's ``autojump_clock`` usable: virtual time jumps only when every task waits,
and no worker thread can be mid-fsync when it does (trio issue #456, STYLE.md "Traps").

The network's faults model what TCP applications see:

- ``isolate``/``partition`` cut links both ways *and break the streams on them*, as when the
  kernel resets a connection: blocked readers and writers on both ends wake at once with
  :class:`trio.BrokenResourceError`, and new connections fail with :class:`OSError`.
- ``block(src, dst)`` is one-way: bytes from ``src`` to ``dst`` (including EOF) are held back,
  as packets lost and retransmitted, while ``dst`` to ``src`` still flows. Bytes are never
  dropped from the middle of a stream (TCP never does that; framing would be corrupted): they
  arrive once the block is healed, unless the connection is gone by then. A new connection
  needs both directions, so ``connect`` fails either way while a block stands.
- a host that is killed (its process crashed) refuses connections on its ports, and the
  streams it had are closed as the kernel closes a dead process's sockets: its peers read what
  it had sent, then EOF, and their writes fail.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Iterable
from typing import Any

import trio

LOCALHOST = "127.0.0.1"
FIRST_PORT = 20001
FIRST_EPHEMERAL_PORT = 40001
PIPE_CAPACITY = 4 * 1024 * 1024
"""Bytes one direction of a connection holds unread (a socket's buffers) before ``send_all``
waits. One write is never split: it is accepted whole when the buffer is below this."""
_WILDCARDS = ("", "0.0.0.0", "::")
BACKLOG = 128
"""Connections a listener holds before accepting them; more are refused."""


# -- streams ---------------------------------------------------------------------------------


class _Pipe:
    """One direction of a connection."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data = bytearray()
        self.eof = False
        """The writer closed or sent EOF (a FIN in the pipe, after the data)."""
        self.broken = False
        """The connection was reset: both ends see BrokenResourceError."""
        self.reader_gone = False
        """The reading end is closed: further writes fail."""
        self.held = False
        """A one-way block holds this direction: nothing (not even EOF) reaches the reader."""
        self.lot = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        self.lot.unpark_all()


class MemoryStream(trio.abc.HalfCloseableStream):
    """One end of an in-memory connection; ``peer_name`` names the other end for logs."""

    def __init__(self, connection: _Connection, outgoing: _Pipe, incoming: _Pipe, peer: str):
        self._connection = connection
        self._out = outgoing
        self._in = incoming
        self.peer_name = peer
        self._closed = False
        self._sending = False
        self._receiving = False

    @property
    def connection(self) -> _Connection:
        return self._connection

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # One sender at a time, until there is room; nothing awaits between that and the write.
        await self.wait_send_all_might_not_block()
        self._out.data += data
        self._out.wake()

    def write_some(self, data: bytes | bytearray | memoryview) -> int:
        """A non-blocking write, as ``os.write`` on a socket: the bytes taken at once (all of
        them when there is room, as ``send_all`` never splits a write), else 0 (the stream
        is busy, full, closed or broken: the caller's ``send_all`` then waits, or raises).
        What a peer link's ``write_now`` writes with on a memory stream."""
        pipe = self._out
        if (
            self._sending
            or self._closed
            or pipe.broken
            or pipe.eof
            or pipe.reader_gone
            or len(pipe.data) >= pipe.capacity
        ):
            return 0
        pipe.data += data
        pipe.wake()
        self._connection.network.written_at_once += 1
        return len(data)

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            await self._wait_writable()
        finally:
            self._sending = False

    async def _wait_writable(self) -> None:
        pipe = self._out
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            if pipe.broken:
                raise trio.BrokenResourceError("connection reset (the link was cut)")
            if pipe.eof:
                raise trio.ClosedResourceError("EOF was already sent on this stream")
            if pipe.reader_gone:
                raise trio.BrokenResourceError("connection reset by peer")
            if len(pipe.data) < pipe.capacity:
                return
            await pipe.lot.park()

    async def send_eof(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        await trio.lowlevel.checkpoint()
        if self._out.broken:
            raise trio.BrokenResourceError("connection reset (the link was cut)")
        self._out.eof = True
        self._out.wake()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            pipe = self._in
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed")
                if pipe.broken:
                    raise trio.BrokenResourceError("connection reset (the link was cut)")
                if not pipe.held:
                    if pipe.data:
                        n = len(pipe.data) if max_bytes is None else min(max_bytes, len(pipe.data))
                        chunk = bytes(pipe.data[:n])
                        del pipe.data[:n]
                        pipe.wake()  # a writer may wait for room
                        return chunk
                    if pipe.eof:
                        return b""
                await pipe.lot.park()
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close at once (synchronous; ``aclose`` is this plus a checkpoint)."""
        if self._closed:
            return
        self._closed = True
        self._out.eof = True
        self._in.reader_gone = True
        self._in.data.clear()
        self._out.wake()
        self._in.wake()
        self._connection._end_closed()


class _Connection:
    def __init__(
        self,
        network: MemoryNetwork,
        client: str,
        server: str,
        client_address: tuple[str, int],
        server_address: tuple[str, int],
    ) -> None:
        self.network = network
        self.client = client
        self.server = server
        self.upstream = _Pipe(network.pipe_capacity)  # client -> server
        self.downstream = _Pipe(network.pipe_capacity)  # server -> client
        self.client_stream = MemoryStream(
            self,
            self.upstream,
            self.downstream,
            f"{server}@{server_address[0]}:{server_address[1]}",
        )
        self.server_stream = MemoryStream(
            self,
            self.downstream,
            self.upstream,
            f"{client}@{client_address[0]}:{client_address[1]}",
        )
        self._open_ends = 2

    @property
    def broken(self) -> bool:
        return self.upstream.broken

    def reset(self) -> None:
        """The link is cut: both ends wake with BrokenResourceError; unread bytes are lost."""
        for pipe in (self.upstream, self.downstream):
            pipe.broken = True
            pipe.data.clear()
            pipe.wake()
        self.network._connections.discard(self)

    def refresh(self) -> None:
        self.upstream.held = self.network._held(self.client, self.server)
        self.downstream.held = self.network._held(self.server, self.client)
        self.upstream.wake()
        self.downstream.wake()

    def _end_closed(self) -> None:
        self._open_ends -= 1
        if self._open_ends == 0:
            self.network._connections.discard(self)


class MemoryListener(trio.abc.Listener[MemoryStream]):
    """Accepts the connections a :class:`MemoryNetwork` routes to its port."""

    def __init__(self, network: MemoryNetwork, owner: str, host: str, port: int) -> None:
        self.network = network
        self.owner = owner
        self.host = host
        self.port = port
        self._pending: deque[MemoryStream] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    async def accept(self) -> MemoryStream:
        await trio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this listener was closed")
            if self._pending:
                return self._pending.popleft()
            await self._lot.park()

    def _offer(self, stream: MemoryStream) -> bool:
        if self._closed or len(self._pending) >= BACKLOG:
            return False
        self._pending.append(stream)
        self._lot.unpark_all()
        return True

    def _drop_pending(self) -> None:
        while self._pending:
            self._pending.popleft().connection.reset()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.network._unregister(self)
            self._drop_pending()
            self._lot.unpark_all()
        await trio.lowlevel.checkpoint()


# -- the network -----------------------------------------------------------------------------


class MemoryHost:
    """One host's view of a :class:`MemoryNetwork`: a ``Network`` for ``open_broker``, whose
    connections come from this host."""

    def __init__(self, network: MemoryNetwork, name: str) -> None:
        self.network = network
        self.name = name

    async def connect(self, host: str, port: int) -> MemoryStream:
        return await self.network._connect(self.name, host, port)

    async def listen(self, host: str, port: int) -> tuple[list[trio.abc.Listener], int]:
        await trio.lowlevel.checkpoint()
        listener = self.network._listen(self.name, host, port)
        return [listener], listener.port

    def __repr__(self) -> str:
        return f"<MemoryHost {self.name}>"


class MemoryNetwork:
    """Hosts by name, ports allocated by the network, and the faults between them.

    Every host listens on ``127.0.0.1``; ports are unique across the whole network, so
    ``("127.0.0.1", port)`` names one listener. ``host(name)`` is the ``Network`` a broker on
    that host uses. Faults last until :meth:`heal`.
    """

    def __init__(self, *, pipe_capacity: int = PIPE_CAPACITY) -> None:
        self.pipe_capacity = pipe_capacity
        self._hosts: dict[str, MemoryHost] = {}
        self._listeners: dict[int, MemoryListener] = {}
        self._connections: set[_Connection] = set()
        self._next_port = FIRST_PORT
        self._next_ephemeral = FIRST_EPHEMERAL_PORT
        self._isolated: set[str] = set()
        self._partitions: list[tuple[frozenset[str], frozenset[str]]] = []
        self._blocked: set[tuple[str, str]] = set()
        self._down: set[str] = set()
        self.refused = 0
        """Connection attempts that failed (no listener, or a fault in the way)."""
        self.written_at_once = 0
        """Writes a stream's :meth:`~MemoryStream.write_some` took (a peer link's
        ``write_now``, from the task that sent: no wake-up of the link's writer)."""

    def host(self, name: str) -> MemoryHost:
        found = self._hosts.get(name)
        if found is None:
            found = self._hosts[name] = MemoryHost(self, name)
        return found

    # -- faults ------------------------------------------------------------------------------

    def isolate(self, name: str) -> None:
        """Cut ``name`` off from every other host, both ways; its streams break."""
        self._isolated.add(name)
        self._refresh()

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """No traffic between the two groups, either way; streams across break. Hosts in
        neither group (a client, say) still reach both."""
        a, b = frozenset(group_a), frozenset(group_b)
        if a & b:
            raise ValueError(f"a host cannot be on both sides of a partition: {sorted(a & b)}")
        self._partitions.append((a, b))
        self._refresh()

    def block(self, src: str, dst: str) -> None:
        """Hold back traffic from ``src`` to ``dst``; ``dst`` to ``src`` still flows on
        existing connections. New connections between them fail."""
        self._blocked.add((src, dst))
        self._refresh()

    def heal(self) -> None:
        """Undo every isolate, partition and block (not kills). Held bytes are delivered."""
        self._isolated.clear()
        self._partitions.clear()
        self._blocked.clear()
        self._refresh()

    def kill(self, name: str) -> None:
        """The process on ``name`` died: the kernel closes its sockets (its peers read what
        was already sent, then EOF; their writes fail) and its ports refuse connections."""
        self._down.add(name)
        for port, listener in list(self._listeners.items()):
            if listener.owner == name:
                del self._listeners[port]
                listener._drop_pending()
        for connection in list(self._connections):
            if connection.client == name:
                connection.client_stream.close()
            if connection.server == name:
                connection.server_stream.close()

    def revive(self, name: str) -> None:
        """A new process may run on ``name`` (it must listen again)."""
        self._down.discard(name)

    def severed(self, a: str, b: str) -> bool:
        """Whether isolate/partition cut ``a`` and ``b`` apart (both ways)."""
        if a == b:
            return False
        if a in self._isolated or b in self._isolated:
            return True
        return any((a in x and b in y) or (a in y and b in x) for x, y in self._partitions)

    def _held(self, src: str, dst: str) -> bool:
        return (src, dst) in self._blocked

    def can_send(self, src: str, dst: str) -> bool:
        """Whether bytes from ``src`` currently reach ``dst`` (both hosts up)."""
        if src in self._down or dst in self._down:
            return False
        return not self.severed(src, dst) and not self._held(src, dst)

    def reachable(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` can talk both ways (and open new connections)."""
        return self.can_send(a, b) and self.can_send(b, a)

    def _refresh(self) -> None:
        for connection in list(self._connections):
            if self.severed(connection.client, connection.server):
                connection.reset()
            else:
                connection.refresh()

    def statistics(self) -> dict[str, Any]:
        return {
            "connections": len(self._connections),
            "listeners": {port: lst.owner for port, lst in self._listeners.items()},
            "isolated": sorted(self._isolated),
            "partitions": [(sorted(a), sorted(b)) for a, b in self._partitions],
            "blocked": sorted(self._blocked),
            "down": sorted(self._down),
            "refused": self.refused,
        }

    # -- the Network protocol, per host ------------------------------------------------------

    def _listen(self, owner: str, host: str, port: int) -> MemoryListener:
        if owner in self._down:
            raise OSError(errno.ENETDOWN, f"host {owner} is down")
        if port == 0:
            while self._next_port in self._listeners:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        elif port in self._listeners:
            raise OSError(
                errno.EADDRINUSE, f"port {port} is in use by {self._listeners[port].owner}"
            )
        listener = self._listeners[port] = MemoryListener(self, owner, host, port)
        return listener

    def _unregister(self, listener: MemoryListener) -> None:
        if self._listeners.get(listener.port) is listener:
            del self._listeners[listener.port]

    async def _connect(self, src: str, host: str, port: int) -> MemoryStream:
        await trio.lowlevel.checkpoint()
        if src in self._down:
            raise OSError(errno.ENETDOWN, f"host {src} is down")
        listener = self._listeners.get(port)
        if listener is not None and listener.host not in _WILDCARDS and listener.host != host:
            listener = None  # listening on another address
        if listener is None:
            self.refused += 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens on {host}:{port}")
        dst = listener.owner
        if not self.reachable(src, dst):
            self.refused += 1
            raise OSError(errno.EHOSTUNREACH, f"{src} cannot reach {dst} ({host}:{port})")
        ephemeral = self._next_ephemeral
        self._next_ephemeral += 1
        connection = _Connection(self, src, dst, (LOCALHOST, ephemeral), (host, port))
        if not listener._offer(connection.server_stream):
            self.refused += 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{host}:{port}: backlog full")
        self._connections.add(connection)
        connection.refresh()
        return connection.client_stream


# -- storage ---------------------------------------------------------------------------------


__all__ = ["MemoryHost", "MemoryListener", "MemoryNetwork", "MemoryStream"]
