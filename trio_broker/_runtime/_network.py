"""How a broker reaches the world: TCP by default; an in-memory network in tests.

Everything the runtime opens goes through a :class:`Network`, so the same broker code runs over
real sockets or over ``trio_broker.testing``'s simulated network under a mock clock.
"""

from __future__ import annotations

import ssl
from typing import Any, Protocol

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


class TlsHandshakeFailed(ConnectionError):
    """The TLS handshake with a broker failed (most often: its certificate was not trusted)."""


class TlsNetwork:
    """TLS over another network: what it listens on speaks TLS with ``server_context``; what
    it dials is checked against ``client_context`` (the CA and the host name dialed)."""

    def __init__(
        self, inner: Network, server_context: ssl.SSLContext, client_context: ssl.SSLContext
    ) -> None:
        self.inner = inner
        self.server_context = server_context
        self.client_context = client_context

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        stream = await self.inner.connect(host, port)
        tls = trio.SSLStream(stream, self.client_context, server_hostname=host)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await trio.aclose_forcefully(stream)
            reason = exc.__cause__ or exc
            raise TlsHandshakeFailed(f"TLS handshake with {host}:{port} failed: {reason}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    async def listen(self, host: str, port: int) -> tuple[list[trio.abc.Listener], int]:
        listeners, bound = await self.inner.listen(host, port)
        return [trio.SSLListener(listener, self.server_context) for listener in listeners], bound


def transport_socket(stream: trio.abc.Stream) -> Any:
    """The socket under a stream (through TLS), or None (an in-memory stream)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return getattr(stream, "socket", None)
