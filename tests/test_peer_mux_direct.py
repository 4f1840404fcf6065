"""The peer links' socket calls (docs/performance-history.md, "The peer links' socket calls, and two
constructors"): on plain TCP, a link's writes and a peer stream's reads are made at once
(``_runtime/_direct.py``), not through ``trio.SocketStream``'s own calls; on TLS they stay the
stream's. Real sockets on 127.0.0.1: every message arrives, in order, either way."""

from __future__ import annotations

import collections
import ssl
from collections.abc import Awaitable, Callable

import trio
import trio.testing
import trustme

from tests.wire import serve_one_peer
from trio_broker._core import _raft_messages as rm
from trio_broker._runtime._peer_mux import PeerMux

HOME = "G-HOME0"
MESSAGES = 12  # (fewer than MAX_DIRECT reads in a row: none of them need checkpoint)


def _counting(monkeypatch, calls: collections.Counter[str], cls: type, name: str) -> None:
    original = getattr(cls, name)

    async def counted(self, *args, **kwargs):
        calls[f"{cls.__name__}.{name}"] += 1
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)


async def _until(predicate: Callable[[], bool]) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(0.005)


async def _link_to_a_peer(
    wrap_server: Callable[[trio.SocketStream], trio.abc.Stream],
    connect: Callable[[str, int], Awaitable[trio.abc.Stream]],
    calls: collections.Counter[str],
) -> tuple[list[rm.Message], collections.Counter[str]]:
    """A mux sends ``MESSAGES`` heartbeats, one per loop turn, to a peer that reads them with
    :func:`read_peer_stream`; the calls counted while they flowed, and what arrived."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    received: list[rm.Message] = []
    handshaken = trio.Event()
    before: collections.Counter[str] = collections.Counter()

    with trio.fail_after(20):
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(serve_one_peer, listener, received, handshaken, wrap_server)
            mux = PeerMux("B-1", HOME, nursery, ("127.0.0.1", 1), connect, dead_after=5.0)
            links = mux.register(HOME, lambda _peer: ("127.0.0.1", port))
            links.ensure({"B-2"})
            await handshaken.wait()
            await _until(lambda: mux.statistics().links[0].connected)
            await trio.testing.wait_all_tasks_blocked()
            before.update(calls)  # (the handshake's calls, and the link's watch for a close)
            for commit in range(MESSAGES):
                links.send(
                    rm.Heartbeat(src="B-1", dst="B-2", term=1, cluster_version=1, commit=commit)
                )
                await _until(lambda: len(received) > commit)  # noqa: B023 (awaited here)
            nursery.cancel_scope.cancel()
    return received, calls - before


async def test_a_tcp_links_writes_and_reads_skip_the_streams_own_calls(monkeypatch):
    calls: collections.Counter[str] = collections.Counter()
    _counting(monkeypatch, calls, trio.SocketStream, "send_all")
    _counting(monkeypatch, calls, trio.SocketStream, "receive_some")
    received, during = await _link_to_a_peer(lambda s: s, trio.open_tcp_stream, calls)
    assert [m.commit for m in received] == list(range(MESSAGES))
    # Each message was a write and a read of its own, none through SocketStream's calls.
    assert during["SocketStream.send_all"] == 0, during
    assert during["SocketStream.receive_some"] == 0, during


async def test_a_tls_links_writes_and_reads_stay_the_streams_own(monkeypatch):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def connect(host: str, port: int) -> trio.abc.Stream:
        return trio.SSLStream(
            await trio.open_tcp_stream(host, port), client_context, server_hostname=host
        )

    calls: collections.Counter[str] = collections.Counter()
    _counting(monkeypatch, calls, trio.SSLStream, "send_all")
    _counting(monkeypatch, calls, trio.SSLStream, "receive_some")
    received, during = await _link_to_a_peer(
        lambda s: trio.SSLStream(s, server_context, server_side=True), connect, calls
    )
    assert [m.commit for m in received] == list(range(MESSAGES))
    assert during["SSLStream.send_all"] >= MESSAGES, during
    assert during["SSLStream.receive_some"] >= MESSAGES, during
