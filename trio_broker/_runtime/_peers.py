"""Consensus messages between brokers: the inbound stream, and a stand-alone outbound fleet.

Outbound, every group hosted in a broker shares one link per peer (:mod:`._peer_mux`);
:class:`PeerFleet` is that for one group alone (a driver run without a broker around it).
Inbound, a connection that opened with PEER_HELLO turns into a stream of consensus messages
(:func:`read_peer_stream`), never answered, each handed to the group its ``group_id`` names
(none: the group the PEER_HELLO named).
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Callable, Mapping

import trio

from .._core._raft_messages import Message
from .._errors import ProtocolError
from .._protocol import FrameDecoder
from .._protocol._consensus import message_from_payload
from ._direct import DirectSocket, direct_io
from ._log import log_event
from ._peer_mux import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    OUTBOX_BYTES,
    OUTBOX_SIZE,
    AddressOf,
    Connect,
    GroupLinks,
    PeerFleetStatistics,
    PeerLinkStatistics,
    PeerMux,
)


class PeerFleet(GroupLinks):
    """Links to every peer one group's consensus core sends to, created on first use: a
    :class:`~._peer_mux.PeerMux` of its own with that one group registered."""

    def __init__(
        self,
        self_id: str,
        cluster_id: str,
        nursery: trio.Nursery,
        address_of: AddressOf,
        self_address: tuple[str, int],
        connect: Connect,
        dead_after: float = 3.0,
        *,
        secret: bytes | None = None,
        plaintext_port: int | None = None,
    ) -> None:
        mux = PeerMux(
            self_id,
            cluster_id,
            nursery,
            self_address,
            connect,
            dead_after,
            secret=secret,
            plaintext_port=plaintext_port,
        )
        super().__init__(mux, cluster_id, address_of)
        mux._groups[cluster_id] = self

    @property
    def _links(self) -> Mapping[str, object]:
        return self.mux._links


PEER_FRAME_FACTOR = 80
"""A peer stream's frames may carry a batch of entries, each up to a client frame in size."""
_RECEIVE_SIZE = 64 * 1024


Step = Callable[[Message], None]

AfterFrames = Callable[[bool], None]


class AfterFramesList(list[AfterFrames]):
    """A stream task's list of :data:`AFTER_FRAMES`; ``open`` while the stream is read (a task
    started from one of its steps inherits the variable: once the stream ends, it must not
    add to the list, which nobody runs any more)."""

    open = True


AFTER_FRAMES: contextvars.ContextVar[AfterFramesList | None] = contextvars.ContextVar(
    "AFTER_FRAMES", default=None
)
"""In a task reading a peer stream: what a step asked to run once every frame of the current
receive is stepped, before the stream's next receive: called with True then; with False
when the stream ends first (a bad frame, an error, a cancellation: it must then only hand
its work to its own task, without waiting). A replica's driver persists there, in one
transaction for every REPLICATE of the receive, instead of being woken for it
(``RaftDriver.step``)."""


async def read_peer_stream(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    step: Step,
    *,
    peer: str,
    sender: str,
    self_id: str,
    max_frame: int,
    step_of: Callable[[str], Step | None] | None = None,
) -> bool:
    """After PEER_HELLO: one-way consensus messages from ``sender`` to ``self_id``. A frame
    without ``group_id`` is handed to ``step`` (the group the PEER_HELLO named); one with it,
    to ``step_of(group_id)``'s, or dropped (counted, logged) when that group is not hosted
    here. True when the peer closed the stream, False when a bad message made us stop
    reading (the caller closes the connection)."""
    decoder.max_frame = max_frame * PEER_FRAME_FACTOR
    unknown: dict[str, int] = {}
    io = direct_io(stream)  # (plain TCP: a receive that finds data does not checkpoint)
    after = AfterFramesList()
    AFTER_FRAMES.set(after)  # (this task's own context: trio gives each task a copy)
    try:
        return await _read_frames(
            io,
            decoder,
            step,
            after,
            unknown,
            peer=peer,
            sender=sender,
            self_id=self_id,
            step_of=step_of,
        )
    finally:
        AFTER_FRAMES.set(None)
        after.open = False
        while after:
            after.pop(0)(False)


async def _read_frames(
    io: trio.abc.Stream | DirectSocket,
    decoder: FrameDecoder,
    step: Step,
    after: list[AfterFrames],
    unknown: dict[str, int],
    *,
    peer: str,
    sender: str,
    self_id: str,
    step_of: Callable[[str], Step | None] | None,
) -> bool:
    while True:
        while True:
            try:
                payload = decoder.next_frame()
                if payload is None:
                    break
                group_id, message = message_from_payload(payload)
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
            if group_id is None:
                step(message)
                continue
            target = None if step_of is None else step_of(group_id)
            if target is None:
                # A group not hosted here (not yet opened, or closed): the sender's consensus
                # retries, as after any lost message.
                count = unknown[group_id] = unknown.get(group_id, 0) + 1
                if math.log2(count).is_integer() and len(unknown) <= MAX_UNKNOWN_GROUPS:
                    log_event(
                        logging.WARNING,
                        "peer.unknown_group",
                        peer=peer,
                        broker=sender,
                        group=group_id,
                        dropped=count,
                    )
                if len(unknown) > MAX_UNKNOWN_GROUPS:
                    unknown.clear()
                continue
            target(message)
        while after:
            after.pop(0)(True)
        data = await io.receive_some(_RECEIVE_SIZE)
        if not data:
            return True
        decoder.feed(data)


MAX_UNKNOWN_GROUPS = 1024
"""Groups a stream counts dropped frames of (then the counts start again): a bound."""

__all__ = [
    "AFTER_FRAMES",
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "OUTBOX_BYTES",
    "OUTBOX_SIZE",
    "PEER_FRAME_FACTOR",
    "PeerFleet",
    "PeerFleetStatistics",
    "PeerLinkStatistics",
    "read_peer_stream",
]
