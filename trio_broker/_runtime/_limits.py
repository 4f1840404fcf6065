"""Limits that hold when clients misbehave or the host runs short (docs/reliability.md).

- :func:`check_descriptor_limit`: the open-file limit against what ``max_connections`` needs.
- :class:`DescriptorReserve` and :func:`accept_loop`: when ``accept`` fails for want of
  descriptors (EMFILE, ENFILE), the waiting client is not left hanging in the backlog: one spare
  descriptor, kept open for this moment, is closed so that the connection can be accepted,
  answered UNAVAILABLE and closed; then the spare is reopened (the classic trick, as libev's
  documentation describes it for accept). Retries back off, boundedly, and each burst is
  logged once.
- :class:`BufferBudget`: one budget of bytes for the requests read and not yet answered, and the
  answers not yet written, across all connections.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._errors import BrokerError, ErrorCode
from .._protocol import encode_frame, encode_response
from ._log import log_event

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None  # type: ignore[assignment]

OWN_DESCRIPTORS = 64
"""Descriptors a broker holds besides its client connections: the database and its WAL, the
listeners, peer links, the metrics server, logs, the spare one; generous on purpose."""
CAPACITY_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""What ``accept`` fails with when the process or the system runs out (as trio counts them)."""
BACKOFF_FIRST = 0.01
BACKOFF_MAX = 0.5
"""Seconds between accept attempts while descriptors are exhausted: doubling, capped."""
REFUSAL_SEND_SECONDS = 1.0


def descriptors_needed(max_connections: int) -> int:
    return max_connections + OWN_DESCRIPTORS


def check_descriptor_limit(max_connections: int) -> int | None:
    """Warn (one log line) when the soft open-file limit is below what ``max_connections``
    needs; returns the limit found (None where it cannot be read)."""
    if resource is None:  # pragma: no cover
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = descriptors_needed(max_connections)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log_event(
            logging.WARNING,
            "broker.descriptor_limit_low",
            open_file_limit=soft,
            hard_limit="unlimited" if hard == resource.RLIM_INFINITY else hard,
            max_connections=max_connections,
            needed=needed,
            fix=f"raise the open-file limit to at least {needed} (ulimit -n {needed}, or "
            f"LimitNOFILE={needed} under systemd), or lower --max-connections to "
            f"{max(soft - OWN_DESCRIPTORS, 1)}",
        )
    return soft


class DescriptorReserve:
    """One descriptor held back, to be given up when accepting a connection to refuse it."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.reopen()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def reopen(self) -> None:
        if self._fd is None:
            with contextlib.suppress(OSError):
                self._fd = os.open(os.devnull, os.O_RDONLY)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    close = release


def _raw_listener(listener: trio.abc.Listener[Any]) -> trio.abc.Listener[Any]:
    """Under TLS, the TCP listener: a refusal is not worth a handshake."""
    while isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    return listener


async def _refuse(listener: trio.abc.Listener[Any], reserve: DescriptorReserve) -> bool:
    """Accept one waiting connection with the reserve's descriptor, answer it UNAVAILABLE
    (in plain TCP; a TLS client just sees the connection closed), and close it. True when a
    connection was refused."""
    raw = _raw_listener(listener)
    plain = raw is listener
    reserve.release()
    try:
        with trio.move_on_after(REFUSAL_SEND_SECONDS):
            try:
                stream = await raw.accept()
            except OSError:
                return False
            try:
                if plain:
                    error = BrokerError(
                        ErrorCode.UNAVAILABLE,
                        "broker refused connection: out of file descriptors",
                    )
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stream.send_all(encode_frame(encode_response(error)))
            finally:
                await trio.aclose_forcefully(stream)
            return True
        return False
    finally:
        reserve.reopen()


async def accept_loop(
    listener: trio.abc.Listener[Any],
    handler: Callable[[Any], Awaitable[None]],
    nursery: trio.Nursery,
    reserve: DescriptorReserve,
) -> None:
    """Accept on ``listener`` forever, each connection handled in ``nursery``; see the module
    docstring for what happens when descriptors run out."""
    backoff = 0.0
    refused = 0
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRORS:
                raise
            if backoff == 0.0:
                log_event(
                    logging.WARNING,
                    "connection.descriptors_exhausted",
                    reason=os.strerror(exc.errno or 0),
                    errno=errno.errorcode.get(exc.errno or 0, exc.errno),
                    reserve="held" if reserve.held else "none",
                )
            if await _refuse(listener, reserve):
                refused += 1
            backoff = min(max(backoff * 2, BACKOFF_FIRST), BACKOFF_MAX)
            await trio.sleep(backoff)
            continue
        if backoff:
            log_event(logging.WARNING, "connection.descriptors_recovered", refused=refused)
            backoff, refused = 0.0, 0
        nursery.start_soon(handler, stream)


class BufferBudget:
    """Bytes buffered for connections (requests read and not yet answered, answers not yet
    written), against one limit for them all; each connection keeps an :class:`Account`.

    A connection that would take the total past the limit waits (its reads stop) until bytes
    are released, unless it holds nothing at all: a client with one request at a time always
    makes progress, whatever the connections that pipeline and never read their answers do.
    So the total stays under the limit plus one frame per connection that holds nothing.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.paused = 0
        """Times a connection had to wait for the budget."""
        self._released = trio.lowlevel.ParkingLot()
        """Connections waiting for bytes to be released: each woken at every release (no
        object made per release when nobody waits, as an event replaced at each would be)."""

    def account(self) -> Account:
        return Account(self)

    def _changed(self, delta: int) -> None:
        self.used += delta
        if delta > 0:
            self.peak = max(self.peak, self.used)
        elif self._released:
            self._released.unpark_all()


class Account:
    """One connection's share of a :class:`BufferBudget`."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: BufferBudget) -> None:
        self.budget = budget
        self.held = 0

    def charge(self, nbytes: int) -> None:
        """Take bytes without waiting (an answer that must go out whatever the budget)."""
        self.held += nbytes
        self.budget._changed(nbytes)

    def fits(self, nbytes: int) -> bool:
        """Whether :meth:`acquire` would take ``nbytes`` now, without waiting."""
        return not self.held or self.budget.used + nbytes <= self.budget.limit

    def take(self, nbytes: int) -> bool:
        """Take ``nbytes`` if :meth:`acquire` would take them now, without waiting; False, and
        nothing taken, otherwise. :meth:`fits` then :meth:`charge` in one call (the reader's,
        once per request)."""
        budget = self.budget
        used = budget.used + nbytes
        if self.held and used > budget.limit:
            return False
        self.held += nbytes
        budget.used = used
        if used > budget.peak:
            budget.peak = used
        return True

    async def acquire(self, nbytes: int) -> bool:
        """Take ``nbytes``, waiting while the budget has no room; True if it had to wait."""
        budget = self.budget
        waited = False
        while not self.fits(nbytes):
            if not waited:
                budget.paused += 1
                waited = True
            await budget._released.park()
        self.charge(nbytes)
        return waited

    def release(self, nbytes: int) -> None:
        if nbytes:
            self.held -= nbytes
            self.budget._changed(-nbytes)

    def close(self) -> None:
        """Give back everything (the connection ended with requests unanswered)."""
        self.release(self.held)
