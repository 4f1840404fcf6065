"""How a broker reaches the world: TCP by default; an in-memory network in tests.

Everything the runtime opens goes through a :class:`Network`, so the same broker code runs over
real sockets or over ``trio_broker.testing``'s simulated network under a mock clock.
"""

from __future__ import annotations

from typing import Protocol

import trio


class Network(Protocol):
    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """Open a stream to ``host:port``; raises OSError when it cannot."""
        ...

    async def listen(self, host: str, port: int) -> tuple[list[trio.abc.Listener], int]:
        """Listen on ``host:port`` (port 0: any); returns the listeners and the port."""
        ...


class TcpNetwork:
    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    async def listen(self, host: str, port: int) -> tuple[list[trio.abc.Listener], int]:
        listeners = await trio.open_tcp_listeners(port, host=host)
        return list(listeners), listeners[0].socket.getsockname()[1]


TCP = TcpNetwork()
