"""A fault-injecting TCP proxy, to put in front of a broker process and partition it.

Brokers dial each other at the addresses they advertise, so a broker started with
``--port REAL --advertise-port PROXY`` is reached by its peers (and by clients that learn the
topology from ``CLUSTER_QUERY``) through the proxy listening on ``PROXY``::

    proxy = FaultProxy(target_port=REAL)
    await nursery.start(proxy.serve)          # proxy.port is now listening
    proxy.set_fault("B-AAAAA", up=DROP, down=DROP)   # B-AAAAA cannot reach this broker
    proxy.heal()                              # everything flows again

**Who is talking.** The proxy reads the first frame of every connection before it forwards
anything: a ``PEER_HELLO`` (or ``JOIN_CLUSTER``) names the broker that dialed, every other first
frame makes the connection a ``"client"`` one. Faults are set per source: a broker id,
``"client"``, or ``"*"`` for any source without a rule of its own. Since every broker's peer
stream to another is a connection *it* dials into the other's proxy, the link A -> B is "B's
proxy, source A, direction up"; a full partition of A and B is a rule on both proxies. Other
request/response connections between brokers (``DATA_SYNC_REQUEST`` snapshot fetches) carry no
broker id and count as clients.

**Directions.** ``up`` is what the connecting side sends to the broker; ``down`` is what the
broker sends back. Faults per direction:

- ``DROP``: bytes are read and thrown away, like a firewall dropping packets. TCP never loses
  bytes in the middle of a stream, so a connection that lost any is *poisoned*: it is closed
  when its fault is healed (the way a real connection dies of a timeout after a long
  partition) rather than resumed with a hole in it. A new connection whose ``up`` is dropped
  is never forwarded to the broker (its connect would hang in a real partition).
- ``Fault(delay=s)``: every chunk waits ``s`` seconds before it is forwarded, in order.

:meth:`FaultProxy.cut` closes current connections (a reset link); :meth:`FaultProxy.pause`
closes the listening socket, so that new connections are refused as they are by a dead broker
(the chaos harness pauses a killed broker's proxy and resumes it with the restart: otherwise a
client would see "connected, then lost", an unknown outcome, where the real port says "refused",
which is a clean failure).

Every buffer is bounded (one 64 KiB chunk in flight per direction, plus the first frame, at
most ``max_first_frame`` bytes).
"""

from __future__ import annotations

import contextlib
import errno
import struct
from collections import Counter
from typing import Any

import attrs
import orjson
import trio

__all__ = ["ANY", "CLIENT", "DROP", "PASS", "Fault", "FaultProxy", "ProxyStatistics"]

CLIENT = "client"
ANY = "*"
_CHUNK = 65536
_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@attrs.frozen
class Fault:
    """What happens to one direction of a connection."""

    drop: bool = False
    delay: float = 0.0

    @property
    def passes(self) -> bool:
        return not self.drop and self.delay <= 0


PASS = Fault()
DROP = Fault(drop=True)


@attrs.frozen
class ProxyStatistics:
    accepted: int
    open_connections: int
    refused_upstream: int
    """Connections closed because the broker behind the proxy could not be reached."""
    bytes_forwarded: int
    bytes_dropped: int
    poisoned_closed: int
    cut: int
    sources: dict[str, int]
    """Connections accepted per source (broker id or ``"client"``)."""


@attrs.define(eq=False)
class _Connection:
    source: str
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    poisoned: bool = False


