"""Raw wire access for tests: frames exactly as an old client (or a hostile one) sends them."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import trio


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def request(obj: Any) -> bytes:
    return frame(orjson.dumps(obj))


class RawConnection:
    """One TCP connection speaking length-prefixed JSON, with no help from trio_broker."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = b""

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, *objs: Any) -> None:
        await self.stream.send_all(b"".join(request(o) for o in objs))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> dict[str, Any] | None:
        """The next response, or None if the broker closed the connection."""
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack(">I", self._buf[:4])
                if len(self._buf) >= 4 + n:
                    payload, self._buf = self._buf[4 : 4 + n], self._buf[4 + n :]
                    return orjson.loads(payload)
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self._buf += data

    async def call(self, obj: Any) -> dict[str, Any]:
        await self.send(obj)
        response = await self.receive()
        assert response is not None, "broker closed the connection"
        return response

    async def aclose(self) -> None:
        await self.stream.aclose()


async def call(port: int, obj: Any) -> dict[str, Any]:
    """One request on its own connection, the way clients of the original design work."""
    conn = await RawConnection.open(port)
    try:
        return await conn.call(obj)
    finally:
        await conn.aclose()


async def transfer_leadership(cluster: Any, broker: Any, *, attempts: int = 5) -> None:
    """TRANSFER_LEADERSHIP to ``broker`` (of a ``LocalCluster``) through its current leader,
    until ``broker`` leads. On a loaded machine another broker can win an election while the
    transfer runs (UNAVAILABLE: "... leads instead"), or just after it: asked again, at most
    ``attempts`` times. Any other answer fails the test."""
    for _ in range(attempts):
        leader = await cluster.wait_for_leader()
        if leader is broker:
            return
        answer = await call(
            leader.port, {"operation": "TRANSFER_LEADERSHIP", "broker_id": broker.broker_id}
        )
        assert answer["status"] == "success" or answer.get("code") == "UNAVAILABLE", answer
        if answer["status"] == "success" and await cluster.wait_for_leader() is broker:
            return
    raise AssertionError(f"{broker.broker_id} does not lead after {attempts} transfers")


async def create_queue(port: int, **fields: Any) -> str:
    """CREATE_QUEUE on a connection of its own (extra ``fields`` go into the request); the new
    queue's id. The answer must be a success."""
    response = await call(port, {"operation": "CREATE_QUEUE", **fields})
    assert response["status"] == "success", response
    return response["queue_id"]


async def append(port: int, queue_id: str, data: Any) -> int:
    """APPEND on a connection of its own; the sequence number. The answer must be a success."""
    response = await call(port, {"operation": "APPEND", "queue_name": queue_id, "data": data})
    assert response["status"] == "success", response
    return response["sequence_num"]


class ManualClock:
    """A broker's wall clock (``BrokerConfig.wall_clock``) that only the test moves: leases
    and retention run on it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


PEER_WELCOME = b'{"status":"success","multiplexed":true}'
"""A multiplexing peer's answer to PEER_HELLO."""


async def serve_one_peer(
    listener: Any,
    received: list[Any],
    handshaken: trio.Event,
    wrap: Any = None,
) -> None:
    """A stand-in broker "B-2" for a peer link from "B-1": accept one connection on
    ``listener`` (wrapped by ``wrap``, e.g. a TLS server stream), read its PEER_HELLO, welcome
    it as multiplexed, set ``handshaken``, then read its messages into ``received`` with the
    broker's own :func:`~trio_broker._runtime._peers.read_peer_stream`."""
    from trio_broker._protocol import FrameDecoder, encode_frame
    from trio_broker._runtime._peers import read_peer_stream

    stream = await listener.accept()
    if wrap is not None:
        stream = wrap(stream)
    async with stream:
        decoder = FrameDecoder()
        while decoder.next_frame() is None:
            decoder.feed(await stream.receive_some())
        await stream.send_all(encode_frame(PEER_WELCOME))
        handshaken.set()
        await read_peer_stream(
            stream,
            decoder,
            received.append,
            peer="127.0.0.1",
            sender="B-1",
            self_id="B-2",
            max_frame=1 << 20,
        )
