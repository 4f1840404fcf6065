"""Consensus messages between brokers: the outbound links to each peer, and the inbound stream.

Consensus messages are one-way: a broker sends to a peer over its own outbound connection, and
the peer answers over *its* outbound connection. Outbound, :class:`PeerFleet` keeps one
persistent, pipelined link per peer; inbound, a connection that opened with PEER_HELLO turns
into a stream of consensus messages (:func:`read_peer_stream`), never answered.

Each link has a bounded outbox; when it is full (the peer is slow or unreachable) messages are
dropped and counted, which the consensus protocol tolerates (the leader retransmits from its
progress tracking; elections retry).
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable

import attrs
import trio

from .._auth import authenticate
from .._core._commands import data_size
from .._core._raft_messages import Message
from .._errors import BrokerError, ProtocolError
from .._protocol import Done, FrameDecoder, PeerHello, decode_response, loads_object
from .._protocol._consensus import encode_message, message_from_obj
from .._protocol._framing import frame_header
from ._dial import UNREACHABLE
from ._log import log_event
from ._network import transport_socket

Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]

_LINK_ERRORS = (*UNREACHABLE, trio.ClosedResourceError)

OUTBOX_SIZE = 1024
OUTBOX_BYTES = 64 * 1024 * 1024
"""Approximate bytes of entry data queued for one peer before messages are dropped."""
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0


class _Link:
    def __init__(self, fleet: PeerFleet, peer_id: str) -> None:
        self.fleet = fleet
        self.peer_id = peer_id
        self.send_channel, self.receive_channel = trio.open_memory_channel[tuple[Message, int]](
            OUTBOX_SIZE
        )
        """Messages queued for the peer, each with its size as counted in ``queued_bytes``."""
        self.cancel_scope = trio.CancelScope()
        self.dropped = 0
        self.queued_bytes = 0
        self.connected = False

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        with self.cancel_scope:
            while True:
                address = self.fleet.address_of(self.peer_id)
                if address is None:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                failed = None
                try:
                    await self._connect_and_stream(*address)
                except* _LINK_ERRORS as group:
                    failed = group.exceptions[0]
                if self.connected:
                    log_event(
                        logging.WARNING, "peer.lost", peer=self.peer_id, error=type(failed).__name__
                    )
                    backoff = BACKOFF_MIN
                self.connected = False
                self._discard_queued()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _discard_queued(self) -> None:
        while True:
            try:
                self.receive_channel.receive_nowait()
            except trio.WouldBlock:
                break
            self.dropped += 1
        self.queued_bytes = 0

    async def _connect_and_stream(self, host: str, port: int) -> None:
        with trio.fail_after(self.fleet.dead_after):
            stream = await self.fleet.connect(host, port)
        _fail_when_unacknowledged(stream, self.fleet.dead_after)
        async with stream:
            hello = PeerHello(
                cluster_id=self.fleet.cluster_id,
                broker_id=self.fleet.self_id,
                to=self.peer_id,
                host=self.fleet.self_address[0],
                port=self.fleet.self_address[1],
                plaintext_port=self.fleet.plaintext_port,
            )
            with trio.fail_after(5):
                answer = await authenticate(
                    stream, FrameDecoder(), secret=self.fleet.secret, then=hello
                )
            refusal = decode_response(answer, Done)
            if isinstance(refusal, BrokerError):
                log_event(logging.ERROR, "peer.refused", peer=self.peer_id, reason=refusal.message)
                raise ConnectionError(f"peer refused: {refusal.message}")
            if not self.connected:
                log_event(logging.INFO, "peer.connected", peer=self.peer_id, host=host, port=port)
            self.connected = True
            async with trio.open_nursery() as nursery:
                # The peer never writes on this stream after the handshake; reading tells us
                # promptly when it goes away.
                nursery.start_soon(self._watch_close, stream)
                while True:
                    batch = [await self.receive_channel.receive()]
                    while len(batch) < 256:
                        try:
                            batch.append(self.receive_channel.receive_nowait())
                        except trio.WouldBlock:
                            break
                    parts = []
                    for message, size in batch:
                        self.queued_bytes -= size
                        payload = encode_message(message)
                        parts += (frame_header(len(payload)), payload)
                    await stream.send_all(b"".join(parts))  # (frames copied once, here)

    async def _watch_close(self, stream: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await stream.receive_some(4096):
                pass
        raise ConnectionError("peer closed the stream")


def _fail_when_unacknowledged(stream: trio.abc.Stream, seconds: float) -> None:
    """Make a silently partitioned link fail instead of waiting on TCP's retransmissions.

    The peer never writes on this stream, so a partition that drops packets without a reset
    would leave it "connected" while the kernel backs off its resends for minutes. With
    TCP_USER_TIMEOUT, data unacknowledged for ``seconds`` breaks the connection, and the link
    reconnects (once the partition heals) within its backoff.
    """
    sock = transport_socket(stream)
    if sock is None or not hasattr(socket, "TCP_USER_TIMEOUT"):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(seconds)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(seconds / 3)))


def _approximate_size(message: Message) -> int:
    """Bytes a message queued for a peer holds: its entries' payload bytes when the driver
    has encoded them already (as it does before sending new entries), else their data."""
    size = 256
    for entry in getattr(message, "entries", ()):
        encoded = entry.encoded
        size += 64 + (len(encoded) if encoded is not None else data_size(entry.payload))
    return size


class PeerFleet:
    """Links to every peer the consensus core sends to, created on first use."""

    def __init__(
        self,
        self_id: str,
        cluster_id: str,
        nursery: trio.Nursery,
        address_of: Callable[[str], tuple[str, int] | None],
        self_address: tuple[str, int],
        connect: Connect,
        dead_after: float = 3.0,
        *,
        secret: bytes | None = None,
        plaintext_port: int | None = None,
    ) -> None:
        self.self_id = self_id
        self.self_address = self_address
        self.dead_after = dead_after
        """Seconds without acknowledgement (or to connect) before a link is declared broken."""
        self.cluster_id = cluster_id
        self.address_of = address_of
        self.connect = connect
        self.secret = secret
        """Proved on every link before PEER_HELLO, when set (docs/security.md)."""
        self.plaintext_port = plaintext_port
        self._nursery = nursery
        self._links: dict[str, _Link] = {}

    def ensure(self, peers: set[str] | frozenset[str]) -> None:
        """Keep a link open to exactly these peers, so that a message (a vote request after
        a leader failure, say) finds its link already connected."""
        for peer in peers:
            self._link(peer)
        self.forget(peers)

    def _link(self, peer: str) -> _Link:
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = _Link(self, peer)
            self._nursery.start_soon(link.run)
        return link

    def send(self, message: Message) -> None:
        """Queue a message for its peer, or drop it: while the link is down (the protocol
        retransmits what matters once it is back, so queueing would only replay stale
        messages) and when the outbox is full."""
        peer = message.dst
        link = self._link(peer)
        size = _approximate_size(message)
        if link.connected and link.queued_bytes + size <= OUTBOX_BYTES:
            try:
                link.send_channel.send_nowait((message, size))
            except trio.WouldBlock:
                pass
            else:
                link.queued_bytes += size
                return
        link.dropped += 1
        if link.connected and math.log2(link.dropped).is_integer():
            log_event(logging.WARNING, "peer.outbox_full", peer=peer, dropped=link.dropped)

    def forget(self, keep: set[str] | frozenset[str]) -> None:
        """Close links to brokers that are no longer members."""
        for peer in list(self._links):
            if peer not in keep:
                self._links.pop(peer).cancel_scope.cancel()

    def statistics(self) -> PeerFleetStatistics:
        """The links' state now, one frozen snapshot."""
        return PeerFleetStatistics(
            tuple(
                PeerLinkStatistics(peer, link.connected, link.dropped)
                for peer, link in sorted(self._links.items())
            )
        )


