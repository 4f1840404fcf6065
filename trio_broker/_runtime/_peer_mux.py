"""One outbound link per peer broker, shared by every replication group hosted here
(docs/replication.md, "Peer links").

Consensus messages are one-way: a broker sends to a peer over its own outbound connection, and
the peer answers over *its* outbound connection. :class:`PeerMux` keeps one persistent,
pipelined link per peer broker; each group's driver sends through its :class:`GroupLinks`
(:meth:`PeerMux.register`), so a pair of brokers has one connection per direction whatever
the number of groups they share. A frame of the *home* group (the cluster group, the one the
link's PEER_HELLO names) goes as before; any other group's carries ``group_id``.

- **Older peers.** PEER_HELLO says ``multiplexed``; a peer that understands answers
  :class:`~trio_broker._protocol.PeerWelcome`. One that answers a plain success (an older
  version) gets the home group's messages on this link, and each other group's on a link of
  its own, whose PEER_HELLO names that group, as brokers of its version dial.
- **Shares.** Each group has its own queue on a link, bounded by its share of the outbox
  (``OUTBOX_SIZE`` messages and ``OUTBOX_BYTES`` split among the groups registered, at least
  ``MIN_SHARE`` messages; one message is always admitted into an empty queue, so a message
  larger than the share still leaves). A group whose queue is full (a busy leader, a peer
  slow to read) drops its own messages, which the consensus protocol tolerates (the leader
  retransmits from its progress tracking; elections retry); the other groups' still go.
- **Turns.** The link's task writes everything queued when it runs, up to ``BATCH`` messages
  taken fairly from the groups' queues, in one ``send_all``: the messages of every group sent
  in one loop turn (the heartbeats of every group, whose clocks one timer ticks together,
  :meth:`PeerMux.ticking`, and the answers to one received batch) leave in one write.
- **At once.** The messages a driver's Ready sends (:meth:`GroupLinks.send_at_once`: a
  leader's REPLICATEs, a replica's acknowledgement) are written by the calling task when their
  link's writer is idle on a plain TCP socket: one ``os.write`` then, no wake-up of the link's
  task and no trip through the scheduler (docs/performance.md, "One client, one append at a
  time"). What that write does not complete (a full socket buffer, an error) is handed to the
  link's task, which finishes it (or raises) before it takes anything else, so messages keep
  their order and at most one batch waits outside the queues.
- **Groups of appends in runs.** A peer that reads a group of appends in its compact form
  says so in its answer to PEER_HELLO (``"append_runs": true``; docs/replication.md, "A group
  of appends in runs"). The link remembers it for that connection (:attr:`_Link.append_runs`)
  and writes every REPLICATE accordingly: to a peer that did not say it, an entry held in
  that form leaves as a COMMAND_GROUP. A group's leader encodes new entries in that form only
  while every member's link said it (:meth:`GroupLinks.reads_append_runs`).
- **Register / unregister.** A group opened at run time registers, and a group closed
  unregisters: its queued messages are dropped, and a link no group wants any more closes.
- **Links established.** Each time a link connects (again), the groups that send on it are
  told (:attr:`PeerMux.reconnected`, the core's ``RaftNode.peer_reconnected``): what they
  send from then on may reach a new process of that peer, which holds no member view
  (docs/replication.md, "Diagram 6 (heartbeats and failure detection)").

A little longer than the house's ~600 lines: the link's queue, its writer and the write made
at once share the link's state (``_more``, ``_socket``, ``_leftover``) and its order, which a
split would pass between modules.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence

import attrs
import trio

from .._auth import authenticate
from .._core._commands import data_size
from .._core._raft_messages import Message
from .._errors import BrokerError
from .._protocol import Done, FrameDecoder, PeerHello, decode_response
from .._protocol._consensus import encode_message
from .._protocol._framing import frame_header
from ._dial import UNREACHABLE
from ._direct import DirectSocket, direct_io
from ._log import log_event
from ._network import transport_socket

Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]
AddressOf = Callable[[str], "tuple[str, int] | None"]

_LINK_ERRORS = (*UNREACHABLE, trio.ClosedResourceError)

OUTBOX_SIZE = 1024
"""Messages queued for one peer, all groups together, split into per-group shares."""
OUTBOX_BYTES = 64 * 1024 * 1024
"""Approximate bytes of entry data queued for one peer, split like ``OUTBOX_SIZE``."""
MIN_SHARE = 8
"""The fewest messages a group may queue for a peer, however many groups share the link."""
BATCH = 256
"""Messages written in one ``send_all``, at most."""
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
LOST_AT_SHUTDOWN = "this broker is shutting down"
"""The ``expected`` field of a ``peer.lost`` logged at INFO (:attr:`PeerMux.shutting_down`)."""


class _Link:
    """The one outbound connection to a peer, and every group's queue of messages for it."""

    def __init__(self, mux: PeerMux, peer_id: str, home: str | None = None) -> None:
        self.mux = mux
        self.peer_id = peer_id
        self.home = mux.home_group if home is None else home
        """The group PEER_HELLO names, whose frames carry no ``group_id``: the cluster group,
        or, on a link of its own to an older peer, one other group."""
        self.legacy: dict[str, _Link] = {}
        """To an older peer: a link of its own per other group (their hello names it)."""
        self.queues: dict[str, collections.deque[tuple[Message, int]]] = {}
        """Group id -> its messages queued for the peer, each with its approximate size."""
        self.group_bytes: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.wanted_by: set[str] = set()
        """The groups that keep this link open (:meth:`GroupLinks.ensure`)."""
        self.cancel_scope = trio.CancelScope()
        self.connected = False
        self.multiplexed = False
        """The peer routes frames by ``group_id`` (it answered PEER_HELLO with PeerWelcome)."""
        self.append_runs = False
        """The peer reads ``APPEND_RUNS`` (its answer to this connection's PEER_HELLO said
        so): the form this connection's frames are written in. False while not connected,
        and for a peer whose answer did not say it."""
        self.said_append_runs = False
        """What the peer's last answer said, kept while the link is down (a member that
        restarts, or is out of reach, most likely comes back as it was): what the group's
        leader encodes new entries by (:meth:`GroupLinks.reads_append_runs`). A peer that
        comes back of an older version answers without it, and is written COMMAND_GROUPs
        from its first frame on whatever its log is sent."""
        self.writes = 0
        """``send_all`` calls made (each one write on the socket)."""
        self._more: trio.Event | None = None
        """Set while the link's writer waits for messages (it is idle): queueing wakes it."""
        self._socket: socket.socket | None = None
        """The plain TCP socket the writer writes to, while it runs (None for TLS, or in
        memory): what :meth:`write_now` writes on."""
        self._write_some: Callable[[bytes], int] | None = None
        """Else a stream's own non-blocking write (bytes taken, at once: the in-memory
        network's), what :meth:`write_now` writes with."""
        self._leftover: memoryview | None = None
        """What a :meth:`write_now` did not complete: the writer sends it before anything
        else (at most one batch)."""
        self._sending = False
        """The writer is inside a ``send_all`` (a write the socket did not take at once):
        nothing may be written before it completes."""
        self._ready: collections.deque[str] = collections.deque()
        """Groups with messages queued, in the order the writer serves them."""

    @property
    def queued_bytes(self) -> int:
        return sum(self.group_bytes.values())

    def queue(self, group_id: str, message: Message) -> bool:
        """Queue a message of ``group_id``, or drop it (False): while the link is down (the
        protocol retransmits what matters once it is back, so queueing would only replay stale
        messages), to an older peer when not of the home group, and beyond the group's share."""
        if not self.connected:
            return self._drop(group_id)
        if not self.multiplexed and group_id != self.home:
            if self.home != self.mux.home_group:
                return self._drop(group_id, "peer.group_not_carried")
            return self._legacy(group_id).queue(group_id, message)
        queue = self.queues.get(group_id)
        if queue is None:
            queue = self.queues[group_id] = collections.deque()
        size = _approximate_size(message)
        count, limit = self.mux.share()
        if queue and (len(queue) >= count or self.group_bytes[group_id] + size > limit):
            return self._drop(group_id, "peer.outbox_full")
        if not queue:
            self._ready.append(group_id)
        queue.append((message, size))
        self.group_bytes[group_id] += size
        held = self.mux._held
        if held is not None:
            held[self] = None  # (written, or its writer woken, when the sends are done)
        elif self._more is not None:
            self._more.set()
            self._more = None
        return True

    def write_now(self) -> bool:
        """Write what is queued from the calling task, when the writer is not inside a write
        on a plain TCP socket or an in-memory stream (``_write_some``; else wake the writer).
        True when nothing is left for the writer's task.

        A writer woken but not yet run (a heartbeat's answer queued in this loop turn by
        ``send``) has taken nothing: what is queued, the earlier messages first, leaves
        here in one write, and the writer finds nothing when it runs. Without that, a
        replica's acknowledgement that followed a heartbeat's answer in one receive waited
        for the link's task (and its driver's turn to let it run) instead of leaving with
        it (docs/performance-history.md, "The REPLICATE without waiting")."""
        if not self._ready:
            return True
        more, sock, write_some = self._more, self._socket, self._write_some
        if (sock is None and write_some is None) or self._sending or self._leftover is not None:
            if more is not None:
                more.set()
                self._more = None
            return False  # (the writer is busy, or TLS: it takes them next)
        data = self._encode(self.take())
        self.writes += 1
        sent = 0
        fd = -1 if sock is None else sock.fileno()
        if write_some is not None:
            sent = write_some(data)
        elif fd != -1:
            try:
                sent = os.write(fd, data)
            except OSError:  # (full, or broken: the writer's own send waits, or raises it)
                sent = 0
        if sent == len(data) and not self._ready:
            return True
        if sent < len(data):
            self._leftover = memoryview(data)[sent:]
        if more is not None:  # (else the writer was woken already)
            more.set()
            self._more = None
        return False

    def _encode(self, batch: list[tuple[str, Message]]) -> bytes:
        home, runs = self.home, self.append_runs
        parts: list[bytes] = []
        for group_id, message in batch:
            payload = encode_message(
                message, None if group_id == home else group_id, append_runs=runs
            )
            parts += (frame_header(len(payload)), payload)
        return b"".join(parts)  # (frames copied once, here)

    def _legacy(self, group_id: str) -> _Link:
        """The link of its own for ``group_id`` to this older peer, opened on first use: as
        brokers of its version dial, with a hello naming the group."""
        link = self.legacy.get(group_id)
        if link is None:
            link = self.legacy[group_id] = _Link(self.mux, self.peer_id, home=group_id)
            self.mux._nursery.start_soon(link.run)
        return link

    def close_legacy(self, group_id: str | None = None) -> None:
        """Close the links of their own of ``group_id`` (None: of every group)."""
        for group in [group_id] if group_id is not None else list(self.legacy):
            link = self.legacy.pop(group, None)
            if link is not None:
                link.cancel_scope.cancel()

    def _drop(self, group_id: str, event: str | None = None) -> bool:
        self.dropped[group_id] += 1
        count = self.dropped[group_id]
        if event is not None and math.log2(count).is_integer():
            log_event(logging.WARNING, event, peer=self.peer_id, group=group_id, dropped=count)
        return False

    def discard(self, group_id: str) -> None:
        """Drop what ``group_id`` has queued (counted as dropped)."""
        queue = self.queues.pop(group_id, None)
        if queue:
            self.dropped[group_id] += len(queue)
        self.group_bytes.pop(group_id, None)
        with contextlib.suppress(ValueError):
            self._ready.remove(group_id)

    def take(self, limit: int = BATCH) -> list[tuple[str, Message]]:
        """Up to ``limit`` queued messages, a fair part from each group with some (each
        group's in order), the groups served first this time served last the next."""
        batch: list[tuple[str, Message]] = []
        groups = len(self._ready)
        for _ in range(groups):
            if len(batch) >= limit:
                break
            group_id = self._ready.popleft()
            queue = self.queues[group_id]
            part = max(1, (limit - len(batch)) // groups)
            groups -= 1
            for _ in range(min(part, len(queue))):
                message, size = queue.popleft()
                self.group_bytes[group_id] -= size
                batch.append((group_id, message))
            if queue:
                self._ready.append(group_id)
        return batch

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        with self.cancel_scope:
            while True:
                address = self.mux.address_of(self.peer_id)
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
                    self._log_lost(failed)
                    backoff = BACKOFF_MIN
                self.connected = False
                self.append_runs = False
                self._leftover = None
                for group_id in list(self.queues):
                    self.discard(group_id)
                self.close_legacy()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _log_lost(self, failed: BaseException | None) -> None:
        """``peer.lost``: a WARNING while this broker runs (a peer down or out of reach, which
        operators need to see); at INFO, as expected, once it is shutting down, when its peers
        stopping too is what a link lost looks like (docs/operations.md, "Logs")."""
        stopping = self.mux.shutting_down
        log_event(
            logging.INFO if stopping else logging.WARNING,
            "peer.lost",
            peer=self.peer_id,
            error=type(failed).__name__,
            reason=str(failed),
            **({"expected": LOST_AT_SHUTDOWN} if stopping else {}),
        )

    async def _connect_and_stream(self, host: str, port: int) -> None:
        mux = self.mux
        with trio.fail_after(mux.dead_after):
            stream = await mux.connect(host, port)
        _fail_when_unacknowledged(stream, mux.dead_after)
        async with stream:
            hello = PeerHello(
                cluster_id=self.home,
                broker_id=mux.self_id,
                to=self.peer_id,
                host=mux.self_address[0],
                port=mux.self_address[1],
                plaintext_port=mux.plaintext_port,
                multiplexed=True,
            )
            with trio.fail_after(5):
                answer = await authenticate(stream, FrameDecoder(), secret=mux.secret, then=hello)
            refusal = decode_response(answer, Done)
            if isinstance(refusal, BrokerError):
                log_event(logging.ERROR, "peer.refused", peer=self.peer_id, reason=refusal.message)
                raise ConnectionError(f"peer refused: {refusal.message}")
            self.multiplexed = answer.get("multiplexed") is True
            # (Read before the link counts as connected: nothing is encoded for this
            # connection before it is known; a peer of an older version does not say it.)
            self.append_runs = self.said_append_runs = answer.get("append_runs") is True
            if self.multiplexed:
                self.close_legacy()  # (the peer was upgraded)
            if not self.connected:
                log_event(
                    logging.INFO,
                    "peer.connected",
                    peer=self.peer_id,
                    host=host,
                    port=port,
                    multiplexed=self.multiplexed,
                )
            self.connected = True
            self._tell_reconnected()
            async with trio.open_nursery() as nursery:
                # The peer never writes on this stream after the handshake; reading tells us
                # promptly when it goes away.
                nursery.start_soon(_watch_close, stream)
                # A plain TCP link's writes are made at once (no checkpoint after each one:
                # the writer waits for the next message anyway); TLS keeps the stream's own.
                io = direct_io(stream)
                try:
                    if isinstance(io, DirectSocket):
                        self._socket = stream.socket  # type: ignore[attr-defined]
                    else:  # (in memory: testing._memory_network)
                        self._write_some = getattr(stream, "write_some", None)
                    await self._write(io)
                finally:
                    self._socket = self._write_some = None
                    self._more = None

    def _tell_reconnected(self) -> None:
        """This link just connected: tell the groups whose messages it carries (each group
        here on a multiplexed link; else its home group, each other group's own link telling
        its own), once per connection."""
        reconnected = self.mux.reconnected
        if reconnected is None:
            return
        groups = sorted(self.wanted_by) if self.multiplexed else [self.home]
        for group_id in groups:
            reconnected(group_id, self.peer_id)

    async def _write(self, stream: trio.abc.Stream | DirectSocket) -> None:
        while True:
            leftover = self._leftover
            if leftover is not None:  # (a write_now's rest: before anything queued after it)
                self._leftover = None
                self._sending = True
                try:
                    await stream.send_all(leftover)  # type: ignore[arg-type]
                finally:
                    self._sending = False
                continue
            batch = self.take()
            if not batch:
                self._more = event = trio.Event()
                await event.wait()
                continue
            self.writes += 1
            self._sending = True
            try:
                await stream.send_all(self._encode(batch))
            finally:
                self._sending = False


async def _watch_close(stream: trio.abc.Stream) -> None:
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


class PeerMux:
    """This broker's outbound links, one per peer broker, shared by the groups registered."""

    def __init__(
        self,
        self_id: str,
        home_group: str,
        nursery: trio.Nursery,
        self_address: tuple[str, int],
        connect: Connect,
        dead_after: float = 3.0,
        *,
        secret: bytes | None = None,
        plaintext_port: int | None = None,
        reconnected: Callable[[str, str], None] | None = None,
    ) -> None:
        self.self_id = self_id
        self.home_group = home_group
        """The group a frame without ``group_id`` belongs to: the one PEER_HELLO names."""
        self.self_address = self_address
        self.connect = connect
        self.dead_after = dead_after
        """Seconds without acknowledgement (or to connect) before a link is declared broken."""
        self.secret = secret
        """Proved on every link before PEER_HELLO, when set (docs/security.md)."""
        self.plaintext_port = plaintext_port
        self.reconnected = reconnected
        """Called ``(group_id, peer)`` each time a link to ``peer`` that carries the group's
        messages connects (the group's ``RaftNode.peer_reconnected``); must not raise."""
        self.shutting_down = False
        """Set when this broker starts shutting down (``membership.step_down``): a link lost
        from then on is expected, its peer likely stopping too, and logged at INFO."""
        self._nursery = nursery
        self._links: dict[str, _Link] = {}
        self._groups: dict[str, GroupLinks] = {}
        self._tickers: dict[float, dict[object, Callable[[int], None]]] = {}
        self._held: dict[_Link, None] | None = None
        """During :meth:`GroupLinks.send_at_once`: the links given messages, in order."""
        """Tick length -> the callbacks its one timer calls (:meth:`ticking`)."""

    def register(self, group_id: str, address_of: AddressOf) -> GroupLinks:
        """A group hosted here sends through the shared links from now on; ``address_of``
        is its address book (the links look a peer up in every registered group's)."""
        self.unregister(group_id)
        links = self._groups[group_id] = GroupLinks(self, group_id, address_of)
        return links

    def unregister(self, group_id: str, links: GroupLinks | None = None) -> None:
        """A group closed here: its queued messages are dropped, and a link that no group
        wants any more closes. With ``links``, only if that is still the group's registration
        (a replica of the group opened again meanwhile keeps its own)."""
        current = self._groups.get(group_id)
        if current is None or (links is not None and current is not links):
            return
        del self._groups[group_id]
        for peer in list(self._links):
            link = self._links[peer]
            self._unwant(peer, group_id)
            link.dropped.pop(group_id, None)  # (bounded by the groups hosted, not ever hosted)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(sorted(self._groups))

    def share(self) -> tuple[int, int]:
        """A group's share of a link's outbox now: ``(messages, bytes)``."""
        groups = max(1, len(self._groups))
        return max(MIN_SHARE, OUTBOX_SIZE // groups), OUTBOX_BYTES // groups

    def address_of(self, peer: str) -> tuple[str, int] | None:
        """Where ``peer`` listens, from the home group's address book first."""
        home = self._groups.get(self.home_group)
        books = [home] if home is not None else []
        books += [g for g in self._groups.values() if g is not home]
        for group in books:
            address = group.address_of(peer)
            if address is not None:
                return address
        return None

    def _want(self, peer: str, group_id: str) -> _Link:
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = _Link(self, peer)
            self._nursery.start_soon(link.run)
        link.wanted_by.add(group_id)
        return link

    def _unwant(self, peer: str, group_id: str) -> None:
        link = self._links.get(peer)
        if link is None:
            return
        link.wanted_by.discard(group_id)
        link.discard(group_id)
        link.close_legacy(group_id)
        if not link.wanted_by:
            del self._links[peer]
            link.close_legacy()
            link.cancel_scope.cancel()

    @contextlib.contextmanager
    def ticking(self, seconds: float, on_ticks: Callable[[int], None]) -> Iterator[None]:
        """Call ``on_ticks(n)`` every ``seconds`` (``n`` > 1: ticks were missed by a stall)
        while in the ``with`` block. One timer per broker for every group's clock: the groups
        tick one after the other at the same instant, so a tick costs one wake-up, and the
        heartbeats it makes leave in one write per peer. ``on_ticks`` must not raise."""
        key = object()
        callbacks = self._tickers.get(seconds)
        if callbacks is None:
            callbacks = self._tickers[seconds] = {}
            self._nursery.start_soon(self._run_timer, seconds, callbacks)
        callbacks[key] = on_ticks
        try:
            yield
        finally:
            del callbacks[key]

    async def _run_timer(
        self, seconds: float, callbacks: dict[object, Callable[[int], None]]
    ) -> None:
        next_tick = trio.current_time() + seconds
        while callbacks:
            await trio.sleep_until(next_tick)
            behind = int((trio.current_time() - next_tick) // seconds) + 1
            next_tick += behind * seconds
            for on_ticks in list(callbacks.values()):
                on_ticks(behind)
        del self._tickers[seconds]

    def statistics(self) -> PeerMuxStatistics:
        return PeerMuxStatistics(
            groups=self.groups,
            links=tuple(
                MuxLinkStatistics(
                    peer=peer,
                    connected=link.connected,
                    multiplexed=link.multiplexed,
                    groups=tuple(sorted(link.wanted_by)),
                    own_links=tuple(sorted(link.legacy)),
                    queued=sum(len(q) for q in link.queues.values()),
                    dropped=sum(link.dropped.values()),
                    writes=link.writes,
                )
                for peer, link in sorted(self._links.items())
            ),
        )


class GroupLinks:
    """One group's view of the shared links: what its driver sends through."""

    def __init__(self, mux: PeerMux, group_id: str, address_of: AddressOf) -> None:
        self.mux = mux
        self.group_id = group_id
        self.address_of = address_of
        self._peers: set[str] = set()

    @property
    def registered(self) -> bool:
        return self.mux._groups.get(self.group_id) is self

    def ensure(self, peers: set[str] | frozenset[str]) -> None:
        """Keep a link open to exactly these peers (for this group), so that a message (a
        vote request after a leader failure, say) finds its link already connected."""
        if not self.registered:
            return
        for peer in peers:
            self.mux._want(peer, self.group_id)
        self._peers.update(peers)
        self.forget(peers)

    def reads_append_runs(self, members: set[str] | frozenset[str]) -> bool:
        """True when every one of ``members`` (the group's other members), and every other
        peer this group sends to, said in its last answer to PEER_HELLO that it reads
        ``APPEND_RUNS`` (:attr:`_Link.said_append_runs`): the leader may then encode a group
        of appends in that form. A member that never answered (not reached since this broker
        started, or just added), or one of an older version, keeps the COMMAND_GROUP form
        for everyone; whatever is stored, each link writes its own peer's form."""
        links = self.mux._links
        for peer in (*members, *self._peers):
            link = links.get(peer)
            if link is None or not link.said_append_runs:
                return False
        return True

    def send(self, message: Message) -> None:
        """Queue a message for its peer, or drop it (see :meth:`_Link.queue`)."""
        if not self.registered:
            return
        peer = message.dst
        self._peers.add(peer)
        self.mux._want(peer, self.group_id).queue(self.group_id, message)

    def send_at_once(self, messages: Sequence[Message]) -> bool:
        """Send ``messages`` (each as :meth:`send` does), then write them from this task on
        each link whose writer is idle (:meth:`_Link.write_now`) instead of waking its task.
        True when every one of them left (none waits for a link's task)."""
        mux = self.mux
        held: dict[_Link, None] = {}
        mux._held = held
        try:
            for message in messages:
                self.send(message)
        finally:
            mux._held = None
            done = True
            for link in held:
                done = link.write_now() and done
        return done

    def forget(self, keep: set[str] | frozenset[str]) -> None:
        """This group no longer sends to brokers outside ``keep``."""
        for peer in list(self._peers):
            if peer not in keep:
                self._peers.discard(peer)
                self.mux._unwant(peer, self.group_id)

    def statistics(self) -> PeerFleetStatistics:
        """This group's links now, one frozen snapshot."""
        group_id = self.group_id
        stats = []
        for peer in sorted(self._peers):
            link = self.mux._links.get(peer)
            if link is None:
                continue
            own = link.legacy.get(group_id)
            connected = link.connected if own is None else own.connected
            dropped = link.dropped[group_id] + (0 if own is None else own.dropped[group_id])
            stats.append(PeerLinkStatistics(peer, connected, dropped))
        return PeerFleetStatistics(tuple(stats))


@attrs.frozen
class PeerLinkStatistics:
    """One outbound link to a peer, as one group sees it."""

    peer: str
    connected: bool
    dropped: int
    """This group's consensus messages dropped while the peer was unreachable, or its share
    of the outbox full."""


@attrs.frozen
class PeerFleetStatistics:
    """A group's outbound links at one instant (:meth:`GroupLinks.statistics`)."""

    links: tuple[PeerLinkStatistics, ...]
    """One per peer, by peer id."""

    def dropped(self, peer: str) -> int:
        """Messages dropped on the link to ``peer`` (0 without a link)."""
        return next((link.dropped for link in self.links if link.peer == peer), 0)

    @property
    def any_connected(self) -> bool:
        return any(link.connected for link in self.links)


@attrs.frozen
class MuxLinkStatistics:
    peer: str
    connected: bool
    multiplexed: bool
    groups: tuple[str, ...]
    """The groups that keep the link open."""
    own_links: tuple[str, ...]
    """To an older peer: the groups with a link of their own."""
    queued: int
    dropped: int
    writes: int


@attrs.frozen
class PeerMuxStatistics:
    """A broker's shared outbound links at one instant (:meth:`PeerMux.statistics`)."""

    groups: tuple[str, ...]
    links: tuple[MuxLinkStatistics, ...]
