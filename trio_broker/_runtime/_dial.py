"""One broker asking another: connect, authenticate, request, each step bounded.

Seeds (a new broker asks which cluster they form, then joins it), forwarded membership
requests, the operator's ADD_MEMBER (the leader asks the new broker who it is) and snapshot
fetches all dial another broker the same way: open a stream on the broker's :class:`Network`
(TCP or TLS), prove the cluster secret when there is one (docs/security.md), then send requests
and read their answers in order, on that connection only. What can go wrong on the way is one
tuple, :data:`UNREACHABLE`: the broker was not reached, or did not answer in time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import trio

from .._auth import authenticate
from .._errors import BrokerError, ProtocolError, error_from_wire
from .._protocol import FrameDecoder, decode_response, encode_frame, encode_request
from ._network import Network

T = TypeVar("T")

UNREACHABLE = (
    OSError,
    ConnectionError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    ProtocolError,
)
"""What dialing another broker may raise: it was not reached, or did not answer in time."""

_RECEIVE_SIZE = 1 << 16


def unreachable_reason(exc: BaseException, deadline: float) -> str:
    """One of :data:`UNREACHABLE`, said for a person."""
    return f"no answer within {deadline:g} s" if isinstance(exc, trio.TooSlowError) else repr(exc)


class Dialed:
    """An authenticated connection to another broker: requests answered one at a time."""

    def __init__(self, stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        self.stream = stream
        self.decoder = decoder

    async def ask(self, request: Any, cls: type[T]) -> T | BrokerError:
        """Send one request and read its answer, a ``cls`` or an error (unbounded: the caller
        bounds it)."""
        await self.stream.send_all(encode_frame(encode_request(request)))
        while (payload := self.decoder.next_frame()) is None:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
            if not data:
                raise ConnectionError("connection closed before the answer")
            self.decoder.feed(data)
        return decode_response(payload, cls)


@contextlib.asynccontextmanager
async def dial(
    network: Network,
    address: tuple[str, int],
    *,
    secret: bytes | None,
    deadline: float,
    max_frame: int | None = None,
) -> AsyncIterator[Dialed | BrokerError]:
    """Connect to ``address`` and prove ``secret`` (when given), within ``deadline`` seconds.

    Yields the :class:`Dialed` connection, or the broker's refusal of the proof. Raises one of
    :data:`UNREACHABLE`.
    """
    decoder = FrameDecoder() if max_frame is None else FrameDecoder(max_frame)
    with trio.fail_after(deadline):
        stream = await network.connect(*address)
    async with stream:
        with trio.fail_after(deadline):
            refused = await authenticate(stream, decoder, secret=secret)
        yield error_from_wire(refused) if refused else Dialed(stream, decoder)


async def ask_broker(
    network: Network,
    address: tuple[str, int],
    request: Any,
    cls: type[T],
    *,
    secret: bytes | None,
    deadline: float,
) -> T | BrokerError:
    """One request to another broker, on a connection of its own, after proving ``secret``
    (when given), all within ``deadline`` seconds: the answer as a ``cls``, or an error (the
    refusal of the proof, or of the request). Raises one of :data:`UNREACHABLE`."""
    with trio.fail_after(deadline):
        stream = await network.connect(*address)
        async with stream:
            # The request goes out in the same write as the proof (one round trip fewer).
            answer = await authenticate(stream, FrameDecoder(), secret=secret, then=request)
    return decode_response(answer, cls)