class FaultProxy:
    """A TCP proxy from ``host:port`` to ``target_host:target_port`` with per-source faults."""

    def __init__(
        self,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        target_host: str = "127.0.0.1",
        name: str = "proxy",
        max_first_frame: int = 16 * 1024 * 1024,
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        """The listening port; fixed once :meth:`serve` started (port 0 picks one then)."""
        self.name = name
        self.max_first_frame = max_first_frame
        self._faults: dict[str, tuple[Fault, Fault]] = {}
        self._connections: set[_Connection] = set()
        self._accepting = True
        self._wake = trio.Event()
        self._listen_scope: trio.CancelScope | None = None
        self._listening = trio.Event()
        self._counts: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<FaultProxy {self.name} :{self.port} -> {self.target[1]}>"

    # -- faults ---------------------------------------------------------------------------------

    def set_fault(self, source: str, *, up: Fault = PASS, down: Fault = PASS) -> None:
        """Apply faults to traffic from ``source`` (a broker id, ``"client"`` or ``"*"``).

        Existing connections are affected at once. Setting both directions to ``PASS`` is the
        same as :meth:`clear` for that source.
        """
        if up.passes and down.passes:
            self.clear(source)
        else:
            self._faults[source] = (up, down)

    def clear(self, source: str) -> None:
        """Lift ``source``'s faults; close its poisoned connections."""
        self._faults.pop(source, None)
        self._close_poisoned()

    def heal(self) -> None:
        """Lift every fault; close every poisoned connection."""
        self._faults.clear()
        self._close_poisoned()

    def fault_for(self, source: str) -> tuple[Fault, Fault]:
        return self._faults.get(source) or self._faults.get(ANY) or (PASS, PASS)

    @property
    def faulty(self) -> bool:
        return bool(self._faults)

    def cut(self, source: str | None = None) -> int:
        """Close the current connections from ``source`` (all of them if None); returns how
        many."""
        victims = [c for c in self._connections if source is None or c.source == source]
        for connection in victims:
            connection.scope.cancel()
        self._counts["cut"] += len(victims)
        return len(victims)

    def _close_poisoned(self) -> None:
        for connection in list(self._connections):
            up, down = self.fault_for(connection.source)
            if connection.poisoned and up.passes and down.passes:
                connection.scope.cancel()
                self._counts["poisoned_closed"] += 1

    # -- accepting ------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop listening: new connections are refused until :meth:`resume`. Open connections
        stay (use :meth:`cut`)."""
        self._accepting = False
        self._wake = trio.Event()
        self._listening = trio.Event()
        if self._listen_scope is not None:
            self._listen_scope.cancel()

    async def resume(self) -> None:
        """Listen again on the same port; returns once listening."""
        self._accepting = True
        self._wake.set()
        await self._listening.wait()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the proxy until cancelled; ``task_status.started`` gets the listening port."""
        async with trio.open_nursery() as nursery:
            try:
                started = False
                while True:
                    if not self._accepting:
                        await self._wake.wait()
                        continue
                    listener = await self._listen()
                    if not started:
                        task_status.started(self.port)
                        started = True
                    self._listening.set()
                    with trio.CancelScope() as self._listen_scope:
                        if not self._accepting:
                            self._listen_scope.cancel()
                        async with listener:
                            while True:
                                stream = await listener.accept()
                                nursery.start_soon(self._handle, stream)
                    self._listen_scope = None
            finally:
                nursery.cancel_scope.cancel()

    async def _listen(self) -> trio.SocketListener:
        # Rebinding right after a close can briefly fail; a bounded number of tries.
        for attempt in range(50):
            try:
                listeners = await trio.open_tcp_listeners(self.port, host=self.host)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self.port == 0 or attempt == 49:
                    raise
                await trio.sleep(0.1)
                continue
            listener = listeners[0]
            for extra in listeners[1:]:
                await extra.aclose()
            self.port = listener.socket.getsockname()[1]
            return listener
        raise AssertionError("unreachable")  # pragma: no cover

    # -- one connection -------------------------------------------------------------------------

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self._counts["accepted"] += 1
        connection = _Connection(source=CLIENT)
        try:
            with connection.scope:
                first = await self._first_frame(downstream)
                connection.source = _classify(first)
                self._sources[connection.source] += 1
                self._connections.add(connection)
                up, _ = self.fault_for(connection.source)
                if up.drop:
                    # Partitioned at connect time: the broker never hears of it.
                    connection.poisoned = True
                    self._counts["bytes_dropped"] += len(first)
                    await self._discard(downstream)
                    return
                try:
                    upstream = await trio.open_tcp_stream(*self.target)
                except OSError:
                    self._counts["refused_upstream"] += 1
                    _reset(downstream)
                    return
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, connection, downstream, upstream, 0, first)
                    nursery.start_soon(self._pump, connection, upstream, downstream, 1, b"")
        except _CLOSED:
            pass
        finally:
            self._connections.discard(connection)
            await trio.aclose_forcefully(downstream)

    async def _first_frame(self, stream: trio.SocketStream) -> bytes:
        """The bytes of the first frame (or whatever arrived before the stream ended)."""
        data = b""
        needed = 4
        while len(data) < needed:
            chunk = await stream.receive_some(_CHUNK)
            if not chunk:
                return data
            data += chunk
            if needed == 4 and len(data) >= 4:
                (length,) = struct.unpack(">I", data[:4])
                if length > self.max_first_frame:
                    return data  # not ours to judge: forward it as it is
                needed = 4 + length
        return data

    async def _discard(self, stream: trio.SocketStream) -> None:
        while True:
            chunk = await stream.receive_some(_CHUNK)
            if not chunk:
                return
            self._counts["bytes_dropped"] += len(chunk)

    async def _pump(
        self,
        connection: _Connection,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        direction: int,
        initial: bytes,
    ) -> None:
        data = initial
        try:
            while True:
                if data:
                    fault = self.fault_for(connection.source)[direction]
                    if fault.drop:
                        connection.poisoned = True
                        self._counts["bytes_dropped"] += len(data)
                    else:
                        if fault.delay > 0:
                            await trio.sleep(fault.delay)
                        await sink.send_all(data)
                        self._counts["bytes_forwarded"] += len(data)
                data = await source.receive_some(_CHUNK)
                if not data:
                    break
            with contextlib.suppress(*_CLOSED):
                await sink.send_eof()
        except _CLOSED:
            # One side is gone: so is the whole connection.
            connection.scope.cancel()

    def statistics(self) -> ProxyStatistics:
        c = self._counts
        return ProxyStatistics(
            accepted=c["accepted"],
            open_connections=len(self._connections),
            refused_upstream=c["refused_upstream"],
            bytes_forwarded=c["bytes_forwarded"],
            bytes_dropped=c["bytes_dropped"],
            poisoned_closed=c["poisoned_closed"],
            cut=c["cut"],
            sources=dict(self._sources),
        )


def _classify(first: bytes) -> str:
    """The broker that opened a connection, from its first frame; ``"client"`` otherwise."""
    try:
        request: Any = orjson.loads(first[4:])
    except orjson.JSONDecodeError:
        return CLIENT
    if (
        isinstance(request, dict)
        and request.get("operation") in ("PEER_HELLO", "JOIN_CLUSTER")
        and isinstance(request.get("broker_id"), str)
    ):
        return request["broker_id"]
    return CLIENT


def _reset(stream: trio.SocketStream) -> None:
    """Make the close an RST, as a refused connection would be, rather than a clean EOF."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(
            trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