@attrs.frozen
class PeerLinkStatistics:
    """One outbound link to a peer."""

    peer: str
    connected: bool
    dropped: int
    """Consensus messages dropped while the peer was unreachable or the outbox full."""


@attrs.frozen
class PeerFleetStatistics:
    """The outbound links of a broker at one instant (:meth:`PeerFleet.statistics`)."""

    links: tuple[PeerLinkStatistics, ...]
    """One per peer, by peer id."""

    def dropped(self, peer: str) -> int:
        """Messages dropped on the link to ``peer`` (0 without a link)."""
        return next((link.dropped for link in self.links if link.peer == peer), 0)

    @property
    def any_connected(self) -> bool:
        return any(link.connected for link in self.links)


PEER_FRAME_FACTOR = 80
"""A peer stream's frames may carry a batch of entries, each up to a client frame in size."""
_RECEIVE_SIZE = 64 * 1024


async def read_peer_stream(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    step: Callable[[Message], None],
    *,
    peer: str,
    sender: str,
    self_id: str,
    max_frame: int,
) -> bool:
    """After PEER_HELLO: one-way consensus messages from ``sender`` to ``self_id``, each
    handed to ``step``. True when the peer closed the stream, False when a bad message made
    us stop reading (the caller closes the connection)."""
    decoder.max_frame = max_frame * PEER_FRAME_FACTOR
    while True:
        while True:
            try:
                payload = decoder.next_frame()
                if payload is None:
                    break
                message = message_from_obj(loads_object(payload))
            except ProtocolError as exc:
                reason = exc.message
                log_event(
                    logging.WARNING, "peer.bad_message", peer=peer, broker=sender, reason=reason
                )
                return False
            if message.src != sender or message.dst != self_id:
                log_event(
                    logging.WARNING,
                    "peer.misaddressed",
                    peer=peer,
                    broker=sender,
                    src=message.src,
                    dst=message.dst,
                )
                continue
            step(message)
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            return True
        decoder.feed(data)
