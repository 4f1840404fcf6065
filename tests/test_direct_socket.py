"""A connection's socket calls made at once (``_runtime/_direct.py``): the same bytes, ends
and errors as ``trio.SocketStream``'s own calls, a wait only when there is nothing to read,
and a checkpoint at least every ``MAX_DIRECT + 1`` receives. Real TCP on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

from trio_broker._runtime._direct import MAX_DIRECT, DirectSocket

DEADLINE = 10


@contextlib.asynccontextmanager
async def _pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    async with client, server:
        yield client, server


async def _receive_exactly(direct: DirectSocket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = await direct.receive_some(65536)
        assert chunk, "end of stream before every byte arrived"
        data += chunk
    return bytes(data)


async def test_large_writes_arrive_whole_and_in_order():
    """A write larger than the socket's buffers is finished by the stream's own send_all."""
    payload = bytes(range(256)) * (8 * 1024)  # 2 MiB
    async with _pair() as (client, server):
        sender, receiver = DirectSocket(server), DirectSocket(client)
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    await sender.send_all(payload)
                    await sender.send_all(b"end")

                nursery.start_soon(send)
                received = await _receive_exactly(receiver, len(payload) + 3)
        assert received == payload + b"end"


async def test_two_sends_at_once_are_refused_as_the_stream_refuses_them():
    payload = b"x" * (16 * 1024 * 1024)  # more than the socket's buffers take at once
    async with _pair() as (_client, server):
        sender = DirectSocket(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.send_all, payload)
            await trio.sleep(0.1)  # the first is waiting for room now
            with pytest.raises(trio.BusyResourceError):
                await sender.send_all(b"end")
            nursery.cancel_scope.cancel()


async def test_a_receive_waits_for_data_and_can_be_cancelled():
    async with _pair() as (client, server):
        direct = DirectSocket(server)
        with trio.move_on_after(0.2) as scope:
            await direct.receive_some(100)
        assert scope.cancelled_caught  # nothing to read: it waited, and gave up on cancel
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:

                async def later() -> None:
                    await trio.sleep(0.05)
                    await client.send_all(b"hello")

                nursery.start_soon(later)
                assert await _receive_exactly(direct, 5) == b"hello"


async def test_end_of_stream_is_empty_bytes():
    async with _pair() as (client, server):
        direct = DirectSocket(server)
        await client.send_all(b"last")
        await client.send_eof()
        with trio.fail_after(DEADLINE):
            assert await _receive_exactly(direct, 4) == b"last"
            assert await direct.receive_some(100) == b""


async def test_a_closed_stream_raises_as_the_stream_does():
    async with _pair() as (_client, server):
        direct = DirectSocket(server)
        await server.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await direct.receive_some(100)
        with pytest.raises(trio.ClosedResourceError):
            await direct.send_all(b"x")


async def test_writing_to_a_reset_connection_is_a_broken_resource():
    async with _pair() as (client, server):
        direct = DirectSocket(server)
        client.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        await client.aclose()  # linger 0: the peer resets the connection
        with trio.fail_after(DEADLINE), pytest.raises(trio.BrokenResourceError):
            for _ in range(100):  # the first write may still be accepted by the kernel
                await direct.send_all(b"x" * 1000)
                await trio.sleep(0.01)


async def test_receives_that_find_data_checkpoint_every_so_often():
    """While data is there, MAX_DIRECT receives in a row complete without a checkpoint (a
    cancelled scope does not stop them); the next one checkpoints (and so is cancelled)."""
    async with _pair() as (client, server):
        direct = DirectSocket(server)
        await client.send_all(b"x" * (4 * MAX_DIRECT))
        with trio.fail_after(DEADLINE):
            assert await direct.receive_some(1) == b"x"  # (wait until it has all arrived)
        await trio.sleep(0.1)
        got = 1
        with trio.CancelScope() as scope:
            scope.cancel()
            for _ in range(2 * MAX_DIRECT):
                await direct.receive_some(1)
                got += 1
        assert scope.cancelled_caught
        assert got == MAX_DIRECT  # the first receive above counted in the streak


async def test_after_a_read_that_emptied_the_socket_the_next_waits_first():
    """A read that took less than it asked for left nothing: the next receive waits for the
    socket before reading (no read that finds nothing), and still returns what comes."""
    async with _pair() as (client, server):
        direct = DirectSocket(server)
        await client.send_all(b"abc")
        with trio.fail_after(DEADLINE):
            assert await _receive_exactly(direct, 3) == b"abc"
        await client.send_all(b"def")
        await trio.sleep(0.1)  # (it has arrived: a read would take it without a checkpoint)
        with trio.CancelScope() as scope:  # a wait comes first, and checkpoints: cancelled
            scope.cancel()
            await direct.receive_some(100)
        assert scope.cancelled_caught
        with trio.fail_after(DEADLINE):
            assert await _receive_exactly(direct, 3) == b"def"
